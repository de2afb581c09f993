"""Flink's Kafka connector (Java, from build/flink-jars) configured for klineflow.

The source reads raw bytes (so a rejected message reaches the dead letters unchanged) and
commits offsets on checkpoints; the dead-letter sink writes encoded ``DeadLetter``s with
at-least-once delivery.
"""

from __future__ import annotations

from pyflink.common.serialization import ByteArraySchema
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)


def klines_source(bootstrap: str, topic: str, group_id: str, *, bounded: bool) -> KafkaSource:
    """The ``klines.raw`` source: committed offsets of the group, else the earliest.

    ``bounded`` stops at the offsets that are the latest when the job starts (replays,
    demo, tests); otherwise the source runs forever.
    """
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(bootstrap)
        .set_topics(topic)
        .set_group_id(group_id)
        .set_starting_offsets(
            KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST)
        )
        .set_value_only_deserializer(ByteArraySchema())
        .set_property("commit.offsets.on.checkpoint", "true")
        .set_property("partition.discovery.interval.ms", "60000")
        .set_client_id_prefix(f"{group_id}-source")
    )
    if bounded:
        builder = builder.set_bounded(KafkaOffsetsInitializer.latest())
    return builder.build()


def dead_letter_sink(bootstrap: str, topic: str) -> KafkaSink:
    """At-least-once sink of encoded dead letters to ``klines.dlq``.

    ``acks=all`` with idempotence, as every producer of the project: on a replicated topic a
    letter counts as sent once ``min.insync.replicas`` brokers have it, and a retry after a
    broker died never writes it twice or out of order.
    """
    return (
        KafkaSink.builder()
        .set_bootstrap_servers(bootstrap)
        .set_property("acks", "all")
        .set_property("enable.idempotence", "true")
        .set_record_serializer(
            KafkaRecordSerializationSchema.builder()
            .set_topic(topic)
            .set_value_serialization_schema(ByteArraySchema())
            .build()
        )
        .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
        .build()
    )
