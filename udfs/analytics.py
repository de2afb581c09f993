"""Volume profiles per window and indicators per series, as the streaming job keeps them.

Plain Python (no Flink): the state objects the Flink wrappers (``udfs.analytics_functions``)
keep, and the records they emit to the sinks. The maths itself is ``udfs.volume_profile``
and ``udfs.indicators``; this module adds what streaming needs on top of it.

**Profiles.** :class:`ProfileWindow` is the accumulator of one profile window (one series,
one timeframe, one UTC-aligned window): a :class:`~udfs.volume_profile.ProfileAccumulator`
holding the window's 1m bars by open time (a newer version of a minute replaces the older
one) plus the versions of those bars. A :class:`ProfileRecord`'s version follows the roll-up
scheme (``udfs.rollup.rollup_version``): ``2 * (sum of the 1m versions present) + closed``,
so it grows strictly with every change of the window's content, the final emission is odd,
and a replay of the same input ends with the same versions (idempotent writes).

**Indicators.** :class:`IndicatorSeries` is the keyed state of one series
(``exchange:symbol:timeframe``). It takes closed bars in any order and keeps the indicators
equal to the batch functions on the closed bars in open-time order:

- a bar newer than the newest one is applied incrementally (the common, live case); the
  newest bar again (a correction, or the same bar with a higher version) replaces it
  (``IndicatorState`` keeps one undo step);
- an older bar (closed bars arriving out of order, a correction of an older bar) within the
  series' *horizon* is inserted into a bounded history of recent closes, and the indicators
  are recomputed from a base state over that history: the bar and every later bar are
  emitted again with their new values;
- a bar older than the horizon raises :class:`TooOldBarError` (the Flink wrapper turns it
  into a dead letter with the reason); it cannot be applied without the full history.

The horizon of a timeframe is ``allowed_lateness + timeframe length``: the upsert rejects 1m
bars later than the allowed lateness, and a roll-up window takes corrections only that long
after its end, so nothing the job emits is older than the horizon (the dead letter is a
guard, not a normal path). The history keeps twice the horizon (about 122 closes for 1m with
the default 1 h lateness); older closes are folded into the base state.

An indicator row's version is the sum of the versions of the series' closed bars with open
time in ``(t - horizon, t]``. Every bar version is positive, so whenever a bar at or before
``t`` within the horizon is added or gets a newer version, the version of ``t`` grows
strictly, and a re-emission after an older bar changed always wins in ClickHouse
(ReplacingMergeTree) and in Redis (compare-and-set). It depends only on the bars' final
versions, not on arrival order, so replays write the same versions. It stays far below
2**63 (about 122 versions of ~3.5e12 for 1m bars; two 1d roll-up versions of ~1e16).

No NaN or infinity leaves this module: a profile checks itself (``VolumeProfile``), and
:func:`check_finite_indicators` raises ``ValueError`` for an indicator value that is not
finite (possible only for absurd prices that overflow float64).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final

from udfs.indicators import IndicatorState, IndicatorValues
from udfs.pickling import pickled_as_arguments
from udfs.record import TIMEFRAME_MS, VersionedBar
from udfs.rollup import MINUTE_MS, rollup_version
from udfs.volume_profile import DEFAULT_MAX_ROWS, DEFAULT_ROWS, ProfileAccumulator, VolumeProfile

DEFAULT_PROFILE_TIMEFRAMES: Final[tuple[str, ...]] = ("15m", "1h", "4h", "1d")


class TooOldBarError(ValueError):
    """A closed bar older than its series' indicator horizon: it cannot be applied."""


# ---------------------------------------------------------------------------------------
# Records


@pickled_as_arguments
@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """One emission of a profile window: the ``volume_profile`` row and the ``vp:`` hash.

    ``window_end`` is the window's last millisecond (like a bar's ``close_time``);
    ``is_closed`` marks the final emission (the watermark passed the window end).
    """

    exchange: str
    symbol: str
    timeframe: str
    window_start: int
    window_end: int
    is_closed: bool
    bars_present: int
    bars_expected: int
    profile: VolumeProfile
    version: int

    @property
    def series_key(self) -> str:
        """``exchange:symbol:timeframe``."""
        return f"{self.exchange}:{self.symbol}:{self.timeframe}"

    def row(self) -> dict[str, Any]:
        """The ``volume_profile`` row (times in epoch ms).

        ``buy_volume`` is ``[]`` when taker-buy volume is unknown for some bar of the window
        (ClickHouse has no ``Nullable(Array)``); a known one always has one entry per row and
        a profile always has at least one row, so the empty array is unambiguous.
        """
        fields = self.profile.as_dict()
        if fields["buy_volume"] is None:
            fields["buy_volume"] = []
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "window_start": self.window_start,
            "window_end": self.window_end,
            **fields,
            "version": self.version,
        }

    def hash_fields(self) -> dict[str, Any]:
        """The ``vp:`` hash: like a ``kline:`` hash, unknown values are JSON ``null``."""
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "is_closed": self.is_closed,
            "bars_present": self.bars_present,
            "bars_expected": self.bars_expected,
            **self.profile.as_dict(),
            "version": self.version,
        }


@pickled_as_arguments
@dataclass(frozen=True, slots=True)
class IndicatorRecord:
    """The indicators of one closed bar: the ``indicators`` row and the ``ind:`` hash."""

    exchange: str
    symbol: str
    timeframe: str
    open_time: int
    values: IndicatorValues
    version: int

    @property
    def series_key(self) -> str:
        """``exchange:symbol:timeframe``."""
        return f"{self.exchange}:{self.symbol}:{self.timeframe}"

    def row(self) -> dict[str, Any]:
        """The ``indicators`` row; a value still warming up is None (NULL)."""
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "open_time": self.open_time,
            **self.values.as_dict(),
            "version": self.version,
        }

    def hash_fields(self) -> dict[str, Any]:
        """The ``ind:`` hash (same fields as the row; warm-up values are JSON ``null``)."""
        return self.row()


def newest_per_window(records: Iterable[ProfileRecord]) -> list[ProfileRecord]:
    """Of several emissions of one window keep the highest version (order kept otherwise).

    What ClickHouse (FINAL) and Redis keep anyway; sending only these saves the writes.
    """
    newest: dict[tuple[str, int], ProfileRecord] = {}
    for record in records:
        key = (record.series_key, record.window_start)
        kept = newest.get(key)
        if kept is None or record.version >= kept.version:
            newest[key] = record
    return list(newest.values())


def newest_per_bar(records: Iterable[IndicatorRecord]) -> list[IndicatorRecord]:
    """Of several emissions for one bar keep the highest version."""
    newest: dict[tuple[str, int], IndicatorRecord] = {}
    for record in records:
        key = (record.series_key, record.open_time)
        kept = newest.get(key)
        if kept is None or record.version >= kept.version:
            newest[key] = record
    return list(newest.values())


# ---------------------------------------------------------------------------------------
# Profiles


class ProfileWindow:
    """The accumulator of one profile window: its 1m bars (newest version each) and versions."""

    __slots__ = ("accumulator", "exchange", "first_arrival_ms", "symbol", "version_sum", "versions")

    def __init__(
        self,
        *,
        rows: int = DEFAULT_ROWS,
        row_size: float | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.accumulator = ProfileAccumulator(rows=rows, row_size=row_size, max_rows=max_rows)
        self.versions: dict[int, int] = {}
        self.version_sum = 0
        self.exchange = ""
        self.symbol = ""
        self.first_arrival_ms = 0

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.versions)

    def __repr__(self) -> str:
        return f"ProfileWindow({self.exchange}:{self.symbol}, bars={len(self)})"


def add_profile_bar(
    window: ProfileWindow,
    bar: VersionedBar,
    arrival_ms: int = 0,
    values: tuple[float, ...] | None = None,
) -> bool:
    """Put one version of a 1m bar into ``window``, replacing an older version of it.

    A version not newer than the one held is ignored (the upsert emits strictly growing
    versions, so that happens only when a stream is replayed into the window twice).
    ``arrival_ms``: the wall clock when the bar reached the window; only the first is kept
    (the processing-time close fallback, see ``udfs.rollup.is_window_closed``).
    ``values``: ``bar_values(bar.kline)`` if already computed. Returns whether the window
    changed. Raises ValueError for a bar the profile maths refuses (not possible for a
    validated ``Kline``).
    """
    kline = bar.kline
    held = window.versions.get(kline.open_time)
    if held is not None and held >= bar.version:
        return False
    window.accumulator.upsert(kline, values)
    if not window.versions:
        window.exchange, window.symbol = kline.exchange, kline.symbol
        window.first_arrival_ms = arrival_ms
    window.versions[kline.open_time] = bar.version
    window.version_sum += bar.version - (held or 0)
    return True


def merge_profile_windows(a: ProfileWindow, b: ProfileWindow) -> ProfileWindow:
    """Fold ``b`` into ``a`` (per minute the newer version wins); returns ``a``.

    Profile windows never merge in the job (the assigner is not a merging one); this is
    Flink's ``AggregateFunction.merge`` contract, kept correct.
    """
    if not b.versions:
        return a
    if not a.versions:
        return b
    for open_time, version in b.versions.items():
        held = a.versions.get(open_time)
        if held is not None and held >= version:
            continue
        a.accumulator.copy_bar(b.accumulator, open_time)
        a.versions[open_time] = version
        a.version_sum += version - (held or 0)
    a.first_arrival_ms = min(a.first_arrival_ms, b.first_arrival_ms)
    return a


def build_profile_record(
    window: ProfileWindow, timeframe: str, window_start: int, *, closed: bool
) -> ProfileRecord:
    """The emission of a non-empty window; ValueError when empty or the maths refuses."""
    profile = window.accumulator.profile()
    if profile is None:
        raise ValueError("an empty profile window has no profile")
    length = TIMEFRAME_MS[timeframe]
    return ProfileRecord(
        exchange=window.exchange,
        symbol=window.symbol,
        timeframe=timeframe,
        window_start=window_start,
        window_end=window_start + length - 1,
        is_closed=closed,
        bars_present=len(window),
        bars_expected=length // MINUTE_MS,
        profile=profile,
        version=rollup_version(window.version_sum, closed),
    )


# ---------------------------------------------------------------------------------------
# Indicators


def indicator_horizon_ms(timeframe: str, allowed_lateness_ms: int) -> int:
    """How far behind its series' newest closed bar a closed bar may still be applied."""
    return allowed_lateness_ms + TIMEFRAME_MS[timeframe]


def check_finite_indicators(values: IndicatorValues) -> IndicatorValues:
    """``values`` unchanged; ValueError naming the first value that is NaN or infinite."""
    for name, value in values.as_dict().items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"indicator {name} is not finite ({value}): prices overflow float64")
    return values


def _copy_state(state: IndicatorState) -> IndicatorState:
    return state.copy()


@dataclass(frozen=True, slots=True)
class IndicatorEmission:
    """Indicators of the bar opening at ``open_time`` and the row's version."""

    open_time: int
    values: IndicatorValues
    version: int


class IndicatorSeries:
    """Indicator state of one series; closed bars in any order within the horizon.

    ``history`` holds ``(open_time, close, version)`` of the closed bars after those folded
    into ``base``, ascending; ``current`` is ``base`` advanced over the whole history.
    """

    __slots__ = ("_window", "base", "current", "history", "horizon_ms", "snapshots")

    def __init__(self, horizon_ms: int) -> None:
        if horizon_ms < 1:
            raise ValueError("horizon_ms must be >= 1")
        self.horizon_ms = horizon_ms
        self.base = IndicatorState()
        self.current = IndicatorState()
        self.history: list[tuple[int, float, int]] = []
        # open_time -> the state right after that bar of ``history``, kept from the
        # incremental path (never mutated, never pickled): folding old bars into ``base``
        # then takes a snapshot instead of advancing ``base`` once more per bar.
        self.snapshots: dict[int, IndicatorState] = {}
        # ``(first, last, total)``: the versions of history[first:last + 1] sum to ``total``,
        # the window of :meth:`_version_of` for ``last`` -- slid forward as bars are appended
        # instead of summed again per bar. None: to be computed (after any other change).
        self._window: tuple[int, int, int] | None = None

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.horizon_ms, self.base, self.current, self.history)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.horizon_ms, self.base, self.current, self.history = state
        self.snapshots = {}
        self._window = None

    def __repr__(self) -> str:
        return f"IndicatorSeries(horizon_ms={self.horizon_ms}, history={len(self.history)})"

    @property
    def newest_open_time(self) -> int | None:
        """Open time of the newest closed bar taken, None before the first."""
        if self.history:
            return self.history[-1][0]
        return self.base.last_open_time

    def apply(self, open_time: int, close: float, version: int) -> list[IndicatorEmission]:
        """Take one closed bar (version > 0); return the emissions it causes, oldest first.

        Empty when the bar is not newer than the version held for its open time. Raises
        :class:`TooOldBarError` for a bar older than the horizon, ValueError for a close
        that is not finite or indicators that overflow. On an exception nothing changed.
        """
        if not math.isfinite(close):
            raise ValueError(f"close of bar {open_time} is not finite: {close}")
        if version < 1:
            raise ValueError(f"version of bar {open_time} must be >= 1, got {version}")
        newest = self.newest_open_time
        if newest is not None and open_time < newest - self.horizon_ms:
            raise TooOldBarError(
                f"too old: closed bar {open_time} is more than {self.horizon_ms} ms older than "
                f"the newest closed bar {newest} of its series; its indicators are not updated"
            )
        history = self.history
        position = bisect.bisect_left(history, (open_time,))
        held = history[position] if position < len(history) else None
        replaces = held is not None and held[0] == open_time
        if replaces and held is not None and held[2] >= version:
            return []
        entry = (open_time, float(close), version)
        if position >= len(history) - (1 if replaces else 0):
            # The newest bar, or a new newest bar: incremental (IndicatorState undoes one step).
            candidate = _copy_state(self.current)
            values = check_finite_indicators(candidate.update(entry[1], open_time))
            self.current = candidate
            self.snapshots[open_time] = candidate
            if replaces:
                history[position] = entry
                self._window = None
            else:
                history.append(entry)
            emissions = [IndicatorEmission(open_time, values, self._newest_version())]
        else:
            emissions = self._recompute(position, entry, replaces)
        self._fold_old()
        return emissions

    def _recompute(
        self, position: int, entry: tuple[int, float, int], replaces: bool
    ) -> list[IndicatorEmission]:
        history = list(self.history)
        if replaces:
            history[position] = entry
        else:
            history.insert(position, entry)
        state = _copy_state(self.base)
        computed: list[tuple[int, IndicatorValues]] = []
        for index, (open_time, close, _version) in enumerate(history):
            values = state.update(close, open_time)
            if index >= position:
                computed.append((index, check_finite_indicators(values)))
        self.history = history
        self._window = None
        self.current = state
        for stale in [t for t in self.snapshots if t >= entry[0]]:
            del self.snapshots[stale]
        return [
            IndicatorEmission(history[index][0], values, self._version_of(index))
            for index, values in computed
        ]

    def _newest_version(self) -> int:
        """:meth:`_version_of` the newest bar, sliding the window kept from the last call."""
        history = self.history
        last = len(history) - 1
        window = self._window
        if window is None or window[1] > last:
            first = bisect.bisect_right(
                history, history[last][0] - self.horizon_ms, hi=last, key=itemgetter(0)
            )
            total = sum(map(itemgetter(2), history[first : last + 1]))
        else:
            first, upto, total = window
            for index in range(upto + 1, last + 1):
                total += history[index][2]
            cutoff = history[last][0] - self.horizon_ms
            while history[first][0] <= cutoff:
                total -= history[first][2]
                first += 1
        self._window = (first, last, total)
        return total

    def _version_of(self, index: int) -> int:
        """Sum of the versions of the bars in ``(t - horizon, t]``, ``t`` = bar ``index``."""
        history = self.history
        first = bisect.bisect_right(
            history, history[index][0] - self.horizon_ms, hi=index, key=itemgetter(0)
        )
        return sum(map(itemgetter(2), history[first : index + 1]))

    def _fold_old(self) -> None:
        """Move closes older than twice the horizon behind the newest into ``base``."""
        history = self.history
        if not history:
            return
        cutoff = history[-1][0] - 2 * self.horizon_ms
        folded = 0
        while folded < len(history) and history[folded][0] <= cutoff:
            folded += 1
        if not folded:
            return
        snapshots = self.snapshots
        start = folded  # fold history[start:folded] into the state after history[start - 1]
        while start > 0 and history[start - 1][0] not in snapshots:
            start -= 1
        base = snapshots[history[start - 1][0]] if start else self.base
        if start < folded:
            base = _copy_state(base)  # snapshots and the current base are never mutated
            for open_time, close, _version in history[start:folded]:
                base.update(close, open_time)
        self.base = base
        for open_time, _close, _version in history[:folded]:
            snapshots.pop(open_time, None)
        del history[:folded]
        window = self._window
        if window is not None:  # folded bars are older than any window: it only shifts
            first, last, total = window
            self._window = (first - folded, last - folded, total) if first >= folded else None


def batch_indicator_versions(bars: Sequence[tuple[int, int]], horizon_ms: int) -> dict[int, int]:
    """The final row version of each bar of a series, ``bars`` = ``(open_time, version)``.

    What :class:`IndicatorSeries` ends with on the same final bars (tests, tooling).
    """
    ordered = sorted(bars)
    versions: dict[int, int] = {}
    for index, (open_time, _version) in enumerate(ordered):
        versions[open_time] = sum(
            version
            for bar_open, version in ordered[: index + 1]
            if bar_open > open_time - horizon_ms
        )
    return versions


__all__ = [
    "DEFAULT_PROFILE_TIMEFRAMES",
    "IndicatorEmission",
    "IndicatorRecord",
    "IndicatorSeries",
    "ProfileRecord",
    "ProfileWindow",
    "TooOldBarError",
    "add_profile_bar",
    "batch_indicator_versions",
    "build_profile_record",
    "check_finite_indicators",
    "indicator_horizon_ms",
    "merge_profile_windows",
    "newest_per_bar",
    "newest_per_window",
]
