"""Thin PyFlink wrappers that roll 1m bars up into 5m .. 1d bars (maths: ``udfs.rollup``).

One window operator computes every roll-up timeframe: ``RollupWindowAssigner`` puts each 1m
bar into one UTC-aligned window per timeframe (the window's length names its timeframe),
``RollupAggregateFunction`` keeps the window's 1m bars by open time, ``RollupTrigger`` fires
early on each closed 1m bar (optionally on each in-progress update), finally when the
watermark passes the window end, again for each late 1m bar within the allowed lateness,
and (optionally) on a processing-time fallback when no watermark comes, and
``RollupWindowFunction`` turns the aggregate into a versioned bar.

``WindowGateFunction`` runs before the window: it passes only 1m bars and dead-letters a bar
that is too late for its smallest window, so a bar is rolled up into all timeframes or into
none. The window's own late-data side output catches anything else (it cannot happen while
the gate runs first) and ``LateWindowInputToDeadLetter`` turns it into dead letters as well.
Both serve the volume-profile windows too (``WindowKind``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pyflink.common import Types
from pyflink.datastream import (
    AggregateFunction,
    MapFunction,
    OutputTag,
    ProcessFunction,
    ProcessWindowFunction,
    RuntimeContext,
)
from pyflink.datastream.window import (
    TimeWindow,
    TimeWindowSerializer,
    Trigger,
    TriggerResult,
    WindowAssigner,
)

from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.flink_functions import DEAD_LETTERS
from udfs.record import TIMEFRAME_MS, VersionedBar, encode_kline
from udfs.rollup import (
    SOURCE_TIMEFRAME,
    TIMEFRAME_BY_MS,
    RollupAccumulator,
    RollupSummary,
    add_bar,
    build_rollup_bar,
    is_late_for_rollups,
    is_window_closed,
    merge_accumulators,
    summarize,
    window_starts,
)

LATE_ROLLUP_INPUT = OutputTag("late-rollup-input", Types.PICKLED_BYTE_ARRAY())


@dataclass(frozen=True, slots=True)
class WindowKind:
    """What a family of 1m-bar windows (roll-ups, volume profiles) is called.

    ``stage`` names its dead letters and metrics (``{stage}_late_rejected``) and its gate and
    late-letter operators (``{stage}-gate``, ``{stage}-late-dead-letters``); the nouns go into
    the dead letters' reasons.
    """

    stage: str
    window_noun: str
    output_noun: str


ROLLUP_WINDOWS = WindowKind(stage="rollup", window_noun="roll-up window", output_noun="roll-ups")


def _late_letter(bar: VersionedBar, stage: str, reason: str) -> bytes:
    return encode_dead_letter(
        DeadLetter(
            reason=reason,
            stage=stage,
            original=encode_kline(bar.kline),
            key=bar.kline.series_key,
        )
    )


class WindowGateFunction(ProcessFunction):
    """1m bars within the windows' allowed lateness pass; later ones become dead letters.

    Other timeframes (replayed archives) are stored by the job as they are but not windowed.
    The gate sees a watermark at least as new as the window operator downstream, so a bar it
    passes is accepted by every window of ``kind``.
    """

    def __init__(self, kind: WindowKind, smallest_length_ms: int, allowed_lateness_ms: int) -> None:
        self.kind = kind
        self.smallest_length_ms = smallest_length_ms
        self.allowed_lateness_ms = allowed_lateness_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        metrics = runtime_context.get_metrics_group()
        self.late_rejected = metrics.counter(f"{self.kind.stage}_late_rejected")
        self.not_windowed = metrics.counter(f"{self.kind.stage}_skipped_timeframe")

    def process_element(self, value: VersionedBar, ctx: ProcessFunction.Context) -> Iterator[Any]:
        kline = value.kline
        if kline.timeframe != SOURCE_TIMEFRAME:
            self.not_windowed.inc()
            return
        watermark = ctx.timer_service().current_watermark()
        if is_late_for_rollups(
            kline.open_time, self.smallest_length_ms, watermark, self.allowed_lateness_ms
        ):
            self.late_rejected.inc()
            kind = self.kind
            yield (
                DEAD_LETTERS,
                _late_letter(
                    value,
                    kind.stage,
                    f"late: 1m bar {kline.open_time} is more than {self.allowed_lateness_ms} ms "
                    f"behind the end of its {kind.window_noun}s (watermark {watermark}); "
                    f"the 1m bar is stored, its {kind.output_noun} are not updated",
                ),
            )
            return
        yield value


class LateWindowInputToDeadLetter(MapFunction):
    """A window operator's late 1m bars (side output) -> dead letters with reason ``late``."""

    def __init__(self, kind: WindowKind) -> None:
        self.kind = kind

    def open(self, runtime_context: RuntimeContext) -> None:
        self.late_rejected = runtime_context.get_metrics_group().counter(
            f"{self.kind.stage}_late_rejected"
        )

    def map(self, value: VersionedBar) -> bytes:
        self.late_rejected.inc()
        return _late_letter(
            value,
            self.kind.stage,
            f"late: 1m bar {value.kline.open_time} arrived after every {self.kind.window_noun} "
            "it belongs to was past its allowed lateness",
        )


class RollupWindowAssigner(WindowAssigner):
    """Each 1m bar goes into one UTC-epoch-aligned event-time window per roll-up timeframe."""

    def __init__(self, timeframes: Sequence[str]) -> None:
        self.lengths_ms = [TIMEFRAME_MS[name] for name in timeframes]

    def assign_windows(
        self, element: VersionedBar, timestamp: int, context: WindowAssigner.WindowAssignerContext
    ) -> Iterable[TimeWindow]:
        open_time = element.kline.open_time
        return [
            TimeWindow(start, start + length)
            for start, length in zip(
                window_starts(open_time, self.lengths_ms), self.lengths_ms, strict=True
            )
        ]

    def get_default_trigger(self, env: Any) -> Trigger:
        return RollupTrigger(fire_on_in_progress=False, idle_close_ms=0, live_horizon_ms=-1)

    def get_window_serializer(self) -> TimeWindowSerializer:
        return TimeWindowSerializer()

    def is_event_time(self) -> bool:
        return True

    def __repr__(self) -> str:
        names = ", ".join(TIMEFRAME_BY_MS[length] for length in self.lengths_ms)
        return f"RollupWindowAssigner({names})"


class RollupTrigger(Trigger):
    """When a roll-up window emits.

    - early (live): on each closed 1m bar (and on each in-progress update if
      ``fire_on_in_progress``), while the watermark is before the window end, for a window
      that is live by the wall clock: its end is at most ``live_horizon_ms`` in the past
      (``live_horizon_ms`` < 0: every window). A replay of old data thus emits each window
      once, when the watermark closes it, instead of once per 1m bar it holds;
    - final: when the watermark passes the window end (an event-time timer);
    - correction: on every 1m bar that arrives after that, within the allowed lateness;
    - fallback: ``idle_close_ms`` after the window end by the wall clock, if the watermark has
      not come by then (all input stopped). Only windows whose end is still ahead of the
      wall clock when a bar arrives (live data) get this timer; replays of old data never do.
    """

    def __init__(
        self, fire_on_in_progress: bool, idle_close_ms: int, live_horizon_ms: int = -1
    ) -> None:
        self.fire_on_in_progress = fire_on_in_progress
        self.idle_close_ms = idle_close_ms
        self.live_horizon_ms = live_horizon_ms

    def on_element(
        self,
        element: VersionedBar,
        timestamp: int,
        window: TimeWindow,
        ctx: Trigger.TriggerContext,
    ) -> TriggerResult:
        max_timestamp = window.max_timestamp()
        if max_timestamp <= ctx.get_current_watermark():
            return TriggerResult.FIRE
        ctx.register_event_time_timer(max_timestamp)
        now = ctx.get_current_processing_time()
        if self.idle_close_ms > 0:
            due = max_timestamp + self.idle_close_ms
            if due > now:
                ctx.register_processing_time_timer(due)
        if not (element.kline.is_closed or self.fire_on_in_progress):
            return TriggerResult.CONTINUE
        if self.live_horizon_ms < 0 or max_timestamp + self.live_horizon_ms >= now:
            return TriggerResult.FIRE
        return TriggerResult.CONTINUE

    def on_event_time(
        self, time: int, window: TimeWindow, ctx: Trigger.TriggerContext
    ) -> TriggerResult:
        # The window operator also calls this for its clean-up timer (end + lateness).
        return TriggerResult.FIRE if time == window.max_timestamp() else TriggerResult.CONTINUE

    def on_processing_time(
        self, time: int, window: TimeWindow, ctx: Trigger.TriggerContext
    ) -> TriggerResult:
        if ctx.get_current_watermark() < window.max_timestamp():
            return TriggerResult.FIRE
        return TriggerResult.CONTINUE

    def can_merge(self) -> bool:
        return False

    def on_merge(self, window: TimeWindow, ctx: Trigger.OnMergeContext) -> None:
        raise NotImplementedError("roll-up windows never merge")

    def clear(self, window: TimeWindow, ctx: Trigger.TriggerContext) -> None:
        ctx.delete_event_time_timer(window.max_timestamp())
        if self.idle_close_ms > 0:
            ctx.delete_processing_time_timer(window.max_timestamp() + self.idle_close_ms)


class RollupAggregateFunction(AggregateFunction):
    """The window's 1m bars by open time (a newer version replaces the older one)."""

    def create_accumulator(self) -> RollupAccumulator:
        return RollupAccumulator()

    def add(self, value: VersionedBar, accumulator: RollupAccumulator) -> RollupAccumulator:
        # Wall clock of arrival: decides whether the processing-time fallback may close it.
        return add_bar(accumulator, value, time.time_ns() // 1_000_000)

    def get_result(self, accumulator: RollupAccumulator) -> RollupSummary:
        return summarize(accumulator)

    def merge(self, acc_a: RollupAccumulator, acc_b: RollupAccumulator) -> RollupAccumulator:
        return merge_accumulators(acc_a, acc_b)


def firing_is_final(
    context: ProcessWindowFunction.Context, idle_close_ms: int, first_arrival_ms: int
) -> bool:
    """Whether this firing of ``context``'s window emits it closed (``is_window_closed``)."""
    window: TimeWindow = context.window()
    return is_window_closed(
        window.max_timestamp(),
        context.current_watermark(),
        context.current_processing_time(),
        idle_close_ms,
        first_arrival_ms,
    )


class RollupWindowFunction(ProcessWindowFunction):
    """Aggregate of one window -> the versioned roll-up bar (timeframe from the window size)."""

    def __init__(self, idle_close_ms: int) -> None:
        self.idle_close_ms = idle_close_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        metrics = runtime_context.get_metrics_group()
        self.emitted = metrics.counter("rollups_emitted")
        self.emitted_closed = metrics.counter("rollups_emitted_closed")

    def process(
        self,
        key: str,
        context: ProcessWindowFunction.Context,
        elements: Iterable[RollupSummary],
    ) -> Iterator[VersionedBar]:
        window: TimeWindow = context.window()
        for summary in elements:  # exactly one: the aggregate
            closed = firing_is_final(context, self.idle_close_ms, summary.first_arrival_ms)
            self.emitted.inc()
            if closed:
                self.emitted_closed.inc()
            yield build_rollup_bar(
                summary, TIMEFRAME_BY_MS[window.end - window.start], window.start, closed=closed
            )

    def clear(self, context: ProcessWindowFunction.Context) -> None:
        return None


__all__ = [
    "LATE_ROLLUP_INPUT",
    "ROLLUP_WINDOWS",
    "LateWindowInputToDeadLetter",
    "RollupAggregateFunction",
    "RollupTrigger",
    "RollupWindowAssigner",
    "RollupWindowFunction",
    "WindowGateFunction",
    "WindowKind",
    "firing_is_final",
]
