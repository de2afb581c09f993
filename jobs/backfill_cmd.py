"""``klineflow backfill``: closed 1m bars of a time range over REST into Kafka.

One run pages through one exchange, on one or more of its markets, chosen as the bridge
chooses them (``--market spot,linear``, ``MARKET:SYMBOL``; :mod:`connectors.bridge.markets`),
each market with its own REST base URL (``--rest-url``/``BINANCE_REST_URL`` …, one URL or
``MARKET=URL,…``; :mod:`jobs.market_urls`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jobs.cliutil import env_flag
from jobs.config import STATE_DIR, JobSettings
from jobs.market_urls import URL_METAVAR, market_url

if TYPE_CHECKING:
    from collections.abc import Sequence

    from connectors.exchanges.base import ExchangeAdapter
    from connectors.retry import TokenBucket

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2

_DESCRIPTION = """\
Page through an exchange's REST klines for SYMBOLS of one or more of its markets from
--since to --until (default: now), and produce every closed 1m bar (provenance "rest") to the
klines topic, merged by open time across symbols and markets as a live feed would deliver
them. Markets and symbols are chosen as for `klineflow bridge`: --market spot,linear
--symbols BTCUSDT fills the spot pair (BTC-USDT) and the perpetual (BTC-USDT-PERP);
--symbols BTCUSDT,linear:ETHUSDT fills spot BTCUSDT and linear ETHUSDT; an OKX instId
(BTC-USDT, BTC-USDT-SWAP) names its market. Each market uses its own REST base URL
(--rest-url spot=URL,linear=URL, or the bridge's BINANCE_REST_URL etc. in the same syntax;
default: the exchange's public URL of that market). Requests to one host share one rate
limit; 429/418 and Retry-After pause them all. The still-open bar is never produced.
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
        metavar="MARKET[,MARKET...]",
        help="the markets of the symbols given without a MARKET: prefix, comma-separated, as "
        "for `klineflow bridge`: spot; linear (quote-margined: Binance USDT-M, OKX USDT/USDC "
        "SWAP and futures, Bybit linear); inverse (coin-margined: Binance COIN-M, OKX USD "
        "SWAP, Bybit inverse); e.g. spot,linear",
    )
    env_flag(
        parser,
        "--symbols",
        env="BACKFILL_SYMBOLS",
        metavar="[MARKET:]SYMBOL,...",
        help="comma-separated exchange symbols, each SYMBOL or MARKET:SYMBOL, as for "
        "`klineflow bridge`: a SYMBOL without a prefix is filled on every market of --market "
        "(Binance/Bybit BTCUSDT names the spot pair and the perpetual alike), linear:ETHUSDT "
        "on linear only, an OKX instId (BTC-USDT, BTC-USDT-SWAP) on the market it names, "
        "which --market must list",
    )
    env_flag(
        parser,
        "--contract-size",
        env="BRIDGE_CONTRACT_SIZES",
        default="",
        metavar="RAW=SIZE,...",
        help="contract sizes of derivatives not in the built-in table, comma-separated "
        "(base units per contract for linear, USD per contract for inverse)",
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
        help="where progress is kept; one file holds every market's (default: one file per "
        "market, .klineflow/backfill/EXCHANGE-MARKET.json)",
    )
    parser.add_argument(
        "--rest-url",
        default=None,
        metavar=URL_METAVAR,
        help="REST base URL of every market, or per market (spot=URL,linear=URL; a market "
        "without one falls back to the variable, then the default), as for `klineflow "
        "bridge` (env BINANCE_REST_URL / OKX_REST_URL / BYBIT_REST_URL, same syntax; "
        "default: the exchange's public URL of each market, e.g. Binance spot "
        "https://api.binance.com, linear https://fapi.binance.com, inverse "
        "https://dapi.binance.com)",
    )
    env_flag(
        parser, "--topic", env="KLINES_TOPIC", default=job.klines_topic, help="topic of spot bars"
    )
    env_flag(
        parser,
        "--linear-topic",
        env="KLINES_LINEAR_TOPIC",
        default=None,
        help="topic of derivatives (linear and inverse) bars (default: --topic; their series "
        "keys differ from spot's)",
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


@dataclass(frozen=True, slots=True)
class MarketRun:
    """What the backfill of one market uses: adapter (symbols), REST base, topic, progress."""

    adapter: ExchangeAdapter
    rest_url: str
    topic: str
    progress_path: Path


def plan_markets(args: argparse.Namespace) -> list[MarketRun]:
    """The markets ``args`` backfill, in :data:`~connectors.bridge.markets.MARKETS` order.

    Markets and symbols follow the bridge's rules (:func:`connectors.bridge.markets.
    symbols_by_market`); each market's REST base URL is ``--rest-url``'s entry for it, else
    ``{EXCHANGE}_REST_URL``'s, else the adapter's public default; derivatives go to
    ``--linear-topic`` when given. Raises :class:`~connectors.symbols.UnknownSymbol` or
    :class:`~connectors.bridge.markets.MarketSpecError` with a message for the operator.
    """
    from connectors.bridge.markets import parse_markets, symbols_by_market
    from jobs.bridge_cmd import market_adapters, parse_contract_sizes, split_symbols

    items = split_symbols(args.symbols)
    contract_sizes = parse_contract_sizes(args.contract_size)
    plan = symbols_by_market(args.exchange, parse_markets(args.market), items, contract_sizes)
    runs = []
    for adapter in market_adapters(args.exchange, plan, contract_sizes, items):
        market = adapter.market
        rest_url = market_url(args.rest_url, "--rest-url", args.exchange, "REST", market)
        runs.append(
            MarketRun(
                adapter=adapter,
                rest_url=rest_url or adapter.default_rest_base(),
                topic=(args.linear_topic or args.topic) if market != "spot" else args.topic,
                progress_path=Path(
                    args.progress_file or STATE_DIR / "backfill" / f"{args.exchange}-{market}.json"
                ),
            )
        )
    return runs


def rest_buckets(runs: Sequence[MarketRun]) -> list[TokenBucket]:
    """One token bucket per REST host (scheme, host and port), for each run in order.

    Markets served by one host share its limit (OKX and Bybit serve every market from one
    host, whose limits are per IP); Binance's spot and futures hosts keep their own.
    """
    from connectors.retry import TokenBucket

    by_host: dict[str, list[MarketRun]] = {}
    for run in runs:
        parts = urlsplit(run.rest_url)
        by_host.setdefault(f"{parts.scheme}://{parts.netloc}".lower(), []).append(run)
    bucket_of: dict[int, TokenBucket] = {}
    for group in by_host.values():
        bucket = TokenBucket(
            min(run.adapter.rest_rate_per_s for run in group),
            min(run.adapter.rest_burst for run in group),
        )
        for run in group:
            bucket_of[id(run)] = bucket
    return [bucket_of[id(run)] for run in runs]


def run(args: argparse.Namespace) -> int:
    """Check the settings, then backfill every symbol; prints one line per symbol."""
    from connectors.bridge.markets import MarketSpecError
    from connectors.symbols import UnknownSymbol
    from jobs.bridge_cmd import split_symbols

    if not args.exchange:
        return _refuse("--exchange (or BACKFILL_EXCHANGE) is required")
    if not split_symbols(args.symbols):
        return _refuse("--symbols (or BACKFILL_SYMBOLS) is required, e.g. BTCUSDT,ETHUSDT")
    if args.since is None:
        return _refuse("--since (or BACKFILL_SINCE) is required, e.g. 2025-01-01")
    until = args.until if args.until is not None else time.time_ns() // 1_000_000
    if until <= args.since:
        return _refuse(f"--until ({until}) must be after --since ({args.since})")
    if args.chunk_minutes < 1:
        return _refuse("--chunk-minutes must be at least 1")
    try:
        runs = plan_markets(args)
    except (UnknownSymbol, MarketSpecError) as exc:
        return _refuse(str(exc))
    for market_run in runs:
        log.info(
            "event=backfill_market exchange=%s market=%s symbols=%d rest=%s topic=%s "
            "progress=%s",
            market_run.adapter.name, market_run.adapter.market, len(market_run.adapter.symbols),
            market_run.rest_url, market_run.topic, market_run.progress_path,
        )  # fmt: skip
    return asyncio.run(
        _backfill(
            runs,
            args.dlq_topic,
            args.bootstrap_servers,
            since=args.since,
            until=until,
            chunk_minutes=args.chunk_minutes,
        )
    )


async def _backfill(
    runs: Sequence[MarketRun],
    dlq_topic: str,
    bootstrap: str,
    *,
    since: int,
    until: int,
    chunk_minutes: int,
) -> int:
    import aiohttp
    from kafka.errors import KafkaError

    from connectors.backfill import BackfillFailed, MarketBackfill, ProgressFile, backfill_markets
    from connectors.exchanges.base import RejectedBar
    from connectors.kafka_admin import DEAD_LETTER_TOPIC, TopicError, ensure_topics
    from connectors.kafka_producer import DeliveryCounter, create_producer
    from connectors.replay import DLQ_PARTITIONS, RAW_PARTITIONS
    from connectors.rest_repair import RestKlineClient
    from udfs.dead_letter import DeadLetter, encode_dead_letter
    from udfs.record import Kline, encode_kline, now_ms

    progress_files: dict[Path, ProgressFile] = {}
    try:
        for market_run in runs:  # markets given one --progress-file share one
            path = market_run.progress_path
            if path not in progress_files:
                progress_files[path] = ProgressFile(path)
    except (OSError, ValueError) as exc:
        return _refuse(f"progress file: {exc}")
    topics = list(dict.fromkeys(market_run.topic for market_run in runs))
    topic_of_symbol = {
        info.symbol: market_run.topic
        for market_run in runs
        for info in market_run.adapter.symbols.values()
    }
    try:
        ensure_topics(bootstrap, topics, partitions=RAW_PARTITIONS)
        ensure_topics(bootstrap, [dlq_topic], partitions=DLQ_PARTITIONS,
                      configs=DEAD_LETTER_TOPIC)  # fmt: skip
        producer = create_producer(bootstrap, client_id="klineflow-backfill")
    except (KafkaError, TopicError) as exc:
        print(f"klineflow backfill: Kafka at {bootstrap}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    bars = DeliveryCounter()
    letters = DeliveryCounter(max_pending=10_000)

    def emit(kline: Kline) -> None:
        bars.send(producer, topic_of_symbol[kline.symbol], encode_kline(kline),
                  kline.series_key.encode())  # fmt: skip

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

    paths = ", ".join(str(path) for path in progress_files)
    try:
        async with aiohttp.ClientSession() as session:
            markets = [
                MarketBackfill(
                    RestKlineClient(market_run.adapter, market_run.rest_url, session,
                                    bucket=bucket),
                    list(market_run.adapter.symbols.values()),
                    progress_files[market_run.progress_path],
                )
                for market_run, bucket in zip(runs, rest_buckets(runs), strict=True)
            ]  # fmt: skip
            report = await backfill_markets(markets, since, until, emit=emit, reject=reject,
                                            settle=settle, chunk_minutes=chunk_minutes)  # fmt: skip
    except BackfillFailed as exc:
        print(f"klineflow backfill: {exc} (progress kept in {paths})", file=sys.stderr)
        return EXIT_FAILED
    finally:
        producer.close(timeout=5)
    exchange = runs[0].adapter.name
    for item in report.symbols:
        status = f"failed: {item.error}" if item.error else "ok"
        print(
            f"{exchange} {item.symbol}: {item.bars} bars, {item.rejected} rejected, "
            f"{item.open_bars_skipped} still open, from {item.resumed_from_ms} ({status})"
        )
    if len(report.rest_by_market) > 1:
        for market, counters in report.rest_by_market.items():
            print(f"rest {market}: {counters}")
    print(f"rest: {report.rest}; progress: {paths}")
    return EXIT_FAILED if report.failed else EXIT_OK
