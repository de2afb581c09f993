"""The bridge's Kafka sink: produces from a dedicated thread with a bounded number of
unacknowledged records, re-sends what a broken producer left unacknowledged through a new one,
and hands closed bars whose delivery failed for good back to the repairer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumberError,
    ProducerFencedError,
    RetriableError,
    UnknownProducerIdError,
)

from connectors.kafka_producer import close_producer, replacement_producer
from udfs.record import Kline

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    """Where the bridge sends records (Kafka in production; anything in a benchmark)."""

    async def send(self, topic: str, key: bytes, value: bytes, closed_bar: Kline | None) -> None:
        """Queue one record; waits (back-pressure) while too many are unacknowledged."""

    def healthy(self) -> bool:
        """False while deliveries are failing or the queue is full (repairs wait)."""

    def stats(self) -> dict[str, Any]:
        """Counters of the sink."""


# Delivery errors that say nothing against the record itself: the producer expired it (the
# broker was away longer than ``delivery_timeout_ms``; KafkaTimeoutError is retriable) or lost
# its idempotence state. Such a record is sent again through a new producer; any other error
# (record too large, topic not authorised, ...) fails it for good.
_TRANSIENT_ERRORS: Final = (
    RetriableError,
    OutOfOrderSequenceNumberError,
    UnknownProducerIdError,
    InvalidProducerEpochError,
    ProducerFencedError,
)
# How often the sender thread looks for a stalled producer.
_WATCH_INTERVAL_S: Final = 1.0
# A producer reports every record within delivery_timeout_ms of send() (KIP-91); one that has
# not answered for this much longer than that is stuck.
_STALL_GRACE_S: Final = 30.0
# Wait between attempts to create a replacement producer.
_REPLACE_RETRY_S: Final = 1.0
# Part of close()'s budget kept for the producer's flush and close after the sender thread.
_CLOSE_RESERVE_S: Final = 5.0


def is_transient_delivery_error(error: BaseException) -> bool:
    """Whether a failed delivery is the producer's or the broker's doing, not the record's
    (the sink then sends the record again through a new producer)."""
    return isinstance(error, _TRANSIENT_ERRORS)


@dataclass(slots=True)
class _Outgoing:
    seq: int  # the order send() was called in; re-sends keep it
    topic: str
    key: bytes
    value: bytes
    closed_bar: Kline | None
    sent_at: float = 0.0  # when the current producer took it (monotonic)


_STOP: Final = object()
_WAKE: Final = object()


class KafkaSink:
    """Produces through a ``kafka.KafkaProducer`` (see :mod:`connectors.kafka_producer`).

    ``producer.send`` runs on a dedicated thread because it can block (metadata wait), and
    the event loop must keep answering pings. At most ``max_pending`` records are queued or
    unacknowledged: past that :meth:`send` waits until half are acknowledged, so memory stays
    bounded when Kafka is slow or down (the WebSocket then stops being read; if the exchange
    drops the link, the reconnect's gap repair fetches what was missed).

    The producer retries deliveries itself (idempotent, ``delivery_timeout_ms``). A record it
    gives up on for a transient reason (:func:`is_transient_delivery_error`: typically the
    broker was down longer than ``delivery_timeout_ms``) is not lost: the sink replaces the
    producer and sends every record the old one had not acknowledged again through the new
    one, in the original order (at-least-once: a record whose acknowledgement was lost is
    written twice, identically; the job's upsert keeps one). The same happens when the
    producer answers nothing for ``stall_timeout_s`` (default ``delivery_timeout_ms`` + 30 s)
    although records are outstanding. Both matter with kafka-python 3.0.12: once a batch it
    had already sent expires, its idempotent producer resets its producer id and never asks
    for a new one (``TransactionManager.reset_producer_id`` leaves the state READY and
    ``init_producer_id`` only acts in UNINITIALIZED), so it sends nothing ever again.

    A record that fails for good is counted, and a *closed* bar is handed to
    ``on_closed_bar_lost`` so the repairer fetches it again; a failed in-progress update is
    only counted (the next update of the bar supersedes it).

    ``producer_factory(old)`` makes the replacement (default:
    :func:`~connectors.kafka_producer.replacement_producer`, the same settings).
    """

    def __init__(
        self,
        producer: Any,
        *,
        max_pending: int = 20_000,
        on_closed_bar_lost: Callable[[Kline], None] | None = None,
        producer_factory: Callable[[Any], Any] | None = None,
        stall_timeout_s: float | None = None,
        watch_interval_s: float = _WATCH_INTERVAL_S,
    ) -> None:
        if max_pending < 2:
            raise ValueError("max_pending must be at least 2")
        self.producer = producer
        self.max_pending = max_pending
        self.on_closed_bar_lost = on_closed_bar_lost
        self._producer_factory = producer_factory or replacement_producer
        if stall_timeout_s is None:
            config = getattr(producer, "config", None)
            delivery_ms = config.get("delivery_timeout_ms", 120_000) if config else 120_000
            stall_timeout_s = delivery_ms / 1000 + _STALL_GRACE_S
        self.stall_timeout_s = stall_timeout_s
        self._watch_interval_s = watch_interval_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._next_seq = 0
        self._wake_below = 0
        self._space = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Records the current producer took and has not answered yet, in send order (seq ->
        # record). The sender thread adds; the producer's callbacks remove.
        self._unacked: dict[int, _Outgoing] = {}
        # Records to send again before anything queued (sender thread only), by seq.
        self._resend: collections.deque[_Outgoing] = collections.deque()
        # Bumped when a producer is replaced (or abandoned at close): a callback bound to an
        # older generation is a late answer about a record that is handled elsewhere.
        self._generation = 0
        self._replace_reason: str | None = None
        self._abandoned = False
        self._fatal: BaseException | None = None
        self.delivered = 0
        self.failed = 0
        self.send_errors = 0
        self.closed_bars_lost = 0
        self.backpressure_waits = 0
        self.expired = 0
        self.resent = 0
        self.producer_replacements = 0
        self._last_failure_at = 0.0
        self._last_error = ""
        self._closed = False

    def start(self) -> None:
        """Start the sender thread (call from the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="bridge-kafka-sender", daemon=True)
        self._thread.start()

    async def send(self, topic: str, key: bytes, value: bytes, closed_bar: Kline | None) -> None:
        """Queue one record; waits while ``max_pending`` records are unacknowledged.

        Raises RuntimeError if the sender thread has died (the bridge must not go on as if
        records were produced).
        """
        self._raise_if_sender_died()
        while self._pending >= self.max_pending:
            self.backpressure_waits += 1
            self._space.clear()
            with self._lock:
                self._wake_below = self.max_pending // 2
                full = self._pending >= self.max_pending
            if full:
                await self._space.wait()
            self._raise_if_sender_died()
        with self._lock:
            self._pending += 1
            seq = self._next_seq
            self._next_seq += 1
        self._queue.put(_Outgoing(seq, topic, key, value, closed_bar))

    def healthy(self) -> bool:
        """No delivery failure in the last 10 s, nothing waiting to be re-sent, and the queue
        below half full."""
        return (
            time.monotonic() - self._last_failure_at > 10.0
            and self._replace_reason is None
            and not self._resend
            and self._pending < self.max_pending // 2
        )

    @property
    def pending(self) -> int:
        """Records queued, being re-sent, or sent but not acknowledged yet."""
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
            "expired_and_resent": self.expired,
            "resent": self.resent,
            "producer_replacements": self.producer_replacements,
            "last_error": self._last_error or None,
        }

    async def close(self, timeout_s: float = 30.0) -> bool:
        """Send what is queued, flush the producer and close it, all within about
        ``timeout_s``. True if nothing was left.

        Records still unsent or unacknowledged when the time is up (the broker is down) stay
        counted in :attr:`pending` and are logged: the producer is force-closed and the
        process can end. Idempotent: the bridge closes the sink itself on a fatal error, and
        the command closes it again on its way out.
        """
        if self._closed:
            return self._pending == 0
        self._closed = True
        deadline = time.monotonic() + timeout_s
        self._queue.put(_STOP)
        loop = asyncio.get_running_loop()
        thread = self._thread
        if thread is not None:
            join_s = max(0.0, timeout_s - min(_CLOSE_RESERVE_S, timeout_s / 4))
            await loop.run_in_executor(None, thread.join, join_s)
            if thread.is_alive():
                # Blocked in producer.send (no metadata: the broker is away). It sends
                # nothing more; what it holds stays pending.
                self._abandoned = True
                log.error("event=kafka_sender_abandoned pending=%d", self._pending)
        remaining = max(0.0, deadline - time.monotonic())
        producer = self.producer
        await loop.run_in_executor(
            None,
            lambda: close_producer(producer, remaining, before_force_close=self._abandon_answers),
        )
        if self._pending:
            log.error(
                "event=kafka_unflushed records=%d unacknowledged=%d to_resend=%d",
                self._pending,
                len(self._unacked),
                len(self._resend),
            )
        return self._pending == 0

    # --- sender thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            # Not hidden: logged here, and send() raises it in the event loop, which ends the
            # bridge after a flush (a bridge that silently stopped producing would be worse).
            log.exception("event=kafka_sender_died error=%r", exc)
            self._fatal = exc
            self._call_in_loop(self._space.set)

    def _serve(self) -> None:
        stopping = False
        next_watch = time.monotonic() + self._watch_interval_s
        while not self._abandoned:
            now = time.monotonic()
            if now >= next_watch:
                self._check_stalled(now)
                next_watch = now + self._watch_interval_s
            if self._replace_reason is not None:
                self._replace_producer()
                continue
            if self._resend:
                self._send_one(self._resend.popleft())
                continue
            if stopping:
                return
            try:
                item = self._queue.get(timeout=self._watch_interval_s)
            except queue.Empty:
                continue
            if item is _STOP:
                stopping = True  # after what is left to re-send
            elif item is not _WAKE:
                self._send_one(item)

    def _send_one(self, item: _Outgoing) -> None:
        while not self._abandoned:
            producer = self.producer
            try:
                future = producer.send(item.topic, key=item.key, value=item.value)
            except KafkaTimeoutError as exc:
                # No metadata for the topic within max_block_ms: the broker is away. Keep
                # the record and its order; the bounded queue holds the loop back.
                self.send_errors += 1
                self._last_error = repr(exc)[:200]
                self._last_failure_at = time.monotonic()
                log.warning("event=kafka_send_blocked error=%r", exc)
                self._check_stalled(time.monotonic())
                if self._replace_reason is not None:
                    self._resend.appendleft(item)  # first the replacement, then this again
                    return
                continue
            except KafkaError as exc:
                self.send_errors += 1
                with self._lock:
                    self._record_failure(exc)
                self._fail(item, exc)
                return
            item.sent_at = time.monotonic()
            with self._lock:
                generation = self._generation
                self._unacked[item.seq] = item
            future.add_callback(self._on_delivered, item, generation)
            future.add_errback(self._on_error, item, generation)
            return

    def _check_stalled(self, now: float) -> None:
        with self._lock:
            oldest = next(iter(self._unacked.values()), None)
            if oldest is None or self._replace_reason is not None:
                return
            silent_s = now - oldest.sent_at
            if silent_s < self.stall_timeout_s:
                return
            self._replace_reason = f"no answer for {silent_s:.0f} s"

    def _replace_producer(self) -> None:
        """Swap the producer for a new one and queue what the old one left for a re-send."""
        with self._lock:
            reason = self._replace_reason
            self._replace_reason = None
            self._generation += 1  # from here on the old producer's answers are ignored
            stranded = list(self._unacked.values())
            self._unacked.clear()
            old = self.producer
        self.resent += len(stranded)
        if stranded:
            merged = sorted([*stranded, *self._resend], key=lambda outgoing: outgoing.seq)
            self._resend = collections.deque(merged)
        log.warning(
            "event=kafka_producer_replace reason=%r resend=%d replacements=%d",
            reason,
            len(self._resend),
            self.producer_replacements + 1,
        )
        new = self._new_producer(old)
        if new is None:
            return
        with self._lock:
            self.producer = new
            self.producer_replacements += 1
        # Force: what it holds is in _resend, and its late answers are ignored.
        close_producer(old, 0.0)

    def _new_producer(self, old: Any) -> Any | None:
        attempt = 0
        while not self._abandoned:
            attempt += 1
            try:
                return self._producer_factory(old)
            except KafkaError as exc:
                self._last_error = repr(exc)[:200]
                log.warning("event=kafka_producer_create_failed attempt=%d error=%r", attempt, exc)
                time.sleep(_REPLACE_RETRY_S)
        return None

    # --- producer callbacks (its I/O thread) -----------------------------------------------

    def _on_delivered(self, item: _Outgoing, generation: int, _metadata: Any) -> None:
        with self._lock:
            if generation != self._generation or self._unacked.pop(item.seq, None) is None:
                return  # a replaced producer's late answer: the record was sent again
            self.delivered += 1
            wake = self._release_locked()
        if wake:
            self._call_in_loop(self._space.set)

    def _on_error(self, item: _Outgoing, generation: int, error: BaseException) -> None:
        transient = is_transient_delivery_error(error)
        first = False
        with self._lock:
            if generation != self._generation or item.seq not in self._unacked:
                return
            self._record_failure(error)
            if transient:
                # Stays in _unacked: the replacement sends it again with the others.
                self.expired += 1
                first = self._replace_reason is None
                if first:
                    self._replace_reason = f"delivery failed: {type(error).__name__}"
            else:
                del self._unacked[item.seq]
        if not transient:
            self._fail(item, error)
        elif first:
            log.warning("event=kafka_delivery_expired error=%r (replacing the producer)", error)
            self._queue.put(_WAKE)

    # --- shared ----------------------------------------------------------------------------

    def _record_failure(self, error: BaseException) -> None:
        """Note a failure for healthy() and stats (hold the lock)."""
        self._last_failure_at = time.monotonic()
        self._last_error = repr(error)[:200]

    def _fail(self, item: _Outgoing, error: BaseException) -> None:
        """A record failed for good: count it, hand a closed bar to the repairer."""
        with self._lock:
            self.failed += 1
            failed = self.failed
            wake = self._release_locked()
        if failed <= 10 or failed % 1000 == 0:
            log.error("event=kafka_delivery_failed failed=%d error=%r", failed, error)
        if item.closed_bar is not None and self.on_closed_bar_lost is not None:
            self.closed_bars_lost += 1
            self._call_in_loop(self.on_closed_bar_lost, item.closed_bar)
        if wake:
            self._call_in_loop(self._space.set)

    def _release_locked(self) -> bool:
        """One record is done; True if a waiting send() should wake (hold the lock)."""
        self._pending -= 1
        wake = bool(self._wake_below) and self._pending < self._wake_below
        if wake:
            self._wake_below = 0
        return wake

    def _abandon_answers(self) -> None:
        """At close, before the producer is force-closed: what it fails then was not
        delivered and must stay pending, not count as failed."""
        with self._lock:
            self._generation += 1

    def _call_in_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The event loop is closed (the process is ending): nobody is left to wake.
            log.debug("event=sink_callback_after_loop_closed callback=%r", callback)

    def _raise_if_sender_died(self) -> None:
        if self._fatal is not None:
            raise RuntimeError("the bridge's Kafka sender thread died") from self._fatal
