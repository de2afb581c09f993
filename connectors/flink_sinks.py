"""ClickHouse and Redis sinks as PyFlink operators, at-least-once across failures.

PyFlink has no Python ``SinkFunction``, so each sink is a keyed process function that writes
in batches and emits nothing; ``attach_sink`` ends it in a discarding Java sink and names both.
A sink connects and health-checks in ``open()`` and flushes by size and by time.

Nothing is lost across a failure or restart (at-least-once). Python functions get no
snapshot hook, so the rows not yet written live in Flink keyed state, which every checkpoint
contains:

- ``attach_sink`` keys the stream by a small, fixed set of bucket keys (round robin), not
  by series, so a sink subtask holds a handful of keys however many series there are.
- Every row is appended to the ``ListState`` of its bucket key as it arrives, and to one
  in-memory batch that mixes all the subtask's keys (:class:`SinkBuffer`), so batches stay
  as large as configured. The state append is cheap: PyFlink buffers it in the Python
  worker and ships it with the bundle, which the operator finishes before every checkpoint
  barrier, so a completed checkpoint holds every row the sink received and had not written.
- A key's state can only be cleared while that key is current, so after a batch is written
  the current key's state is cleared at once and each other key's when its own timer fires
  (every key with rows in state has a processing-time timer, due ``flush_ms`` after its
  first row, and an event-time timer at the end of time that fires at the end of a bounded
  input). Until then a written row may sit in state: after a failure it is written again,
  which ReplacingMergeTree collapses by ``version`` and Redis's compare-and-set ignores.
- After recovery, Flink restores the state and the timers. The first time a key is seen
  again (an element or a timer), its restored rows join the batch, and they are written
  within ``flush_ms`` (the restored processing-time timers are already due).

A failing write raises, the task fails, Flink restarts it from the last checkpoint and the
rows come back from state; the ClickHouse sink first retries a server that is down (backoff
up to ``SinkConfig.clickhouse_retry_s``), so a short outage only delays writes.
"""

from __future__ import annotations

import itertools
import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from pyflink.common import Types
from pyflink.datastream import DataStream, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.connectors.base import Sink
from pyflink.datastream.state import ListStateDescriptor

from jobs.config import SinkConfig
from udfs.record import VersionedBar

log = logging.getLogger(__name__)

_DISCARDING_SINK: Final = "org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink"
# Event-time timer of "the end of a bounded input": only the final watermark reaches it.
END_OF_TIME_MS: Final = 2**63 - 1
# Bucket keys per sink subtask (at least MIN_STATE_BUCKETS in all).
BUCKETS_PER_SUBTASK: Final = 4
MIN_STATE_BUCKETS: Final = 8
UNFLUSHED_STATE: Final = "unflushed-rows"


class SinkBuffer:
    """The batch of one sink subtask and what its keys' Flink state holds (no Flink here).

    ``rows`` is the batch not yet written, mixing keys. For each key the state may hold
    rows of three kinds, tracked here so the Flink wrapper knows what to do:

    - ``batch_keys``: keys with rows in ``rows`` (state must not be cleared yet);
    - ``dirty_keys``: keys whose state holds rows, written or not (a timer is pending);
    - ``known_keys``: keys whose state this instance created or read since it started;
      any other key may hold rows restored from a checkpoint and must be adopted first.
    """

    def __init__(
        self, batch_rows: int, flush_ms: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        if flush_ms < 1:
            raise ValueError("flush_ms must be >= 1")
        self.batch_rows = batch_rows
        self.flush_ms = flush_ms
        self._clock = clock
        self.rows: list[Any] = []
        self.batch_keys: set[Any] = set()
        self.dirty_keys: set[Any] = set()
        self.known_keys: set[Any] = set()
        self.last_flush = clock()

    def needs_adoption(self, key: Any) -> bool:
        """Whether ``key``'s state must be read once (it may hold restored rows)."""
        return key not in self.known_keys

    def adopt(self, key: Any, restored: Sequence[Any]) -> None:
        """Take the rows found in ``key``'s state into the batch (after a recovery)."""
        self.known_keys.add(key)
        if restored:
            self.rows.extend(restored)
            self.batch_keys.add(key)
            self.dirty_keys.add(key)

    def add(self, key: Any, row: Any) -> bool:
        """Add a row of ``key``; True when ``key`` was clean (its timers must be registered)."""
        newly_dirty = key not in self.dirty_keys
        self.known_keys.add(key)
        self.rows.append(row)
        self.batch_keys.add(key)
        self.dirty_keys.add(key)
        return newly_dirty

    def should_flush(self) -> bool:
        """The batch is full, or it holds rows and the last flush is ``flush_ms`` old."""
        if len(self.rows) >= self.batch_rows:
            return True
        return bool(self.rows) and (self._clock() - self.last_flush) * 1000 >= self.flush_ms

    def take(self) -> list[Any]:
        """The batch to write now; the buffer starts a new one."""
        batch, self.rows = self.rows, []
        self.batch_keys.clear()
        self.last_flush = self._clock()
        return batch

    def can_clear(self, key: Any) -> bool:
        """Whether ``key``'s state holds only written rows (so it may be cleared)."""
        return key not in self.batch_keys

    def cleared(self, key: Any) -> None:
        """Record that ``key``'s state was cleared."""
        self.dirty_keys.discard(key)


class BatchingSinkFunction(KeyedProcessFunction):
    """Buffers records and hands them to ``write_batch`` by size and by time, at-least-once.

    Subclasses implement ``connect``, ``write_batch`` and ``disconnect``; ``attach_sink``
    puts the function in a job. ``durable=False`` drops the Flink-state copy of unwritten
    rows (a failure then loses them): only for measuring what durability costs.
    """

    def __init__(self, batch_rows: int, flush_ms: int, *, durable: bool = True) -> None:
        self.batch_rows = batch_rows
        self.flush_ms = flush_ms
        self.durable = durable

    @abstractmethod
    def connect(self) -> None:
        """Open the connection and health-check it (called from ``open``)."""

    @abstractmethod
    def write_batch(self, batch: Sequence[Any]) -> int:
        """Write one batch; return the number of rows written. Raise if it cannot."""

    @abstractmethod
    def disconnect(self) -> None:
        """Release the connection (called from ``close``)."""

    def open(self, runtime_context: RuntimeContext) -> None:
        self._buffer = SinkBuffer(self.batch_rows, self.flush_ms)
        self._unflushed = runtime_context.get_list_state(
            ListStateDescriptor(UNFLUSHED_STATE, Types.PICKLED_BYTE_ARRAY())
        )
        metrics = runtime_context.get_metrics_group()
        self.rows_written = metrics.counter("sink_rows_written")
        self.batches_written = metrics.counter("sink_batches_written")
        self.rows_restored = metrics.counter("sink_rows_restored")
        self.restored_rows_total = 0
        self.connect()

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        key = ctx.get_current_key()
        if self.durable:
            self._adopt(key)
            self._unflushed.add(value)
        if self._buffer.add(key, value):
            timers = ctx.timer_service()
            timers.register_processing_time_timer(timers.current_processing_time() + self.flush_ms)
            if self.durable:
                timers.register_event_time_timer(END_OF_TIME_MS)
        if self._buffer.should_flush():
            self._flush()
            self._clear_current(key)
        return iter(())

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        key = ctx.get_current_key()
        if self.durable:
            self._adopt(key)
        if not self._buffer.can_clear(key) or self._buffer.should_flush():
            self._flush()
        self._clear_current(key)
        return iter(())

    def flush(self) -> None:
        """Write everything buffered (the keys' state is cleared as their timers fire)."""
        self._flush()

    def _flush(self) -> None:
        batch = self._buffer.take()
        if not batch:
            return
        written = self.write_batch(batch)
        self.rows_written.inc(written)
        self.batches_written.inc()

    def _adopt(self, key: Any) -> None:
        if self._buffer.needs_adoption(key):
            restored = list(self._unflushed.get() or ())
            self._buffer.adopt(key, restored)
            if restored:
                self.rows_restored.inc(len(restored))
                self.restored_rows_total += len(restored)
                log.info("%s: %d unwritten rows restored from state", type(self).__name__,
                         len(restored))  # fmt: skip

    def _clear_current(self, key: Any) -> None:
        if self._buffer.can_clear(key):
            if self.durable:
                self._unflushed.clear()
            self._buffer.cleared(key)

    def close(self) -> None:
        # Durable sinks leave unwritten rows to state (this may be a failure, and the
        # end of a bounded input already flushed through the end-of-time timers).
        if hasattr(self, "_buffer") and not self.durable:
            self._flush()
        self.disconnect()


class ClickHouseBarSink(BatchingSinkFunction):
    """Upserted bars into ClickHouse ``klines`` (chdb or a server: ``connectors.clickhouse``)."""

    def __init__(self, config: SinkConfig) -> None:
        super().__init__(config.clickhouse_batch_rows, config.clickhouse_flush_ms)
        self.url = config.clickhouse_url
        self.retry_s = config.clickhouse_retry_s

    def connect(self) -> None:
        from connectors.clickhouse import RetryPolicy, open_writer

        # Ride out a server that is down for a while; beyond that the task fails and Flink
        # restarts it from the last checkpoint (the rows wait in state).
        retry = RetryPolicy(attempts=10_000, base_delay_s=0.2, max_delay_s=5.0,
                            deadline_s=self.retry_s)  # fmt: skip
        self.writer = open_writer(self.url, migrate_schema=True, retry=retry)

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
        self.publish = config.redis_publish

    def connect(self) -> None:
        from connectors.redis_store import RedisBarWriter

        self.writer = RedisBarWriter(
            self.url, recent_bars=self.recent_bars, ttl_s=self.ttl_s, publish=self.publish
        )

    def write_batch(self, batch: Sequence[VersionedBar]) -> int:
        self.writer.write_bars(batch)
        return len(batch)

    def disconnect(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()


class RoundRobinBucket:
    """Key selector spreading elements over ``buckets`` string keys in turn.

    Sinks need no per-series order (ClickHouse collapses by version, Redis compares
    versions), only a bounded key set, so each key's state stays small and few timers run.
    """

    def __init__(self, buckets: int) -> None:
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        self.buckets = buckets
        self._counter = itertools.count()

    def __call__(self, _value: Any) -> str:
        return str(next(self._counter) % self.buckets)

    def __getstate__(self) -> dict[str, Any]:
        return {"buckets": self.buckets}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.buckets = int(state["buckets"])
        self._counter = itertools.count()


def state_buckets(parallelism: int) -> int:
    """How many bucket keys a sink of ``parallelism`` subtasks uses."""
    return max(MIN_STATE_BUCKETS, BUCKETS_PER_SUBTASK * max(1, parallelism))


def attach_sink(
    bars: DataStream,
    function: BatchingSinkFunction,
    name: str,
    *,
    parallelism: int | None = None,
) -> None:
    """Run ``function`` on ``bars`` (any element type) and end the branch in a discarding sink.

    The stream is keyed by a bounded set of bucket keys (see the module docstring). chdb
    allows one process per data directory, so its sink must run with parallelism 1.
    """
    attach_sinks(bars, {name: function}, parallelism=parallelism)


def attach_sinks(
    stream: DataStream,
    functions: Mapping[str, BatchingSinkFunction],
    *,
    parallelism: int | None = None,
) -> None:
    """Run each sink function (by operator name) on one bucket-keyed copy of ``stream``.

    The sinks share one key-extracting hop. Every sink runs in the ``sinks`` slot sharing
    group: one Python worker process per sink subtask slot, apart from the compute
    operators, and all chdb sinks of a job in the same process.
    """
    from jobs.pipeline import SINKS_GROUP, key_by_in_group

    sink_parallelism = parallelism or stream.get_execution_environment().get_parallelism()
    keyed = key_by_in_group(stream, RoundRobinBucket(state_buckets(sink_parallelism)), SINKS_GROUP)
    if parallelism is not None:
        keyed._j_data_stream.getTransformation().getInputs().get(0).setParallelism(parallelism)
    for name, function in functions.items():
        writer = (
            keyed.process(function, output_type=Types.PICKLED_BYTE_ARRAY())
            .name(name)
            .uid(name)
            .slot_sharing_group(SINKS_GROUP)
        )
        if parallelism is not None:
            writer = writer.set_parallelism(parallelism)
        end = writer.sink_to(Sink(_DISCARDING_SINK)).name(f"{name}-end").uid(f"{name}-end")
        if parallelism is not None:
            end.set_parallelism(parallelism)
