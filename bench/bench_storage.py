"""Storage throughput: rows/s into chdb and a ClickHouse server, Redis CAS updates/s, and
what the sinks' at-least-once state costs in a Flink job. Prints one JSON object.

    .venv/bin/python bench/bench_storage.py [--rows 200000] [--skip-flink]

The server is Debian's clickhouse-server (18.16) on loopback with the reduced test schema
(tests/integration/sql_clickhouse_18); Redis is a private redis-server on a free port.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from connectors.clickhouse import open_writer  # noqa: E402
from connectors.clickhouse_server import LocalClickHouseServer  # noqa: E402
from connectors.redis_store import RedisBarWriter  # noqa: E402
from udfs.record import Kline, VersionedBar  # noqa: E402

START = 1_735_689_600_000
REDUCED_SQL = PROJECT / "tests" / "integration" / "sql_clickhouse_18"


def make_bars(count: int, series: int = 20) -> list[VersionedBar]:
    """``count`` bars over ``series`` symbols, one minute apart per series."""
    bars = []
    for index in range(count):
        minute, symbol = divmod(index, series)
        open_time = START + minute * 60_000
        price = 100.0 + (index % 997) / 10
        kline = Kline(
            "binance",
            f"S{symbol}-USDT",
            f"S{symbol}USDT",
            "1m",
            open_time,
            open_time + 59_999,
            price,
            price + 1,
            price - 1,
            price + 0.5,
            10.0,
            1000.0,
            42,
            5.0,
            500.0,
            True,
            open_time + 60_000,
            open_time + 60_001,
        )
        bars.append(VersionedBar(kline, open_time * 2 + 1))
    return bars


def insert_rate(
    url: str, bars: Sequence[VersionedBar], batch: int, sql_dir: Path | None
) -> dict[str, Any]:
    with open_writer(url, migrate_schema=False) as writer:
        writer.migrate(sql_dir)
        started = time.perf_counter()
        for offset in range(0, len(bars), batch):
            writer.insert_bars(bars[offset : offset + batch])
        elapsed = time.perf_counter() - started
    return {
        "rows": len(bars),
        "batch_rows": batch,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(len(bars) / elapsed),
    }


def redis_rate(bars: Sequence[VersionedBar], home: Path) -> dict[str, Any]:
    from connectors.clickhouse_server import free_loopback_port
    from jobs.stack import RedisServer, StackConfig

    server = RedisServer(StackConfig(home=home, redis_port=free_loopback_port()))
    server.start(timeout_s=60)
    try:
        with RedisBarWriter(server.url, recent_bars=500) as writer:
            started = time.perf_counter()
            for offset in range(0, len(bars), 500):
                writer.write_bars(bars[offset : offset + 500])
            elapsed = time.perf_counter() - started
    finally:
        server.stop()
    return {
        "updates": len(bars),
        "batch": 500,
        "seconds": round(elapsed, 3),
        "updates_per_s": round(len(bars) / elapsed),
    }


def run_null_sink_job(rows: int, *, durable: bool, checkpoint_dir: Path) -> float:
    """Run ``rows`` pickled bars through a ``BatchingSinkFunction`` that writes nowhere."""
    from pyflink.common import Configuration, Types
    from pyflink.datastream import StreamExecutionEnvironment

    from connectors.flink_sinks import BatchingSinkFunction, attach_sink, discard

    class NullSink(BatchingSinkFunction):  # defined in __main__: shipped by value
        def connect(self) -> None:
            pass

        def write_batch(self, batch: Sequence[Any]) -> int:
            return len(batch)

        def disconnect(self) -> None:
            pass

    config = Configuration()
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("execution.checkpointing.interval", "1s")
    config.set_string("execution.checkpointing.dir", checkpoint_dir.as_uri())
    config.set_string("python.fn-execution.bundle.size", "1000")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(1)
    keys = env.from_collection([str(i) for i in range(rows)], type_info=Types.STRING())
    bars = keys.map(lambda i: make_bars(1)[0], output_type=Types.PICKLED_BYTE_ARRAY())
    written = attach_sink(
        bars.name("bars").uid("bars"),
        NullSink(10_000, 1_000, durable=durable),
        "null-sink",
        parallelism=1,
    )
    discard(written, "null-sink-end")
    started = time.perf_counter()
    env.execute(f"bench-null-sink-durable-{durable}")
    return time.perf_counter() - started


def flink_sink_cost(rows: int, home: Path) -> dict[str, Any]:
    """Seconds for a job feeding ``rows`` bars to a sink that writes nowhere, with and
    without the Flink-state copy of unwritten rows."""
    result = {}
    for durable in (False, True):
        seconds = run_null_sink_job(rows, durable=durable, checkpoint_dir=home / f"chk-{durable}")
        result["durable" if durable else "in_memory_only"] = {
            "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds),
        }
    return {"rows": rows, **result}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--flink-rows", type=int, default=100_000)
    parser.add_argument("--skip-flink", action="store_true")
    args = parser.parse_args()
    bars = make_bars(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        report: dict[str, Any] = {}
        report["chdb"] = insert_rate(f"chdb://{home / 'chdb'}", bars, 10_000, None)
        with LocalClickHouseServer(home / "server") as server:
            report["clickhouse_server_18_16_native"] = insert_rate(
                server.url(), bars, 10_000, REDUCED_SQL
            )
        report["redis_cas"] = redis_rate(bars[:50_000], home / "redis")
        if not args.skip_flink:
            report["flink_sink_state_cost"] = flink_sink_cost(args.flink_rows, home)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
