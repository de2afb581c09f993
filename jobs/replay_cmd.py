"""``klineflow replay PATH...``: Binance kline archives (CSV/ZIP) and JSONL files into Kafka."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from jobs.cliutil import env_flag
from jobs.config import JobSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2

_DESCRIPTION = """\
Replay Binance public-data kline archives (data.binance.vision: SYMBOL-INTERVAL-DATE.zip or
.csv, with or without header, ms or µs timestamps) and JSONL files of wire records (.jsonl,
.jsonl.gz) into Kafka. Directories are walked recursively, in sorted order. Archive rows are
closed bars (event_time = close_time); bad rows go to the DLQ topic with file:line and the
reason, and the replay goes on. Exit status: 0 when every file was read (rejected rows do
not fail a run), 1 when a file could not be read or a message was not delivered, 2 when a
file's symbol or timeframe is refused before anything is sent.
"""


# Messages per second --rate accepts (below, a pause would overflow time.sleep).
_MIN_RATE = 0.001
_MAX_RATE = 1e9


def _positive_float(text: str) -> float:
    """A --rate value: a finite number from 0.001 to 1e9 (not nan, inf or 1e-300)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
    if not _MIN_RATE <= value <= _MAX_RATE:  # also false for nan
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r}: must be from {_MIN_RATE} to {_MAX_RATE:g}"
        )
    return value


def register(subparsers: Any) -> None:
    """Add the ``replay`` command."""
    parser = subparsers.add_parser(
        "replay",
        help="replay kline archives (CSV/ZIP) or JSONL into Kafka",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="archive/JSONL files or directories of them"
    )
    parser.add_argument(
        "--exchange",
        choices=("binance", "okx", "bybit"),
        help="exchange of archive rows (default: binance; JSONL records name their own)",
    )
    parser.add_argument(
        "--symbol",
        help="the exchange's symbol for archive rows, e.g. BTCUSDT or BTC-USDT "
        "(default: from the file name)",
    )
    parser.add_argument(
        "--timeframe", help="timeframe of archive rows, e.g. 1m (default: from the file name)"
    )
    parser.add_argument(
        "--market",
        choices=("spot", "perp", "future"),
        help="market of archive rows (default: told by the path data/spot|futures/um|"
        "futures/cm, the symbol or the file's layout; refused when it cannot be told)",
    )
    job = JobSettings()  # the replay feeds the job: its topics and broker by default
    for flag, env, default, what in (
        ("--topic", "KLINES_TOPIC", job.klines_topic, "Kafka topic for the bars"),
        ("--dlq-topic", "KLINES_DLQ_TOPIC", job.dlq_topic, "Kafka topic for rejected rows"),
        ("--bootstrap-servers", "KAFKA_BOOTSTRAP_SERVERS", job.kafka_bootstrap,
         "Kafka bootstrap servers, host:port[,...]"),
    ):  # fmt: skip
        env_flag(parser, flag, env=env, default=default, help=what)
    parser.add_argument(
        "--rate",
        type=_positive_float,
        metavar="N",
        help="send at most N messages per second (default: as fast as possible)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:
    from connectors.archives import ReplayConfigError
    from connectors.replay import ReplayError, replay_files

    if not getattr(args, "verbose", False):
        # kafka-python logs every connection at INFO; keep the command's own output readable.
        logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        result = replay_files(
            args.paths,
            bootstrap=args.bootstrap_servers,
            topic=args.topic,
            dlq_topic=args.dlq_topic,
            exchange=args.exchange,
            symbol=args.symbol,
            timeframe=args.timeframe,
            market=args.market,
            progress=not args.no_progress and sys.stderr.isatty(),
            rate_limit=args.rate,
        )
    except ReplayConfigError as exc:
        print(f"klineflow replay: refused, nothing was sent:\n{exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ReplayError as exc:
        print(f"klineflow replay: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"replay: {result.summary()} -> {args.topic} (rejected rows -> {args.dlq_topic})")
    for path in result.failed_files:
        print(f"replay: could not read {path}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED
