"""Thin PyFlink wrappers around the plain-Python logic of ``udfs`` (record, upsert).

Each wrapper validates nothing itself and decides nothing itself: it moves records between
Flink and the functions in ``udfs.record`` / ``udfs.upsert``, keeps state, and counts.
Rejected input leaves through the ``DEAD_LETTERS`` side output as encoded ``DeadLetter``s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyflink.common import Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.record import (
    InvalidKline,
    Kline,
    VersionedBar,
    decode_kline,
    encode_kline,
    timeframe_ms,
)
from udfs.upsert import BarState, UpsertOutcome, decide_upsert, is_beyond_lateness

DEAD_LETTERS = OutputTag("dead-letters", Types.PRIMITIVE_ARRAY(Types.BYTE()))


class ParseKlineFunction(ProcessFunction):
    """Bytes from Kafka -> validated ``Kline``; anything invalid -> dead letter with its reason."""

    def open(self, runtime_context: RuntimeContext) -> None:
        metrics = runtime_context.get_metrics_group()
        self.records_in = metrics.counter("records_in")
        self.records_rejected = metrics.counter("records_rejected")

    def process_element(self, value: bytes | str, ctx: ProcessFunction.Context) -> Iterator[Any]:
        # Kafka delivers bytes; ``from_collection`` in tests can only carry str.
        self.records_in.inc()
        try:
            yield decode_kline(value)
        except InvalidKline as exc:
            self.records_rejected.inc()
            original = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            yield DEAD_LETTERS, encode_dead_letter(
                DeadLetter(reason=exc.reason, stage="validate", original=original)
            )


class KlineTimestampAssigner(TimestampAssigner):
    """Event time of a bar is its open time: a bar belongs to the window its minute starts."""

    def extract_timestamp(self, value: Kline, record_timestamp: int) -> int:
        return value.open_time


class UpsertBarFunction(KeyedProcessFunction):
    """Keyed by series: collapse the updates of each 1m bar to the ones worth emitting.

    State: one ``BarState`` per open_time (MapState), dropped by an event-time timer once the
    bar is older than the allowed lateness. Updates that arrive after that go to the dead
    letters with reason ``late``.
    """

    def __init__(self, allowed_lateness_ms: int) -> None:
        self.allowed_lateness_ms = allowed_lateness_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        self.bars = runtime_context.get_map_state(
            MapStateDescriptor("bars", Types.LONG(), Types.PICKLED_BYTE_ARRAY())
        )
        metrics = runtime_context.get_metrics_group()
        self.upserts_emitted = metrics.counter("upserts_emitted")
        self.updates_dropped = metrics.counter("updates_dropped")
        self.late_rejected = metrics.counter("late_rejected")

    def process_element(self, value: Kline, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        watermark = ctx.timer_service().current_watermark()
        if is_beyond_lateness(value, watermark, self.allowed_lateness_ms):
            self.late_rejected.inc()
            yield DEAD_LETTERS, encode_dead_letter(
                DeadLetter(
                    reason=(
                        f"late: bar {value.open_time} closed more than "
                        f"{self.allowed_lateness_ms} ms before the watermark {watermark}"
                    ),
                    stage="upsert",
                    original=encode_kline(value),
                    key=value.series_key,
                )
            )
            return
        previous: BarState | None = self.bars.get(value.open_time)
        decision = decide_upsert(previous, value)
        if previous is None:
            ctx.timer_service().register_event_time_timer(
                value.close_time + self.allowed_lateness_ms + 1
            )
        if decision.state != previous:
            self.bars.put(value.open_time, decision.state)
        if decision.outcome.emits:
            self.upserts_emitted.inc()
            yield VersionedBar(value, decision.version)
        else:
            self.updates_dropped.inc()

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        length = timeframe_ms(str(ctx.get_current_key()).rsplit(":", 1)[1])
        expired = [
            open_time
            for open_time in self.bars.keys()
            if open_time + length + self.allowed_lateness_ms <= timestamp
        ]
        for open_time in expired:
            self.bars.remove(open_time)
        return iter(())


__all__ = [
    "DEAD_LETTERS",
    "KlineTimestampAssigner",
    "ParseKlineFunction",
    "UpsertBarFunction",
    "UpsertOutcome",
]
