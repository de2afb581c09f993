"""The bridge's Kafka sink: produces from a dedicated thread with a bounded number of
unacknowledged records and hands lost closed bars back to the repairer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from kafka.errors import KafkaError, KafkaTimeoutError

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
