"""The floor: consume the topic and parse every bar with orjson, nothing else.

Each of ``parallelism`` processes is assigned its share of the partitions (no consumer group,
no commits) and reads them from the beginning to the end offsets they had when it started.
confluent-kafka (librdkafka) when it is installed, else kafka-python; the report says which.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import orjson

from peers.common import (
    STALL_TIMEOUT_S,
    SideReport,
    SideSpec,
    client_label,
    now,
    partitions_of,
    run_workers,
)

_BATCH = 1000


def client_name() -> str:
    """The Kafka client the floor uses: ``confluent-kafka`` if importable, else ``kafka-python``."""
    return "confluent-kafka" if importlib.util.find_spec("confluent_kafka") else "kafka-python"


def _consume_confluent(spec: SideSpec, partitions: list[int]) -> SideReport:
    from confluent_kafka import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    consumer = Consumer(
        {
            "bootstrap.servers": spec.bootstrap,
            "group.id": spec.group,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    report = SideReport(details={"client": client_label("confluent-kafka")})
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(spec.topic, p))[1] for p in partitions
        }
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(spec.topic, p, OFFSET_BEGINNING) for p in pending])
        last_progress = now()
        while pending:
            messages = consumer.consume(num_messages=_BATCH, timeout=0.5)
            if messages and report.first_bar_at is None:
                report.first_bar_at = now()
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(message.partition())
                        continue
                    raise KafkaException(error)
                orjson.loads(message.value())
                report.consumed += 1
                if message.offset() + 1 >= ends[message.partition()]:
                    pending.discard(message.partition())
            if messages:
                last_progress = now()
            elif now() - last_progress > STALL_TIMEOUT_S:
                break
        report.done_at = now()
    finally:
        consumer.close()
    return report


def _consume_kafka_python(spec: SideSpec, partitions: list[int]) -> SideReport:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=spec.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=_BATCH,
    )
    report = SideReport(details={"client": client_label("kafka-python")})
    try:
        assigned = [TopicPartition(spec.topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        ends: dict[Any, int] = consumer.end_offsets(assigned)
        pending = {tp for tp, end in ends.items() if end > 0}
        last_progress = now()
        while pending:
            batches = consumer.poll(timeout_ms=500)
            if batches and report.first_bar_at is None:
                report.first_bar_at = now()
            for tp, records in batches.items():
                for record in records:
                    orjson.loads(record.value)
                report.consumed += len(records)
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
            if batches:
                last_progress = now()
            elif now() - last_progress > STALL_TIMEOUT_S:
                break
        report.done_at = now()
    finally:
        consumer.close()
    return report


def consume_share(spec: SideSpec, index: int, _progress: Any) -> SideReport:
    """Worker ``index``: read and parse its partitions to their end offsets."""
    partitions = partitions_of(spec, index)
    if client_name() == "confluent-kafka":
        return _consume_confluent(spec, partitions)
    return _consume_kafka_python(spec, partitions)


def run(spec: SideSpec) -> SideReport:
    """The floor over all partitions, ``spec.parallelism`` processes."""
    return run_workers(consume_share, spec)
