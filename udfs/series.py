"""Everything the job computes for one instrument, in plain Python: one call per input bar.

The job keys its bars by instrument (``exchange:symbol``) and runs one operator over them
(``udfs.flink.series_function``); this module is that operator's logic, without Flink, so
that it is tested and measured on its own. For each validated input bar,
:meth:`SeriesProcessor.on_kline`:

1. **upserts** it per ``(timeframe, open_time)`` (``udfs.upsert``: the newest update of an
   open bar wins, a closed bar is final, duplicates and stale updates are dropped, versions
   grow strictly); a bar older than the allowed lateness against its series' own clock is
   dead-lettered (stage ``upsert``);
2. passes each emitted 1m bar to the **roll-up** windows (5m .. 1d) and the **volume-profile**
   windows (``udfs.windows``: gate, live/final/correction firings, clean-up, idle fallback);
   bars of another timeframe (a replayed 1h archive) are stored as they are, never windowed;
3. computes **indicators** (RSI, MACD, Bollinger: ``udfs.analytics.IndicatorSeries``) on every
   closed bar of every timeframe, roll-ups included;
4. turns each closed bar of the signal timeframes into a **signal** (the rules analyser) or a
   :class:`~udfs.signals.SignalRequest` for the inference operator downstream.

:meth:`on_watermark` and :meth:`on_processing_time` are the timers: final firings and
clean-up when the watermark moves, the idle fallback by the wall clock.

Outputs are ``(Tag, payload)`` pairs on one stream, so the operator has a single consumer and
PyFlink can chain what follows it; the outputs of one input travel as one element
(:func:`encode_outputs`). Every change to what must survive a restart is written
to a :class:`Journal` the Flink wrapper applies to keyed state: the upsert's per-bar state,
the 1m bars the open windows are made of (the windows are rebuilt from them), and a small
:class:`InstrumentMeta` (clocks, finalised windows, indicator series, signal history).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from udfs.analytics import (
    IndicatorRecord,
    IndicatorSeries,
    ProfileWindow,
    TooOldBarError,
    add_profile_bar,
    build_profile_record,
    indicator_horizon_ms,
)
from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.record import TIMEFRAME_MS, Kline, VersionedBar, encode_kline, timeframe_ms
from udfs.rollup import (
    SOURCE_TIMEFRAME,
    Entry,
    RollupAccumulator,
    add_bar,
    bar_entry,
    build_rollup_bar,
    summarize,
)
from udfs.signals import (
    ContextBar,
    SignalRequest,
    build_context,
    context_bar,
    merge_history,
    rules_signal,
)
from udfs.upsert import BarState, SeriesClock, SeriesMirror, decide_upsert, is_beyond_lateness
from udfs.volume_profile import bar_values
from udfs.windows import NEVER, Firing, WindowSet, WindowTiming

_TIMEFRAME_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(TIMEFRAME_MS)}
_TIMEFRAME_BY_INDEX: Final[dict[int, str]] = {i: name for name, i in _TIMEFRAME_INDEX.items()}
_SLOT_BASE: Final = 16


class Tag:
    """What an output of the series operator is (plain ints: an enum member costs a
    lookup each time an element is unpickled, several microseconds per output)."""

    BAR: Final = 0  # VersionedBar: an upserted bar or a roll-up
    PROFILE: Final = 1  # ProfileRecord
    INDICATOR: Final = 2  # IndicatorRecord
    SIGNAL: Final = 3  # Signal (rules analyser)
    SIGNAL_REQUEST: Final = 4  # SignalRequest for the inference operator
    DEAD_LETTER: Final = 5  # encoded DeadLetter (bytes)

    @classmethod
    def name_of(cls, tag: int) -> str:
        """The constant's name of ``tag`` (``Tag.name_of(Tag.BAR) == "BAR"``)."""
        for name, value in vars(cls).items():
            if name.isupper() and value == tag:
                return name
        raise ValueError(f"no output tag {tag!r}")


Output = tuple[int, Any]


@dataclass(frozen=True, slots=True)
class WindowFamily:
    """What a family of 1m-bar windows (roll-ups, volume profiles) is called.

    ``stage`` names its dead letters and metrics; the nouns go into the reasons.
    """

    stage: str
    window_noun: str
    output_noun: str


ROLLUP_WINDOWS: Final = WindowFamily("rollup", "roll-up window", "roll-ups")
PROFILE_WINDOWS: Final = WindowFamily("profile", "volume profile window", "volume profiles")


@dataclass(frozen=True, slots=True)
class SeriesSettings:
    """What the series operator computes and how its windows fire (plain values only)."""

    allowed_lateness_ms: int = 3_600_000
    rollup_timeframes: tuple[str, ...] = ()
    emit_in_progress: bool = False
    idle_close_ms: int = 0
    live_horizon_ms: int = -1
    profile_timeframes: tuple[str, ...] = ()
    profile_rows: int = 24
    profile_row_size: float | None = None
    profile_max_rows: int = 1000
    indicators: bool = False
    signal_timeframes: tuple[str, ...] = ()
    signal_prompt_bars: int = 30
    signal_history_bars: int = 100
    # True: emit SignalRequests for an inference operator; False: rules signals here.
    signal_requests: bool = False

    @property
    def timing(self) -> WindowTiming:
        """The window timing rules."""
        return WindowTiming(
            self.allowed_lateness_ms, self.emit_in_progress, self.idle_close_ms,
            self.live_horizon_ms,
        )  # fmt: skip


class RollupAccumulating:
    """Roll-up windows keep a ``udfs.rollup.RollupAccumulator``.

    A bar goes into every roll-up window of its series one after another: its entry is
    built once, for the first window.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[VersionedBar | None, Entry | None] = (None, None)

    def create(self) -> RollupAccumulator:
        return RollupAccumulator()

    def add(self, accumulator: RollupAccumulator, bar: VersionedBar, arrival_ms: int) -> None:
        last_bar, entry = self._last
        if last_bar is not bar:
            entry = bar_entry(bar)
            self._last = (bar, entry)
        add_bar(accumulator, bar, arrival_ms, entry)

    def first_arrival_ms(self, accumulator: RollupAccumulator) -> int:
        return accumulator.first_arrival_ms


class ProfileAccumulating:
    """Profile windows keep a ``udfs.analytics.ProfileWindow``.

    A bar goes into every profile window of its series one after another: its validated
    profile values are computed once, for the first window.
    """

    __slots__ = ("_last", "max_rows", "row_size", "rows")

    def __init__(self, rows: int, row_size: float | None, max_rows: int) -> None:
        self.rows = rows
        self.row_size = row_size
        self.max_rows = max_rows
        self._last: tuple[VersionedBar | None, tuple[float, ...]] = (None, ())

    def create(self) -> ProfileWindow:
        return ProfileWindow(rows=self.rows, row_size=self.row_size, max_rows=self.max_rows)

    def add(self, accumulator: ProfileWindow, bar: VersionedBar, arrival_ms: int) -> None:
        last_bar, values = self._last
        if last_bar is not bar:
            values = bar_values(bar.kline)
            self._last = (bar, values)
        add_profile_bar(accumulator, bar, arrival_ms, values)

    def first_arrival_ms(self, accumulator: ProfileWindow) -> int:
        return accumulator.first_arrival_ms


@dataclass(slots=True)
class InstrumentMeta:
    """The small part of an instrument's state that is stored whole (one ValueState)."""

    clocks: dict[str, SeriesClock] = field(default_factory=dict)
    finalized: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    cleaned_at: dict[str, int] = field(default_factory=dict)
    indicators: dict[str, IndicatorSeries] = field(default_factory=dict)
    histories: dict[str, list[ContextBar]] = field(default_factory=dict)


@dataclass(slots=True)
class Journal:
    """Changes to durable state made by one call (the Flink wrapper applies them)."""

    bar_states: dict[int, BarState | None] = field(default_factory=dict)
    window_bars: dict[int, VersionedBar | None] = field(default_factory=dict)
    meta: bool = False

    def clear(self) -> None:
        """Start a new call."""
        self.bar_states.clear()
        self.window_bars.clear()
        self.meta = False


def bar_state_slot(timeframe: str, open_time: int) -> int:
    """The MapState key of one bar's upsert state: open time and timeframe in one long."""
    return open_time * _SLOT_BASE + _TIMEFRAME_INDEX[timeframe]


def slot_bar(slot: int) -> tuple[str, int]:
    """``(timeframe, open_time)`` of a :func:`bar_state_slot` key."""
    open_time, index = divmod(slot, _SLOT_BASE)
    return _TIMEFRAME_BY_INDEX[index], open_time


@dataclass(slots=True)
class SeriesCounters:
    """What the operator did, for the dashboard's metrics."""

    upserts_emitted: int = 0
    updates_dropped: int = 0
    late_rejected: int = 0
    rollup_late_rejected: int = 0
    profile_late_rejected: int = 0
    skipped_timeframe: int = 0
    rollups_emitted: int = 0
    rollups_emitted_closed: int = 0
    profiles_emitted: int = 0
    profiles_emitted_closed: int = 0
    profiles_failed: int = 0
    indicators_emitted: int = 0
    indicators_recomputed: int = 0
    indicator_bars_dropped: int = 0
    indicator_bars_rejected: int = 0
    signal_requests: int = 0


class InstrumentState:
    """The in-memory state of one instrument (the Flink wrapper's mirror of keyed state)."""

    __slots__ = ("meta", "oldest_window_bar", "profiles", "rollups", "upserts", "window_bars")

    def __init__(self, meta: InstrumentMeta, rollups: WindowSet | None,
                 profiles: WindowSet | None) -> None:  # fmt: skip
        self.meta = meta
        self.upserts: dict[str, SeriesMirror] = {}
        self.rollups = rollups
        self.profiles = profiles
        self.window_bars: dict[int, VersionedBar] = {}
        self.oldest_window_bar = NEVER  # the smallest key of window_bars


def _bar_letter(bar: VersionedBar, stage: str, reason: str) -> Output:
    return Tag.DEAD_LETTER, encode_dead_letter(
        DeadLetter(reason=reason, stage=stage, original=encode_kline(bar.kline),
                   key=bar.kline.series_key)
    )  # fmt: skip


def _profile_letter(series_key: str, timeframe: str, window_start: int, reason: str) -> Output:
    """A profile that cannot be computed: the window it belongs to is the original."""
    original = orjson.dumps(
        {"series": series_key, "timeframe": timeframe, "window_start": window_start}
    )
    return Tag.DEAD_LETTER, encode_dead_letter(
        DeadLetter(reason=f"volume profile not computed: {reason}", stage="profile",
                   original=original, key=series_key)
    )  # fmt: skip


class SeriesProcessor:
    """The series operator's logic (see the module docstring); one per operator instance."""

    def __init__(self, settings: SeriesSettings) -> None:
        self.settings = settings
        self.counters = SeriesCounters()
        self._timing = settings.timing
        self._rollups = RollupAccumulating()
        self._profiles = ProfileAccumulating(
            settings.profile_rows, settings.profile_row_size, settings.profile_max_rows
        )
        self._signal_timeframes = frozenset(settings.signal_timeframes)

    # -- state -------------------------------------------------------------------------

    def new_state(self, meta: InstrumentMeta | None = None) -> InstrumentState:
        """An empty instrument state, or one around a restored ``meta``."""
        settings = self.settings
        rollups = (
            WindowSet(settings.rollup_timeframes, self._rollups, self._timing)
            if settings.rollup_timeframes
            else None
        )
        profiles = (
            WindowSet(settings.profile_timeframes, self._profiles, self._timing)
            if settings.profile_timeframes
            else None
        )
        return InstrumentState(meta or InstrumentMeta(), rollups, profiles)

    def restore(
        self,
        meta: InstrumentMeta,
        bar_states: Iterable[tuple[int, BarState]],
        window_bars: Iterable[VersionedBar],
        now_ms: int,
    ) -> InstrumentState:
        """The state of an instrument rebuilt from what keyed state holds after a restart."""
        state = self.new_state(meta)
        for timeframe, clock in meta.clocks.items():
            state.upserts[timeframe] = SeriesMirror(clock, {})
        for slot, bar_state in bar_states:
            timeframe, open_time = slot_bar(slot)
            mirror = state.upserts.get(timeframe)
            if mirror is not None:
                mirror.bars[open_time] = bar_state
        bars = list(window_bars)
        state.window_bars = {bar.kline.open_time: bar for bar in bars}
        state.oldest_window_bar = min(state.window_bars, default=NEVER)
        for stage, family in self._families(state):
            family.restore(bars, meta.finalized.get(stage, ()), now_ms,
                           cleaned_at=meta.cleaned_at.get(stage, -NEVER))  # fmt: skip
        return state

    def _families(self, state: InstrumentState) -> list[tuple[str, WindowSet]]:
        families = []
        if state.rollups is not None:
            families.append((ROLLUP_WINDOWS.stage, state.rollups))
        if state.profiles is not None:
            families.append((PROFILE_WINDOWS.stage, state.profiles))
        return families

    # -- input -------------------------------------------------------------------------

    def on_kline(
        self, state: InstrumentState, kline: Kline, watermark: int, now_ms: int, journal: Journal
    ) -> list[Output]:
        """Everything one validated input bar causes."""
        outputs: list[Output] = []
        bar = self._upsert(state, kline, outputs, journal)
        if bar is None:
            return outputs
        outputs.append((Tag.BAR, bar))
        self._analyse_closed(state, bar, outputs, journal)
        if kline.timeframe != SOURCE_TIMEFRAME:
            self.counters.skipped_timeframe += 1
            return outputs
        windowed = False
        if state.rollups is not None:
            if state.rollups.is_late(kline.open_time, watermark):
                self.counters.rollup_late_rejected += 1
                outputs.append(self._gate_letter(bar, ROLLUP_WINDOWS, watermark))
            else:
                windowed = True
                firings = state.rollups.add(bar, watermark, now_ms)
                self._emit_rollups(state, firings, outputs, journal)
        if state.profiles is not None:
            if state.profiles.is_late(kline.open_time, watermark):
                self.counters.profile_late_rejected += 1
                outputs.append(self._gate_letter(bar, PROFILE_WINDOWS, watermark))
            else:
                windowed = True
                self._emit_profiles(state.profiles.add(bar, watermark, now_ms), outputs)
        if windowed:
            state.window_bars[kline.open_time] = bar
            state.oldest_window_bar = min(state.oldest_window_bar, kline.open_time)
            journal.window_bars[kline.open_time] = bar
        return outputs

    def _upsert(
        self, state: InstrumentState, kline: Kline, outputs: list[Output], journal: Journal
    ) -> VersionedBar | None:
        lateness = self.settings.allowed_lateness_ms
        timeframe = kline.timeframe
        mirror = state.upserts.get(timeframe)
        if mirror is None:
            mirror = SeriesMirror(SeriesClock(kline.open_time, kline.open_time), {})
            state.upserts[timeframe] = mirror
            state.meta.clocks[timeframe] = mirror.clock
            journal.meta = True
        newest = mirror.clock.newest_open_time
        if is_beyond_lateness(kline, newest, lateness):
            self.counters.late_rejected += 1
            outputs.append(
                (Tag.DEAD_LETTER, encode_dead_letter(DeadLetter(
                    reason=(
                        f"late: bar {kline.open_time} closed more than {lateness} ms before "
                        f"the newest bar of its series ({newest})"
                    ),
                    stage="upsert", original=encode_kline(kline), key=kline.series_key,
                )))
            )  # fmt: skip
            return None
        advanced = mirror.clock.advance(kline.open_time, timeframe_ms(timeframe), lateness)
        if advanced.clock != mirror.clock:
            mirror.clock = advanced.clock
            state.meta.clocks[timeframe] = advanced.clock
            journal.meta = True
        if advanced.expire_before is not None:
            for open_time in mirror.expire(advanced.expire_before):
                journal.bar_states[bar_state_slot(timeframe, open_time)] = None
        previous = mirror.bars.get(kline.open_time)
        decision = decide_upsert(previous, kline)
        if decision.state != previous:
            mirror.bars[kline.open_time] = decision.state
            journal.bar_states[bar_state_slot(timeframe, kline.open_time)] = decision.state
        if not decision.outcome.emits:
            self.counters.updates_dropped += 1
            return None
        self.counters.upserts_emitted += 1
        return VersionedBar(kline, decision.version)

    def _gate_letter(self, bar: VersionedBar, family: WindowFamily, watermark: int) -> Output:
        lateness = self.settings.allowed_lateness_ms
        return _bar_letter(
            bar,
            family.stage,
            f"late: 1m bar {bar.kline.open_time} is more than {lateness} ms behind the end of "
            f"its {family.window_noun}s (watermark {watermark}); the 1m bar is stored, its "
            f"{family.output_noun} are not updated",
        )

    # -- timers ------------------------------------------------------------------------

    def on_watermark(
        self, state: InstrumentState, watermark: int, journal: Journal
    ) -> list[Output]:
        """Final firings of the windows the watermark closed; clean-up of expired ones."""
        outputs: list[Output] = []
        if state.rollups is not None and state.rollups.next_event_due() <= watermark:
            self._emit_rollups(state, state.rollups.on_watermark(watermark), outputs, journal)
            self._note_cleaned(state, ROLLUP_WINDOWS.stage, state.rollups, watermark, journal)
        if state.profiles is not None and state.profiles.next_event_due() <= watermark:
            self._emit_profiles(state.profiles.on_watermark(watermark), outputs)
            self._note_cleaned(state, PROFILE_WINDOWS.stage, state.profiles, watermark, journal)
        self._prune_window_bars(state, journal)
        return outputs

    def on_processing_time(
        self, state: InstrumentState, now_ms: int, watermark: int, journal: Journal
    ) -> list[Output]:
        """Idle-fallback firings due by the wall clock."""
        outputs: list[Output] = []
        if state.rollups is not None:
            firings = state.rollups.on_processing_time(now_ms, watermark)
            self._emit_rollups(state, firings, outputs, journal)
        if state.profiles is not None:
            self._emit_profiles(state.profiles.on_processing_time(now_ms, watermark), outputs)
        return outputs

    def next_event_due(self, state: InstrumentState) -> int:
        """The watermark at which :meth:`on_watermark` has work (``NEVER``: none)."""
        return min((family.next_event_due() for _, family in self._families(state)),
                   default=NEVER)  # fmt: skip

    def next_processing_due(self, state: InstrumentState) -> int:
        """The wall-clock time at which :meth:`on_processing_time` has work."""
        return min((family.next_processing_due() for _, family in self._families(state)),
                   default=NEVER)  # fmt: skip

    def _note_cleaned(
        self, state: InstrumentState, stage: str, family: WindowSet, watermark: int,
        journal: Journal,
    ) -> None:  # fmt: skip
        state.meta.cleaned_at[stage] = watermark
        state.meta.finalized[stage] = family.finalized_keys()
        journal.meta = True

    def _prune_window_bars(self, state: InstrumentState, journal: Journal) -> None:
        needed_from = min((family.oldest_start() for _, family in self._families(state)),
                          default=NEVER)  # fmt: skip
        if state.oldest_window_bar >= needed_from:
            return  # nothing to prune: skip the scan
        stale = [open_time for open_time in state.window_bars if open_time < needed_from]
        for open_time in stale:
            del state.window_bars[open_time]
            journal.window_bars[open_time] = None
        state.oldest_window_bar = min(state.window_bars, default=NEVER)

    # -- emissions ---------------------------------------------------------------------

    def _emit_rollups(
        self, state: InstrumentState, firings: list[Firing], outputs: list[Output],
        journal: Journal,
    ) -> None:  # fmt: skip
        for firing in firings:
            window = firing.window
            rollup = build_rollup_bar(summarize(window.accumulator), window.timeframe,
                                      window.start, closed=firing.closed)  # fmt: skip
            self.counters.rollups_emitted += 1
            if firing.closed:
                self.counters.rollups_emitted_closed += 1
            outputs.append((Tag.BAR, rollup))
            self._analyse_closed(state, rollup, outputs, journal)

    def _emit_profiles(self, firings: list[Firing], outputs: list[Output]) -> None:
        for firing in firings:
            window = firing.window
            accumulator: ProfileWindow = window.accumulator
            try:
                record = build_profile_record(accumulator, window.timeframe, window.start,
                                              closed=firing.closed)  # fmt: skip
            except ValueError as exc:  # e.g. a fixed row size too small for the prices
                self.counters.profiles_failed += 1
                key = f"{accumulator.exchange}:{accumulator.symbol}:{SOURCE_TIMEFRAME}"
                outputs.append(_profile_letter(key, window.timeframe, window.start, str(exc)))
                continue
            self.counters.profiles_emitted += 1
            if firing.closed:
                self.counters.profiles_emitted_closed += 1
            outputs.append((Tag.PROFILE, record))

    def _analyse_closed(
        self, state: InstrumentState, bar: VersionedBar, outputs: list[Output], journal: Journal
    ) -> None:
        """Indicators and the signal of a closed bar (any timeframe)."""
        kline = bar.kline
        if not kline.is_closed:
            return
        settings = self.settings
        if settings.indicators:
            self._indicators(state, bar, outputs)
            journal.meta = True
        if kline.timeframe in self._signal_timeframes:
            histories = state.meta.histories
            history, upto = merge_history(histories.get(kline.timeframe, []), context_bar(kline),
                                          max(settings.signal_history_bars,
                                              settings.signal_prompt_bars))  # fmt: skip
            histories[kline.timeframe] = history
            journal.meta = True
            self.counters.signal_requests += 1
            request = SignalRequest(
                build_context(kline.exchange, kline.symbol, kline.timeframe, upto,
                              settings.signal_prompt_bars),
                bar.version,
            )  # fmt: skip
            if settings.signal_requests:
                outputs.append((Tag.SIGNAL_REQUEST, request))
            else:
                outputs.append((Tag.SIGNAL, rules_signal(request)))

    def _indicators(self, state: InstrumentState, bar: VersionedBar, outputs: list[Output]) -> None:
        kline = bar.kline
        all_series = state.meta.indicators
        series = all_series.get(kline.timeframe)
        if series is None:
            series = IndicatorSeries(
                indicator_horizon_ms(kline.timeframe, self.settings.allowed_lateness_ms)
            )
            all_series[kline.timeframe] = series
        try:
            emissions = series.apply(kline.open_time, kline.close, bar.version)
        except TooOldBarError as exc:
            self.counters.indicator_bars_rejected += 1
            outputs.append(_bar_letter(bar, "indicators", str(exc)))
            return
        except ValueError as exc:  # indicators overflowing float64: never published
            self.counters.indicator_bars_rejected += 1
            outputs.append(_bar_letter(bar, "indicators", f"indicators not computed: {exc}"))
            return
        if not emissions:
            self.counters.indicator_bars_dropped += 1
            return
        if len(emissions) > 1:  # an older bar: the later bars were recomputed
            self.counters.indicators_recomputed += len(emissions) - 1
        self.counters.indicators_emitted += len(emissions)
        for emission in emissions:
            outputs.append((Tag.INDICATOR, IndicatorRecord(
                exchange=kline.exchange, symbol=kline.symbol, timeframe=kline.timeframe,
                open_time=emission.open_time, values=emission.values, version=emission.version,
            )))  # fmt: skip


def encode_outputs(outputs: list[Output]) -> bytes:
    """The outputs of one call as one stream element.

    One element per input bar instead of one per output, pickled with the C pickler:
    PyFlink's own coder for Python objects runs cloudpickle's pure-Python pickler once per
    element, which cost about six times as much for a bar's two to four outputs.
    """
    return pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL)


def decode_outputs(element: bytes) -> list[Output]:
    """The outputs of :func:`encode_outputs` (only ever fed the job's own elements)."""
    outputs: list[Output] = pickle.loads(element)
    return outputs


def instrument_key(kline: Kline) -> str:
    """The key the series operator is keyed by: ``exchange:symbol`` (all timeframes)."""
    return f"{kline.exchange}:{kline.symbol}"


__all__ = [
    "PROFILE_WINDOWS",
    "ROLLUP_WINDOWS",
    "InstrumentMeta",
    "InstrumentState",
    "Journal",
    "Output",
    "SeriesCounters",
    "SeriesProcessor",
    "SeriesSettings",
    "Tag",
    "WindowFamily",
    "bar_state_slot",
    "decode_outputs",
    "encode_outputs",
    "instrument_key",
    "slot_bar",
]
