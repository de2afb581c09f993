"""The bridge's Kafka sink after its producer broke (issue 12: a broker outage longer than
``delivery_timeout_ms``): the producer is replaced, what it left unacknowledged is sent again
in order, nothing is lost or counted twice, memory stays bounded, and ``close`` ends in time.

A fake producer stands in for ``kafka.KafkaProducer`` (``send`` returns a real
``kafka.future.Future`` the test completes, as the producer's I/O thread would). No broker,
no sleeps as synchronisation: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.errors import (
    IllegalStateError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    UnknownProducerIdError,
)
from kafka.future import Future
from kafka.producer.transaction_manager import InitProducerIdHandler, TransactionManager

from connectors.bridge import kafka_sink
from connectors.bridge.connection import Connection
from connectors.bridge.kafka_sink import KafkaSink, is_transient_delivery_error
from connectors.kafka_producer import close_producer, replacement_producer
from udfs.record import Kline

MIN = 60_000
T0 = 1_717_171_200_000
TOPIC = "klines.raw"
EXPIRED = KafkaTimeoutError("Expiring 3 record(s) for klines.raw-0: 120004 ms has passed")


def bar(minute: int) -> Kline:
    """A closed 1m bar."""
    open_time = T0 + minute * MIN
    return Kline(
        exchange="binance",
        symbol="BTC-USDT",
        raw_symbol="BTCUSDT",
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + MIN - 1,
        open=1.0,
        high=2.0,
        low=0.5,
        close=1.5,
        volume=1.0,
        quote_volume=None,
        trades=None,
        taker_buy_volume=None,
        taker_buy_quote_volume=None,
        is_closed=True,
        event_time=open_time + MIN,
        ingest_time=open_time + MIN + 10,
    )


class FakeProducer:
    """``send`` hands out futures the test completes; ``flush`` times out while any is open."""

    def __init__(self, name: str, *, block_sends: threading.Event | None = None) -> None:
        self.name = name
        self.config = {"delivery_timeout_ms": 120_000}
        self._lock = threading.Lock()
        self._sent: list[tuple[bytes, Future]] = []
        self.block_sends = block_sends
        self.flushes = 0
        self.closed = False

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None) -> Future:
        if self.block_sends is not None:
            # A metadata wait with the broker away: blocks, then times out.
            self.block_sends.wait(10.0)
            raise KafkaTimeoutError("Failed to update metadata after 10.0 secs.")
        if self.closed:
            raise IllegalStateError("KafkaProducer already closed!")
        future = Future()
        assert value is not None
        with self._lock:
            self._sent.append((value, future))
        return future

    @property
    def values(self) -> list[bytes]:
        with self._lock:
            return [value for value, _ in self._sent]

    def futures(self, value: bytes) -> list[Future]:
        with self._lock:
            return [future for sent, future in self._sent if sent == value]

    def ack(self, *values: bytes) -> None:
        for value in values:
            for future in self.futures(value):
                if not future.is_done:
                    future.success(None)

    def ack_all(self) -> None:
        self.ack(*self.values)

    def fail(self, error: BaseException, *values: bytes) -> None:
        for value in values:
            for future in self.futures(value):
                if not future.is_done:
                    future.failure(error)

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        with self._lock:
            if any(not future.is_done for _, future in self._sent):
                raise KafkaTimeoutError("Timeout waiting for future")

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class Factory:
    """Makes the replacement producers and remembers them."""

    def __init__(self) -> None:
        self.made: list[FakeProducer] = []
        self.olds: list[Any] = []

    def __call__(self, old: Any) -> FakeProducer:
        self.olds.append(old)
        producer = FakeProducer(f"replacement-{len(self.made) + 1}")
        self.made.append(producer)
        return producer


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` (letting the event loop run) until it holds; fail after the time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def make_sink(
    producer: FakeProducer, factory: Factory, lost: list[Kline], **options: Any
) -> KafkaSink:
    options.setdefault("watch_interval_s", 0.01)
    return KafkaSink(producer, producer_factory=factory, on_closed_bar_lost=lost.append, **options)


def values(count: int, start: int = 0) -> list[bytes]:
    return [f"r{number}".encode() for number in range(start, start + count)]


# --- the cause, in kafka-python itself ------------------------------------------------------


def test_kafka_python_never_asks_for_a_new_producer_id_after_resetting_it() -> None:
    """Why the sink replaces its producer: after an expired batch that had been sent
    (``Sender._send_producer_data``), kafka-python 3.0.12 calls ``reset_producer_id``, which
    drops the id but leaves the state READY; ``init_producer_id`` (the sender loop's way to
    get a new id) only acts in UNINITIALIZED, and the loop sends nothing without an id.

    If this fails, kafka-python recovers by itself now; the sink's replacement is then only
    a safety net (it costs one re-send of the unacknowledged records).
    """
    manager = TransactionManager(api_version=(3, 9))
    manager.init_producer_id()
    handler = manager.next_request_handler(False)
    assert isinstance(handler, InitProducerIdHandler)
    with manager._lock:
        handler.handle_response(SimpleNamespace(error_code=0, producer_id=7, producer_epoch=0))
    assert manager.has_producer_id()

    manager.reset_producer_id()  # what an expired in-retry batch leads to
    assert not manager.has_producer_id()
    manager.init_producer_id()  # what Sender.run_once does about it, every loop
    assert manager.next_request_handler(False) is None, "no InitProducerId request: stuck"


def test_which_delivery_errors_mean_send_again() -> None:
    assert is_transient_delivery_error(EXPIRED)
    assert is_transient_delivery_error(UnknownProducerIdError())
    assert not is_transient_delivery_error(MessageSizeTooLargeError())
    assert not is_transient_delivery_error(IllegalStateError("Producer is closed forcefully."))


# --- replacement ----------------------------------------------------------------------------


def test_expired_records_are_sent_again_through_a_new_producer_in_order() -> None:
    first, factory = FakeProducer("first"), Factory()
    lost: list[Kline] = []
    records = values(5)

    async def run() -> KafkaSink:
        sink = make_sink(first, factory, lost)
        sink.start()
        for number, value in enumerate(records):
            await sink.send(TOPIC, b"k", value, bar(number))
        await until(lambda: first.values == records, "the first producer to take all five")
        first.ack(b"r0", b"r1")
        # The broker stayed away past delivery_timeout_ms: the producer expires the rest.
        first.fail(EXPIRED, b"r2")
        await until(lambda: len(factory.made) == 1, "a replacement producer")
        second = factory.made[0]
        await until(lambda: second.values == records[2:], "the re-send, in order")
        assert factory.olds == [first] and first.closed
        # The old producer's late answers change nothing: those records were sent again.
        first.ack(b"r3")
        first.fail(EXPIRED, b"r4")
        assert sink.pending == 3 and len(factory.made) == 1
        second.ack_all()
        await until(lambda: sink.pending == 0, "the re-sent records to be acknowledged")
        await sink.send(TOPIC, b"k", b"r5", None)
        await until(lambda: second.values == [*records[2:], b"r5"], "new records to follow")
        second.ack(b"r5")
        assert await sink.close(timeout_s=5)
        return sink

    sink = asyncio.run(run())
    stats = sink.stats()
    assert stats["delivered"] == 6
    assert stats["failed"] == 0 and lost == []
    assert stats["producer_replacements"] == 1
    assert stats["resent"] == 3 and stats["expired_and_resent"] == 1
    assert stats["pending"] == 0


def test_a_producer_that_answers_nothing_is_replaced_after_the_stall_timeout() -> None:
    first, factory = FakeProducer("first"), Factory()
    lost: list[Kline] = []

    async def run() -> KafkaSink:
        sink = make_sink(first, factory, lost, stall_timeout_s=0.05)
        sink.start()
        for value in values(3):
            await sink.send(TOPIC, b"k", value, None)
        await until(lambda: len(factory.made) == 1, "the stalled producer to be replaced")
        second = factory.made[0]
        await until(lambda: second.values == values(3), "the re-send")
        second.ack_all()
        await until(lambda: sink.pending == 0, "the acknowledgements")
        assert await sink.close(timeout_s=5)
        return sink

    sink = asyncio.run(run())
    assert sink.delivered == 3 and sink.failed == 0 and sink.producer_replacements == 1


def test_records_a_replacement_found_waiting_keep_their_order_across_two_replacements() -> None:
    first, factory = FakeProducer("first"), Factory()
    lost: list[Kline] = []
    records = values(6)

    async def run() -> None:
        sink = make_sink(first, factory, lost)
        sink.start()
        for value in records:
            await sink.send(TOPIC, b"k", value, None)
        await until(lambda: first.values == records, "the first producer to take all")
        first.fail(EXPIRED, b"r0")
        await until(lambda: len(factory.made) == 1 and len(factory.made[0].values) == 6, "r1")
        second = factory.made[0]
        second.ack(b"r0", b"r1")
        second.fail(EXPIRED, b"r2")  # the broker went away again
        await until(lambda: len(factory.made) == 2, "a second replacement")
        third = factory.made[1]
        await until(lambda: third.values == records[2:], "the second re-send, in order")
        third.ack_all()
        await until(lambda: sink.pending == 0, "everything acknowledged")
        assert sink.delivered == 6 and sink.failed == 0
        assert await sink.close(timeout_s=5)

    asyncio.run(run())


class ExpiresWhileBlockedOnMetadata(FakeProducer):
    """``send(r1)`` waits for metadata and times out once; meanwhile r0 expires."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.timeouts = 0

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None) -> Future:
        if value == b"r1" and self.timeouts == 0:
            self.timeouts += 1
            self.fail(EXPIRED, b"r0")  # the producer's I/O thread, concurrently
            raise KafkaTimeoutError("Failed to update metadata after 30.0 secs.")
        return super().send(topic, key=key, value=value)


def test_a_record_blocked_on_metadata_waits_for_the_replacement_and_keeps_its_place() -> None:
    first, factory = ExpiresWhileBlockedOnMetadata("first"), Factory()
    lost: list[Kline] = []

    async def run() -> KafkaSink:
        sink = make_sink(first, factory, lost)
        sink.start()
        await sink.send(TOPIC, b"k", b"r0", None)
        await until(lambda: first.values == [b"r0"], "r0 to be taken")
        await sink.send(TOPIC, b"k", b"r1", None)
        await until(lambda: len(factory.made) == 1, "the replacement")
        second = factory.made[0]
        await until(lambda: second.values == [b"r0", b"r1"], "r0, then r1")
        assert first.values == [b"r0"]  # r1 never reached the broken producer
        second.ack_all()
        await until(lambda: sink.pending == 0, "the acknowledgements")
        assert await sink.close(timeout_s=5)
        return sink

    sink = asyncio.run(run())
    assert sink.delivered == 2 and sink.failed == 0 and sink.send_errors == 1


def test_a_permanent_error_fails_the_record_and_hands_its_closed_bar_to_repair() -> None:
    first, factory = FakeProducer("first"), Factory()
    lost: list[Kline] = []
    closed = bar(3)

    async def run() -> KafkaSink:
        sink = make_sink(first, factory, lost)
        sink.start()
        await sink.send(TOPIC, b"k", b"too-big", closed)
        await until(lambda: first.values == [b"too-big"], "the send")
        first.fail(MessageSizeTooLargeError(), b"too-big")
        await until(lambda: lost == [closed], "the closed bar to go to the repairer")
        assert await sink.close(timeout_s=5)
        return sink

    sink = asyncio.run(run())
    assert sink.failed == 1 and sink.closed_bars_lost == 1 and sink.pending == 0
    assert factory.made == [] and sink.producer_replacements == 0


def test_back_pressure_holds_through_a_replacement_and_pending_stays_bounded() -> None:
    first, factory = FakeProducer("first"), Factory()
    lost: list[Kline] = []
    max_pending = 10
    records = values(25)
    seen_pending: list[int] = []

    async def run() -> None:
        sink = make_sink(first, factory, lost, max_pending=max_pending)
        sink.start()
        sent = 0

        async def producer_side() -> None:
            nonlocal sent
            for value in records:
                await sink.send(TOPIC, b"k", value, None)
                sent += 1
                seen_pending.append(sink.pending)

        writer = asyncio.create_task(producer_side())
        await until(lambda: len(first.values) == max_pending, "the bound to be reached")
        assert sent == max_pending and not writer.done()  # back-pressure
        assert not sink.healthy()
        first.fail(EXPIRED, *first.values)
        await until(lambda: len(factory.made) == 1, "the replacement")
        second = factory.made[0]
        await until(lambda: second.values == records[:max_pending], "the re-send")
        assert sent == max_pending, "a re-send does not make room"

        def acked_until_done() -> bool:
            second.ack_all()
            return writer.done()

        await until(acked_until_done, "the writer to finish")
        await until(lambda: second.values == records, "everything, once, in order")
        second.ack_all()
        await until(lambda: sink.pending == 0, "everything acknowledged")
        assert sink.delivered == len(records) and sink.failed == 0
        assert await sink.close(timeout_s=5)

    asyncio.run(run())
    assert max(seen_pending) <= max_pending


def test_a_replacement_that_cannot_be_created_yet_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_sink, "_REPLACE_RETRY_S", 0.01)
    first = FakeProducer("first")
    lost: list[Kline] = []
    second = FakeProducer("second")
    attempts: list[Any] = []

    def flaky(old: Any) -> FakeProducer:
        attempts.append(old)
        if len(attempts) < 3:
            raise KafkaConnectionError("connection refused")
        return second

    async def run() -> None:
        sink = KafkaSink(first, producer_factory=flaky, watch_interval_s=0.01)
        sink.on_closed_bar_lost = lost.append
        sink.start()
        await sink.send(TOPIC, b"k", b"r0", None)
        await until(lambda: first.values == [b"r0"], "the send")
        first.fail(EXPIRED, b"r0")
        await until(lambda: second.values == [b"r0"], "the re-send after two failed attempts")
        second.ack_all()
        await until(lambda: sink.pending == 0, "the acknowledgement")
        assert await sink.close(timeout_s=5)

    asyncio.run(run())
    assert len(attempts) == 3


def test_a_dead_sender_thread_surfaces_in_send() -> None:
    first = FakeProducer("first")

    def broken(old: Any) -> FakeProducer:
        raise ValueError("Unrecognized configs: {'bogus': 1}")

    async def run() -> None:
        sink = KafkaSink(first, producer_factory=broken, watch_interval_s=0.01)
        sink.start()
        await sink.send(TOPIC, b"k", b"r0", None)
        await until(lambda: first.values == [b"r0"], "the send")
        first.fail(EXPIRED, b"r0")
        with pytest.raises(RuntimeError, match="sender thread died"):
            for _ in range(10_000):
                await sink.send(TOPIC, b"k", b"more", None)
                await asyncio.sleep(0.001)
        await sink.close(timeout_s=1)

    asyncio.run(run())


# --- close ----------------------------------------------------------------------------------


def test_close_while_blocked_on_back_pressure_with_a_stuck_producer_ends_in_time() -> None:
    first, factory = FakeProducer("first"), Factory()
    lost: list[Kline] = []

    async def run() -> tuple[bool, float, KafkaSink]:
        sink = make_sink(first, factory, lost, max_pending=4)
        sink.start()
        writer = asyncio.create_task(_send_all(sink, values(10)))
        await until(lambda: len(first.values) == 4, "the bound to be reached")
        writer.cancel()  # what run_until_stopped does on SIGTERM
        with pytest.raises(asyncio.CancelledError):
            await writer
        started = time.monotonic()
        clean = await sink.close(timeout_s=1.0)
        return clean, time.monotonic() - started, sink

    clean, took_s, sink = asyncio.run(run())
    assert not clean and took_s < 3.0
    assert first.closed
    # Not delivered, so not counted as delivered or failed: the four stay pending.
    assert sink.pending == 4 and sink.failed == 0 and sink.delivered == 0 and lost == []


def test_close_does_not_wait_for_a_sender_thread_blocked_on_metadata() -> None:
    release = threading.Event()
    first, factory = FakeProducer("first", block_sends=release), Factory()
    lost: list[Kline] = []

    async def run() -> tuple[bool, float, KafkaSink]:
        sink = make_sink(first, factory, lost)
        sink.start()
        await sink.send(TOPIC, b"k", b"r0", None)
        started = time.monotonic()
        clean = await sink.close(timeout_s=0.5)
        return clean, time.monotonic() - started, sink

    try:
        clean, took_s, sink = asyncio.run(run())
    finally:
        release.set()
    assert not clean and took_s < 2.5 and sink.pending == 1


async def _send_all(sink: KafkaSink, records: list[bytes]) -> None:
    for value in records:
        await sink.send(TOPIC, b"k", value, None)


# --- the kafka-python helpers ---------------------------------------------------------------


def test_a_replacement_producer_is_made_without_a_broker_and_closes_at_once() -> None:
    # Nothing listens on port 1: the broker version is given, so neither start-up nor
    # close needs a broker.
    original = KafkaProducer(
        bootstrap_servers="127.0.0.1:1",
        api_version=(3, 9),
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        delivery_timeout_ms=60_000,
        client_id="klineflow-test",
    )
    try:
        started = time.monotonic()
        replacement = replacement_producer(original)
        assert time.monotonic() - started < 2.0
        for name in ("acks", "enable_idempotence", "linger_ms", "delivery_timeout_ms"):
            assert replacement.config[name] == original.config[name], name
        assert replacement.config["api_version"] == (3, 9)
        assert close_producer(replacement, 1.0)
    finally:
        assert close_producer(original, 1.0)


# --- stopping while blocked on back-pressure ------------------------------------------------


def test_stopping_cancels_a_connection_blocked_on_back_pressure() -> None:
    """SIGTERM with Kafka down: the connection task waits in ``sink.send`` and a closed socket
    does not wake it; the stop path cancels it instead of waiting forever."""

    async def blocked() -> str:
        await asyncio.Event().wait()
        return "never"

    async def run() -> tuple[bool, bool]:
        connection = Connection(None, None, "binance-0.1")  # type: ignore[arg-type]
        connection.task = asyncio.create_task(blocked())  # waits in sink.send()
        await connection.close("bridge stopping", cancel_after_s=0.05)
        waiting = Connection(None, None, "binance-0.2")  # type: ignore[arg-type]
        waiting.task = asyncio.create_task(blocked())
        closer = asyncio.create_task(waiting.close("replaced"))  # a rotation waits
        await asyncio.sleep(0.05)
        still_waiting = not closer.done()
        closer.cancel()  # the bridge stops meanwhile: the cancellation reaches the caller
        with pytest.raises(asyncio.CancelledError):
            await closer
        return connection.task.cancelled(), still_waiting

    assert asyncio.run(asyncio.wait_for(run(), timeout=10)) == (True, True)
