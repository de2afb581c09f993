"""``klineflow backfill``: closed 1m bars of a time range over REST into Kafka."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

from jobs.cliutil import env_flag
from jobs.config import STATE_DIR, JobSettings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2

_DESCRIPTION = """\
Page through an exchange's REST klines for SYMBOLS of one market from --since to --until
(default: now), and produce every closed 1m bar (provenance "rest") to the klines topic,
merged by open time across symbols as a live feed would deliver them. Requests share one
rate limit; 429/418 and Retry-After pause them all. The still-open bar is never produced.
Rows the exchange returns malformed go to the dead-letter topic with their reason.

Resumable: progress is saved per series after each chunk once Kafka has acknowledged it, and
a new run with the same --progress-file goes on from there. Hand-over to the live bridge:
start the bridge first, then backfill up to now; a boundary minute both deliver is kept once
by the job's upsert. Run a bounded job (`klineflow job run --bounded`) over the topic for
the roll-ups of the history.

Exit status: 0 when every symbol's range was delivered, 1 when one failed (the others are
still delivered; rerun to go on), 2 when the settings are refused before anything is sent.
"""


def register(subparsers: Any) -> None:
    """Add the ``backfill`` command."""
    from connectors.backfill import DEFAULT_CHUNK_MINUTES
    from jobs.query_cmd import parse_time

    job = JobSettings()
    parser = subparsers.add_parser(
        "backfill",
        help="closed 1m bars of a time range over REST into Kafka (resumable)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env_flag(
        parser,
        "--exchange",
        env="BACKFILL_EXCHANGE",
        choices=("binance", "okx", "bybit"),
        help="exchange to page through",
    )
    env_flag(
        parser,
        "--market",
        env="BACKFILL_MARKET",
        default="spot",
        choices=("spot", "linear", "inverse"),
        help="market of the symbols (as for `klineflow bridge`)",
    )
    env_flag(
        parser,
        "--symbols",
        env="BACKFILL_SYMBOLS",
        help="comma-separated exchange symbols, e.g. BTCUSDT,ETHUSDT (as for `klineflow bridge`)",
    )
    env_flag(
        parser,
        "--contract-size",
        env="BRIDGE_CONTRACT_SIZES",
        default="",
        metavar="RAW=SIZE,...",
        help="contract sizes of derivatives not in the built-in table",
    )
    env_flag(
        parser,
        "--since",
        env="BACKFILL_SINCE",
        type=parse_time,
        help="first minute (ISO-8601 like 2025-01-01 or epoch s/ms), inclusive",
    )
    env_flag(
        parser,
        "--until",
        env="BACKFILL_UNTIL",
        type=parse_time,
        help="end (exclusive; default: now, so up to the last closed minute)",
    )
    env_flag(
        parser,
        "--chunk-minutes",
        env="BACKFILL_CHUNK_MINUTES",
        default=DEFAULT_CHUNK_MINUTES,
        type=int,
        help="minutes fetched per symbol per round (progress is saved after each round)",
    )
    env_flag(
        parser,
        "--progress-file",
        env="BACKFILL_PROGRESS_FILE",
        default=None,
        help="where progress is kept (default: .klineflow/backfill/EXCHANGE-MARKET.json)",
    )
    parser.add_argument(
        "--rest-url",
        default=None,
        help="REST base URL (env BINANCE_REST_URL / OKX_REST_URL / BYBIT_REST_URL; default: "
        "the exchange's public URL)",
    )
    env_flag(
        parser, "--topic", env="KLINES_TOPIC", default=job.klines_topic, help="topic of spot bars"
    )
    env_flag(
        parser,
        "--linear-topic",
        env="KLINES_LINEAR_TOPIC",
        default=None,
        help="topic of derivatives bars (default: --topic)",
    )
    env_flag(
        parser,
        "--dlq-topic",
        env="KLINES_DLQ_TOPIC",
        default=job.dlq_topic,
        help="dead-letter topic for rows that fail validation",
    )
    env_flag(
        parser,
        "--bootstrap-servers",
        env="KAFKA_BOOTSTRAP_SERVERS",
        default=job.kafka_bootstrap,
        help="Kafka bootstrap servers",
    )
    parser.set_defaults(func=run)


def _refuse(message: str) -> int:
    print(f"klineflow backfill: {message}", file=sys.stderr)
    return EXIT_REFUSED


def run(args: argparse.Namespace) -> int:
    """Check the settings, then backfill every symbol; prints one line per symbol."""
    from connectors.exchanges import create_adapter
    from connectors.symbols import UnknownSymbol
    from jobs.bridge_cmd import exchange_env, parse_contract_sizes, split_symbols

    if not args.exchange:
        return _refuse("--exchange (or BACKFILL_EXCHANGE) is required")
    symbols = split_symbols(args.symbols)
    if not symbols:
        return _refuse("--symbols (or BACKFILL_SYMBOLS) is required, e.g. BTCUSDT,ETHUSDT")
    if args.since is None:
        return _refuse("--since (or BACKFILL_SINCE) is required, e.g. 2025-01-01")
    until = args.until if args.until is not None else time.time_ns() // 1_000_000
    if until <= args.since:
        return _refuse(f"--until ({until}) must be after --since ({args.since})")
    if args.chunk_minutes < 1:
        return _refuse("--chunk-minutes must be at least 1")
    try:
        adapter = create_adapter(
            args.exchange, args.market, symbols, parse_contract_sizes(args.contract_size)
        )
    except UnknownSymbol as exc:
        return _refuse(str(exc))
    rest_url = args.rest_url or exchange_env(args.exchange, "REST") or adapter.default_rest_base()
    topic = (args.linear_topic or args.topic) if args.market != "spot" else args.topic
    progress_path = Path(
        args.progress_file or STATE_DIR / "backfill" / f"{args.exchange}-{args.market}.json"
    )
    return asyncio.run(
        _backfill(
            adapter,
            rest_url,
            topic,
            args.dlq_topic,
            args.bootstrap_servers,
            since=args.since,
            until=until,
            chunk_minutes=args.chunk_minutes,
            progress_path=progress_path,
        )
    )


async def _backfill(
    adapter: Any,
    rest_url: str,
    topic: str,
    dlq_topic: str,
    bootstrap: str,
    *,
    since: int,
    until: int,
    chunk_minutes: int,
    progress_path: Path,
) -> int:
    import aiohttp
    from kafka.errors import KafkaError

    from connectors.backfill import BackfillFailed, ProgressFile, backfill
    from connectors.exchanges.base import RejectedBar
    from connectors.kafka_admin import DEAD_LETTER_TOPIC, TopicError, ensure_topics
    from connectors.kafka_producer import DeliveryCounter, create_producer
    from connectors.replay import DLQ_PARTITIONS, RAW_PARTITIONS
    from connectors.rest_repair import RestKlineClient
    from udfs.dead_letter import DeadLetter, encode_dead_letter
    from udfs.record import Kline, encode_kline, now_ms

    try:
        progress = ProgressFile(progress_path)
    except (OSError, ValueError) as exc:
        return _refuse(f"progress file: {exc}")
    try:
        ensure_topics(bootstrap, [topic], partitions=RAW_PARTITIONS)
        ensure_topics(bootstrap, [dlq_topic], partitions=DLQ_PARTITIONS,
                      configs=DEAD_LETTER_TOPIC)  # fmt: skip
        producer = create_producer(bootstrap, client_id="klineflow-backfill")
    except (KafkaError, TopicError) as exc:
        print(f"klineflow backfill: Kafka at {bootstrap}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    bars = DeliveryCounter()
    letters = DeliveryCounter(max_pending=10_000)

    def emit(kline: Kline) -> None:
        bars.send(producer, topic, encode_kline(kline), kline.series_key.encode())

    def reject(rejected: RejectedBar) -> None:
        letter = DeadLetter(reason=rejected.reason, stage="backfill", original=rejected.original,
                            key=rejected.key, rejected_at=now_ms())  # fmt: skip
        letters.send(producer, dlq_topic, encode_dead_letter(letter),
                     rejected.key.encode() if rejected.key else None)  # fmt: skip

    async def settle() -> None:
        await asyncio.to_thread(producer.flush)
        if bars.failed or letters.failed:
            raise BackfillFailed(
                f"Kafka did not acknowledge {bars.failed + letters.failed} records: "
                f"{(bars.errors + letters.errors)[:1]}"
            )

    try:
        async with aiohttp.ClientSession() as session:
            client = RestKlineClient(adapter, rest_url, session)
            report = await backfill(client, list(adapter.symbols.values()), since, until,
                                    emit=emit, reject=reject, settle=settle, progress=progress,
                                    chunk_minutes=chunk_minutes)  # fmt: skip
    except BackfillFailed as exc:
        print(f"klineflow backfill: {exc} (progress kept in {progress_path})", file=sys.stderr)
        return EXIT_FAILED
    finally:
        producer.close(timeout=5)
    for item in report.symbols:
        status = f"failed: {item.error}" if item.error else "ok"
        print(
            f"{adapter.name} {item.symbol}: {item.bars} bars, {item.rejected} rejected, "
            f"{item.open_bars_skipped} still open, from {item.resumed_from_ms} ({status})"
        )
    print(f"rest: {report.rest}; progress: {progress_path}")
    return EXIT_FAILED if report.failed else EXIT_OK
