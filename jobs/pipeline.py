"""The pure pipeline: raw Kafka bytes in, tagged records out; no I/O here.

``build_pipeline`` is what tests feed with ``from_collection`` and read with
``execute_and_collect()``; ``jobs.job`` attaches the Kafka source and the sinks around it.

The graph is two Python operators deep, because every Python hop costs more than the maths
(``../shared/notes/pyflink-costs.md``, and ``bench/bench_peers.py`` for the figures):

1. ``ingest`` (at most the job's parallelism, each fed by whole source subtasks): parse and
   validate each message (``udfs.flink.ingest``), emitting ``Row(instrument, bars)`` or a
   dead letter. It is fed batches of messages packed in Java (``batch_records``, chained to
   the source, one subtask per Kafka partition), and emits one row per instrument and
   batch, so the Python hops after it carry groups of bars, not single bars. A Java
   operator chained to it (``source_watermarks``) makes the watermarks per source subtask,
   so a partition read later than the others never makes their bars late, with fewer
   Python workers than partitions;
2. Flink keys the rows by their first field (no Python key step), and ``series``
   (``udfs.flink.series_function``) does everything per instrument: upsert, roll-ups,
   profiles, indicators and rules signals, emitting ``(Tag, payload)`` records on one
   stream.

The sinks (``connectors.flink_sinks.StoreSinkFunction``) take that one stream as it is;
tests read its parts through :class:`PipelineStreams`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Any, Final

from pyflink.common import Types
from pyflink.datastream import DataStream, FlatMapFunction

from connectors.flink_topology import (
    batch_records,
    environment_parallelism,
    key_by_first_field,
    pipeline_keyed_state_commits,
    source_watermarks,
    timer_safe_checkpoints,
)
from jobs.config import AnalyticsConfig, PipelineConfig
from jobs.signals import SignalConfig
from udfs.flink.ingest import BATCH_END_KEY, INGEST_ROW_TYPE, KEYED_ROW_TYPE, IngestFunction
from udfs.flink.series_function import SeriesFunction
from udfs.rollup import validate_rollup_timeframes
from udfs.series import Output, SeriesSettings, Tag, decode_outputs, encode_outputs

# Slot sharing groups. PyFlink runs the Python operators of one slot in one Python worker
# process (one GIL): the series operator and the sinks each get processes of their own,
# apart from the ingest step, so the job uses every core.
SERIES_GROUP: Final = "series"
SINKS_GROUP: Final = "sinks"


def required_slots(source_parallelism: int, parallelism: int, sink_parallelism: int = 1) -> int:
    """Task slots the job needs: the default group (source + ingest, one subtask per Kafka
    partition), the series group and the sinks group."""
    return max(source_parallelism, 1) + parallelism + sink_parallelism


def series_settings(
    config: PipelineConfig,
    analytics: AnalyticsConfig | None = None,
    signals: SignalConfig | None = None,
) -> SeriesSettings:
    """What the series operator computes, from the job's settings (None: that part off)."""
    rollups = validate_rollup_timeframes(config.rollup_timeframes)
    profile_timeframes: tuple[str, ...] = ()
    settings: dict[str, Any] = {}
    if analytics is not None:
        profile_timeframes = validate_rollup_timeframes(analytics.profile_timeframes)
        settings.update(
            profile_rows=analytics.profile_rows,
            profile_row_size=analytics.profile_row_size,
            profile_max_rows=analytics.profile_max_rows,
            indicators=analytics.indicators,
        )
    if signals is not None and signals.enabled:
        settings.update(
            signal_timeframes=tuple(signals.timeframes),
            signal_prompt_bars=signals.prompt_bars,
            signal_history_bars=signals.history_bars,
            signal_requests=bool(signals.inference.url),
        )
    return SeriesSettings(
        allowed_lateness_ms=config.allowed_lateness_ms,
        rollup_timeframes=rollups,
        emit_in_progress=config.rollup_emit_in_progress,
        idle_close_ms=config.rollup_idle_close_ms,
        live_horizon_ms=config.rollup_live_horizon_ms,
        profile_timeframes=profile_timeframes,
        **settings,
    )


def series_function(
    config: PipelineConfig,
    analytics: AnalyticsConfig | None = None,
    signals: SignalConfig | None = None,
    *,
    pipelined_commits: bool = True,
) -> SeriesFunction:
    """The series operator's function; ``pipelined_commits``: its worker pipelines the
    keyed-state commits (``connectors.flink_topology.pipeline_keyed_state_commits``)."""
    return SeriesFunction(
        series_settings(config, analytics, signals),
        config.series_ttl_ms,
        worker_setup=pipeline_keyed_state_commits if pipelined_commits else None,
    )


class PayloadsOf(FlatMapFunction):
    """The payloads of one tag in the series operator's elements."""

    def __init__(self, tag: int) -> None:
        self.tag = tag

    def flat_map(self, value: bytes) -> Iterator[Any]:
        for tag, payload in decode_outputs(value):
            if tag == self.tag:
                yield payload


class SignalRequestsOf(FlatMapFunction):
    """The ``SIGNAL_REQUEST`` records of the series operator's elements, one by one."""

    def flat_map(self, value: bytes) -> Iterator[Output]:
        for record in decode_outputs(value):
            if record[0] == Tag.SIGNAL_REQUEST:
                yield record


class WithoutSignalRequests(FlatMapFunction):
    """The series operator's elements without their ``SIGNAL_REQUEST`` records."""

    def flat_map(self, value: bytes) -> Iterator[bytes]:
        outputs = decode_outputs(value)
        kept = [record for record in outputs if record[0] != Tag.SIGNAL_REQUEST]
        if len(kept) == len(outputs):
            yield value
        elif kept:
            yield encode_outputs(kept)


class PipelineStreams:
    """The pipeline's output: ``records``, one stream of encoded ``(Tag, payload)`` lists
    (``udfs.series.encode_outputs``).

    The job's sinks take ``records`` whole. Tests read one kind at a time through the
    properties, each a filter over ``records`` (built once, when first asked for).
    """

    def __init__(self, records: DataStream) -> None:
        self.records = records

    def _part(self, tag: int, output_type: Any) -> DataStream:
        name = f"select-{Tag.name_of(tag).lower().replace('_', '-')}"
        # No uid: PyFlink chains the reader that follows into this operator and gives the
        # fused one this uid too (a hash collision); these readers hold no state.
        return self.records.flat_map(PayloadsOf(tag), output_type=output_type).name(name)

    @cached_property
    def bars(self) -> DataStream:
        """Upserted bars of every input timeframe and the roll-ups (VersionedBar)."""
        return self._part(Tag.BAR, Types.PICKLED_BYTE_ARRAY())

    @cached_property
    def dead_letters(self) -> DataStream:
        """Encoded dead letters (bytes)."""
        return self._part(Tag.DEAD_LETTER, Types.PRIMITIVE_ARRAY(Types.BYTE()))

    @cached_property
    def profiles(self) -> DataStream:
        """Volume profiles (ProfileRecord)."""
        return self._part(Tag.PROFILE, Types.PICKLED_BYTE_ARRAY())

    @cached_property
    def indicators(self) -> DataStream:
        """Indicators (IndicatorRecord)."""
        return self._part(Tag.INDICATOR, Types.PICKLED_BYTE_ARRAY())

    @cached_property
    def signals(self) -> DataStream:
        """Rules signals (Signal)."""
        return self._part(Tag.SIGNAL, Types.PICKLED_BYTE_ARRAY())

    @cached_property
    def signal_requests(self) -> DataStream:
        """Closed bars to analyse by the inference operator (SignalRequest)."""
        return self._part(Tag.SIGNAL_REQUEST, Types.PICKLED_BYTE_ARRAY())


def build_pipeline(
    raw: DataStream,
    config: PipelineConfig,
    analytics: AnalyticsConfig | None = None,
    signals: SignalConfig | None = None,
    *,
    pipelined_commits: bool = True,
) -> PipelineStreams:
    """Parse and validate, assign event time, then everything per instrument.

    ``pipelined_commits``: the series worker pipelines its keyed-state commits (what a live
    job wants: small bundles; a bounded replay's large bundles gain nothing from it).

    Roll-ups follow ``config.rollup_timeframes``; profiles and indicators ``analytics`` and
    signals ``signals`` (None: off). Input of another timeframe than 1m (a replayed 1h
    archive) is upserted and stored as it is, never rolled up.
    """
    batches = batch_records(
        raw,
        "batch-records",
        max_records=config.source_batch_records,
        max_bytes=config.source_batch_bytes,
        max_delay_ms=config.source_batch_ms,
    )
    ingest_input = batches
    ingest_parallelism = None
    if config.source_parallelism:
        batches.set_parallelism(config.source_parallelism)
        ingest_parallelism = min(config.source_parallelism, environment_parallelism(raw))
        if ingest_parallelism < config.source_parallelism:
            # Each source subtask to one ingest subtask: its batches keep their order.
            ingest_input = batches.rescale()
    ingested = (
        ingest_input.process(IngestFunction(), output_type=INGEST_ROW_TYPE)
        .name("ingest")
        .uid("ingest")
    )
    timestamped = source_watermarks(
        ingested,
        "event-time-watermarks",
        KEYED_ROW_TYPE,
        out_of_orderness_ms=config.max_out_of_orderness_ms,
        idleness_ms=config.idleness_ms,
        batch_end_key=BATCH_END_KEY,
    )
    if ingest_parallelism:
        ingested.set_parallelism(ingest_parallelism)
        timestamped.set_parallelism(ingest_parallelism)
    series = key_by_first_field(timestamped, Types.PRIMITIVE_ARRAY(Types.BYTE())).process(
        series_function(config, analytics, signals, pipelined_commits=pipelined_commits),
        output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()),
    )
    # An instrument with no input after a restore relies on its timers being in the checkpoint.
    records = (
        timer_safe_checkpoints(series).name("series").uid("series").slot_sharing_group(SERIES_GROUP)
    )
    return PipelineStreams(records)
