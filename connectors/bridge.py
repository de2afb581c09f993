"""The ingest bridge runtime: exchange WebSockets -> DESIGN.md records -> Kafka, unattended.

Pieces, from the wire inwards:

- :class:`ShardSupervisor` keeps one logical connection (up to ``max_streams_per_connection``
  symbols) alive forever: reconnects with exponential backoff and full jitter (reset after a
  stable period), a no-data watchdog, application pings, and a *planned* reconnect before the
  exchange's connection-age limit or after a shutdown notice, where the replacement is opened
  and must deliver data before the old connection is closed (both run meanwhile, so nothing
  is missed).
- :class:`SeriesTracker` decides, per series, whether an update is new (produce), a duplicate
  or stale (drop) — so overlapping connections never produce one exchange message twice — and
  keeps the ranges of closed bars that were never produced (gaps).
- :class:`GapRepairer` fetches gaps over REST (rate limited, honouring 429/418 and
  Retry-After) and produces the bars that are still missing.
- :class:`KafkaSink` produces from a dedicated thread with a bounded number of
  unacknowledged records (the event loop awaits when Kafka is slow or down: memory is
  bounded), counts delivery failures and hands lost closed bars back to the repairer.
- :class:`Bridge` wires them, prints counters periodically and on exit.

Duplicates downstream: a REST-repaired bar can duplicate a WebSocket bar only across a bridge
restart (start-up backfill) or a lost delivery acknowledgement; the Flink upsert keeps one bar
per (series, open_time): exact duplicates are dropped and a closed bar is final, so replaying
a closed bar changes nothing.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import enum
import heapq
import logging
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
import orjson
from kafka.errors import KafkaError, KafkaTimeoutError

from connectors.exchanges.base import (
    MINUTE_MS,
    ExchangeAdapter,
    FrameKind,
    RejectedBar,
    RestError,
)
from connectors.redaction import redacted_repr
from connectors.rest_repair import RepairUnavailable, RestKlineClient
from connectors.retry import ReconnectBackoff, TokenBucket
from connectors.symbols import SymbolInfo
from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.record import Kline, encode_kline, quote

log = logging.getLogger(__name__)

# How many samples of malformed frames a connection logs in full before logging 1 in N.
_MALFORMED_SAMPLES_LOGGED: Final[int] = 5
_MALFORMED_LOG_EVERY: Final[int] = 1000
_SAMPLE_CHARS: Final[int] = 300
_LAG_SAMPLES_KEPT: Final[int] = 100_000
_YIELD_EVERY: Final[int] = 64


def wall_ms() -> int:
    """Wall-clock epoch milliseconds (the ingest time)."""
    return time.time_ns() // 1_000_000


class LogSampler:
    """Rate-limits one kind of log line: the first ``burst`` lines, then one per ``every_s``.

    :meth:`allow` says whether to log now and how many lines were suppressed since the last
    one, so a flood of poison input costs a few log lines, not one per message.
    """

    def __init__(
        self, burst: int = 5, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.every_s = every_s
        self.clock = clock
        self.seen = 0
        self.suppressed = 0
        self._last_logged = -math.inf

    def allow(self) -> tuple[bool, int]:
        """``(log_it, suppressed_before)``; counts every call."""
        self.seen += 1
        now = self.clock()
        if self.seen <= self.burst or now - self._last_logged >= self.every_s:
            self._last_logged = now
            suppressed, self.suppressed = self.suppressed, 0
            return True, suppressed
        self.suppressed += 1
        return False, 0


# --------------------------------------------------------------------------------------------
# Per-series bookkeeping: dedupe, ordering, gaps (pure logic, no I/O)
# --------------------------------------------------------------------------------------------


class Verdict(enum.Enum):
    """What the tracker decided about one update."""

    PRODUCE = "produce"
    DUPLICATE = "duplicate"  # same bar, same values as the last produced update
    STALE = "stale"  # older than what was already produced (e.g. the lagging overlap link)


@dataclass(slots=True)
class SeriesState:
    """What the bridge produced last for one series, and the closed bars it still misses.

    ``cursor``: every closed bar with ``open_time <= cursor`` was produced or is in ``gaps``.
    ``gaps``: sorted, disjoint ``[start, end)`` open-time ranges of closed bars not produced.
    """

    open_time: int = -1
    closed: bool = False
    event_time: int = 0
    volume: float = -1.0
    fingerprint: tuple[Any, ...] | None = None
    cursor: int | None = None
    gaps: list[list[int]] = field(default_factory=list)


def _add_range(gaps: list[list[int]], start: int, end: int) -> None:
    """Insert ``[start, end)`` into sorted disjoint ranges, merging overlaps and neighbours."""
    if start >= end:
        return
    index = bisect.bisect_left(gaps, [start, start])
    if index > 0 and gaps[index - 1][1] >= start:
        index -= 1
    while index < len(gaps) and gaps[index][0] <= end:
        start = min(start, gaps[index][0])
        end = max(end, gaps[index][1])
        del gaps[index]
    gaps.insert(index, [start, end])


def _remove_range(gaps: list[list[int]], start: int, end: int) -> int:
    """Remove ``[start, end)`` from the ranges; returns how many milliseconds were removed."""
    removed = 0
    result: list[list[int]] = []
    for gap_start, gap_end in gaps:
        if gap_end <= start or gap_start >= end:
            result.append([gap_start, gap_end])
            continue
        removed += min(gap_end, end) - max(gap_start, start)
        if gap_start < start:
            result.append([gap_start, start])
        if gap_end > end:
            result.append([end, gap_end])
    gaps[:] = result
    return removed


def _in_ranges(gaps: list[list[int]], point: int) -> bool:
    index = bisect.bisect_right(gaps, [point, 2**62]) - 1
    return index >= 0 and gaps[index][0] <= point < gaps[index][1]


class SeriesTracker:
    """Per-series state of the bridge (see :class:`SeriesState`).

    ``startup_backfill_ms``: on the first update of a series, the closed bars of that many
    milliseconds before it become a gap, so a restarted bridge repairs what it missed while
    it was down. ``max_gap_ms`` bounds a series' outstanding gaps (oldest dropped, logged).
    ``event_time_is_ingest``: the exchange has no event time; the tracker keeps the stand-in
    non-decreasing per series (the wall clock may step back) and orders by volume instead.
    """

    def __init__(
        self,
        *,
        startup_backfill_ms: int = 0,
        max_gap_ms: int = 7 * 24 * 60 * MINUTE_MS,
        event_time_is_ingest: bool = False,
    ) -> None:
        self.startup_backfill_ms = startup_backfill_ms
        self.max_gap_ms = max_gap_ms
        self.event_time_is_ingest = event_time_is_ingest
        self.series: dict[str, SeriesState] = {}
        self.gaps_dropped_ms = 0

    def state(self, key: str) -> SeriesState:
        """The state of ``key`` (created empty on first use)."""
        state = self.series.get(key)
        if state is None:
            state = self.series[key] = SeriesState()
        return state

    def accept_live(self, kline: Kline) -> tuple[Verdict, Kline, list[tuple[int, int]]]:
        """Judge one WebSocket update; returns the verdict, the record to produce, new gaps."""
        key = kline.series_key
        state = self.state(key)
        new_gaps: list[tuple[int, int]] = []
        open_time = kline.open_time
        if self.event_time_is_ingest and kline.event_time < state.event_time:
            kline = dataclasses.replace(kline, event_time=state.event_time)

        if open_time < state.open_time:
            # An older bar: only a closed bar that is still missing is worth producing.
            if kline.is_closed and _in_ranges(state.gaps, open_time):
                _remove_range(state.gaps, open_time, open_time + MINUTE_MS)
                return Verdict.PRODUCE, kline, new_gaps
            return Verdict.STALE, kline, new_gaps

        fingerprint = kline.values_fingerprint()
        if open_time == state.open_time:
            if state.closed:
                if not kline.is_closed:
                    return Verdict.STALE, kline, new_gaps
                if fingerprint == state.fingerprint:
                    return Verdict.DUPLICATE, kline, new_gaps
            elif not kline.is_closed:
                if fingerprint == state.fingerprint:
                    return Verdict.DUPLICATE, kline, new_gaps
                if kline.volume < state.volume or (
                    not self.event_time_is_ingest and kline.event_time < state.event_time
                ):
                    return Verdict.STALE, kline, new_gaps
        else:
            # A newer bar: closed bars between the cursor and it were never produced.
            if state.cursor is None:
                state.cursor = open_time - MINUTE_MS
                if self.startup_backfill_ms > 0:
                    new_gaps.append((open_time - self.startup_backfill_ms, open_time))
            elif open_time > state.cursor + MINUTE_MS:
                new_gaps.append((state.cursor + MINUTE_MS, open_time))
                state.cursor = open_time - MINUTE_MS
            for start, end in new_gaps:
                self._add_gap(key, state, start, end)

        state.open_time = open_time
        state.closed = kline.is_closed
        state.event_time = max(state.event_time, kline.event_time)
        state.volume = kline.volume
        state.fingerprint = fingerprint
        if kline.is_closed:
            state.cursor = open_time if state.cursor is None else max(state.cursor, open_time)
            if state.gaps:
                _remove_range(state.gaps, open_time, open_time + MINUTE_MS)
        return Verdict.PRODUCE, kline, new_gaps

    def accept_repaired(self, kline: Kline) -> bool:
        """True when a REST bar fills a gap (it is then no longer a gap); False: not needed."""
        state = self.state(kline.series_key)
        if kline.is_closed and _in_ranges(state.gaps, kline.open_time):
            _remove_range(state.gaps, kline.open_time, kline.open_time + MINUTE_MS)
            return True
        return False

    def add_gap(self, key: str, start: int, end: int) -> None:
        """Record closed bars ``[start, end)`` as missing (e.g. their delivery failed)."""
        self._add_gap(key, self.state(key), start, end)

    def _add_gap(self, key: str, state: SeriesState, start: int, end: int) -> None:
        _add_range(state.gaps, start, end)
        total = sum(gap_end - gap_start for gap_start, gap_end in state.gaps)
        if total > self.max_gap_ms:
            cut_before = state.gaps[-1][1] - self.max_gap_ms
            dropped = _remove_range(state.gaps, state.gaps[0][0], cut_before)
            self.gaps_dropped_ms += dropped
            log.error(
                "event=gap_dropped series=%s bars=%d reason=older than the repair horizon",
                key,
                dropped // MINUTE_MS,
            )

    def gaps(self, key: str) -> list[tuple[int, int]]:
        """A snapshot of the outstanding gaps of ``key``."""
        return [(start, end) for start, end in self.state(key).gaps]

    def finish_repair(self, key: str, start: int, end: int, unconfirmed: list[int]) -> int:
        """After a successful fetch of ``[start, end)``: bars the exchange did not return are
        given up (it has none for those minutes); ``unconfirmed`` bars stay gaps. Returns the
        number of bars given up."""
        state = self.state(key)
        removed = _remove_range(state.gaps, start, end)
        for open_time in unconfirmed:
            if start <= open_time < end:
                _add_range(state.gaps, open_time, open_time + MINUTE_MS)
                removed -= MINUTE_MS
        return max(0, removed // MINUTE_MS)


# --------------------------------------------------------------------------------------------
# Counters
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one logical connection (a shard of symbols), across its reconnects."""

    messages: int = 0
    bar_updates: int = 0
    bars_produced: int = 0
    closed_bars_produced: int = 0
    duplicates_dropped: int = 0
    stale_dropped: int = 0
    malformed: int = 0
    rejected: int = 0
    server_errors: int = 0
    reconnects: int = 0
    planned_reconnects: int = 0
    shutdown_notices: int = 0
    watchdog_timeouts: int = 0
    pings_sent: int = 0
    connection_id: str = ""
    lag_ms: deque[int] = field(default_factory=lambda: deque(maxlen=_LAG_SAMPLES_KEPT))

    def snapshot(self, *, reset_lag: bool) -> dict[str, Any]:
        """The counters as a dict, with lag percentiles of the samples since the last reset."""
        data = {name: getattr(self, name) for name in self.__slots__ if name != "lag_ms"}
        data["lag_ms"] = lag_summary(self.lag_ms)
        if reset_lag:
            self.lag_ms.clear()
        return data


@dataclass(slots=True)
class RepairStats:
    """Counters of gap detection and repair."""

    gaps_detected: int = 0
    bars_missing_detected: int = 0
    bars_repaired: int = 0
    bars_unavailable: int = 0
    repair_failures: int = 0
    rejected: int = 0


def lag_summary(samples: deque[int] | list[int]) -> dict[str, int | None]:
    """p50, p99 and max of lag samples in ms (None without samples)."""
    if not samples:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(samples)
    count = len(ordered)
    return {
        "n": count,
        "p50": ordered[(count - 1) // 2],
        "p99": ordered[min(count - 1, (count * 99) // 100)],
        "max": ordered[-1],
    }


# --------------------------------------------------------------------------------------------
# Kafka sink: bounded, threaded, counted
# --------------------------------------------------------------------------------------------


class RecordSink(Protocol):
    """Where the bridge sends records (Kafka in production; anything in a benchmark)."""

    async def send(self, topic: str, key: bytes, value: bytes, closed_bar: Kline | None) -> None:
        """Queue one record; waits (back-pressure) while too many are unacknowledged."""

    def healthy(self) -> bool:
        """False while deliveries are failing or the queue is full (repairs wait)."""

    def stats(self) -> dict[str, Any]:
        """Counters of the sink."""


@dataclass(slots=True)
class _Outgoing:
    topic: str
    key: bytes
    value: bytes
    closed_bar: Kline | None


_STOP: Final = object()


class KafkaSink:
    """Produces through a ``kafka.KafkaProducer`` (see :mod:`connectors.kafka_producer`).

    ``producer.send`` runs on a dedicated thread because it can block (metadata wait), and
    the event loop must keep answering pings. At most ``max_pending`` records are queued or
    unacknowledged: past that :meth:`send` waits until half are acknowledged, so memory stays
    bounded when Kafka is slow or down (the WebSocket then stops being read; if the exchange
    drops the link, the reconnect's gap repair fetches what was missed). The producer retries
    deliveries itself (idempotent, ``delivery_timeout_ms``); a record that still fails is
    counted, and a *closed* bar is handed to ``on_closed_bar_lost`` so the repairer fetches it
    again. A failed in-progress update is only counted: the next update of the bar supersedes
    it.
    """

    def __init__(
        self,
        producer: Any,
        *,
        max_pending: int = 20_000,
        on_closed_bar_lost: Callable[[Kline], None] | None = None,
    ) -> None:
        if max_pending < 2:
            raise ValueError("max_pending must be at least 2")
        self.producer = producer
        self.max_pending = max_pending
        self.on_closed_bar_lost = on_closed_bar_lost
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._wake_below = 0
        self._space = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.failed = 0
        self.send_errors = 0
        self.closed_bars_lost = 0
        self.backpressure_waits = 0
        self._last_failure_at = 0.0
        self._last_error = ""
        self._closed = False

    def start(self) -> None:
        """Start the sender thread (call from the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="bridge-kafka-sender", daemon=True)
        self._thread.start()

    async def send(self, topic: str, key: bytes, value: bytes, closed_bar: Kline | None) -> None:
        """Queue one record; waits while ``max_pending`` records are unacknowledged."""
        while self._pending >= self.max_pending:
            self.backpressure_waits += 1
            self._space.clear()
            with self._lock:
                self._wake_below = self.max_pending // 2
                full = self._pending >= self.max_pending
            if full:
                await self._space.wait()
        with self._lock:
            self._pending += 1
        self._queue.put(_Outgoing(topic, key, value, closed_bar))

    def healthy(self) -> bool:
        """No delivery failure in the last 10 s and the queue below half full."""
        return (
            time.monotonic() - self._last_failure_at > 10.0
            and self._pending < self.max_pending // 2
        )

    @property
    def pending(self) -> int:
        """Records queued or sent but not acknowledged yet."""
        return self._pending

    def stats(self) -> dict[str, Any]:
        """Delivery counters."""
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "send_errors": self.send_errors,
            "closed_bars_lost_to_repair": self.closed_bars_lost,
            "pending": self._pending,
            "backpressure_waits": self.backpressure_waits,
            "last_error": self._last_error or None,
        }

    async def close(self, timeout_s: float = 30.0) -> bool:
        """Send what is queued, flush the producer and close it. True if nothing was left.

        Idempotent: the bridge closes the sink itself on a fatal error, and the command
        closes it again on its way out.
        """
        if self._closed:
            return self._pending == 0
        self._closed = True
        self._queue.put(_STOP)
        loop = asyncio.get_running_loop()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join, timeout_s)
        try:
            await loop.run_in_executor(None, lambda: self.producer.flush(timeout=timeout_s))
        except KafkaError as exc:
            log.error("event=kafka_flush_failed error=%r pending=%d", exc, self._pending)
        await loop.run_in_executor(None, lambda: self.producer.close(timeout=5))
        return self._pending == 0

    # --- sender thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            while True:
                try:
                    future = self.producer.send(item.topic, key=item.key, value=item.value)
                except KafkaTimeoutError as exc:
                    # No metadata for the topic within max_block_ms: the broker is away. Keep
                    # the record and its order; the bounded queue holds the loop back.
                    self.send_errors += 1
                    self._last_error = repr(exc)[:200]
                    self._last_failure_at = time.monotonic()
                    log.warning("event=kafka_send_blocked error=%r", exc)
                    continue
                except KafkaError as exc:
                    self.send_errors += 1
                    self._on_error(item, exc)
                    break
                future.add_callback(self._on_delivered)
                future.add_errback(self._on_error, item)
                break

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1
            wake = self._wake_below and self._pending < self._wake_below
            if wake:
                self._wake_below = 0
        if wake and self._loop is not None:
            self._loop.call_soon_threadsafe(self._space.set)

    def _on_delivered(self, _metadata: Any) -> None:
        self.delivered += 1
        self._release()

    def _on_error(self, item: _Outgoing, error: BaseException) -> None:
        self.failed += 1
        self._last_failure_at = time.monotonic()
        self._last_error = repr(error)[:200]
        if self.failed <= 10 or self.failed % 1000 == 0:
            log.error("event=kafka_delivery_failed failed=%d error=%r", self.failed, error)
        if item.closed_bar is not None and self.on_closed_bar_lost is not None:
            self.closed_bars_lost += 1
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.on_closed_bar_lost, item.closed_bar)
        self._release()


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Settings of one bridge process (one exchange, one market)."""

    ws_url: str
    rest_url: str
    topic: str
    dlq_topic: str
    stats_interval_s: float = 60.0
    no_data_timeout_s: float = 90.0
    connect_timeout_s: float = 15.0
    # Planned reconnect before the exchange's limit; None: the adapter's own value.
    max_connection_age_s: float | None = None
    # How long a replacement connection may take to deliver data before it is given up.
    overlap_timeout_s: float = 30.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    backoff_stable_s: float = 60.0
    # Override of the adapter's ping timers (tests).
    ping_interval_s: float | None = None
    # Wait before repairing a new gap, so a closed bar still in flight can fill it first.
    repair_delay_s: float = 2.0
    repair_concurrency: int = 2
    startup_backfill_minutes: int = 0
    max_pending: int = 20_000

    def __repr__(self) -> str:
        """The settings; a password or token in the WebSocket or REST URL shows as ``***``."""
        return redacted_repr(self)


# --------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------


class Connection:
    """One WebSocket connection of a shard: subscribe, read, ping, watch, report."""

    def __init__(self, bridge: Bridge, shard: ShardSupervisor, connection_id: str) -> None:
        self.bridge = bridge
        self.shard = shard
        self.connection_id = connection_id
        self.live = asyncio.Event()  # first bar received: the subscriptions work
        self.rotate_requested = asyncio.Event()
        self.close_reason = ""
        self.opened_at = 0.0
        self.last_data_at = 0.0
        self.last_frame_at = 0.0
        self.malformed_seen = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closing = False
        self.task: asyncio.Task[str] | None = None

    def start(self) -> None:
        """Run the connection in a task."""
        self.task = asyncio.create_task(self.run(), name=self.connection_id)

    async def close(self, reason: str) -> None:
        """Close the socket (if open) and wait for the task to end."""
        self._closing = True
        if not self.close_reason:
            self.close_reason = reason
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                await asyncio.wait_for(self._ws.close(), timeout=5.0)
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def run(self) -> str:
        """Connect and read until the link ends; returns why it ended."""
        bridge = self.bridge
        adapter = bridge.adapter
        url = adapter.ws_url(bridge.config.ws_url, self.shard.symbols)
        await bridge.wait_connect_slot()
        try:
            async with asyncio.timeout(bridge.config.connect_timeout_s):
                self._ws = await bridge.session.ws_connect(
                    url, autoping=True, heartbeat=None, max_msg_size=16 * 1024 * 1024
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.close_reason = f"connect failed: {exc!r}"[:300]
            return self.close_reason
        now = time.monotonic()
        self.opened_at = self.last_data_at = self.last_frame_at = now
        self.shard.backoff.on_connected(now)
        log.info(
            "event=connected exchange=%s conn=%s symbols=%d",
            adapter.name,
            self.connection_id,
            len(self.shard.symbols),
        )
        timers = asyncio.create_task(self._timers(), name=f"{self.connection_id}-timers")
        subscriber = asyncio.create_task(self._subscribe(), name=f"{self.connection_id}-sub")
        try:
            await self._read()
        finally:
            for task in (timers, subscriber):
                task.cancel()
            for task in (timers, subscriber):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not self._ws.closed:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    await asyncio.wait_for(self._ws.close(), timeout=5.0)
        if not self.close_reason:
            code = self._ws.close_code
            self.close_reason = f"closed by server (code {code})"
        return self.close_reason

    async def _subscribe(self) -> None:
        assert self._ws is not None
        adapter = self.bridge.adapter
        bucket = TokenBucket(adapter.subscribe_rate_per_s, 1.0)
        for message in adapter.subscribe_messages(self.shard.symbols):
            await bucket.acquire()
            await self._ws.send_str(message)

    async def _read(self) -> None:
        assert self._ws is not None
        ws = self._ws
        handle = self.bridge.handle_frame
        received = 0
        while True:
            message = await ws.receive()
            received += 1
            if received % _YIELD_EVERY == 0:
                # receive() does not suspend while frames are buffered: let the timers, the
                # other connections and the repairer run on a busy link.
                await asyncio.sleep(0)
            kind = message.type
            if kind is aiohttp.WSMsgType.TEXT:
                self.last_frame_at = time.monotonic()
                await handle(self, message.data)
            elif kind is aiohttp.WSMsgType.BINARY:
                self.last_frame_at = time.monotonic()
                try:
                    text = message.data.decode("utf-8")
                except UnicodeDecodeError:
                    self.bridge.on_malformed(self, repr(message.data[:100]), "binary, not UTF-8")
                    continue
                await handle(self, text)
            elif kind is aiohttp.WSMsgType.ERROR:
                if not self.close_reason:
                    self.close_reason = f"websocket error: {ws.exception()!r}"[:300]
                return
            elif kind in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                return

    async def _timers(self) -> None:
        """Watchdog, pings and the planned reconnect of this connection."""
        assert self._ws is not None
        config = self.bridge.config
        adapter = self.bridge.adapter
        ping_interval = config.ping_interval_s or adapter.ping_interval_s
        ping_idle = config.ping_interval_s or adapter.ping_idle_s
        ping_text = adapter.ping_message()
        max_age = config.max_connection_age_s or adapter.max_connection_age_s
        periods = [config.no_data_timeout_s, ping_interval or 1.0, ping_idle or 1.0]
        tick = max(0.02, min(1.0, min(periods) / 4))
        last_ping = time.monotonic()
        stats = self.shard.stats
        while not self._ws.closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - self.last_data_at > config.no_data_timeout_s:
                stats.watchdog_timeouts += 1
                self.close_reason = f"watchdog: no data for {now - self.last_data_at:.1f} s"
                log.warning(
                    "event=watchdog exchange=%s conn=%s silent_s=%.1f",
                    adapter.name,
                    self.connection_id,
                    now - self.last_data_at,
                )
                await self._ws.close()
                return
            if ping_text is not None:
                due = (ping_interval is not None and now - last_ping >= ping_interval) or (
                    ping_interval is None
                    and ping_idle is not None
                    and now - self.last_frame_at >= ping_idle
                    and now - last_ping >= ping_idle
                )
                if due:
                    last_ping = now
                    stats.pings_sent += 1
                    with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
                        await self._ws.send_str(ping_text)
            too_old = max_age is not None and now - self.opened_at >= max_age
            if too_old and not self.rotate_requested.is_set():
                log.info(
                    "event=planned_reconnect exchange=%s conn=%s age_s=%.0f",
                    adapter.name,
                    self.connection_id,
                    now - self.opened_at,
                )
                self.rotate_requested.set()


class ShardSupervisor:
    """Keeps one logical connection for ``symbols`` alive, with overlapping replacements."""

    def __init__(self, bridge: Bridge, index: int, symbols: list[SymbolInfo]) -> None:
        self.bridge = bridge
        self.index = index
        self.symbols = symbols
        self.name = f"{bridge.adapter.name}-{index}"
        self.stats = ConnectionStats()
        self.backoff = ReconnectBackoff(
            base_s=bridge.config.backoff_base_s,
            cap_s=bridge.config.backoff_cap_s,
            stable_after_s=bridge.config.backoff_stable_s,
        )
        self._generation = 0
        self.current: Connection | None = None

    def _new_connection(self) -> Connection:
        self._generation += 1
        connection = Connection(self.bridge, self, f"{self.name}.{self._generation}")
        self.stats.connection_id = connection.connection_id
        connection.start()
        return connection

    async def run(self) -> None:
        """Connect, watch, reconnect and rotate until cancelled."""
        adapter = self.bridge.adapter
        try:
            while True:
                if self.current is None:
                    self.current = self._new_connection()
                current = self.current
                assert current.task is not None
                rotate = asyncio.create_task(current.rotate_requested.wait())
                await asyncio.wait({current.task, rotate}, return_when=asyncio.FIRST_COMPLETED)
                rotate.cancel()
                if current.task.done():
                    reason = current.task.result()
                    self.current = None
                    self.stats.reconnects += 1
                    self.backoff.on_disconnected(time.monotonic())
                    delay = self.backoff.next_delay()
                    log.warning(
                        "event=disconnected exchange=%s conn=%s reason=%r reconnect_in_s=%.2f",
                        adapter.name,
                        current.connection_id,
                        reason,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                await self._rotate(current)
        finally:
            if self.current is not None:
                await self.current.close("bridge stopping")

    async def _rotate(self, old: Connection) -> None:
        """Open a replacement, wait until it delivers data, then close ``old``."""
        adapter = self.bridge.adapter
        successor = self._new_connection()
        assert successor.task is not None and old.task is not None
        live = asyncio.create_task(successor.live.wait())
        await asyncio.wait(
            {live, successor.task},
            timeout=self.bridge.config.overlap_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        live.cancel()
        if successor.live.is_set():
            self.stats.planned_reconnects += 1
            self.current = successor
            log.info(
                "event=rotated exchange=%s old=%s new=%s",
                adapter.name,
                old.connection_id,
                successor.connection_id,
            )
            await old.close("replaced by " + successor.connection_id)
            return
        await successor.close("replacement gave no data in time")
        log.warning(
            "event=rotation_failed exchange=%s conn=%s reason=%r",
            adapter.name,
            successor.connection_id,
            successor.close_reason,
        )
        if old.task.done():
            return  # the supervisor loop sees the finished task and reconnects with backoff
        # Keep the old link; try again after a backoff delay.
        await asyncio.sleep(self.backoff.next_delay())


# --------------------------------------------------------------------------------------------
# Gap repair
# --------------------------------------------------------------------------------------------


class GapRepairer:
    """Fetches the gaps of series over REST and produces the bars still missing."""

    def __init__(self, bridge: Bridge, client: RestKlineClient) -> None:
        self.bridge = bridge
        self.client = client
        self.stats = RepairStats()
        self._due: list[tuple[float, str]] = []
        self._scheduled: set[str] = set()
        self._wakeup = asyncio.Event()
        self._failures: dict[str, int] = {}
        self._failure_log = LogSampler(burst=10, every_s=10.0)

    def notify(self, key: str, delay_s: float | None = None) -> None:
        """Repair ``key``'s gaps after ``delay_s`` (default: the configured repair delay)."""
        if key in self._scheduled:
            return
        delay = self.bridge.config.repair_delay_s if delay_s is None else delay_s
        self._scheduled.add(key)
        heapq.heappush(self._due, (time.monotonic() + delay, key))
        self._wakeup.set()

    @property
    def pending_series(self) -> int:
        """Series waiting for a repair."""
        return len(self._scheduled)

    async def run(self) -> None:
        """Run ``repair_concurrency`` workers until cancelled."""
        workers = [
            asyncio.create_task(self._worker(), name=f"repair-{number}")
            for number in range(max(1, self.bridge.config.repair_concurrency))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    async def _next_key(self) -> str:
        while True:
            now = time.monotonic()
            if self._due and self._due[0][0] <= now and self.bridge.sink.healthy():
                _, key = heapq.heappop(self._due)
                self._scheduled.discard(key)
                return key
            self._wakeup.clear()
            timeout = self._due[0][0] - now if self._due else None
            if self._due and not self.bridge.sink.healthy():
                timeout = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)

    async def _worker(self) -> None:
        while True:
            key = await self._next_key()
            try:
                await self._repair(key)
            except (RepairUnavailable, RestError) as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                self.stats.repair_failures += 1
                delay = random.uniform(0, min(600.0, 2.0 * 2 ** min(failures, 10)))
                log_it, suppressed = self._failure_log.allow()
                if log_it:  # a poison answer of every series must not flood the log
                    log.warning(
                        "event=repair_failed series=%s failures=%d retry_in_s=%.1f error=%s "
                        "suppressed=%d",
                        key,
                        failures,
                        delay,
                        exc,
                        suppressed,
                    )
                self.notify(key, delay)
            else:
                self._failures.pop(key, None)

    async def _repair(self, key: str) -> None:
        bridge = self.bridge
        tracker = bridge.tracker
        info = bridge.symbol_by_key[key]
        for start, end in tracker.gaps(key):
            result = await self.client.fetch_closed(info, start, end)
            produced = 0
            for kline in result.klines:
                if tracker.accept_repaired(kline):
                    await bridge.produce(kline)
                    produced += 1
            for rejected in result.rejected:
                self.stats.rejected += 1
                await bridge.dead_letter(rejected)
            given_up = tracker.finish_repair(key, start, end, result.unconfirmed)
            self.stats.bars_repaired += produced
            self.stats.bars_unavailable += given_up
            log.info(
                "event=gap_repaired series=%s start=%d end=%d bars=%d repaired=%d "
                "unavailable=%d unconfirmed=%d",
                key,
                start,
                end,
                (end - start) // MINUTE_MS,
                produced,
                given_up,
                len(result.unconfirmed),
            )
            if result.unconfirmed:
                self.notify(key, max(5.0, bridge.config.repair_delay_s))


# --------------------------------------------------------------------------------------------
# The bridge
# --------------------------------------------------------------------------------------------


class Bridge:
    """One exchange and market: shards of connections, the tracker, the repairer, the sink."""

    def __init__(
        self,
        adapter: ExchangeAdapter,
        config: BridgeConfig,
        sink: RecordSink,
        session: aiohttp.ClientSession,
        *,
        stats_printer: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.config = config
        self.sink = sink
        self.session = session
        self.tracker = SeriesTracker(
            startup_backfill_ms=config.startup_backfill_minutes * MINUTE_MS,
            event_time_is_ingest=adapter.event_time_is_ingest_time,
        )
        self.symbol_by_key = {
            adapter.series_key_of(info): info for info in adapter.symbols.values()
        }
        self._key_bytes: dict[str, bytes] = {key: key.encode() for key in self.symbol_by_key}
        symbols = list(adapter.symbols.values())
        size = adapter.max_streams_per_connection
        self.shards = [
            ShardSupervisor(self, index, symbols[offset : offset + size])
            for index, offset in enumerate(range(0, len(symbols), size))
        ]
        self.repairer = GapRepairer(self, RestKlineClient(adapter, config.rest_url, session))
        self._connect_bucket = TokenBucket(adapter.connect_rate_per_s, 1.0)
        self.stats_printer = stats_printer or _log_stats
        self.started_at = time.monotonic()
        self.dead_letters = 0
        self._rejection_log = LogSampler()

    # --- hot path --------------------------------------------------------------------------

    async def handle_frame(self, connection: Connection, text: str) -> None:
        """Parse one frame and act on it (produce, count, rotate, log)."""
        stats = connection.shard.stats
        stats.messages += 1
        ingest_time = wall_ms()
        try:
            parsed = self.adapter.parse_frame(text, ingest_time)
        except Exception as exc:  # noqa: BLE001 - counted and logged as malformed, see below
            # parse_frame's contract is "never raises" (every known bad input is handled
            # there); should a new kind still raise, it is one malformed frame, not the end of
            # the bridge process.
            self.on_malformed(connection, text, f"internal: {type(exc).__name__}: {quote(exc)}")
            return
        kind = parsed.kind
        if kind is FrameKind.KLINES:
            connection.last_data_at = connection.last_frame_at
            if not connection.live.is_set():
                connection.live.set()
            track_lag = not self.adapter.event_time_is_ingest_time
            for update in parsed.klines:
                stats.bar_updates += 1
                verdict, kline, gaps = self.tracker.accept_live(update)
                if verdict is Verdict.PRODUCE:
                    await self.produce(kline)
                    stats.bars_produced += 1
                    if kline.is_closed:
                        stats.closed_bars_produced += 1
                    if track_lag:
                        stats.lag_ms.append(ingest_time - kline.event_time)
                elif verdict is Verdict.DUPLICATE:
                    stats.duplicates_dropped += 1
                else:
                    stats.stale_dropped += 1
                if gaps:
                    self._on_gaps(kline.series_key, gaps)
            for rejected in parsed.rejected:
                stats.rejected += 1
                await self.dead_letter(rejected)
        elif kind is FrameKind.SHUTDOWN:
            stats.shutdown_notices += 1
            log.warning(
                "event=shutdown_notice exchange=%s conn=%s detail=%r",
                self.adapter.name,
                connection.connection_id,
                parsed.detail,
            )
            connection.rotate_requested.set()
        elif kind is FrameKind.ERROR:
            stats.server_errors += 1
            log.error(
                "event=server_error exchange=%s conn=%s detail=%r",
                self.adapter.name,
                connection.connection_id,
                parsed.detail,
            )
        elif kind is FrameKind.MALFORMED:
            self.on_malformed(connection, text, parsed.detail)

    def on_malformed(self, connection: Connection, text: str, detail: str) -> None:
        """Count a frame the adapter could not use; log the first few and then 1 in N."""
        connection.shard.stats.malformed += 1
        connection.malformed_seen += 1
        seen = connection.malformed_seen
        if seen <= _MALFORMED_SAMPLES_LOGGED or seen % _MALFORMED_LOG_EVERY == 0:
            log.warning(
                "event=malformed_frame exchange=%s conn=%s count=%d detail=%r sample=%r",
                self.adapter.name,
                connection.connection_id,
                seen,
                detail,
                text[:_SAMPLE_CHARS],
            )

    async def produce(self, kline: Kline) -> None:
        """Send one bar to the klines topic, keyed by its series."""
        key = self._key_bytes.get(kline.series_key) or kline.series_key.encode()
        await self.sink.send(
            self.config.topic,
            key,
            encode_kline(kline),
            kline if kline.is_closed else None,
        )

    async def dead_letter(self, rejected: RejectedBar) -> None:
        """Send a rejected bar to the dead-letter topic with its reason (log sampled)."""
        self.dead_letters += 1
        log_it, suppressed = self._rejection_log.allow()
        if log_it:
            log.warning(
                "event=bar_rejected exchange=%s series=%s reason=%r sample=%r suppressed=%d",
                self.adapter.name,
                rejected.key,
                rejected.reason[:_SAMPLE_CHARS],
                rejected.original[:_SAMPLE_CHARS],
                suppressed,
            )
        letter = DeadLetter(
            reason=rejected.reason,
            stage="bridge",
            original=rejected.original,
            key=rejected.key,
            rejected_at=wall_ms(),
        )
        key = rejected.key.encode() if rejected.key else b""
        await self.sink.send(self.config.dlq_topic, key, encode_dead_letter(letter), None)

    def _on_gaps(self, key: str, gaps: list[tuple[int, int]]) -> None:
        stats = self.repairer.stats
        for start, end in gaps:
            stats.gaps_detected += 1
            stats.bars_missing_detected += (end - start) // MINUTE_MS
            log.info(
                "event=gap_detected series=%s start=%d end=%d bars=%d",
                key,
                start,
                end,
                (end - start) // MINUTE_MS,
            )
        self.repairer.notify(key)

    def on_closed_bar_lost(self, kline: Kline) -> None:
        """A closed bar's delivery failed: make it a gap so the repairer produces it again."""
        key = kline.series_key
        self.tracker.add_gap(key, kline.open_time, kline.open_time + MINUTE_MS)
        self.repairer.notify(key)

    async def wait_connect_slot(self) -> None:
        """Space out new connections (exchanges limit connection attempts per IP)."""
        await self._connect_bucket.acquire()

    # --- lifecycle -------------------------------------------------------------------------

    def stats(self, *, reset_lag: bool = True) -> dict[str, Any]:
        """All counters: per connection, repair, REST, sink, totals."""
        connections = {
            shard.name: shard.stats.snapshot(reset_lag=reset_lag) for shard in self.shards
        }
        totals: dict[str, Any] = {}
        for data in connections.values():
            for name, value in data.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[name] = totals.get(name, 0) + value
        lag: list[int] = []
        for shard in self.shards:
            lag.extend(shard.stats.lag_ms)
        return {
            "exchange": self.adapter.name,
            "market": self.adapter.market,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "totals": totals,
            "connections": connections,
            "repair": {
                **dataclasses.asdict(self.repairer.stats),
                "series_waiting": self.repairer.pending_series,
                "gap_bars_outstanding": sum(
                    sum(end - start for start, end in state.gaps) // MINUTE_MS
                    for state in self.tracker.series.values()
                ),
            },
            "rest": dataclasses.asdict(self.repairer.client.stats),
            "sink": self.sink.stats(),
            "dead_letters": self.dead_letters,
            "lag_note": (
                "no exchange event time: event_time is the ingest time"
                if self.adapter.event_time_is_ingest_time
                else "ingest_time - event_time of live bars since the last report"
            ),
        }

    async def run(self, stop: asyncio.Event) -> dict[str, Any]:
        """Run until ``stop`` is set; returns the final counters."""
        tasks = [asyncio.create_task(shard.run(), name=shard.name) for shard in self.shards]
        tasks.append(asyncio.create_task(self.repairer.run(), name="repairer"))
        tasks.append(asyncio.create_task(self._print_stats_periodically(), name="stats"))
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        except BaseException as exc:
            await self._flush_on_fatal_exit(exc)
            raise
        finally:
            stopper.cancel()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        final = self.stats(reset_lag=False)
        return final

    async def _flush_on_fatal_exit(self, exc: BaseException) -> None:
        """Before a fatal error ends the process: deliver what is queued (nothing lost)."""
        close = getattr(self.sink, "close", None)
        pending = getattr(self.sink, "pending", None)
        log.error(
            "event=fatal_exit error=%s pending=%s (flushing the producer)",
            quote(exc, 300),
            pending,
        )
        if close is not None:
            clean = await close()
            log.error("event=fatal_exit_flushed clean=%s", clean)

    async def _print_stats_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            self.stats_printer(self.stats())


def _log_stats(stats: dict[str, Any]) -> None:
    log.info("event=stats %s", orjson.dumps(stats).decode())
