"""Kafka topic helpers on kafka-python: create topics, read a topic back, count its messages.

Used by ``klineflow replay`` and the job (to make sure their topics exist) and by the tests
(to read what the job or the replay wrote).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Final

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from connectors.kafka_replication import replication_for

log = logging.getLogger(__name__)

CLIENT_ID = "klineflow-admin"
POLL_TIMEOUT_MS = 200


class TopicError(RuntimeError):
    """A topic could not be created or did not become ready."""


@contextmanager
def admin_client(bootstrap: str, *, timeout_s: float = 30.0) -> Iterator[KafkaAdminClient]:
    """A ``KafkaAdminClient`` on ``bootstrap``, closed on exit."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id=CLIENT_ID,
        bootstrap_timeout_ms=int(timeout_s * 1000),
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        yield admin
    finally:
        admin.close()


@contextmanager
def _consumer(bootstrap: str, *, isolation_level: str) -> Iterator[KafkaConsumer]:
    """A group-less consumer (manual assignment, no offset commits), closed on exit."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=CLIENT_ID,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
    )
    try:
        yield consumer
    finally:
        consumer.close()


# The dead-letter topic: the broker stamps each letter with its arrival time. A letter
# otherwise keeps the timestamp of the record it came from (a replayed bar of last year),
# and time-based retention would delete it as soon as its segment rolls.
DEAD_LETTER_TOPIC: Final[Mapping[str, str]] = {"message.timestamp.type": "LogAppendTime"}


def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int = 4,
    *,
    replication_factor: int | None = None,
    timeout_s: float = 30.0,
    configs: Mapping[str, str] | None = None,
) -> None:
    """Create each of ``topics`` that does not exist yet and wait until all are usable.

    ``configs`` are topic settings for the topics created now (e.g. :data:`DEAD_LETTER_TOPIC`).
    ``replication_factor`` None follows the cluster (``replication_for`` of its broker
    count): 3 copies and ``min.insync.replicas`` 2 from three brokers, 1 and 1 on one; a
    ``min.insync.replicas`` in ``configs`` wins.

    Idempotent: existing topics are left as they are (also their partition count), and a
    concurrent creation (``TopicAlreadyExists``) is fine. Returns once the broker's metadata
    shows every topic with a leader for each partition; raises :class:`TopicError` if a topic
    cannot be created or does not become ready, and ``kafka.errors.KafkaError`` (e.g.
    ``NoBrokersAvailable``) if no broker answers within ``timeout_s``.
    """
    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return
    with admin_client(bootstrap, timeout_s=timeout_s) as admin:
        existing = set(admin.list_topics())
        missing = [topic for topic in wanted if topic not in existing]
        if missing:
            registered = admin.describe_cluster().get("brokers", ())
            brokers = sum(1 for broker in registered if not broker.get("is_fenced", False))
            replicas, min_isr = replication_for(brokers)
            if replication_factor is not None:
                replicas, min_isr = replication_factor, min(min_isr, replication_factor)
            topic_configs = {"min.insync.replicas": str(min_isr), **dict(configs or {})}
            log.info(
                "creating topics %s (%d partitions, %d replicas, min.insync.replicas %s)",
                missing,
                partitions,
                replicas,
                topic_configs["min.insync.replicas"],
            )
            response = admin.create_topics(
                {
                    topic: {
                        "num_partitions": partitions,
                        "replication_factor": replicas,
                        "configs": topic_configs,
                    }
                    for topic in missing
                },
                timeout_ms=int(timeout_s * 1000),
                raise_errors=False,
            )
            failures = [
                f"{result['name']}: error {result['error_code']} {result.get('error_message')}"
                for result in response["topics"]
                if result["error_code"] not in (0, TopicAlreadyExistsError.errno)
            ]
            if failures:
                raise TopicError("could not create topics: " + "; ".join(failures))
        try:
            admin.wait_for_topics(wanted, timeout_ms=int(timeout_s * 1000))
        except KafkaTimeoutError as exc:
            raise TopicError(f"topics {wanted} not ready after {timeout_s:.0f}s: {exc}") from exc


def _topic_partitions(consumer: KafkaConsumer, topic: str, deadline: float) -> list[TopicPartition]:
    """The partitions of ``topic``; polls metadata until they show up or ``deadline`` passes."""
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions or time.monotonic() >= deadline:
            return [TopicPartition(topic, partition) for partition in sorted(partitions)]
        time.sleep(POLL_TIMEOUT_MS / 1000)


def partition_count(bootstrap: str, topic: str, *, timeout_s: float = 30.0) -> int:
    """How many partitions ``topic`` has; raises TopicError if it does not show up in time."""
    with _consumer(bootstrap, isolation_level="read_uncommitted") as consumer:
        partitions = _topic_partitions(consumer, topic, deadline=time.monotonic() + timeout_s)
    if not partitions:
        raise TopicError(f"topic {topic!r} has no partitions after {timeout_s:.0f}s")
    return len(partitions)


def end_offsets_total(
    bootstrap: str, topic: str, *, isolation_level: str = "read_committed"
) -> int:
    """The sum of the end offsets of all partitions of ``topic`` (0 if it does not exist).

    With ``read_committed`` (the default) this is the last stable offset, so open
    transactions are not counted. Transaction markers take offsets too, so for a topic written
    transactionally this is an upper bound of the message count, not the count.
    """
    with _consumer(bootstrap, isolation_level=isolation_level) as consumer:
        partitions = _topic_partitions(consumer, topic, deadline=time.monotonic())
        if not partitions:
            return 0
        return int(sum(consumer.end_offsets(partitions).values()))


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    timeout_s: float = 30.0,
    min_messages: int = 0,
    isolation_level: str = "read_committed",
) -> list[tuple[bytes | None, bytes]]:
    """Every ``(key, value)`` of ``topic`` from the beginning to the end offsets seen at call time.

    Polls until every partition is read up to the end offset it had when the call started.
    With ``min_messages`` it then keeps polling (new messages included) until at least that
    many messages were read. Whatever was read is returned when ``timeout_s`` runs out; the
    caller asserts on the result. Messages of one partition keep their order; partitions are
    interleaved as they arrive. A topic that does not exist reads as empty (when
    ``min_messages`` is set, its appearance is awaited until the timeout).
    ``read_committed`` (the default) hides aborted and still-open transactional writes.
    """
    deadline = time.monotonic() + timeout_s
    messages: list[tuple[bytes | None, bytes]] = []
    with _consumer(bootstrap, isolation_level=isolation_level) as consumer:
        metadata_deadline = deadline if min_messages > 0 else time.monotonic()
        partitions = _topic_partitions(consumer, topic, metadata_deadline)
        if not partitions:
            return messages
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end_offsets: dict[TopicPartition, int] = consumer.end_offsets(partitions)
        pending = {tp for tp, end in end_offsets.items() if end > 0}
        while pending or len(messages) < min_messages:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                log.warning(
                    "read_topic(%s): timed out after %.1fs with %d messages (%d wanted)",
                    topic,
                    timeout_s,
                    len(messages),
                    min_messages,
                )
                break
            batches = consumer.poll(timeout_ms=min(POLL_TIMEOUT_MS, remaining_ms))
            for records in batches.values():
                messages.extend((record.key, record.value) for record in records)
            try:
                pending = {
                    tp
                    for tp in pending
                    if consumer.position(tp, timeout_ms=min(5000, remaining_ms)) < end_offsets[tp]
                }
            except KafkaError as exc:
                log.debug("read_topic(%s): position lookup failed, retrying: %s", topic, exc)
    return messages
