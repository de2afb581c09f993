"""A durable, throughput-tuned Kafka producer and a delivery counter that bounds memory.

``create_producer`` returns a ``kafka.KafkaProducer`` (kafka-python 3.0.12) with:

- ``acks="all"`` and idempotence on: retries never duplicate or reorder a partition, so one
  series stays in order in its partition even when the broker hiccups;
- ``linger_ms``/``batch_size`` large enough to fill batches at replay speed, and zstd
  compression (JSON bars compress ~5x) when the ``zstandard`` module is importable, else none;
- ``max_block_ms`` bounding how long ``send`` may wait for metadata;
- ``reconnect_backoff_max_ms`` of 1 s (the Java client's default; kafka-python's is 30 s), so
  a producer reconnects within about a second of a broker coming back after an outage.

kafka-python 3.0.12 has **no** ``buffer_memory`` setting (its record accumulator allocates
batches without a buffer pool, and an unknown setting raises ``ValueError``), so the
accumulator alone would grow without bound when records are produced faster than the broker
acknowledges them. :class:`DeliveryCounter` closes that gap: ``DeliveryCounter.send`` blocks
while ``max_pending`` records are unacknowledged (for at most ``max_block_ms``), and counts
every success and failure through the future's callbacks, so a failed delivery is never
silent.

:func:`replacement_producer` and :func:`close_producer` let a long-running client (the
bridge's sink) swap a producer that stopped working for a new one: kafka-python 3.0.12's
idempotent producer never sends again once a batch it had already sent expires (see
``connectors/bridge/kafka_sink.py``), and its ``close`` raises instead of closing while
records are still unacknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from kafka import KafkaProducer
from kafka.codec import has_zstd
from kafka.errors import KafkaError, KafkaTimeoutError

log = logging.getLogger(__name__)

DEFAULT_MAX_BLOCK_MS: Final[int] = 30_000
DEFAULT_MAX_PENDING: Final[int] = 50_000
# How many delivery errors a DeliveryCounter keeps for the report (the count is exact).
_KEPT_ERRORS: Final[int] = 10


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """The settings ``create_producer`` passes to ``KafkaProducer`` (overrides win)."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "compression_type": "zstd" if has_zstd() else None,
        "max_block_ms": DEFAULT_MAX_BLOCK_MS,
        "delivery_timeout_ms": 120_000,
        "request_timeout_ms": 30_000,
        "reconnect_backoff_max_ms": 1_000,
        "client_id": "klineflow",
    }
    config.update(overrides)
    return config


def create_producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    """A connected ``KafkaProducer`` for ``bootstrap`` (``host:port[,host:port]``).

    ``overrides`` are any ``KafkaProducer`` settings and replace the defaults of
    :func:`producer_config`. Raises ``kafka.errors.NoBrokersAvailable`` when no broker answers.
    """
    return KafkaProducer(**producer_config(bootstrap, **overrides))


def replacement_producer(producer: KafkaProducer) -> KafkaProducer:
    """A new ``KafkaProducer`` with ``producer``'s settings, created without a broker.

    The broker version ``producer`` found at its start is passed on (``api_version``), so the
    new producer does not bootstrap in its constructor: it can be created while the broker is
    down, and connects (and fetches metadata) once it is back.
    """
    settings = {
        name: value
        for name, value in producer.config.items()
        if name in KafkaProducer.DEFAULT_CONFIG
    }
    return KafkaProducer(**settings)


# How long close_producer waits for a force-closed producer's I/O thread to end.
_FORCE_CLOSE_JOIN_S: Final[float] = 5.0


def close_producer(
    producer: Any, timeout_s: float, *, before_force_close: Callable[[], None] | None = None
) -> bool:
    """Flush ``producer`` for at most ``timeout_s`` and close it; never blocks much longer.

    True if every record was acknowledged or failed within the time. Otherwise
    ``before_force_close`` is called and the producer is force-closed: its I/O thread fails
    what is left (``IllegalStateError``: "Producer is closed forcefully") and ends.
    kafka-python's own ``close(timeout)`` flushes first and raises ``KafkaTimeoutError`` when
    that flush times out, without closing anything, so a producer that makes no progress
    would otherwise keep its thread and its records.
    """
    try:
        producer.flush(timeout=max(0.0, timeout_s))
        flushed = True
    except KafkaError as exc:
        flushed = False
        if not isinstance(exc, KafkaTimeoutError):
            log.warning("event=kafka_flush_failed error=%r", exc)
    if not flushed:
        if before_force_close is not None:
            before_force_close()
        sender = getattr(producer, "_sender", None)  # kafka-python's I/O thread
        if sender is not None:
            sender.force_close()
            sender.join(_FORCE_CLOSE_JOIN_S)
    try:
        producer.close(timeout=min(5.0, max(0.0, timeout_s)) if flushed else 0)
    except KafkaError as exc:
        # Only close()'s own flush can raise here (the I/O thread did not end in time); the
        # thread was told to stop either way.
        log.warning("event=kafka_producer_close_incomplete error=%r", exc)
    return flushed


class DeliveryCounter:
    """Counts acknowledged and failed deliveries and bounds the unacknowledged records.

    Thread-safe: the producer's I/O thread runs the callbacks. Use :meth:`send` instead of
    ``producer.send`` (or :meth:`track` on a future you already have), then
    ``producer.flush()`` and read :attr:`succeeded` / :attr:`failed`.
    """

    def __init__(
        self, max_pending: int = DEFAULT_MAX_PENDING, *, max_block_ms: int = DEFAULT_MAX_BLOCK_MS
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self.max_block_ms = max_block_ms
        self._succeeded = 0
        self._failed = 0
        self._pending = 0
        self._errors: list[BaseException] = []
        self._cond = threading.Condition()
        # A waiter in wait_below() is woken once pending drops below this (0: nobody waits).
        self._wake_below = 0

    @property
    def succeeded(self) -> int:
        """Records the broker acknowledged."""
        return self._succeeded

    @property
    def failed(self) -> int:
        """Records whose delivery failed (after the producer's own retries)."""
        return self._failed

    @property
    def pending(self) -> int:
        """Records sent but neither acknowledged nor failed yet."""
        return self._pending

    @property
    def errors(self) -> list[BaseException]:
        """The first few delivery errors (for the report; :attr:`failed` is the exact count)."""
        with self._cond:
            return list(self._errors)

    def track(self, future: Any) -> None:
        """Count the outcome of one ``producer.send`` future."""
        with self._cond:
            self._pending += 1
        future.add_callback(self._on_success)
        future.add_errback(self._on_error)

    def send(
        self, producer: KafkaProducer, topic: str, value: bytes, key: bytes | None = None
    ) -> None:
        """``producer.send`` with back-pressure and counting.

        Once :attr:`max_pending` records are unacknowledged it blocks until half of them are
        (hysteresis, so it does not wake per record); raises ``kafka.errors.KafkaTimeoutError``
        if that takes longer than ``max_block_ms``. Errors ``producer.send`` raises itself
        (e.g. no metadata for the topic) propagate unchanged.
        """
        if self._pending >= self.max_pending:
            self.wait_below(max(1, self.max_pending // 2))
        self.track(producer.send(topic, value=value, key=key))

    def wait_below(self, limit: int) -> None:
        """Block until fewer than ``limit`` records are pending (at most ``max_block_ms``)."""
        deadline = time.monotonic() + self.max_block_ms / 1000
        with self._cond:
            self._wake_below = limit
            try:
                while self._pending >= limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise KafkaTimeoutError(
                            f"{self._pending} records still unacknowledged after "
                            f"{self.max_block_ms} ms; is the broker reachable?"
                        )
                    self._cond.wait(remaining)
            finally:
                self._wake_below = 0

    def _on_success(self, _metadata: Any) -> None:
        with self._cond:
            self._succeeded += 1
            self._pending -= 1
            if self._pending < self._wake_below:
                self._cond.notify_all()

    def _on_error(self, error: BaseException) -> None:
        with self._cond:
            self._failed += 1
            self._pending -= 1
            if len(self._errors) < _KEPT_ERRORS:
                self._errors.append(error)
            if self._pending < self._wake_below:
                self._cond.notify_all()
        log.debug("delivery failed: %r", error)
