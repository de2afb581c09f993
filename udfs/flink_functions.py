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
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.record import (
    InvalidKline,
    Kline,
    VersionedBar,
    decode_kline,
    encode_kline,
    timeframe_ms,
)
from udfs.upsert import (
    SeriesClock,
    SeriesMirror,
    UpsertOutcome,
    decide_upsert,
    is_beyond_lateness,
)

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
            yield (
                DEAD_LETTERS,
                encode_dead_letter(
                    DeadLetter(reason=exc.reason, stage="validate", original=original)
                ),
            )


class KlineTimestampAssigner(TimestampAssigner):
    """Event time of a bar is its open time: a bar belongs to the window its minute starts."""

    def extract_timestamp(self, value: Kline, record_timestamp: int) -> int:
        return value.open_time


class UpsertBarFunction(KeyedProcessFunction):
    """Keyed by series: collapse the updates of each 1m bar to the ones worth emitting.

    State per series: one ``BarState`` per open_time (MapState) and the series clock (the
    newest open_time seen). Lateness is measured against the series' own clock, not the
    job-wide watermark, so a replay that sends one series after another, or a series that
    lags others, loses nothing. Bars older than the allowed lateness are forgotten as the
    clock advances; an update for such a bar goes to the dead letters with reason ``late``.

    Reads from PyFlink state are synchronous round trips to the JVM, so each instance keeps
    a mirror of its series' state in Python (``SeriesMirror``): Flink state is written on
    every change (that is what checkpoints see), but only read once per series, when this
    instance first meets it (after a start or a restore).
    """

    def __init__(self, allowed_lateness_ms: int) -> None:
        self.allowed_lateness_ms = allowed_lateness_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        self.bars = runtime_context.get_map_state(
            MapStateDescriptor("bars", Types.LONG(), Types.PICKLED_BYTE_ARRAY())
        )
        self.clock = runtime_context.get_state(
            ValueStateDescriptor("series-clock", Types.PICKLED_BYTE_ARRAY())
        )
        self.mirrors: dict[str, SeriesMirror] = {}
        metrics = runtime_context.get_metrics_group()
        self.upserts_emitted = metrics.counter("upserts_emitted")
        self.updates_dropped = metrics.counter("updates_dropped")
        self.late_rejected = metrics.counter("late_rejected")

    def _mirror(self, value: Kline) -> SeriesMirror:
        mirror = self.mirrors.get(value.series_key)
        if mirror is None:
            stored: SeriesClock | None = self.clock.value()
            if stored is None:
                mirror = SeriesMirror(SeriesClock(value.open_time, value.open_time), {})
                self.clock.update(mirror.clock)
            else:
                mirror = SeriesMirror(stored, dict(self.bars.items()))
            self.mirrors[value.series_key] = mirror
        return mirror

    def process_element(self, value: Kline, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        mirror = self._mirror(value)
        if is_beyond_lateness(value, mirror.clock.newest_open_time, self.allowed_lateness_ms):
            self.late_rejected.inc()
            yield (
                DEAD_LETTERS,
                encode_dead_letter(
                    DeadLetter(
                        reason=(
                            f"late: bar {value.open_time} closed more than "
                            f"{self.allowed_lateness_ms} ms before the newest bar of its series "
                            f"({mirror.clock.newest_open_time})"
                        ),
                        stage="upsert",
                        original=encode_kline(value),
                        key=value.series_key,
                    )
                ),
            )
            return
        advanced = mirror.clock.advance(
            value.open_time, timeframe_ms(value.timeframe), self.allowed_lateness_ms
        )
        if advanced.clock != mirror.clock:
            mirror.clock = advanced.clock
            self.clock.update(advanced.clock)
        if advanced.expire_before is not None:
            for open_time in mirror.expire(advanced.expire_before):
                self.bars.remove(open_time)
        previous = mirror.bars.get(value.open_time)
        decision = decide_upsert(previous, value)
        if decision.state != previous:
            mirror.bars[value.open_time] = decision.state
            self.bars.put(value.open_time, decision.state)
        if decision.outcome.emits:
            self.upserts_emitted.inc()
            yield VersionedBar(value, decision.version)
        else:
            self.updates_dropped.inc()


__all__ = [
    "DEAD_LETTERS",
    "KlineTimestampAssigner",
    "ParseKlineFunction",
    "UpsertBarFunction",
    "UpsertOutcome",
]
