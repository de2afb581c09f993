"""``klineflow``: the command line. Each command lives in its own module with a ``register``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Each module defines ``register(subparsers)`` that adds its command and sets ``func``.
# Heavy imports (PyFlink, chdb) stay inside the command functions so --help is fast.
COMMAND_MODULES: tuple[str, ...] = (
    "jobs.stack_cmd",
    "jobs.replay_cmd",
    "jobs.job_cmd",
    "jobs.bridge_cmd",
    "jobs.backfill_cmd",
    "jobs.db_cmd",
    "jobs.query_cmd",
    "jobs.gaps_cmd",
    "jobs.plot_cmd",
    "jobs.demo_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``klineflow`` parser with every command module that is installed."""
    parser = argparse.ArgumentParser(
        prog="klineflow",
        description="Candlestick pipeline: exchanges -> Kafka -> Flink -> ClickHouse and Redis.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``klineflow`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kafka-python logs every connection step at INFO.
        logging.getLogger("kafka").setLevel(logging.WARNING)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
