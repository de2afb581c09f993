"""The pure pipeline: raw Kafka bytes in, upserted bars and dead letters out; no I/O here.

``build_pipeline`` is what tests feed with ``from_collection`` and read with
``execute_and_collect()``; ``jobs.job`` attaches the Kafka source and the sinks around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from pyflink.common import Duration, Types
from pyflink.common.watermark_strategy import WatermarkStrategy
from pyflink.datastream import (
    AggregateFunction,
    DataStream,
    FilterFunction,
    KeyedStream,
    OutputTag,
    ProcessWindowFunction,
)

from jobs.config import PipelineConfig
from udfs.flink_functions import (
    DEAD_LETTERS,
    KlineTimestampAssigner,
    ParseKlineFunction,
    UpsertBarFunction,
)
from udfs.record import TIMEFRAME_MS, Kline, VersionedBar
from udfs.rollup import validate_rollup_timeframes
from udfs.rollup_functions import (
    LATE_ROLLUP_INPUT,
    ROLLUP_WINDOWS,
    LateWindowInputToDeadLetter,
    RollupAggregateFunction,
    RollupTrigger,
    RollupWindowAssigner,
    RollupWindowFunction,
    WindowGateFunction,
    WindowKind,
)

# Slot sharing groups. PyFlink runs the Python operators of one slot in one Python worker
# process (one GIL), so every operator left in the default group shares a single core. The
# job spreads its Python work over one process per group; a mini-cluster or a standalone
# cluster needs ``required_slots`` slots for that.
ROLLUPS_GROUP: Final = "rollups"
ANALYTICS_GROUP: Final = "analytics"
SINKS_GROUP: Final = "sinks"
EXTRA_SLOT_GROUPS: Final = (ROLLUPS_GROUP, ANALYTICS_GROUP, SINKS_GROUP)


def required_slots(source_parallelism: int, parallelism: int) -> int:
    """Task slots the job needs: its default group (the source chain, one subtask per Kafka
    partition, and the upsert) plus one slot per subtask of each other group."""
    return max(source_parallelism, parallelism) + len(EXTRA_SLOT_GROUPS) * parallelism


class PipelineStreams(NamedTuple):
    """The pipeline's outputs.

    ``bars`` (VersionedBar) is everything to store: ``upserted`` (the upserted bars of every
    input timeframe) and ``rollups`` (None when roll-ups are off). Branches that need only
    one of them (signals, profiles) take it, so their filters chain into its producer
    instead of running as another hop over every bar. ``dead_letters`` are encoded bytes.
    """

    bars: DataStream
    dead_letters: DataStream
    upserted: DataStream
    rollups: DataStream | None = None

    def parts(self) -> list[tuple[str, DataStream]]:
        """``bars`` as its parts, each with the suffix its filters' names get."""
        parts = [("", self.upserted)]
        if self.rollups is not None:
            parts.append(("-rollups", self.rollups))
        return parts


def filter_each(
    parts: Sequence[tuple[str, DataStream]], function: FilterFunction, name: str
) -> DataStream:
    """``function`` on each part, chained into the part's producer, then one union.

    Filtering before the union keeps the filter off a hop of its own: after a union a
    Python operator cannot chain, so it would see (and deserialise) every bar again.
    Each filter is named and uid'd ``name`` + the part's suffix.
    """
    filtered = [
        stream.filter(function).name(name + suffix).uid(name + suffix) for suffix, stream in parts
    ]
    return filtered[0].union(*filtered[1:]) if len(filtered) > 1 else filtered[0]


def key_by_in_group(stream: DataStream, key_selector: Any, group: str) -> KeyedStream:
    """``stream.key_by(key_selector)`` with PyFlink's key-extracting map in slot ``group``.

    A Python key selector becomes a map operator ahead of the keyed exchange; after a union
    it cannot chain into the producer, and left alone it would land in the default group.
    """
    keyed = stream.key_by(key_selector, key_type=Types.STRING())
    key_map = keyed._j_data_stream.getTransformation().getInputs().get(0)
    key_map.setSlotSharingGroup(group)
    return keyed


def _series_key(kline: Kline) -> str:
    return kline.series_key


def _bar_series_key(bar: VersionedBar) -> str:
    return bar.kline.series_key


def set_parallelism_back_to(stream: DataStream, first: DataStream, parallelism: int) -> None:
    """Set ``parallelism`` on every transformation from ``first`` down to ``stream``.

    ``assign_timestamps_and_watermarks`` with a Python assigner builds three transformations
    (Extract-Timestamp, the watermark assigner, Remove-Timestamp), and ``set_parallelism`` on
    its result reaches only the last one.
    """
    stop = first._j_data_stream.getTransformation().getId()
    transformation = stream._j_data_stream.getTransformation()
    while True:
        transformation.setParallelism(parallelism)
        if transformation.getId() == stop:
            return
        transformation = transformation.getInputs().get(0)


def watermark_strategy(config: PipelineConfig) -> WatermarkStrategy:
    """Bounded out-of-orderness on bar open times, with idleness so quiet series don't stall."""
    return (
        WatermarkStrategy.for_bounded_out_of_orderness(
            Duration.of_millis(config.max_out_of_orderness_ms)
        )
        .with_idleness(Duration.of_millis(config.idleness_ms))
        .with_timestamp_assigner(KlineTimestampAssigner())
    )


def gated_windows(
    bars: DataStream,
    timeframes: Sequence[str],
    config: PipelineConfig,
    *,
    kind: WindowKind,
    aggregate: AggregateFunction,
    window_function: ProcessWindowFunction,
    late_tag: OutputTag,
    name: str,
    group: str,
) -> tuple[DataStream, DataStream]:
    """Gate -> one window operator over the 1m bars for all ``timeframes`` (roll-ups,
    profiles) -> (window output, dead letters of the gate and of the late side output).

    ``{kind.stage}-gate`` passes 1m bars and dead-letters those too late for the smallest
    window. The windows are UTC-aligned per series (``RollupWindowAssigner``), fired live,
    final and on corrections by ``RollupTrigger`` and kept for the allowed lateness; anything
    later leaves through ``late_tag`` to ``{kind.stage}-late-dead-letters``. The window
    operator is named and uid'd ``name`` and runs in slot ``group``. Lateness is measured
    against the job-wide watermark, as Flink windows do.
    """
    gated = (
        bars.process(
            WindowGateFunction(kind, TIMEFRAME_MS[timeframes[0]], config.allowed_lateness_ms),
            output_type=Types.PICKLED_BYTE_ARRAY(),
        )
        .name(f"{kind.stage}-gate")
        .uid(f"{kind.stage}-gate")
    )
    windows = (
        gated.key_by(_bar_series_key, key_type=Types.STRING())
        .window(RollupWindowAssigner(timeframes))
        .trigger(
            RollupTrigger(
                config.rollup_emit_in_progress,
                config.rollup_idle_close_ms,
                config.rollup_live_horizon_ms,
            )
        )
        .allowed_lateness(config.allowed_lateness_ms)
        .side_output_late_data(late_tag)
        .aggregate(
            aggregate,
            window_function,
            accumulator_type=Types.PICKLED_BYTE_ARRAY(),
            output_type=Types.PICKLED_BYTE_ARRAY(),
        )
        .name(name)
        .uid(name)
        .slot_sharing_group(group)
    )
    late = (
        windows.get_side_output(late_tag)
        .map(LateWindowInputToDeadLetter(kind), output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()))
        .name(f"{kind.stage}-late-dead-letters")
        .uid(f"{kind.stage}-late-dead-letters")
    )
    return windows, gated.get_side_output(DEAD_LETTERS).union(late)


def build_rollups(bars: DataStream, config: PipelineConfig) -> PipelineStreams:
    """Roll the upserted 1m bars up into ``config.rollup_timeframes`` (event time, UTC).

    One window operator serves every timeframe (see ``udfs.rollup_functions``). A 1m bar
    whose smallest roll-up window ended more than ``allowed_lateness_ms`` before the
    watermark is dead-lettered with reason ``late`` (the 1m bar itself is still stored).
    """
    rollups, dead_letters = gated_windows(
        bars,
        validate_rollup_timeframes(config.rollup_timeframes),
        config,
        kind=ROLLUP_WINDOWS,
        aggregate=RollupAggregateFunction(),
        window_function=RollupWindowFunction(config.rollup_idle_close_ms),
        late_tag=LATE_ROLLUP_INPUT,
        name="rollups",
        group=ROLLUPS_GROUP,
    )
    return PipelineStreams(bars=rollups, dead_letters=dead_letters, upserted=bars, rollups=rollups)


def build_pipeline(raw: DataStream, config: PipelineConfig) -> PipelineStreams:
    """Parse and validate, assign event time, upsert bars per series, roll 1m bars up.

    ``bars`` holds the upserted bars of every input timeframe followed through unchanged, and
    the roll-ups of the 1m bars when ``config.rollup_timeframes`` is not empty. Input of
    another timeframe (a replayed 1h archive) is upserted and stored as it is, never rolled up.
    """
    klines = (
        raw.process(ParseKlineFunction(), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("parse-validate")
        .uid("parse-validate")
    )
    # Event time is the bar's open_time. The watermark is made right after parsing, in the
    # source's own subtasks: with one subtask per Kafka partition (``source_parallelism``)
    # each watermark covers one partition, and downstream operators take the minimum, so a
    # partition read later than the others never makes their bars late.
    timestamped = (
        klines.assign_timestamps_and_watermarks(watermark_strategy(config))
        .name("event-time-watermarks")
        .uid("event-time-watermarks")
    )
    if config.source_parallelism:
        set_parallelism_back_to(timestamped, klines, config.source_parallelism)
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
    if not config.rollup_timeframes:
        return PipelineStreams(bars=bars, dead_letters=dead_letters, upserted=bars)
    rollups = build_rollups(bars, config)
    return PipelineStreams(
        bars=bars.union(rollups.bars),
        dead_letters=dead_letters.union(rollups.dead_letters),
        upserted=bars,
        rollups=rollups.bars,
    )
