"""The analytics branch of the job: volume profiles per window and indicators per series.

``build_analytics(streams, pipeline, config)`` is pure like ``jobs.pipeline.build_pipeline``:
it takes the pipeline's streams (profiles read the upserted 1m bars, indicators the closed
bars of every timeframe, roll-ups included) and returns the streams of
:class:`~udfs.analytics.ProfileRecord` and :class:`~udfs.analytics.IndicatorRecord` and
their dead letters; tests read them with
``execute_and_collect()``. ``attach_analytics_sinks`` writes them to ClickHouse
(``volume_profile``, ``indicators``) and Redis (``vp:``, ``ind:``); ``jobs.job`` calls both.

Operators (each with ``.name()`` = ``.uid()``):

- ``profile-gate`` -> ``volume-profiles`` (window operator over the 1m bars, one window per
  series and profile timeframe, fired like the roll-up windows) and
  ``profile-late-dead-letters``;
- ``indicator-closed-bars`` (one filter per part of the pipeline's output, chained into its
  producer) -> ``indicators`` (keyed by series);
- sinks ``profiles-sink`` and ``indicators-sink``.

Why a second window operator instead of emitting profiles from the roll-up one: the roll-up
operator's state and output stay as they are (savepoints keep working, roll-ups can be off
while profiles are on and the other way round), profiles get their own timeframes and row
settings, and its cost shows on its own in the dashboard. The price is a second copy of the
window's 1m bars in state (six floats per minute, compact numpy) and a second keyed
exchange; ``bench/bench_pipeline.py --analytics compare`` measures it.

This module imports PyFlink only inside its functions, so ``jobs.config`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pyflink.datastream import DataStream

    from jobs.config import AnalyticsConfig, PipelineConfig, SinkConfig
    from jobs.pipeline import PipelineStreams


class AnalyticsStreams(NamedTuple):
    """``profiles`` (ProfileRecord), ``indicators`` (IndicatorRecord), ``dead_letters``
    (encoded bytes); each None when that part is off."""

    profiles: DataStream | None
    indicators: DataStream | None
    dead_letters: DataStream | None


def _series_key(value: object) -> str:
    return value.kline.series_key  # type: ignore[attr-defined]


def build_profiles(
    bars: DataStream, pipeline: PipelineConfig, config: AnalyticsConfig
) -> tuple[DataStream, DataStream]:
    """The profile windows of ``config.profile_timeframes`` -> (profiles, dead letters)."""

    from jobs.pipeline import ANALYTICS_GROUP, gated_windows
    from udfs.analytics_functions import (
        LATE_PROFILE_INPUT,
        PROFILE_WINDOWS,
        ProfileAggregateFunction,
        ProfileWindowFunction,
    )
    from udfs.flink_functions import DEAD_LETTERS
    from udfs.rollup import validate_rollup_timeframes

    profiles, dead_letters = gated_windows(
        bars,
        validate_rollup_timeframes(config.profile_timeframes),
        pipeline,
        kind=PROFILE_WINDOWS,
        aggregate=ProfileAggregateFunction(
            config.profile_rows, config.profile_row_size, config.profile_max_rows
        ),
        window_function=ProfileWindowFunction(pipeline.rollup_idle_close_ms),
        late_tag=LATE_PROFILE_INPUT,
        name="volume-profiles",
        group=ANALYTICS_GROUP,
    )
    # Profiles that cannot be computed (a fixed row size too small) are dead letters too.
    return profiles, dead_letters.union(profiles.get_side_output(DEAD_LETTERS))


def build_indicators(
    streams: PipelineStreams, pipeline: PipelineConfig
) -> tuple[DataStream, DataStream]:
    """Indicators of the closed bars of every series -> (indicators, dead letters)."""
    from pyflink.common import Types

    from jobs.pipeline import ANALYTICS_GROUP, filter_each, key_by_in_group
    from udfs.analytics_functions import ClosedBarsFilter, IndicatorFunction
    from udfs.flink_functions import DEAD_LETTERS

    closed = filter_each(streams.parts(), ClosedBarsFilter(), "indicator-closed-bars")
    indicators = (
        key_by_in_group(closed, _series_key, ANALYTICS_GROUP)
        .process(
            IndicatorFunction(pipeline.allowed_lateness_ms),
            output_type=Types.PICKLED_BYTE_ARRAY(),
        )
        .name("indicators")
        .uid("indicators")
        .slot_sharing_group(ANALYTICS_GROUP)
    )
    return indicators, indicators.get_side_output(DEAD_LETTERS)


def build_analytics(
    streams: PipelineStreams, pipeline: PipelineConfig, config: AnalyticsConfig
) -> AnalyticsStreams:
    """Profiles and indicators of the output of ``build_pipeline``, per ``config``."""
    profiles = indicators = dead_letters = None
    if config.profile_timeframes:
        profiles, dead_letters = build_profiles(streams.upserted, pipeline, config)
    if config.indicators:
        indicators, indicator_letters = build_indicators(streams, pipeline)
        dead_letters = (
            indicator_letters if dead_letters is None else dead_letters.union(indicator_letters)
        )
    return AnalyticsStreams(profiles=profiles, indicators=indicators, dead_letters=dead_letters)


def attach_analytics_sinks(
    streams: AnalyticsStreams, sinks: SinkConfig, *, parallelism: int | None = None
) -> None:
    """Write profiles and indicators through batching, at-least-once sink operators
    (``profiles-sink``, ``indicators-sink``); give ``parallelism=1`` for a ``chdb://`` target.
    """
    from connectors.flink_sinks import attach_sink
    from udfs.analytics_functions import IndicatorSink, ProfileSink

    if streams.profiles is not None:
        attach_sink(streams.profiles, ProfileSink(sinks), "profiles-sink", parallelism=parallelism)
    if streams.indicators is not None:
        attach_sink(
            streams.indicators, IndicatorSink(sinks), "indicators-sink", parallelism=parallelism
        )
