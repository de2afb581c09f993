"""Volume profile (rows, point of control, value area) and VWAP of a window's bars.

Conventions (DESIGN.md "Conventions", made precise here):

**Rows.** By default ``rows`` equal-width rows span [window low, window high]: row ``i`` is
``[low + i * row_size, low + (i + 1) * row_size)`` with ``row_size = (high - low) / rows``, and
the top row is closed so that it includes the high. In fixed ``row_size`` mode the rows are
aligned to integer multiples of ``row_size``: the first row starts at
``floor(low / row_size) * row_size`` and rows are added until one ends at or above the high
(a high exactly on a multiple is included in the row *below* that multiple, so no empty row
is added above it). If that would need more than ``max_rows`` rows (a very wide range), the
row size is multiplied by the smallest integer that fits, so rows stay aligned to multiples of
the configured ``row_size`` and the published ``row_size`` says what was used. A price lies
in the row whose ``[row_low, next row_low)`` holds it, judged on the published ``row_low``
values themselves.

**Degenerate range** (every bar at one price, window high == low): in the equal-rows mode the
profile has a single row with ``row_low = [price]`` and ``row_size = 0.0`` (there is no range
to divide); POC and both value-area edges are that price. In fixed mode it is the one grid row
holding the price.

**Spreading.** Each bar's volume is spread over its own [low, high] in proportion to the
overlap with each row (uniform within the bar); a bar with high == low puts all of it in the
row holding that price. Buy volume (``taker_buy_volume``) is spread the same way.

**Buy volume nulls.** ``buy_volume`` is the per-row list only when *every* bar of the window
has ``taker_buy_volume``; otherwise it is ``None`` for the whole profile. Filling the missing
bars with zeros, or summing only the known ones, would publish a number the exchange never
gave (a row would look sell-dominated only because data is missing), so no partial list is
ever produced. Binance gives the field; OKX and Bybit do not, so their profiles carry None.

**POC** = mid price of the row with the most volume. Ties (rows within a relative 1e-9 of the
maximum, so that rounding noise of the spreading cannot break a real tie) go to the row whose
middle is nearest the middle of the window's [low, high], then to the lower row.

**Value area** (70 %): start at the POC row and repeatedly add the next row above or below,
whichever has more volume (a tie, again within 1e-9 relative, goes above; when one side is
exhausted the other is taken), until the included rows hold at least 70 % of the profile's
volume (with a 1e-9 relative slack for rounding). ``value_area_low``/``value_area_high`` are
the lower edge of the lowest and the upper edge of the highest included row.

**VWAP** = Σ quote_volume / Σ volume when every bar has quote_volume, otherwise the
typical-price ((h + l + c) / 3) volume-weighted mean. Bars are taken in open-time order
whatever order they are given in, so a result never depends on arrival order.

**Zero volume** (empty minutes, a halted market): the rows are still published (all 0.0, buy
rows 0.0 where taker data is known), ``total_volume = 0.0``, and ``poc``,
``value_area_low``/``value_area_high`` and ``vwap`` are ``None``: there is no point of control
or average price of nothing, and no made-up number is published.

No NaN or infinity is ever returned: inputs must be finite (prices and volumes of a valid
:class:`~udfs.record.Kline` always are) with ``low <= high`` and ``volume >= 0``; anything
else raises ``ValueError``.

The incremental form for Flink keyed state is :class:`ProfileAccumulator`: it holds one
compact record per 1m open time (a later version of a minute replaces the earlier one) and
computes the same profile as :func:`compute_volume_profile` on the same final bars.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from udfs.pickling import pickled_as_arguments
from udfs.record import Kline

DEFAULT_ROWS: Final = 24
DEFAULT_MAX_ROWS: Final = 1000
VALUE_AREA_FRACTION: Final = 0.70
# Relative tolerance for "equal" row volumes and for reaching the value-area target.
TIE_RTOL: Final = 1e-9

FloatArray = npt.NDArray[np.float64]


@pickled_as_arguments
@dataclass(frozen=True, slots=True)
class VolumeProfile:
    """A window's volume profile: the ``volume_profile`` columns except the window bounds.

    Lists are tuples here (the value is immutable); :meth:`as_dict` gives lists for the sinks.
    """

    row_size: float
    row_low: tuple[float, ...]
    volume: tuple[float, ...]
    buy_volume: tuple[float, ...] | None
    poc: float | None
    value_area_low: float | None
    value_area_high: float | None
    vwap: float | None
    total_volume: float

    @property
    def rows(self) -> int:
        """Number of rows."""
        return len(self.row_low)

    def as_dict(self) -> dict[str, Any]:
        """The columns keyed by name, arrays as lists (``buy_volume`` may be None)."""
        return {
            "row_size": self.row_size,
            "row_low": list(self.row_low),
            "volume": list(self.volume),
            "buy_volume": None if self.buy_volume is None else list(self.buy_volume),
            "poc": self.poc,
            "value_area_low": self.value_area_low,
            "value_area_high": self.value_area_high,
            "vwap": self.vwap,
            "total_volume": self.total_volume,
        }


# Columns of the per-bar table the profile is computed from; a missing optional value is NaN
# there (internal only: it decides "every bar has it" and never reaches a result).
_COLUMNS: Final = ("low", "high", "close", "volume", "quote_volume", "taker_buy_volume")
_LOW, _HIGH, _CLOSE, _VOLUME, _QUOTE, _TAKER = range(len(_COLUMNS))


def bar_values(bar: Kline) -> tuple[float, ...]:
    """The profile-relevant values of ``bar`` in ``_COLUMNS`` order, validated.

    Prices and volumes must be finite, ``low <= high`` and ``volume >= 0``; a missing
    ``quote_volume``/``taker_buy_volume`` becomes NaN (internal marker only).
    """
    values = (bar.low, bar.high, bar.close, bar.volume, bar.quote_volume, bar.taker_buy_volume)
    for name, value in zip(_COLUMNS, values, strict=True):
        if value is None and name in ("quote_volume", "taker_buy_volume"):
            continue
        if value is None or not math.isfinite(value):
            raise ValueError(f"bar {bar.open_time}: {name} is not finite: {value}")
    if bar.low > bar.high:
        raise ValueError(f"bar {bar.open_time}: low {bar.low} > high {bar.high}")
    if bar.volume < 0:
        raise ValueError(f"bar {bar.open_time}: volume {bar.volume} is negative")
    return tuple(math.nan if value is None else float(value) for value in values)


def _sorted_table(open_times: npt.NDArray[np.int64], table: FloatArray) -> FloatArray:
    """The bar table in open-time order, C-contiguous (so every sum rounds the same way)."""
    return np.ascontiguousarray(table[np.argsort(open_times, kind="stable")])


def _table_of(bars: Sequence[Kline]) -> FloatArray:
    table = np.array([bar_values(bar) for bar in bars], dtype=np.float64).reshape(-1, 6)
    open_times = np.array([bar.open_time for bar in bars], dtype=np.int64)
    return _sorted_table(open_times, table)


def _check_settings(rows: int, row_size: float | None, max_rows: int) -> None:
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be an integer >= 1, got {rows!r}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be an integer >= 1, got {max_rows!r}")
    if row_size is not None and not (math.isfinite(row_size) and row_size > 0):
        raise ValueError(f"row_size must be a finite number > 0, got {row_size!r}")


def vwap(bars: Sequence[Kline]) -> float | None:
    """VWAP of ``bars`` (DESIGN.md); ``None`` when their total volume is zero (or no bars)."""
    return _vwap(_table_of(bars))


def _vwap(table: FloatArray) -> float | None:
    volumes = table[:, _VOLUME]
    total_volume = float(volumes.sum())
    if total_volume <= 0.0:
        return None
    quotes = table[:, _QUOTE]
    if not np.isnan(quotes).any():
        weighted = float(quotes.sum())
    else:
        typical = (table[:, _HIGH] + table[:, _LOW] + table[:, _CLOSE]) / 3.0
        weighted = float((typical * volumes).sum())
    result = weighted / total_volume
    return result if math.isfinite(result) else None


def _grid_fixed(
    low: float, high: float, row_size: float, max_rows: int
) -> tuple[float, FloatArray]:
    """Row edges aligned to multiples of ``row_size`` (scaled up to fit ``max_rows``)."""
    size = row_size
    multiple = 1
    while True:
        if not (math.isfinite(low / size) and math.isfinite(high / size)):
            raise ValueError(f"row_size {row_size} is too small for prices up to {high}")
        first = math.floor(low / size)
        while first * size > low:
            first -= 1
        end = max(first + 1, math.ceil(high / size))
        while end * size < high:
            end += 1
        count = end - first
        if count <= max_rows:
            break
        multiple = max(multiple + 1, math.ceil(multiple * count / max_rows))
        size = row_size * multiple
    edges = np.arange(first, end + 1, dtype=np.float64) * size
    return size, edges


def _grid_equal(low: float, high: float, rows: int) -> tuple[float, FloatArray]:
    if high == low:
        return 0.0, np.array([low, low], dtype=np.float64)
    size = (high - low) / rows
    edges = low + np.arange(rows + 1, dtype=np.float64) * size
    edges[-1] = high
    # Rounding must not push an inner edge past the high (keeps edges sorted).
    np.minimum(edges, high, out=edges)
    return size, edges


@dataclass(slots=True)
class SpreadParts:
    """What :func:`spread_parts` sums over some bars, in open-time order.

    ``ranged``: the row sums (rows x weight columns) of the bars with a range (high > low),
    added one bar after another; ``points``: the row sums of the one-price bars, likewise;
    None when there was no such bar. Sums are sequential, so extending the parts of bars
    ``[0, k)`` by bar ``k`` gives exactly the parts of bars ``[0, k]`` (see
    :class:`ProfileAccumulator`).
    """

    ranged: FloatArray | None
    points: FloatArray | None


def spread_parts(
    edges: FloatArray,
    lows: FloatArray,
    highs: FloatArray,
    weights: FloatArray,
    start: SpreadParts | None = None,
) -> SpreadParts:
    """The parts of ``start`` (None: of no bar) extended by the given bars, in order.

    ``weights``: one row per bar, one column per quantity spread (volume, buy volume): the
    bars' overlaps with the rows are computed once for all of them.
    """
    count = len(edges) - 1
    ranged_sum = None if start is None else start.ranged
    points_sum = None if start is None else start.points
    spans = highs - lows
    ranged = spans > 0
    if ranged.any():
        bar_low = lows[ranged, None]
        bar_high = highs[ranged, None]
        overlap = np.minimum(bar_high, edges[None, 1:]) - np.maximum(bar_low, edges[None, :-1])
        np.maximum(overlap, 0.0, out=overlap)
        share = weights[ranged] / spans[ranged, None]
        # An explicit product and axis-0 sum (not BLAS): numpy adds the slices of a C-ordered
        # array one after another, so the rounding never depends on memory alignment or on
        # how many bars were summed before (the accumulator and the batch function agree
        # bit for bit).
        contributions = overlap[:, :, None] * share[:, None, :]
        if ranged_sum is not None:
            contributions = np.concatenate([ranged_sum[None, :, :], contributions])
        ranged_sum = contributions.sum(axis=0)
    if not ranged.all():
        points = ~ranged
        index = np.searchsorted(edges, lows[points], side="right") - 1
        np.minimum(np.maximum(index, 0, out=index), count - 1, out=index)  # np.clip, cheaper
        point_weights = weights[points]
        if points_sum is None:
            points_sum = np.stack(
                [np.bincount(index, weights=point_weights[:, column], minlength=count)
                 for column in range(weights.shape[1])],
                axis=1,
            ).astype(np.float64, copy=False)  # fmt: skip
        else:
            points_sum = points_sum.copy()
            for row, bar_weights in zip(index.tolist(), point_weights, strict=True):
                points_sum[row] += bar_weights  # in order, as bincount adds
    return SpreadParts(ranged_sum, points_sum)


def combine_spread(count: int, columns: int, parts: SpreadParts) -> FloatArray:
    """Per-row sums (``count`` rows x ``columns``) of the parts' bars."""
    result = np.zeros((count, columns), dtype=np.float64)
    if parts.ranged is not None:
        result += parts.ranged
    if parts.points is not None:
        result += parts.points
    return result


def _spread(
    edges: FloatArray,
    lows: FloatArray,
    highs: FloatArray,
    weights: FloatArray,
) -> FloatArray:
    """Per-row sums (rows x columns) of ``weights`` (bars x columns), each bar's spread
    uniformly over its [low, high]."""
    parts = spread_parts(edges, lows, highs, weights)
    return combine_spread(len(edges) - 1, weights.shape[1], parts)


def _point_of_control(volumes: FloatArray, middle_position: float) -> int:
    """Index of the max-volume row; ties nearest ``middle_position`` (in rows), then lower."""
    peak = float(volumes.max())
    candidates = np.flatnonzero(volumes >= peak * (1.0 - TIE_RTOL))
    distances = np.abs(candidates + 0.5 - middle_position)
    return int(candidates[np.argmin(distances)])  # argmin keeps the first (lower) on ties


def _value_area(volumes: Sequence[float], poc: int, total: float) -> tuple[int, int]:
    """Inclusive row range of the 70 % value area grown from the POC row."""
    target = VALUE_AREA_FRACTION * total - TIE_RTOL * total
    first = last = poc
    included = volumes[poc]
    top = len(volumes) - 1
    while included < target and (first > 0 or last < top):
        above = volumes[last + 1] if last < top else None
        below = volumes[first - 1] if first > 0 else None
        if below is None or (above is not None and above + TIE_RTOL * max(above, below) >= below):
            last += 1
            included += volumes[last]
        else:
            first -= 1
            included += volumes[first]
    return first, last


# (edges, lows, highs, weights, their table columns) -> per-row sums, as ``_spread`` gives.
SpreadFunction = Callable[
    [FloatArray, FloatArray, FloatArray, FloatArray, tuple[int, ...]], FloatArray
]


def _batch_spread(
    edges: FloatArray,
    lows: FloatArray,
    highs: FloatArray,
    weights: FloatArray,
    _columns: tuple[int, ...],
) -> FloatArray:
    return _spread(edges, lows, highs, weights)


def _profile(
    table: FloatArray,
    rows: int,
    row_size: float | None,
    max_rows: int,
    spread: SpreadFunction = _batch_spread,
) -> VolumeProfile:
    """The profile of a bar table sorted by open time (see ``_sorted_table``)."""
    if len(table) == 0:
        raise ValueError("a volume profile needs at least one bar")
    lows = np.ascontiguousarray(table[:, _LOW])
    highs = np.ascontiguousarray(table[:, _HIGH])
    volumes = np.ascontiguousarray(table[:, _VOLUME])
    low = float(lows.min())
    high = float(highs.max())
    if row_size is None:
        size, edges = _grid_equal(low, high, rows)
    else:
        size, edges = _grid_fixed(low, high, row_size, max_rows)
    count = len(edges) - 1

    # Buy volume only when every bar has it (see "Buy volume nulls").
    columns = (_VOLUME, _TAKER) if not np.isnan(table[:, _TAKER]).any() else (_VOLUME,)
    spread_rows = spread(edges, lows, highs, np.ascontiguousarray(table[:, columns]), columns)
    row_volume = np.ascontiguousarray(spread_rows[:, 0])
    buy = tuple(spread_rows[:, 1].tolist()) if len(columns) == 2 else None

    total_volume = float(volumes.sum())
    row_total = float(row_volume.sum())
    poc = value_area_low = value_area_high = None
    if total_volume > 0.0 and row_total > 0.0:
        if size == 0.0:
            middle_position = 0.5
        elif row_size is None:
            middle_position = count / 2.0  # exact: the range is the grid
        else:
            middle_position = ((low + high) / 2.0 - float(edges[0])) / size
        poc_index = _point_of_control(row_volume, middle_position)
        first, last = _value_area(row_volume.tolist(), poc_index, row_total)
        poc = (float(edges[poc_index]) + float(edges[poc_index + 1])) / 2.0
        value_area_low = float(edges[first])
        value_area_high = float(edges[last + 1])

    profile = VolumeProfile(
        row_size=float(size),
        row_low=tuple(edges[:-1].tolist()),
        volume=tuple(row_volume.tolist()),
        buy_volume=buy,
        poc=poc,
        value_area_low=value_area_low,
        value_area_high=value_area_high,
        vwap=_vwap(table),
        total_volume=total_volume,
    )
    _check_finite(profile, edges[:-1], spread_rows)
    return profile


def _check_finite(profile: VolumeProfile, row_lows: FloatArray, spread_rows: FloatArray) -> None:
    """ValueError unless every number of ``profile`` is finite (its row lists are checked on
    the arrays they were made from)."""
    scalars = (profile.row_size, profile.total_volume, profile.poc, profile.value_area_low,
               profile.value_area_high, profile.vwap)  # fmt: skip
    if not (
        all(value is None or math.isfinite(value) for value in scalars)
        and bool(np.isfinite(row_lows).all())
        and bool(np.isfinite(spread_rows).all())
    ):
        raise ValueError("volume profile overflowed (non-finite result)")


def compute_volume_profile(
    bars: Sequence[Kline],
    *,
    rows: int = DEFAULT_ROWS,
    row_size: float | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> VolumeProfile:
    """The volume profile of one window's bars (normally its 1m bars), per the module rules.

    ``rows`` equal-width rows over [low, high] unless ``row_size`` is given (rows aligned to
    multiples of it, at most ``max_rows``). The bars must be of one series with distinct
    open times (a repeated open time raises ``ValueError``; feed corrections through
    :class:`ProfileAccumulator`, which replaces them). Order does not matter.
    """
    _check_settings(rows, row_size, max_rows)
    series = {bar.series_key for bar in bars}
    if len(series) > 1:
        raise ValueError(f"bars of more than one series: {sorted(series)}")
    open_times = [bar.open_time for bar in bars]
    if len(set(open_times)) != len(open_times):
        repeated = sorted({t for t in open_times if open_times.count(t) > 1})
        raise ValueError(f"two bars with open_time {repeated[0]}")
    return _profile(_table_of(bars), rows, row_size, max_rows)


class ProfileAccumulator:
    """Incremental volume profile of one open window, for Flink keyed state.

    Keeps a table of six numbers per open time (low, high, close, volume, quote volume, taker
    buy volume); :meth:`upsert` of a bar whose open time is already present *replaces* its row
    (a later version of the same minute never double counts). :meth:`profile` recomputes the
    profile from the table, so the result equals :func:`compute_volume_profile` on the same
    final bars exactly. (In the equal-rows mode every row boundary moves whenever the
    window's range grows, so row volumes cannot be updated in place.) A 1d window holds at
    most 1,440 rows (~80 KB); the object pickles to just those rows and the settings.
    """

    __slots__ = (
        "_count",
        "_open_times",
        "_slots",
        "_spread_cache",
        "_table",
        "max_rows",
        "row_size",
        "rows",
    )

    def __init__(
        self,
        *,
        rows: int = DEFAULT_ROWS,
        row_size: float | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        _check_settings(rows, row_size, max_rows)
        self.rows = rows
        self.row_size = row_size
        self.max_rows = max_rows
        self._reset(np.empty(0, dtype=np.int64), np.empty((0, len(_COLUMNS))))

    def _reset(self, open_times: npt.NDArray[np.int64], table: FloatArray) -> None:
        capacity = max(16, len(open_times))
        self._open_times = np.zeros(capacity, dtype=np.int64)
        self._table = np.zeros((capacity, len(_COLUMNS)), dtype=np.float64)
        self._open_times[: len(open_times)] = open_times
        self._table[: len(open_times)] = table
        self._count = len(open_times)
        self._slots = {int(t): slot for slot, t in enumerate(open_times.tolist())}
        self._spread_cache: _CachedSpread | None = None

    def __getstate__(self) -> tuple[Any, ...]:
        count = self._count
        return (
            self.rows,
            self.row_size,
            self.max_rows,
            self._open_times[:count].copy(),
            self._table[:count].copy(),
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.rows, self.row_size, self.max_rows, open_times, table = state
        self._reset(open_times, table)

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"ProfileAccumulator(rows={self.rows}, row_size={self.row_size}, bars={len(self)})"

    @property
    def open_times(self) -> list[int]:
        """Open times of the bars held, ascending."""
        return sorted(self._slots)

    def upsert(self, bar: Kline, values: tuple[float, ...] | None = None) -> None:
        """Add ``bar`` or replace the bar with the same open time.

        ``values``: ``bar_values(bar)`` when the caller has it already (one bar goes into
        every profile window of its series).
        """
        self._put(bar.open_time, bar_values(bar) if values is None else values)

    def copy_bar(self, other: ProfileAccumulator, open_time: int) -> None:
        """Add or replace the bar of ``open_time`` with ``other``'s (merging accumulators).

        Raises KeyError when ``other`` holds no bar of ``open_time``.
        """
        self._put(open_time, other._table[other._slots[open_time]].copy())

    def _put(self, open_time: int, values: Any) -> None:
        self._forget_spreads_from(open_time)
        slot = self._slots.get(open_time)
        if slot is None:
            slot = self._count
            if slot == len(self._open_times):
                self._open_times = np.concatenate(
                    [self._open_times, np.zeros_like(self._open_times)]
                )
                self._table = np.concatenate([self._table, np.zeros_like(self._table)])
            self._slots[open_time] = slot
            self._open_times[slot] = open_time
            self._count += 1
        self._table[slot] = values

    def remove(self, open_time: int) -> bool:
        """Drop the bar of ``open_time``; True when there was one."""
        slot = self._slots.pop(open_time, None)
        if slot is None:
            return False
        self._forget_spreads_from(open_time)
        last = self._count - 1
        if slot != last:  # move the last row into the hole
            moved = int(self._open_times[last])
            self._open_times[slot] = moved
            self._table[slot] = self._table[last]
            self._slots[moved] = slot
        self._count = last
        return True

    def profile(self) -> VolumeProfile | None:
        """The profile of the bars held now; ``None`` while the window has no bar."""
        if not self._count:
            return None
        count = self._count
        open_times = self._open_times[:count]
        order = np.argsort(open_times, kind="stable")
        table = np.ascontiguousarray(self._table[:count][order])  # as _sorted_table
        if count < _REUSE_SPREAD_FROM_BARS:
            return _profile(table, self.rows, self.row_size, self.max_rows)
        previous_open_time = int(open_times[order[-2]])

        def spread(
            edges: FloatArray, lows: FloatArray, highs: FloatArray, weights: FloatArray,
            columns: tuple[int, ...],
        ) -> FloatArray:  # fmt: skip
            return self._spread_with_cache(
                edges, lows, highs, weights, columns=columns, previous_open_time=previous_open_time
            )

        return _profile(table, self.rows, self.row_size, self.max_rows, spread)

    def _spread_with_cache(
        self,
        edges: FloatArray,
        lows: FloatArray,
        highs: FloatArray,
        weights: FloatArray,
        *,
        columns: tuple[int, ...],
        previous_open_time: int,
    ) -> FloatArray:
        """``_spread`` of all bars, reusing the parts of all but the newest bar.

        A live window's newest minute changes with every update, its older minutes rarely:
        the parts of the bars before the newest one are kept (for the grid and the columns
        they were spread on) and extended by the bars added since, so an update costs the
        spreading of a few bars instead of all of them. Sums are sequential in open-time
        order, so the result is bit for bit what ``_spread`` gives.
        """
        count = len(lows)
        cached = self._spread_cache
        start: SpreadParts | None = None
        done = 0
        if (
            cached is not None
            and cached.columns == columns
            and cached.count <= count - 1
            and np.array_equal(cached.edges, edges)
        ):
            start, done = cached.parts, cached.count
        prefix = spread_parts(
            edges, lows[done : count - 1], highs[done : count - 1], weights[done : count - 1],
            start,
        )  # fmt: skip
        self._spread_cache = _CachedSpread(edges, columns, count - 1, previous_open_time, prefix)
        whole = spread_parts(edges, lows[count - 1 :], highs[count - 1 :], weights[count - 1 :],
                             prefix)  # fmt: skip
        return combine_spread(len(edges) - 1, len(columns), whole)

    def _forget_spreads_from(self, open_time: int) -> None:
        """Drop the cached parts if they include the bar of ``open_time`` (it changes)."""
        cached = self._spread_cache
        if cached is not None and open_time <= cached.last_open_time:
            self._spread_cache = None


# Below this many bars spreading them all again costs less than keeping and checking parts.
_REUSE_SPREAD_FROM_BARS: Final = 64


@dataclass(frozen=True, slots=True)
class _CachedSpread:
    """The parts of a window's ``count`` oldest bars (up to ``last_open_time``) on ``edges``."""

    edges: FloatArray
    columns: tuple[int, ...]
    count: int
    last_open_time: int
    parts: SpreadParts
