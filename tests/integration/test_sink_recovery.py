"""At-least-once sinks: a job that fails mid-stream loses no row and doubles none under FINAL.

Kafka (unbounded) -> decode -> ClickHouse sink on chdb, checkpoints every 300 ms, one
restart allowed; the test cancels the job once the sink reports every row written. The sink
holds every row until its time flush (4 s), while checkpoints record the Kafka offsets past
the rows read so far together with the sink's state; then its first write fails on purpose.
After the restart the source resumes from the last checkpoint's offsets, so rows read before
it can only come back from the sink's Flink state, and rows read after it come again from
Kafka: together every row, each once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import orjson
import redis

from connectors.clickhouse import ClickHouseUnavailable, ClickHouseWriter, open_writer
from connectors.flink_kafka import klines_source
from connectors.flink_sinks import StoreSinkFunction, attach_sink, discard
from connectors.kafka_producer import create_producer
from connectors.redis_keys import redis_key
from jobs.config import JobSettings, SinkConfig
from jobs.job import create_environment, store_sink_arguments
from tests.integration.conftest import TopicNames
from udfs.record import Kline, VersionedBar, decode_kline, encode_kline
from udfs.series import Tag, encode_outputs

# The Python workers cannot import the tests package: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

START = 1_735_689_600_000  # 2025-01-01T00:00:00Z
SERIES = ("BTC-USDT", "ETH-USDT", "SOL-USDT")
MINUTES = 400


class InjectedFailure(RuntimeError):
    """The failure the test sink raises once."""


class FailOnceSink(StoreSinkFunction):
    """The job's real sink whose first ClickHouse write fails (once per test, across
    restarts); every call is logged to ``log_path`` as a JSON line."""

    def __init__(self, config: SinkConfig, log_path: Path) -> None:
        super().__init__(**store_sink_arguments(config))
        self.log_path = str(log_path)

    def write_batch(self, batch: Sequence[VersionedBar]) -> int:
        log = Path(self.log_path)
        failing = not log.exists()
        written = 0 if failing else super().write_batch(batch)
        entry = {"rows": len(batch), "failed": failing, "restored": self.restored_rows_total}
        with log.open("ab") as handle:  # after the insert: the test stops the job on it
            handle.write(orjson.dumps(entry) + b"\n")
        if failing:
            raise InjectedFailure(f"injected failure on a batch of {len(batch)} rows")
        return written


def written_after_failure(log_path: Path) -> int:
    """Rows the sink wrote successfully so far (0 before its log exists)."""
    if not log_path.exists():
        return 0
    entries = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    return sum(entry["rows"] for entry in entries if not entry["failed"])


def open_when_released(chdb_url: str, timeout_s: float = 60.0) -> ClickHouseWriter:
    """Open chdb once the cancelled job's Python worker has let go of the directory."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return open_writer(chdb_url, migrate_schema=False)
        except ClickHouseUnavailable:
            assert time.monotonic() < deadline, "the job's worker still holds chdb"
            time.sleep(0.2)


def to_bar(raw: Any) -> bytes:
    """A series-operator element holding one bar."""
    kline = decode_kline(bytes(raw))
    return encode_outputs(
        [(Tag.BAR, VersionedBar(kline, kline.event_time * 2 + int(kline.is_closed)))]
    )


def make_kline(symbol: str, minute: int) -> Kline:
    open_time = START + minute * 60_000
    price = 100.0 + minute
    return Kline(
        exchange="binance",
        symbol=symbol,
        raw_symbol=symbol.replace("-", ""),
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + 59_999,
        open=price,
        high=price + 2,
        low=price - 1,
        close=price + 1,
        volume=1.0 + minute,
        quote_volume=None,
        trades=minute,
        taker_buy_volume=None,
        taker_buy_quote_volume=None,
        is_closed=True,
        event_time=open_time + 60_000,
        ingest_time=open_time + 60_010,
    )


def produce_klines(kafka_bootstrap: str, topic: str) -> list[Kline]:
    """Every test bar, produced to ``topic`` (keyed by series); returns them."""
    klines = [make_kline(symbol, minute) for minute in range(MINUTES) for symbol in SERIES]
    producer = create_producer(kafka_bootstrap)
    try:
        for kline in klines:
            producer.send(topic, key=kline.series_key.encode(), value=encode_kline(kline))
        producer.flush(timeout=30)
    finally:
        producer.close()
    return klines


def start_sink_job(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: TopicNames, sink: StoreSinkFunction
) -> Any:
    """Kafka (unbounded) -> decode -> ``sink``, checkpoints every 300 ms, one restart;
    returns the running job's client."""
    from pyflink.common import Types
    from pyflink.common.watermark_strategy import WatermarkStrategy

    settings = JobSettings(
        kafka_bootstrap=kafka_bootstrap,
        klines_topic=kafka_topics.raw,
        dlq_topic=kafka_topics.dlq,
        consumer_group=f"test-{kafka_topics.raw}",
        bounded=False,
        parallelism=1,
        checkpoint_dir=tmp_path / "checkpoints",
        job_name="test-sink-recovery",
        flink_overrides=(
            ("execution.checkpointing.interval", "300ms"),
            ("execution.checkpointing.min-pause", "0ms"),
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", "1"),
            ("restart-strategy.fixed-delay.delay", "500ms"),
        ),
    )
    env = create_environment(settings)
    raw = env.from_source(
        klines_source(kafka_bootstrap, kafka_topics.raw, settings.consumer_group, bounded=False),
        WatermarkStrategy.no_watermarks(),
        "kafka-klines-raw",
        type_info=Types.PRIMITIVE_ARRAY(Types.BYTE()),
    ).uid("kafka-klines-raw")
    bars = raw.map(to_bar, output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()))
    bars = bars.name("decode").uid("decode")
    written = attach_sink(bars, sink, "store-sink", parallelism=1)
    discard(written, "store-sink-end")
    return env.execute_async(settings.job_name)


def held_sink_config(tmp_path: Path, redis_url: str) -> SinkConfig:
    """Both stores written only every 4 s: every row is read, and covered by a checkpoint,
    before the first write."""
    return SinkConfig(
        clickhouse_url=f"chdb://{tmp_path / 'chdb'}",
        clickhouse_batch_rows=1_000_000,
        clickhouse_flush_ms=4_000,
        redis_url=redis_url,
        redis_batch_rows=1_000_000,
        redis_flush_ms=4_000,
    )


def test_a_failure_after_checkpoints_loses_nothing_and_doubles_nothing(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: TopicNames, redis_url: str
) -> None:
    klines = produce_klines(kafka_bootstrap, kafka_topics.raw)
    sink_config = held_sink_config(tmp_path, redis_url)
    chdb_url = sink_config.clickhouse_url
    log_path = tmp_path / "writes.jsonl"
    client = start_sink_job(tmp_path, kafka_bootstrap, kafka_topics,
                            FailOnceSink(sink_config, log_path))  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while written_after_failure(log_path) < len(klines):
            assert time.monotonic() < deadline, "the sink did not write every row in time"
            time.sleep(0.2)
    finally:
        client.cancel().result()

    writes = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    # The first write held every row (all were read before the flush) and failed.
    assert writes[0] == {"rows": len(klines), "failed": True, "restored": 0}
    # After the restart: rows covered by the checkpoint came back from state, the rest from
    # Kafka, and nothing twice.
    later = writes[1:]
    assert later and not any(entry["failed"] for entry in later)
    assert 0 < later[-1]["restored"] <= len(klines)
    assert sum(entry["rows"] for entry in later) == len(klines)

    with open_when_released(chdb_url) as writer:
        assert writer.table_counts()["klines"] == len(klines)
        doubled = writer.query(
            "SELECT count() AS n FROM (SELECT symbol, open_time, count() AS c "
            "FROM crypto_kline.klines FINAL GROUP BY symbol, open_time HAVING c > 1)"
        )
        assert doubled == [{"n": 0}]
        for symbol in SERIES:
            rows = writer.fetch_klines("binance", symbol, "1m")
            assert [row["open_time"] for row in rows] == [
                START + m * 60_000 for m in range(MINUTES)
            ]
            assert [row["close"] for row in rows] == [101.0 + m for m in range(MINUTES)]


class FailFirstRedisWriteSink(StoreSinkFunction):
    """The job's real sink whose first Redis write of bars fails (once per test, across
    restarts): Redis is the store that was down. ``marker_path`` records how many bars that
    write held."""

    def __init__(self, config: SinkConfig, marker_path: Path) -> None:
        super().__init__(**store_sink_arguments(config))
        self.marker_path = str(marker_path)

    def connect(self) -> None:
        super().connect()
        write_bars = self.redis.write_bars
        marker = Path(self.marker_path)

        def fail_first(bars: Sequence[VersionedBar]) -> Any:
            if not marker.exists():
                marker.write_text(str(len(bars)))
                raise InjectedFailure(f"injected Redis failure on {len(bars)} bars")
            return write_bars(bars)

        self.redis.write_bars = fail_first


def test_rows_restored_after_a_failure_reach_redis_too(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """Redis fails first: after the restart the rows come back from the sink's state (every
    offset was checkpointed, so none from Kafka), and Redis gets them, not only ClickHouse."""
    klines = produce_klines(kafka_bootstrap, kafka_topics.raw)
    marker = tmp_path / "redis-failed"
    client = start_sink_job(
        tmp_path, kafka_bootstrap, kafka_topics,
        FailFirstRedisWriteSink(held_sink_config(tmp_path, redis_url), marker),
    )  # fmt: skip
    keys = [redis_key("klines", "binance", symbol, "1m") for symbol in SERIES]
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() or any(redis_client.zcard(key) < MINUTES for key in keys):
            assert time.monotonic() < deadline, (
                "Redis did not get every restored bar: "
                f"{[redis_client.zcard(key) for key in keys]} of {MINUTES} per series"
            )
            time.sleep(0.2)
    finally:
        client.cancel().result()
    assert int(marker.read_text()) == len(klines), "the failed write held every row"
    for key in keys:
        scores = redis_client.zrange(key, 0, -1, withscores=True)  # the open times
        assert [int(score) for _, score in scores] == [START + m * 60_000 for m in range(MINUTES)]
