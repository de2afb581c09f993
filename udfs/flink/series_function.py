"""The series operator: one keyed PyFlink function per instrument around ``udfs.series``.

Keyed by ``exchange:symbol``. For every bar it calls :class:`~udfs.series.SeriesProcessor`
(upsert, roll-ups, profiles, indicators, signals) and yields its tagged outputs; its timers
are one event-time timer per instrument at the next watermark with work (a final firing or
a clean-up) and one processing-time timer at the next idle fallback.

State: reads from PyFlink state are blocking round trips to the JVM, so each instance keeps
the instruments it has met in memory (:class:`~udfs.series.InstrumentState`) and reads
keyed state only once per instrument, after a start or a restore. Every change is written
to keyed state as it happens (:class:`~udfs.series.Journal`): PyFlink buffers the writes
and ships them at the end of each bundle, which ends before every checkpoint barrier, so a
checkpoint holds everything this instance knew. What is stored is what cannot be derived:

- ``bar-states`` (MapState): the upsert's state of each bar within the allowed lateness;
- ``window-bars`` (MapState): the 1m bars of the windows still held; the roll-up and
  profile accumulators are rebuilt from them on restore, so a bar costs one small write
  instead of a rewrite of every window it belongs to;
- ``instrument`` (ValueState): clocks, finalised windows, indicator series, signal history.

Silent series are dropped (``ttl_ms``, the job's ``--series-ttl-ms``): each instrument has a
processing-time timer at its last input plus the TTL. When an instrument has had no input
for the TTL by the wall clock and none of its windows is left to fire or clean up (no
timer of the series processor pending), its three states and its in-memory mirrors are
cleared. Instruments with input are never touched, so results for active series do not
change; an instrument that returns after being dropped starts afresh (indicators warm up
again, its upsert state and windows hold only what arrives from then on). A restore does not
know when each instrument was last seen: it counts as a sighting, so a restore can delay a
drop by one TTL but never cause one. ``ttl_ms=0`` keeps every instrument for ever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext, TimeDomain
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from udfs.flink.ingest import DEAD_LETTER_KEY, decode_bars
from udfs.series import (
    InstrumentState,
    Journal,
    SeriesCounters,
    SeriesProcessor,
    SeriesSettings,
    Tag,
    encode_outputs,
)
from udfs.windows import NEVER

# State names: part of savepoint compatibility, never rename.
BAR_STATES: Any = "bar-states"
WINDOW_BARS: Any = "window-bars"
INSTRUMENT_META: Any = "instrument"


class SeriesFunction(KeyedProcessFunction):
    """Keyed by instrument: everything the job computes per series (``udfs.series``)."""

    def __init__(
        self,
        settings: SeriesSettings,
        ttl_ms: int = 0,
        worker_setup: Callable[[], None] | None = None,
    ) -> None:
        """``worker_setup``: called first in ``open`` (in the Python worker), e.g. to tune
        PyFlink there; a module-level function, so the job graph pickles it by name."""
        if ttl_ms < 0:
            raise ValueError(f"ttl_ms must be >= 0 (0: never drop), got {ttl_ms}")
        self.settings = settings
        self.ttl_ms = ttl_ms
        self.worker_setup = worker_setup

    def open(self, runtime_context: RuntimeContext) -> None:
        if self.worker_setup is not None:
            self.worker_setup()
        pickled = Types.PICKLED_BYTE_ARRAY()
        self.meta_state = runtime_context.get_state(ValueStateDescriptor(INSTRUMENT_META, pickled))
        self.bar_states = runtime_context.get_map_state(
            MapStateDescriptor(BAR_STATES, Types.LONG(), pickled)
        )
        self.window_bars = runtime_context.get_map_state(
            MapStateDescriptor(WINDOW_BARS, Types.LONG(), pickled)
        )
        self.processor = SeriesProcessor(self.settings)
        self.instruments: dict[str, InstrumentState] = {}
        self.event_timers: dict[str, int] = {}
        self.processing_timers: dict[str, int] = {}
        # TTL: wall-clock time of each instrument's last input (or restore), and its pending
        # TTL timer.
        self.last_seen: dict[str, int] = {}
        self.ttl_timers: dict[str, int] = {}
        self.journal = Journal()
        metrics = runtime_context.get_metrics_group()
        self.records_in = metrics.counter("series_records_in")
        self.series_dropped = metrics.counter("series_dropped")
        metrics.gauge("series_held", lambda: len(self.instruments))
        counters = self.processor.counters
        for name in SeriesCounters.__slots__:
            metrics.gauge(name, _reader(counters, name))

    def _instrument(self, key: str, now_ms: int) -> InstrumentState:
        state = self.instruments.get(key)
        if state is None:
            meta = self.meta_state.value()
            if meta is None:
                state = self.processor.new_state()
            else:
                state = self.processor.restore(
                    meta, list(self.bar_states.items()), list(self.window_bars.values()), now_ms
                )
            self.instruments[key] = state
        return state

    def process_element(self, value: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[bytes]:
        key = ctx.get_current_key()
        if key == DEAD_LETTER_KEY:  # a dead letter of the ingest step
            yield encode_outputs([(Tag.DEAD_LETTER, bytes(value))])
            return
        klines = decode_bars(value)
        self.records_in.inc(len(klines))
        timers = ctx.timer_service()
        now_ms = timers.current_processing_time()
        watermark = timers.current_watermark()
        state = self._instrument(key, now_ms)
        on_kline = self.processor.on_kline
        journal = self.journal
        outputs = []
        for kline in klines:
            outputs.extend(on_kline(state, kline, watermark, now_ms, journal))
        self._commit(state)
        self._schedule(key, state, timers)
        self._seen(key, now_ms, timers)
        if outputs:
            yield encode_outputs(outputs)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[bytes]:
        timers = ctx.timer_service()
        key = ctx.get_current_key()
        now_ms = timers.current_processing_time()
        if key not in self.instruments and self.meta_state.value() is None:
            return  # a timer left over from an instrument dropped for silence
        if key not in self.last_seen:  # restored: a restore counts as a sighting
            self._seen(key, now_ms, timers)
        if self.ttl_timers.get(key) == timestamp:
            del self.ttl_timers[key]
        state = self._instrument(key, now_ms)
        watermark = timers.current_watermark()
        if ctx.time_domain() == TimeDomain.EVENT_TIME:
            if self.event_timers.get(key) == timestamp:
                del self.event_timers[key]
            outputs = self.processor.on_watermark(state, max(watermark, timestamp), self.journal)
        else:
            if self.processing_timers.get(key) == timestamp:
                del self.processing_timers[key]
            outputs = self.processor.on_processing_time(
                state, max(now_ms, timestamp), watermark, self.journal
            )
        self._commit(state)
        self._schedule(key, state, timers)
        if outputs:
            yield encode_outputs(outputs)
        self._drop_if_silent(key, state, now_ms, timers)

    def _seen(self, key: str, now_ms: int, timers: Any) -> None:
        """Note input of ``key`` now; make sure a TTL timer is pending for it."""
        if not self.ttl_ms:
            return
        self.last_seen[key] = now_ms
        if key not in self.ttl_timers:
            due = now_ms + self.ttl_ms
            timers.register_processing_time_timer(due)
            self.ttl_timers[key] = due

    def _drop_if_silent(self, key: str, state: InstrumentState, now_ms: int, timers: Any) -> None:
        """Drop ``key`` if silent for the TTL with no work left; else keep a TTL timer."""
        if not self.ttl_ms:
            return
        silent_until = self.last_seen[key] + self.ttl_ms
        if now_ms < silent_until:
            if key not in self.ttl_timers:
                timers.register_processing_time_timer(silent_until)
                self.ttl_timers[key] = silent_until
            return
        if self.processor.next_event_due(state) < NEVER:
            return  # windows still to fire or clean up: their timer checks again
        if self.processor.next_processing_due(state) < NEVER:
            return
        self.meta_state.clear()
        self.bar_states.clear()
        self.window_bars.clear()
        for mirror in (self.instruments, self.event_timers, self.processing_timers,
                       self.last_seen):  # fmt: skip
            mirror.pop(key, None)
        pending_ttl = self.ttl_timers.pop(key, None)
        if pending_ttl is not None:
            timers.delete_processing_time_timer(pending_ttl)
        self.series_dropped.inc()

    def _commit(self, state: InstrumentState) -> None:
        journal = self.journal
        for slot, bar_state in journal.bar_states.items():
            if bar_state is None:
                self.bar_states.remove(slot)
            else:
                self.bar_states.put(slot, bar_state)
        for open_time, bar in journal.window_bars.items():
            if bar is None:
                self.window_bars.remove(open_time)
            else:
                self.window_bars.put(open_time, bar)
        if journal.meta:
            self.meta_state.update(state.meta)
        journal.clear()

    def _schedule(self, key: str, state: InstrumentState, timers: Any) -> None:
        """Register the instrument's next timers unless an earlier one is pending."""
        due = self.processor.next_event_due(state)
        if due < NEVER and due < self.event_timers.get(key, NEVER):
            timers.register_event_time_timer(due)
            self.event_timers[key] = due
        due = self.processor.next_processing_due(state)
        if due < NEVER and due < self.processing_timers.get(key, NEVER):
            timers.register_processing_time_timer(due)
            self.processing_timers[key] = due


def _reader(counters: SeriesCounters, name: str) -> Any:
    return lambda: getattr(counters, name)


__all__ = ["SeriesFunction"]
