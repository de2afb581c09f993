"""Producer settings and the delivery counter (connectors/kafka_producer.py), without a broker."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future

from connectors.kafka_producer import DeliveryCounter, producer_config


class FakeProducer:
    """Hands out unresolved futures, like ``KafkaProducer.send`` before the broker answers."""

    def __init__(self) -> None:
        self.futures: list[Future] = []
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> Future:
        self.sent.append((topic, value, key))
        future = Future()
        self.futures.append(future)
        return future


def test_config_is_durable_and_batched() -> None:
    config = producer_config("127.0.0.1:9092")
    assert config["bootstrap_servers"] == "127.0.0.1:9092"
    assert config["acks"] == "all"
    assert config["enable_idempotence"] is True
    assert config["linger_ms"] > 0 and config["batch_size"] >= 64 * 1024
    assert config["max_block_ms"] > 0
    assert config["compression_type"] in ("zstd", None)
    assert "buffer_memory" not in config  # kafka-python 3.0.12 has no such setting


def test_overrides_win() -> None:
    config = producer_config("b:1", linger_ms=0, client_id="bridge")
    assert (config["linger_ms"], config["client_id"]) == (0, "bridge")


def test_counts_successes_and_failures() -> None:
    counter = DeliveryCounter()
    producer: Any = FakeProducer()
    for index in range(4):
        counter.send(producer, "t", b"v%d" % index, b"k")
    assert (counter.pending, counter.succeeded, counter.failed) == (4, 0, 0)
    producer.futures[0].success("meta")
    producer.futures[1].success("meta")
    producer.futures[2].failure(MessageSizeTooLargeError("too big"))
    assert (counter.pending, counter.succeeded, counter.failed) == (1, 2, 1)
    assert len(counter.errors) == 1 and isinstance(counter.errors[0], MessageSizeTooLargeError)
    assert producer.sent[3] == ("t", b"v3", b"k")


def test_already_resolved_futures_are_counted() -> None:
    counter = DeliveryCounter()
    counter.track(Future().success("meta"))
    counter.track(Future().failure(KafkaTimeoutError("expired")))
    assert (counter.pending, counter.succeeded, counter.failed) == (0, 1, 1)


def test_send_blocks_when_too_much_is_unacknowledged() -> None:
    counter = DeliveryCounter(max_pending=4, max_block_ms=5_000)
    producer: Any = FakeProducer()
    for _ in range(4):
        counter.send(producer, "t", b"v")

    def acknowledge() -> None:
        time.sleep(0.05)
        for future in producer.futures[:3]:
            future.success("meta")

    helper = threading.Thread(target=acknowledge)
    helper.start()
    started = time.monotonic()
    counter.send(producer, "t", b"v")  # waits until at most half are pending
    waited = time.monotonic() - started
    helper.join()
    assert waited >= 0.04
    assert (counter.pending, counter.succeeded) == (2, 3)


def test_send_gives_up_after_max_block_ms() -> None:
    counter = DeliveryCounter(max_pending=2, max_block_ms=50)
    producer: Any = FakeProducer()
    counter.send(producer, "t", b"v")
    counter.send(producer, "t", b"v")
    with pytest.raises(KafkaTimeoutError, match="2 records still unacknowledged after 50 ms"):
        counter.send(producer, "t", b"v")
    assert len(producer.sent) == 2


def test_keeps_only_the_first_errors() -> None:
    counter = DeliveryCounter()
    for _ in range(25):
        counter.track(Future().failure(KafkaTimeoutError("expired")))
    assert counter.failed == 25
    assert len(counter.errors) == 10


def test_max_pending_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DeliveryCounter(max_pending=0)
