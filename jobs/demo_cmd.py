"""``klineflow demo``: stack up, replay the sample, run the job bounded, show what landed."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.config import PROJECT_ROOT, add_job_arguments, settings_from_args
from jobs.stack_cmd import add_stack_arguments, config_from_args, format_status_table

DEMO_SERIES = ("binance", "BTC-USDT", "1m")


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="stack up, replay data/sample, run the job bounded, print what landed",
    )
    parser.add_argument(
        "--sample",
        type=Path,
        default=PROJECT_ROOT / "data" / "sample",
        help="what to replay (default: the synthetic sample in data/sample, bad rows included)",
    )
    add_stack_arguments(parser)
    add_job_arguments(parser)
    parser.set_defaults(func=run_demo)


def _step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def run_demo(args: argparse.Namespace) -> int:
    """The demo, step by step; returns the exit code."""
    from connectors.clickhouse import open_writer
    from connectors.kafka_admin import end_offsets_total
    from connectors.redis_keys import redis_key
    from connectors.redis_store import RedisBarWriter
    from connectors.replay import replay_files
    from jobs.job import run_job
    from jobs.stack import StackError
    from jobs.stack_control import stack_up

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    started = time.monotonic()
    args.bounded = True
    settings = settings_from_args(args)

    _step("1/4 local stack (Kafka KRaft broker + Redis on 127.0.0.1)")
    try:
        print(format_status_table(stack_up(config_from_args(args), timeout_s=args.timeout)))
    except StackError as exc:
        print(f"the stack did not come up: {exc}", file=sys.stderr)
        return 1

    _step(f"2/4 replay {args.sample} -> {settings.klines_topic}")
    replayed = replay_files(
        [args.sample],
        bootstrap=settings.kafka_bootstrap,
        topic=settings.klines_topic,
        dlq_topic=settings.dlq_topic,
        progress=sys.stderr.isatty(),
    )
    print(f"produced {replayed.produced} bars, rejected {replayed.rejected} rows (-> DLQ)")

    _step("3/4 the Flink job, bounded, on a local mini-cluster")
    job_started = time.monotonic()
    run_job(settings)
    print(f"job finished in {time.monotonic() - job_started:.1f}s")

    _step("4/4 what landed")
    exchange, symbol, timeframe = DEMO_SERIES
    with open_writer(settings.sinks.clickhouse_url, migrate_schema=False) as writer:
        print("ClickHouse rows per table (FINAL):")
        for table, count in writer.table_counts().items():
            print(f"  {table:<16} {count:>8}")
        series = writer.query(
            "SELECT exchange, symbol, timeframe, count() AS bars FROM crypto_kline.klines FINAL "
            "GROUP BY exchange, symbol, timeframe ORDER BY exchange, symbol, timeframe"
        )
        for row in series:
            print(
                f"  {row['exchange']}:{row['symbol']}:{row['timeframe']:<4} {row['bars']:>6} bars"
            )
        rows = writer.fetch_klines(exchange, symbol, timeframe)[-5:]
    print(f"\nLast bars of {exchange}:{symbol}:{timeframe} in ClickHouse:")
    print(f"  {'open time (UTC)':<17} {'open':>10} {'high':>10} {'low':>10} {'close':>10} "
          f"{'volume':>12} closed version")  # fmt: skip
    for row in rows:
        print(
            f"  {_iso(row['open_time']):<17} {row['open']:>10.2f} {row['high']:>10.2f} "
            f"{row['low']:>10.2f} {row['close']:>10.2f} {row['volume']:>12.4f} "
            f"{'yes' if row['is_closed'] else 'no':>6} {row['version']}"
        )
    redis_writer = RedisBarWriter(settings.sinks.redis_url)
    try:
        latest = redis_writer.read_latest_bar(exchange, symbol, timeframe)
    finally:
        redis_writer.close()
    print(f"\nLatest bar in Redis ({redis_key('kline', exchange, symbol, timeframe)}):")
    print(f"  {latest}")
    dead = end_offsets_total(settings.kafka_bootstrap, settings.dlq_topic)
    print(f"\nDead letters in {settings.dlq_topic}: {dead} (rejected input, each with its reason)")
    print(
        "\nLook further:\n"
        f"  .venv/bin/klineflow query klines --exchange {exchange} --symbol {symbol} "
        f"--timeframe {timeframe}\n"
        f"  redis-cli -u {_redacted(settings.sinks.redis_url)} HGETALL "
        f"'{redis_key('kline', exchange, symbol, timeframe)}'\n"
        "  make cluster-up && make submit   # the same job on a standalone cluster; "
        "dashboard http://127.0.0.1:8081\n"
        "  make stack-down                  # stop Kafka and Redis"
    )
    print(f"\ndemo finished in {time.monotonic() - started:.1f}s")
    return 0


def _redacted(url: str) -> str:
    from connectors.redaction import redact_url

    return redact_url(url)
