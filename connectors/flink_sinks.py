"""ClickHouse and Redis sinks as PyFlink operators.

PyFlink has no Python ``SinkFunction``, so each sink is a keyed process function that writes
in batches and emits nothing; ``attach_sink`` ends it in a discarding Java sink and names both.
A sink connects and health-checks in ``open()``, flushes by size, by a processing-time timer
and in ``close()`` (the end of a bounded run).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from pyflink.common import Types
from pyflink.datastream import DataStream, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.connectors.base import Sink

from jobs.config import SinkConfig
from udfs.record import VersionedBar

_DISCARDING_SINK = "org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink"


class BatchingSinkFunction(KeyedProcessFunction):
    """Buffers records and hands them to ``write_batch`` by size and by time."""

    def __init__(self, batch_rows: int, flush_ms: int) -> None:
        self.batch_rows = batch_rows
        self.flush_ms = flush_ms

    @abstractmethod
    def connect(self) -> None:
        """Open the connection and health-check it (called from ``open``)."""

    @abstractmethod
    def write_batch(self, batch: Sequence[Any]) -> int:
        """Write one batch; return the number of rows written."""

    @abstractmethod
    def disconnect(self) -> None:
        """Release the connection (called from ``close``)."""

    def open(self, runtime_context: RuntimeContext) -> None:
        self.buffer: list[Any] = []
        self.last_flush = time.monotonic()
        metrics = runtime_context.get_metrics_group()
        self.rows_written = metrics.counter("sink_rows_written")
        self.batches_written = metrics.counter("sink_batches_written")
        self.connect()

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        if not self.buffer:
            now_ms = ctx.timer_service().current_processing_time()
            ctx.timer_service().register_processing_time_timer(now_ms + self.flush_ms)
        self.buffer.append(value)
        if (
            len(self.buffer) >= self.batch_rows
            or (time.monotonic() - self.last_flush) * 1000 >= self.flush_ms
        ):
            self.flush()
        return iter(())

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        self.flush()
        return iter(())

    def flush(self) -> None:
        """Write everything buffered."""
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        written = self.write_batch(batch)
        self.rows_written.inc(written)
        self.batches_written.inc()

    def close(self) -> None:
        if hasattr(self, "buffer"):
            self.flush()
        self.disconnect()


class ClickHouseBarSink(BatchingSinkFunction):
    """Upserted bars into ClickHouse ``klines`` (chdb or a server: ``connectors.clickhouse``)."""

    def __init__(self, config: SinkConfig) -> None:
        super().__init__(config.clickhouse_batch_rows, config.clickhouse_flush_ms)
        self.url = config.clickhouse_url

    def connect(self) -> None:
        from connectors.clickhouse import open_writer

        self.writer = open_writer(self.url, migrate_schema=True)

    def write_batch(self, batch: Sequence[VersionedBar]) -> int:
        return self.writer.insert_bars(batch)

    def disconnect(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()


class RedisBarSink(BatchingSinkFunction):
    """Upserted bars into Redis ``kline:`` / ``klines:`` keys, never regressing a key."""

    def __init__(self, config: SinkConfig) -> None:
        super().__init__(config.redis_batch_rows, config.redis_flush_ms)
        self.url = config.redis_url
        self.recent_bars = config.redis_recent_bars
        self.ttl_s = config.redis_ttl_s

    def connect(self) -> None:
        from connectors.redis_store import RedisBarWriter

        self.writer = RedisBarWriter(self.url, recent_bars=self.recent_bars, ttl_s=self.ttl_s)

    def write_batch(self, batch: Sequence[VersionedBar]) -> int:
        self.writer.write_bars(batch)
        return len(batch)

    def disconnect(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()


def _bar_series_key(bar: VersionedBar) -> str:
    return bar.kline.series_key


def attach_sink(
    bars: DataStream,
    function: BatchingSinkFunction,
    name: str,
    *,
    parallelism: int | None = None,
) -> None:
    """Key ``bars`` by series, run ``function`` on them and end the branch in a discarding sink.

    chdb allows one process per data directory, so its sink must run with parallelism 1.
    """
    writer = (
        bars.key_by(_bar_series_key, key_type=Types.STRING())
        .process(function, output_type=Types.PICKLED_BYTE_ARRAY())
        .name(name)
        .uid(name)
    )
    if parallelism is not None:
        writer = writer.set_parallelism(parallelism)
    end = writer.sink_to(Sink(_DISCARDING_SINK)).name(f"{name}-end").uid(f"{name}-end")
    if parallelism is not None:
        end.set_parallelism(parallelism)
