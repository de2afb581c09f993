"""The pure pipeline: raw Kafka bytes in, upserted bars and dead letters out; no I/O here.

``build_pipeline`` is what tests feed with ``from_collection`` and read with
``execute_and_collect()``; ``jobs.job`` attaches the Kafka source and the sinks around it.
"""

from __future__ import annotations

from typing import NamedTuple

from pyflink.common import Duration, Types
from pyflink.common.watermark_strategy import WatermarkStrategy
from pyflink.datastream import DataStream

from jobs.config import PipelineConfig
from udfs.flink_functions import (
    DEAD_LETTERS,
    KlineTimestampAssigner,
    ParseKlineFunction,
    UpsertBarFunction,
)
from udfs.record import Kline


class PipelineStreams(NamedTuple):
    """The pipeline's outputs: ``bars`` (VersionedBar) and ``dead_letters`` (encoded bytes)."""

    bars: DataStream
    dead_letters: DataStream


def _series_key(kline: Kline) -> str:
    return kline.series_key


def watermark_strategy(config: PipelineConfig) -> WatermarkStrategy:
    """Bounded out-of-orderness on bar open times, with idleness so quiet series don't stall."""
    return (
        WatermarkStrategy.for_bounded_out_of_orderness(
            Duration.of_millis(config.max_out_of_orderness_ms)
        )
        .with_idleness(Duration.of_millis(config.idleness_ms))
        .with_timestamp_assigner(KlineTimestampAssigner())
    )


def build_pipeline(raw: DataStream, config: PipelineConfig) -> PipelineStreams:
    """Parse and validate, assign event time, and upsert 1m bars per series."""
    klines = (
        raw.process(ParseKlineFunction(), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("parse-validate")
        .uid("parse-validate")
    )
    timestamped = (
        klines.assign_timestamps_and_watermarks(watermark_strategy(config))
        .name("event-time-watermarks")
        .uid("event-time-watermarks")
    )
    bars = (
        timestamped.key_by(_series_key, key_type=Types.STRING())
        .process(
            UpsertBarFunction(config.allowed_lateness_ms),
            output_type=Types.PICKLED_BYTE_ARRAY(),
        )
        .name("upsert-bars")
        .uid("upsert-bars")
    )
    dead_letters = klines.get_side_output(DEAD_LETTERS).union(bars.get_side_output(DEAD_LETTERS))
    return PipelineStreams(bars=bars, dead_letters=dead_letters)
