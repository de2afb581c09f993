"""ClickHouse and Redis sinks as PyFlink operators, at-least-once across failures.

PyFlink has no Python ``SinkFunction``, so each sink is a keyed process function that writes
in batches and emits nothing; ``attach_sink`` ends it in a discarding Java sink and names both.
A sink connects and health-checks in ``open()`` and flushes by size and by time (when the
oldest row of its batch has waited ``flush_ms``: after a quiet spell the first row waits for
company instead of going out alone).

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
  first row and set again for as long as its rows wait in a batch or in a write still
  under way, and an event-time timer at the end of time that fires at the end of a bounded
  input). Until then a written row may sit in state: after a failure it is written again,
  which ReplacingMergeTree collapses by ``version`` and Redis's compare-and-set ignores.
  The store sink writes ClickHouse in a background thread
  (``BatchingSinkFunction(background_writes=True)``): a key whose rows are in that write
  keeps its state until the write has landed, so a checkpoint taken meanwhile holds them.
- After recovery, Flink restores the state and the timers. The first time a key is seen
  again (an element or a timer), its restored rows join the batch, and they are written
  within ``flush_ms`` (the restored processing-time timers are already due), to every store
  the sink writes (``on_restored``): the store that was down may never have had them.

A store that is down (ClickHouse or Redis) is waited for: the write that fails is retried
with capped backoff for up to ``SinkConfig.clickhouse_retry_s`` (60 s by default; the one
budget of both stores), and so is the connection when a (restarted) sink opens. While it
waits the sink takes no more input (with background writes: once its next batch is due,
since one batch at a time is in flight), so the job is backpressured (the Kafka source stops
reading; memory stays bounded by Flink's network buffers and the sink's batches) and a
short outage only delays writes. The outage is logged in one line when it starts ("Redis at
<url> is unreachable (<error>); calls wait and are retried for up to 60 s") and one when the
store answers again, never once per retry (:class:`connectors.retry.Outage`). Beyond the
budget the write raises one line ("... has been unreachable for 60 s (...); giving up"), the
task fails, Flink restarts it from the last checkpoint and the rows come back from state;
the restarted sink's ``open`` waits for the store again, so an outage of ``D`` seconds costs
about ``D / (budget + restart time)`` restarts, not a crash loop. Keep the budget below
``execution.checkpointing.timeout`` (2 min): a checkpoint barrier waits behind a blocked
sink, and an expired checkpoint fails the job as well.

Secrets never travel in the job graph: :class:`StoreSinkFunction` is pickled into it, so it
holds its URLs with the passwords redacted and the path of a secrets file (:class:`SinkSecrets`,
written by the client with mode 0600) that the worker reads when it connects.

A dead worker: PyFlink starts each Python worker through a shell (``pyflink-udf-runner.sh``)
and on a failure or restart stops only that shell, so the worker ends by itself when its
connection to the TaskManager drops. A worker with chdb open could then hang for ever in
chdb's native exit handlers, holding the chdb directory's lock, and every restart of the job
failed to open it. A sink worker therefore ends with ``os._exit`` once Python's own exit work
is done (:func:`skip_native_exit_handlers`), and a new sink waits for the lock of a
predecessor that is still exiting (up to ``clickhouse_retry_s``) instead of failing at once.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import sys
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pyflink.common import Types
from pyflink.datastream import DataStream, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.connectors.base import Sink
from pyflink.datastream.state import ListStateDescriptor

from connectors.background_writer import BackgroundWriter
from connectors.flink_topology import (
    call_at_bundle_end,
    name_key_step,
    pipeline_keyed_state_commits,
    timer_safe_checkpoints,
)
from connectors.private_file import write_private_file
from connectors.redaction import redact_url
from udfs.series import Tag, decode_outputs

log = logging.getLogger(__name__)

_DISCARDING_SINK: Final = "org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink"
# Event-time timer of "the end of a bounded input": only the final watermark reaches it.
END_OF_TIME_MS: Final = 2**63 - 1
# Bucket keys per sink subtask (at least MIN_STATE_BUCKETS in all).
BUCKETS_PER_SUBTASK: Final = 4
MIN_STATE_BUCKETS: Final = 8
UNFLUSHED_STATE: Final = "unflushed-rows"
# Rows with arrays (profiles) go to ClickHouse in smaller inserts.
MAX_ARRAY_ROWS_PER_INSERT: Final = 5000


class SinkBuffer:
    """The batch of one sink subtask and what its keys' Flink state holds (no Flink here).

    ``rows`` is the batch not yet written, mixing keys. For each key the state may hold
    rows of three kinds, tracked here so the Flink wrapper knows what to do:

    - ``batch_keys``: keys with rows in ``rows`` (state must not be cleared yet);
    - ``in_flight_keys``: keys with rows in the batch being written in the background
      (``take(in_flight=True)`` until ``landed``; state must not be cleared yet either);
    - ``dirty_keys``: keys whose state holds rows, written or not (a timer is pending);
    - ``known_keys``: keys whose state this instance created or read since it started;
      any other key may hold rows restored from a checkpoint and must be adopted first.
    """

    def __init__(
        self, batch_rows: int, flush_ms: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        if flush_ms < 0:
            raise ValueError("flush_ms must be >= 0")
        self.batch_rows = batch_rows
        self.flush_ms = flush_ms
        self._clock = clock
        self.rows: list[Any] = []
        self.batch_keys: set[Any] = set()
        self.in_flight_keys: set[Any] = set()
        self.dirty_keys: set[Any] = set()
        self.known_keys: set[Any] = set()
        self.first_row_at = clock()  # when the oldest row of ``rows`` arrived

    def needs_adoption(self, key: Any) -> bool:
        """Whether ``key``'s state must be read once (it may hold restored rows)."""
        return key not in self.known_keys

    def adopt(self, key: Any, restored: Sequence[Any]) -> None:
        """Take the rows found in ``key``'s state into the batch (after a recovery)."""
        self.known_keys.add(key)
        if restored:
            if not self.rows:
                self.first_row_at = self._clock()
            self.rows.extend(restored)
            self.batch_keys.add(key)
            self.dirty_keys.add(key)

    def add(self, key: Any, row: Any) -> bool:
        """Add a row of ``key``; True when ``key`` was clean (its timers must be registered)."""
        newly_dirty = key not in self.dirty_keys
        self.known_keys.add(key)
        if not self.rows:
            self.first_row_at = self._clock()
        self.rows.append(row)
        self.batch_keys.add(key)
        self.dirty_keys.add(key)
        return newly_dirty

    def should_flush(self) -> bool:
        """The batch is full, or its oldest row has waited ``flush_ms``.

        Timed from the oldest row, not the last flush: the first row after a quiet spell
        waits for company instead of going out alone.
        """
        if self.full():
            return True
        return bool(self.rows) and (self._clock() - self.first_row_at) * 1000 >= self.flush_ms

    def wait_left_ms(self) -> int:
        """How long until :meth:`should_flush` holds by time (0: it does, or no rows)."""
        if not self.rows:
            return 0
        return max(0, int(self.flush_ms - (self._clock() - self.first_row_at) * 1000))

    def full(self) -> bool:
        """The batch has ``batch_rows`` rows."""
        return len(self.rows) >= self.batch_rows

    def timer_wait_ms(self, key: Any) -> int:
        """When the flush timer of ``key``, which cannot be cleared yet, should fire again.

        A key with rows in the batch waits for that batch to be due, so the batch goes out
        ``flush_ms`` after its oldest row and not whenever one of the subtask's bucket keys'
        timers happens to fire (with 8 keys, that flushed about 5 times per ``flush_ms``);
        one with rows only in the batch being written looks again ``flush_ms`` later.
        """
        if key in self.batch_keys:
            return max(1, self.wait_left_ms())
        return max(1, self.flush_ms)

    def take(self, *, in_flight: bool = False) -> list[Any]:
        """The batch to write now; the buffer starts a new one. ``in_flight``: it is written
        in the background, so its keys stay uncleared until :meth:`landed`."""
        batch, self.rows = self.rows, []
        if in_flight:
            self.in_flight_keys.update(self.batch_keys)
        self.batch_keys.clear()
        return batch

    def landed(self) -> None:
        """The batch written in the background has been written."""
        self.in_flight_keys.clear()

    def can_clear(self, key: Any) -> bool:
        """Whether ``key``'s state holds only written rows (so it may be cleared)."""
        return key not in self.batch_keys and key not in self.in_flight_keys

    def cleared(self, key: Any) -> None:
        """Record that ``key``'s state was cleared."""
        self.dirty_keys.discard(key)


class BatchingSinkFunction(KeyedProcessFunction):
    """Buffers records and hands them to ``write_batch`` by size and by time, at-least-once.

    Subclasses implement ``connect``, ``write_batch`` and ``disconnect``; ``attach_sink``
    puts the function in a job. ``durable=False`` drops the Flink-state copy of unwritten
    rows (a failure then loses them): only for measuring what durability costs.

    ``background_writes``: ``write_batch`` runs in a thread of its own
    (:class:`connectors.background_writer.BackgroundWriter`), one batch at a time, while the
    function goes on taking input; a batch's keys keep their state until the write has
    landed, so a checkpoint taken meanwhile still holds its rows, and the next batch waits
    for it (a store that is down still backpressures the job, one batch later).
    """

    def __init__(
        self, batch_rows: int, flush_ms: int, *, durable: bool = True,
        pipelined_commits: bool = True, background_writes: bool = False,
    ) -> None:  # fmt: skip
        """``pipelined_commits``: the worker pipelines its keyed-state commits
        (``connectors.flink_topology.pipeline_keyed_state_commits``)."""
        self.batch_rows = batch_rows
        self.flush_ms = flush_ms
        self.durable = durable
        self.pipelined_commits = pipelined_commits
        self.background_writes = background_writes

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
        if self.pipelined_commits:
            pipeline_keyed_state_commits()
        self._buffer = SinkBuffer(self.batch_rows, self.flush_ms)
        # The flush timer of each key with rows in state (timers of other kinds may fire too).
        self._flush_due: dict[Any, int] = {}
        self._unflushed = runtime_context.get_list_state(
            ListStateDescriptor(UNFLUSHED_STATE, Types.PICKLED_BYTE_ARRAY())
        )
        metrics = runtime_context.get_metrics_group()
        self.rows_written = metrics.counter("sink_rows_written")
        self.batches_written = metrics.counter("sink_batches_written")
        self.rows_restored = metrics.counter("sink_rows_restored")
        self.restored_rows_total = 0
        self._writer = (
            BackgroundWriter(self.write_batch, f"{type(self).__name__}-writer")
            if self.background_writes
            else None
        )
        self.connect()

    def rows_of(self, element: Any) -> list[Any]:
        """The rows one stream element carries (the element itself unless overridden)."""
        return [element]

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        self._accept(ctx, value, self.rows_of(value))
        return iter(())

    def _accept(self, ctx: KeyedProcessFunction.Context, element: Any, rows: list[Any]) -> None:
        """Buffer ``rows`` of ``element`` (kept whole in state until written); flush if due."""
        if not rows:
            return
        self._take_landed(wait=False)
        key = ctx.get_current_key()
        if self.durable:
            self._adopt(key)
            self._unflushed.add(element)
        newly_dirty = False
        for row in rows:
            newly_dirty = self._buffer.add(key, row) or newly_dirty
        if newly_dirty:
            timers = ctx.timer_service()
            due = timers.current_processing_time() + self.flush_ms
            timers.register_processing_time_timer(due)
            self._flush_due[key] = due
            if self.durable:
                timers.register_event_time_timer(END_OF_TIME_MS)
        if self._buffer.should_flush():
            self._flush()
            self._clear_current(key)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        key = ctx.get_current_key()
        due = self._flush_due.get(key)
        if due is not None and timestamp not in (due, END_OF_TIME_MS):
            return iter(())  # a subclass's timer on this key, not this key's flush timer
        if self.durable:
            self._adopt(key)
        if timestamp == END_OF_TIME_MS:  # the end of a bounded input: write everything
            self.flush()
        else:
            self._take_landed(wait=False)
            if self._buffer.should_flush():
                self._flush()
        self._clear_current(key)
        if key in self._buffer.dirty_keys:
            # Its rows are in the batch (not due yet) or being written: every dirty key
            # keeps a pending timer, so its state is cleared once they are written.
            timers = ctx.timer_service()
            due = timers.current_processing_time() + self._buffer.timer_wait_ms(key)
            timers.register_processing_time_timer(due)
            self._flush_due[key] = due
        return iter(())

    def flush(self) -> None:
        """Write everything buffered and wait until it is written (the keys' state is
        cleared as their timers fire)."""
        self._flush()
        self._take_landed(wait=True)

    def _flush(self) -> None:
        if self._writer is not None:
            self._take_landed(wait=True)  # one batch in flight at a time
            batch = self._buffer.take(in_flight=True)
            if batch:
                self._writer.submit(batch)
            return
        batch = self._buffer.take()
        if not batch:
            return
        self._count_written(self.write_batch(batch))

    def _take_landed(self, *, wait: bool) -> None:
        """Take the outcome of the background write, if it has ended (``wait``: wait for
        it); raises what the write raised."""
        if self._writer is None or not self._writer.busy:
            return
        written = self._writer.landed(wait=wait)
        if written is not None:
            self._buffer.landed()
            self._count_written(written)

    def _count_written(self, written: int) -> None:
        self.rows_written.inc(written)
        self.batches_written.inc()

    def _adopt(self, key: Any) -> None:
        if self._buffer.needs_adoption(key):
            restored = [
                row for element in self._unflushed.get() or () for row in self.rows_of(element)
            ]
            self._buffer.adopt(key, restored)
            if restored:
                self.on_restored(restored)
                self.rows_restored.inc(len(restored))
                self.restored_rows_total += len(restored)
                log.info("%s: %d unwritten rows restored from state", type(self).__name__,
                         len(restored))  # fmt: skip

    def on_restored(self, rows: list[Any]) -> None:
        """Called with the unwritten rows of a key restored from state (after a failure),
        before they join the batch; a sink that writes elsewhere too hooks in here."""

    def _clear_current(self, key: Any) -> None:
        if self._buffer.can_clear(key):
            if self.durable:
                self._unflushed.clear()
            self._buffer.cleared(key)
            self._flush_due.pop(key, None)

    def close(self) -> None:
        # Durable sinks leave unwritten rows to state (this may be a failure, and the
        # end of a bounded input already flushed through the end-of-time timers).
        if hasattr(self, "_buffer") and not self.durable:
            self.flush()
        writer = getattr(self, "_writer", None)
        if writer is not None:
            # A write in flight ends before the connection closes; a durable sink's rows
            # are in state whether it succeeded or not, so its outcome is not needed.
            writer.close()
        self.disconnect()


# How often a sink polls for a chdb directory still locked by its predecessor's worker.
CHDB_LOCK_POLL_S: Final = 0.5
_exit_hook: list[bool] = []  # [True] once installed in this process


def skip_native_exit_handlers() -> None:
    """End this process with ``os._exit`` at interpreter exit, after Python's exit work.

    For the Python worker of a sink that has chdb open (see the module docstring): libc's exit
    handlers include chdb's C++ destructors, which can deadlock when the worker ends after
    losing the TaskManager, leaving a process nobody kills that holds the chdb lock. The exit
    code is 1 when an uncaught exception ended the interpreter, else 0. Idempotent.
    """
    if _exit_hook:
        return
    _exit_hook.append(True)
    failed: list[bool] = []
    previous_hook = sys.excepthook

    def note_failure(*exc_info: Any) -> None:
        failed.append(True)
        previous_hook(*exc_info)

    def end_process() -> None:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(1 if failed else 0)

    sys.excepthook = note_failure
    atexit.register(end_process)


@dataclass(frozen=True, slots=True)
class SinkSecrets:
    """The sinks' URLs in full, kept out of the job graph: written to a file by the client,
    read by the workers. The pickled :class:`StoreSinkFunction` holds only the redacted URLs
    and the file's path."""

    clickhouse_url: str
    redis_url: str

    def __repr__(self) -> str:
        return (
            f"SinkSecrets(clickhouse_url={redact_url(self.clickhouse_url)!r}, "
            f"redis_url={redact_url(self.redis_url)!r})"
        )

    @property
    def needed(self) -> bool:
        """Whether either URL holds a secret (else the redacted URLs are the URLs)."""
        return any(redact_url(url) != url for url in (self.clickhouse_url, self.redis_url))

    def write(self, path: Path) -> Path:
        """Write the file (mode 0600, replaced atomically); returns ``path``."""
        content = {"clickhouse_url": self.clickhouse_url, "redis_url": self.redis_url}
        return write_private_file(path, json.dumps(content))

    @classmethod
    def read(cls, path: str | Path) -> SinkSecrets:
        """Read a file written by :meth:`write`; ValueError if it is not one."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(clickhouse_url=str(data["clickhouse_url"]), redis_url=str(data["redis_url"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read the sink secrets file {path}: {exc}") from None


def _open_history_writer(url: str, retry: Any, wait_s: float) -> Any:
    """``open_writer(url)``; a chdb directory locked by another process (the worker of this
    sink's previous attempt, still exiting) is polled for up to ``wait_s`` seconds."""
    from connectors.clickhouse import ClickHouseUnavailable, open_writer

    deadline = time.monotonic() + wait_s
    warned = False
    while True:
        try:
            return open_writer(url, migrate_schema=True, retry=retry)
        except ClickHouseUnavailable as exc:
            locked = url.startswith("chdb:") and "in use by another process" in str(exc)
            if not locked or time.monotonic() >= deadline:
                raise
            if not warned:
                log.warning("%s; waiting up to %.0f s for it to be released", exc, wait_s)
                warned = True
        time.sleep(CHDB_LOCK_POLL_S)


class StoreSinkFunction(BatchingSinkFunction):
    """The series operator's outputs into ClickHouse and Redis; dead letters pass through.

    Takes the series operator's elements (``udfs.series.encode_outputs``: the
    ``(Tag, payload)`` records of one input each): bars into ``klines`` and
    ``kline:``/``klines:``, profiles into ``volume_profile`` and ``vp:``, indicators into
    ``indicators`` and ``ind:``, signals into ``signals`` and ``signal:``. Encoded dead
    letters are yielded unchanged, for the Kafka dead-letter sink that follows.

    Two cadences: Redis (live state) is written at the end of every bundle (or, with
    ``redis_flush_ms`` > 0, once its oldest row has waited that long) or every
    ``redis_batch_rows`` rows, ClickHouse (history) every ``clickhouse_flush_ms`` or
    ``clickhouse_batch_rows`` rows, so live readers are not held back by large history
    batches. Durability follows the ClickHouse batch (see the module docstring): a row stays
    in Flink state until ClickHouse has it, and Redis is always written first, so after a
    failure the restored rows are written to both again (both writes are idempotent).

    ``clickhouse_url`` and ``redis_url`` are what the job graph carries: with
    ``secrets_file`` they are the redacted forms and the worker reads the real URLs from that
    file (see :func:`store_sink_function`, which builds it so).
    """

    def __init__(
        self,
        *,
        clickhouse_url: str,
        redis_url: str,
        clickhouse_batch_rows: int,
        clickhouse_flush_ms: int,
        clickhouse_retry_s: float,
        redis_batch_rows: int,
        redis_flush_ms: int,
        redis_recent_bars: int,
        redis_ttl_s: int | None,
        redis_publish: bool,
        secrets_file: str | None = None,
        pipelined_commits: bool = True,
    ) -> None:
        super().__init__(
            clickhouse_batch_rows, clickhouse_flush_ms, pipelined_commits=pipelined_commits,
            background_writes=True,
        )  # fmt: skip
        self.clickhouse_url = clickhouse_url
        self.redis_url = redis_url
        self.secrets_file = secrets_file
        self.retry_s = clickhouse_retry_s
        self.redis_batch_rows = redis_batch_rows
        self.redis_flush_ms = redis_flush_ms
        self.recent_bars = redis_recent_bars
        self.ttl_s = redis_ttl_s
        self.publish = redis_publish

    def urls(self) -> SinkSecrets:
        """The URLs to connect to: from the secrets file if there is one (on the worker)."""
        if self.secrets_file is None:
            return SinkSecrets(self.clickhouse_url, self.redis_url)
        secrets = SinkSecrets.read(self.secrets_file)
        shown = (redact_url(secrets.clickhouse_url), redact_url(secrets.redis_url))
        if shown != (self.clickhouse_url, self.redis_url):
            raise ValueError(
                f"the sink secrets file {self.secrets_file} is for other URLs "
                f"({shown[0]}, {shown[1]}) than this job's ({self.clickhouse_url}, "
                f"{self.redis_url})"
            )
        return secrets

    def connect(self) -> None:
        from connectors.redis_store import RedisBarWriter
        from connectors.retry import RetryPolicy

        urls = self.urls()
        if urls.clickhouse_url.startswith("chdb:"):
            skip_native_exit_handlers()
        # Ride out a store that is down for a while (at the start too: a restarted sink waits
        # for it rather than failing again at once); beyond that the task fails and Flink
        # restarts it from the last checkpoint (the rows wait in state).
        retry = RetryPolicy(attempts=1_000_000, base_delay_s=0.2, max_delay_s=5.0,
                            deadline_s=self.retry_s)  # fmt: skip
        self.clickhouse = _open_history_writer(urls.clickhouse_url, retry, self.retry_s)
        try:
            self.redis = RedisBarWriter(urls.redis_url, recent_bars=self.recent_bars,
                                        ttl_s=self.ttl_s, publish=self.publish,
                                        retry_s=self.retry_s,
                                        connect_wait_s=self.retry_s)  # fmt: skip
        except BaseException:
            self.clickhouse.close()
            raise
        self._live = SinkBuffer(self.redis_batch_rows, self.redis_flush_ms)
        self._live_timer_due = 0

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        call_at_bundle_end(runtime_context, self._end_bundle)

    def _end_bundle(self) -> None:
        # With redis_flush_ms 0 (the default) the Redis batch is due as soon as it has a
        # row: each bundle's rows go out together at its end, with no timer.
        if self._live.should_flush():
            self._flush_live()

    def rows_of(self, element: bytes) -> list[Any]:
        return [record for record in decode_outputs(element) if record[0] != Tag.DEAD_LETTER]

    def process_element(self, value: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        rows = []
        for record in decode_outputs(value):
            if record[0] == Tag.DEAD_LETTER:
                yield record[1]
            else:
                rows.append(record)
        if not rows:
            return
        for row in rows:
            self._live.add(None, row)
        if self._live.full() or (self.redis_flush_ms and self._live.should_flush()):
            self._flush_live()
        self._accept(ctx, value, rows)
        self._arm_live_timer(ctx.timer_service())

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        if self._live.should_flush():
            self._flush_live()
        yield from super().on_timer(timestamp, ctx)
        self._arm_live_timer(ctx.timer_service())

    def _arm_live_timer(self, timers: Any) -> None:
        """Keep one processing-time timer pending while Redis rows wait (on any key: the
        Redis batch mixes keys); none with ``redis_flush_ms`` 0 (bundle ends write it)."""
        if not self._live.rows or not self.redis_flush_ms:
            return
        now = timers.current_processing_time()
        if self._live_timer_due > now:
            return
        self._live_timer_due = now + max(1, self._live.wait_left_ms())
        timers.register_processing_time_timer(self._live_timer_due)

    def on_restored(self, rows: list[Any]) -> None:
        # Redis may never have had them (it may have been the store that was down).
        for row in rows:
            self._live.add(None, row)

    def _flush(self) -> None:
        self._flush_live()
        super()._flush()

    def _flush_live(self) -> None:
        batch = self._live.take()
        if batch:
            write_live_state(self.redis, batch)

    def write_batch(self, batch: Sequence[Any]) -> int:
        return write_history(self.clickhouse, batch)

    def disconnect(self) -> None:
        for name in ("clickhouse", "redis"):
            writer = getattr(self, name, None)
            if writer is not None:
                writer.close()


def _by_tag(batch: Sequence[Any]) -> dict[int, list[Any]]:
    grouped: dict[int, list[Any]] = {}
    for tag, payload in batch:
        grouped.setdefault(tag, []).append(payload)
    return grouped


def write_live_state(redis_writer: Any, batch: Sequence[Any]) -> None:
    """Tagged records into Redis: the newest of each key, compare-and-set (never older)."""
    from connectors.redis_store import CasItem
    from udfs.analytics import newest_per_bar, newest_per_window

    grouped = _by_tag(batch)
    if Tag.BAR in grouped:
        redis_writer.write_bars(grouped[Tag.BAR])
    for tag, kind, newest, time_of in (
        (Tag.PROFILE, "vp", newest_per_window, lambda r: r.window_start),
        (Tag.INDICATOR, "ind", newest_per_bar, lambda r: r.open_time),
        (Tag.SIGNAL, "signal", list, lambda r: r.open_time),
    ):
        if tag in grouped:
            redis_writer.write_hashes(
                kind,
                [CasItem(r.exchange, r.symbol, r.timeframe, time_of(r), r.version,
                         r.hash_fields()) for r in newest(grouped[tag])],
            )  # fmt: skip


def write_history(clickhouse_writer: Any, batch: Sequence[Any]) -> int:
    """Tagged records into their ClickHouse tables; returns the rows written."""
    from udfs.analytics import newest_per_bar, newest_per_window

    grouped = _by_tag(batch)
    written = 0
    if Tag.BAR in grouped:
        written += clickhouse_writer.insert_bars(grouped[Tag.BAR])
    for tag, table, newest in (
        (Tag.PROFILE, "volume_profile", newest_per_window),
        (Tag.INDICATOR, "indicators", newest_per_bar),
        (Tag.SIGNAL, "signals", list),
    ):
        if tag in grouped:
            rows = [record.row() for record in newest(grouped[tag])]
            for start in range(0, len(rows), MAX_ARRAY_ROWS_PER_INSERT):
                written += clickhouse_writer.insert_rows(
                    table, rows[start : start + MAX_ARRAY_ROWS_PER_INSERT]
                )
    return written


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
    records: DataStream,
    function: BatchingSinkFunction,
    name: str,
    *,
    parallelism: int | None = None,
    group: str | None = None,
    producer_group: str | None = None,
) -> DataStream:
    """Run ``function`` on ``records``; returns what it emits (the store sink: dead letters).

    The stream is keyed by a bounded set of bucket keys (see the module docstring). The
    key-extracting step stays with the producer of ``records`` (same parallelism and slot
    group), so PyFlink chains it into that operator instead of running another hop. chdb
    allows one process per data directory, so a chdb sink must run with parallelism 1.
    The writer runs in slot sharing group ``group`` (its own Python worker process); give
    the producer's group as ``producer_group`` (PyFlink chains only within one group).
    """
    sink_parallelism = parallelism or records.get_execution_environment().get_parallelism()
    keyed = records.key_by(RoundRobinBucket(state_buckets(sink_parallelism)),
                           key_type=Types.STRING())  # fmt: skip
    name_key_step(keyed, f"{name}-key", group=producer_group)
    writer = keyed.process(function, output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()))
    # Rows restored from a checkpoint rely on their keys' timers being in it too.
    writer = timer_safe_checkpoints(writer).name(name).uid(name)
    if group is not None:
        writer = writer.slot_sharing_group(group)
    if parallelism is not None:
        writer = writer.set_parallelism(parallelism)
    return writer


def discard(stream: DataStream, name: str) -> None:
    """End ``stream`` in Flink's discarding sink (a branch that only has side effects)."""
    stream.sink_to(Sink(_DISCARDING_SINK)).name(name).uid(name)
