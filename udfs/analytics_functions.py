"""Thin PyFlink wrappers of the analytics branch: volume profiles and indicators, and sinks.

The logic is plain Python in ``udfs.analytics`` (state objects, records), on top of
``udfs.volume_profile`` and ``udfs.indicators`` (the maths).

**Profiles** are a window operator of their own (uid ``volume-profiles``) beside the roll-up
one, built from the roll-ups' parts: ``RollupWindowAssigner`` puts each 1m bar into one
UTC-aligned window per profile timeframe and ``RollupTrigger`` fires it like a roll-up window
(on each closed 1m bar while open, finally at the window end, again for each correction
within the allowed lateness; optionally on the wall clock when no watermark comes).
:class:`ProfileAggregateFunction` keeps a :class:`~udfs.analytics.ProfileWindow` and
:class:`ProfileWindowFunction` turns it into a :class:`~udfs.analytics.ProfileRecord`.
The roll-ups' gate runs first (``WindowGateFunction`` with :data:`PROFILE_WINDOWS`): a 1m
bar too late for the smallest profile window is dead-lettered (stage ``profile``), so a bar
goes into every profile window or into none.

**Indicators**: :class:`IndicatorFunction`, keyed by series, keeps an
:class:`~udfs.analytics.IndicatorSeries` per series in one ValueState (written once per
closed bar, read once per series and instance: a Python-side mirror, as ``UpsertBarFunction``
does, because every state read is a round trip to the JVM).

**Sinks**: :class:`ProfileSink` and :class:`IndicatorSink` write ClickHouse
(``volume_profile``, ``indicators``) and Redis (``vp:``, ``ind:``) like ``SignalSink``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from pyflink.common import Types
from pyflink.datastream import (
    AggregateFunction,
    FilterFunction,
    KeyedProcessFunction,
    OutputTag,
    ProcessWindowFunction,
    RuntimeContext,
)
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.datastream.window import TimeWindow

from connectors.flink_sinks import BatchingSinkFunction
from jobs.config import SinkConfig
from udfs.analytics import (
    IndicatorRecord,
    IndicatorSeries,
    ProfileRecord,
    ProfileWindow,
    TooOldBarError,
    add_profile_bar,
    build_profile_record,
    indicator_horizon_ms,
    merge_profile_windows,
    newest_per_bar,
    newest_per_window,
)
from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.flink_functions import DEAD_LETTERS
from udfs.record import VersionedBar, encode_kline
from udfs.rollup import TIMEFRAME_BY_MS
from udfs.rollup_functions import WindowKind, firing_is_final

LATE_PROFILE_INPUT = OutputTag("late-profile-input", Types.PICKLED_BYTE_ARRAY())
PROFILE_WINDOWS = WindowKind(
    stage="profile", window_noun="volume profile window", output_noun="volume profiles"
)


def _bar_letter(bar: VersionedBar, stage: str, reason: str) -> bytes:
    return encode_dead_letter(
        DeadLetter(
            reason=reason, stage=stage, original=encode_kline(bar.kline), key=bar.kline.series_key
        )
    )


# ---------------------------------------------------------------------------------------
# Profiles


class ProfileAggregateFunction(AggregateFunction):
    """The window's 1m bars (newest version of each minute) in a ``ProfileWindow``."""

    def __init__(self, rows: int, row_size: float | None, max_rows: int) -> None:
        self.rows = rows
        self.row_size = row_size
        self.max_rows = max_rows

    def create_accumulator(self) -> ProfileWindow:
        return ProfileWindow(rows=self.rows, row_size=self.row_size, max_rows=self.max_rows)

    def add(self, value: VersionedBar, accumulator: ProfileWindow) -> ProfileWindow:
        # A validated Kline always fits the profile maths (finite, low <= high, volume >= 0).
        add_profile_bar(accumulator, value, time.time_ns() // 1_000_000)
        return accumulator

    def get_result(self, accumulator: ProfileWindow) -> ProfileWindow:
        return accumulator

    def merge(self, acc_a: ProfileWindow, acc_b: ProfileWindow) -> ProfileWindow:
        return merge_profile_windows(acc_a, acc_b)


class ProfileWindowFunction(ProcessWindowFunction):
    """A profile window's accumulator -> the versioned ``ProfileRecord`` (or a dead letter)."""

    def __init__(self, idle_close_ms: int) -> None:
        self.idle_close_ms = idle_close_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        metrics = runtime_context.get_metrics_group()
        self.emitted = metrics.counter("profiles_emitted")
        self.emitted_closed = metrics.counter("profiles_emitted_closed")
        self.failed = metrics.counter("profiles_failed")

    def process(
        self,
        key: str,
        context: ProcessWindowFunction.Context,
        elements: Iterable[ProfileWindow],
    ) -> Iterator[Any]:
        window: TimeWindow = context.window()
        timeframe = TIMEFRAME_BY_MS[window.end - window.start]
        for accumulator in elements:  # exactly one: the aggregate
            closed = firing_is_final(context, self.idle_close_ms, accumulator.first_arrival_ms)
            try:
                record = build_profile_record(accumulator, timeframe, window.start, closed=closed)
            except ValueError as exc:  # e.g. a fixed row size too small for the prices
                self.failed.inc()
                yield DEAD_LETTERS, _profile_letter(key, timeframe, window.start, str(exc))
                continue
            self.emitted.inc()
            if closed:
                self.emitted_closed.inc()
            yield record

    def clear(self, context: ProcessWindowFunction.Context) -> None:
        return None


def _profile_letter(series_key: str, timeframe: str, window_start: int, reason: str) -> bytes:
    """A profile that cannot be computed: the window it belongs to is the original."""
    original = orjson.dumps(
        {"series": series_key, "timeframe": timeframe, "window_start": window_start}
    )
    return encode_dead_letter(
        DeadLetter(
            reason=f"volume profile not computed: {reason}",
            stage="profile",
            original=original,
            key=series_key,
        )
    )


# ---------------------------------------------------------------------------------------
# Indicators


class ClosedBarsFilter(FilterFunction):
    """Closed bars of every timeframe (the upserted 1m bars and the roll-ups' closed ones)."""

    def filter(self, value: VersionedBar) -> bool:
        return value.kline.is_closed


class IndicatorFunction(KeyedProcessFunction):
    """Keyed by series: RSI 14, MACD 12/26/9 and Bollinger 20/2 of each closed bar.

    Emits one :class:`IndicatorRecord` per closed bar version, and again for the later bars
    of the series when an older bar arrives or is corrected (see ``udfs.analytics``). A bar
    older than the series' horizon is dead-lettered (stage ``indicators``).
    """

    def __init__(self, allowed_lateness_ms: int) -> None:
        self.allowed_lateness_ms = allowed_lateness_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("indicator-series", Types.PICKLED_BYTE_ARRAY())
        )
        self.mirrors: dict[str, IndicatorSeries] = {}
        metrics = runtime_context.get_metrics_group()
        self.emitted = metrics.counter("indicators_emitted")
        self.recomputed = metrics.counter("indicators_recomputed")
        self.dropped = metrics.counter("indicator_bars_dropped")
        self.rejected = metrics.counter("indicator_bars_rejected")

    def _series(self, value: VersionedBar) -> IndicatorSeries:
        key = value.kline.series_key
        series = self.mirrors.get(key)
        if series is None:
            series = self.state.value() or IndicatorSeries(
                indicator_horizon_ms(value.kline.timeframe, self.allowed_lateness_ms)
            )
            self.mirrors[key] = series
        return series

    def process_element(
        self, value: VersionedBar, ctx: KeyedProcessFunction.Context
    ) -> Iterator[Any]:
        kline = value.kline
        series = self._series(value)
        try:
            emissions = series.apply(kline.open_time, kline.close, value.version)
        except TooOldBarError as exc:
            self.rejected.inc()
            yield DEAD_LETTERS, _bar_letter(value, "indicators", str(exc))
            return
        except ValueError as exc:  # indicators overflowing float64: never published
            self.rejected.inc()
            yield DEAD_LETTERS, _bar_letter(value, "indicators", f"indicators not computed: {exc}")
            return
        if not emissions:
            self.dropped.inc()
            return
        self.state.update(series)
        if len(emissions) > 1:  # an older bar: the later bars were recomputed
            self.recomputed.inc(len(emissions) - 1)
        self.emitted.inc(len(emissions))
        for emission in emissions:
            yield IndicatorRecord(
                exchange=kline.exchange,
                symbol=kline.symbol,
                timeframe=kline.timeframe,
                open_time=emission.open_time,
                values=emission.values,
                version=emission.version,
            )


# ---------------------------------------------------------------------------------------
# Sinks

# Profile rows carry arrays: smaller ClickHouse batches than bars.
_MAX_ANALYTICS_BATCH = 5000


class _AnalyticsSink(BatchingSinkFunction):
    """Records into one ClickHouse table and one kind of Redis hash (compare-and-set).

    Of several emissions of one window or bar in a batch only the newest version is written
    (what ReplacingMergeTree and the compare-and-set keep anyway).
    """

    table: str
    redis_kind: str

    def __init__(self, config: SinkConfig) -> None:
        super().__init__(
            min(config.clickhouse_batch_rows, _MAX_ANALYTICS_BATCH), config.clickhouse_flush_ms
        )
        self.clickhouse_url = config.clickhouse_url
        self.retry_s = config.clickhouse_retry_s
        self.redis_url = config.redis_url
        self.ttl_s = config.redis_ttl_s
        self.publish = config.redis_publish

    def connect(self) -> None:
        self.clickhouse, self.redis = _open_writers(
            self.clickhouse_url, self.retry_s, self.redis_url, self.ttl_s, self.publish
        )

    def newest(self, batch: Sequence[Any]) -> list[Any]:
        """The newest version of each window or bar in ``batch``."""
        raise NotImplementedError

    def bar_time(self, record: Any) -> int:
        """The time the Redis compare-and-set orders by (with the version)."""
        raise NotImplementedError

    def write_batch(self, batch: Sequence[Any]) -> int:
        from connectors.redis_store import CasItem

        newest = self.newest(batch)
        written = self.clickhouse.insert_rows(self.table, [r.row() for r in newest])
        self.redis.write_hashes(
            self.redis_kind,
            [
                CasItem(r.exchange, r.symbol, r.timeframe, self.bar_time(r), r.version,
                        r.hash_fields())
                for r in newest
            ],
        )  # fmt: skip
        return written

    def disconnect(self) -> None:
        _close_writers(self)


class ProfileSink(_AnalyticsSink):
    """Profiles into ClickHouse ``volume_profile`` and Redis ``vp:`` hashes."""

    table = "volume_profile"
    redis_kind = "vp"

    def newest(self, batch: Sequence[ProfileRecord]) -> list[ProfileRecord]:
        return list(newest_per_window(batch))

    def bar_time(self, record: ProfileRecord) -> int:
        return record.window_start


class IndicatorSink(_AnalyticsSink):
    """Indicators into ClickHouse ``indicators`` and Redis ``ind:`` hashes."""

    table = "indicators"
    redis_kind = "ind"

    def newest(self, batch: Sequence[IndicatorRecord]) -> list[IndicatorRecord]:
        return list(newest_per_bar(batch))

    def bar_time(self, record: IndicatorRecord) -> int:
        return record.open_time


def _open_writers(
    clickhouse_url: str, retry_s: float, redis_url: str, ttl_s: int | None, publish: bool
) -> tuple[Any, Any]:
    from connectors.clickhouse import RetryPolicy, open_writer
    from connectors.redis_store import RedisBarWriter

    retry = RetryPolicy(attempts=10_000, base_delay_s=0.2, max_delay_s=5.0, deadline_s=retry_s)
    clickhouse = open_writer(clickhouse_url, migrate_schema=True, retry=retry)
    try:
        redis_writer = RedisBarWriter(redis_url, ttl_s=ttl_s, publish=publish)
    except BaseException:
        clickhouse.close()
        raise
    return clickhouse, redis_writer


def _close_writers(sink: BatchingSinkFunction) -> None:
    for name in ("clickhouse", "redis"):
        writer = getattr(sink, name, None)
        if writer is not None:
            writer.close()


__all__ = [
    "LATE_PROFILE_INPUT",
    "PROFILE_WINDOWS",
    "ClosedBarsFilter",
    "IndicatorFunction",
    "IndicatorSink",
    "ProfileAggregateFunction",
    "ProfileSink",
    "ProfileWindowFunction",
]
