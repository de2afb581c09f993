"""RSI, MACD and Bollinger bands on the closed bars of a series: batch and incremental forms.

Both forms follow TA-Lib's exact definitions (DESIGN.md "Conventions"), with TA-Lib's default
settings (unstable period 0, compatibility "default", not Metastock):

- **RSI(14)**, Wilder smoothing. The first value is at index ``period`` (14): the averages are
  seeded with the plain means of the first ``period`` gains and losses (close-to-close
  differences from index 1 to ``period``), then ``avg = (avg * (period - 1) + x) / period``.
  ``RSI = 100 * avg_gain / (avg_gain + avg_loss)``; when both averages are exactly zero (a
  series flat since its start) the value is 0.0, as TA-Lib returns.
- **MACD(12, 26, 9)**. EMAs with ``k = 2 / (period + 1)`` seeded by a simple mean. As in
  TA-Lib the fast EMA is aligned to the slow one: both start at index ``slow - 1`` (25), the
  slow EMA seeded with the mean of closes ``0..25`` and the fast EMA with the mean of the last
  ``fast`` closes up to that index (``14..25``), not of closes ``0..11``. The signal EMA is
  seeded with the mean of the first ``signal`` MACD values (indexes 25..33). TA-Lib publishes
  the MACD line, the signal and the histogram only from index ``slow + signal - 2`` (33), so
  all three are null before it (the MACD line exists internally from index 25).
- **Bollinger(20, 2)**: middle = SMA 20 (TA-Lib's running total: add the new close, divide,
  subtract the trailing close), bands = middle ± 2 population standard deviations. The
  deviation is computed two-pass around the middle band (numerically stable; TA-Lib 0.8
  computes it accurately as well and agrees to ~1e-16 relative). First value at index 19.

The recurrences run in TA-Lib's order of operations. Against TA-Lib 0.8 (``ta-lib`` 0.8.2)
the SMA and the MACD line come out bit-identical and RSI, signal, histogram and bands within a
few ulps (~1e-13 relative at worst, also through long flat stretches): TA-Lib 0.8 evaluates
some recurrences with a fused multiply-add, which Python 3.11 cannot express (no
``math.fma``), so those differ in the last bits.

**Gaps**: an indicator is a function of the sequence of closed bars as they come. A missing
minute is not invented (no forward fill): the next bar that exists is simply the next element.
**Warm-up**: before an indicator has a value, the public result is ``None`` (never NaN, never
a made-up number). Inputs must be finite; anything else raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final, NamedTuple

from udfs.pickling import pickled_as_arguments

RSI_PERIOD: Final = 14
MACD_FAST: Final = 12
MACD_SLOW: Final = 26
MACD_SIGNAL: Final = 9
BB_PERIOD: Final = 20
BB_NBDEV: Final = 2.0


class MacdSeries(NamedTuple):
    """Batch MACD: one entry per close, ``None`` during the warm-up."""

    macd: list[float | None]
    signal: list[float | None]
    hist: list[float | None]


class BollingerSeries(NamedTuple):
    """Batch Bollinger bands: one entry per close, ``None`` during the warm-up."""

    middle: list[float | None]
    upper: list[float | None]
    lower: list[float | None]


@pickled_as_arguments
@dataclass(frozen=True, slots=True)
class IndicatorValues:
    """The indicators of one closed bar, as the ``indicators`` table and ``ind:`` hash hold them."""

    rsi_14: float | None
    macd: float | None
    macd_signal: float | None
    macd_hist: float | None
    bb_middle: float | None
    bb_upper: float | None
    bb_lower: float | None

    def as_dict(self) -> dict[str, float | None]:
        """The values keyed by their column names."""
        return {
            "rsi_14": self.rsi_14,
            "macd": self.macd,
            "macd_signal": self.macd_signal,
            "macd_hist": self.macd_hist,
            "bb_middle": self.bb_middle,
            "bb_upper": self.bb_upper,
            "bb_lower": self.bb_lower,
        }


class StaleBarError(ValueError):
    """A closed bar older than the last one the state has taken: it cannot be applied."""


def _checked_closes(closes: Sequence[float]) -> list[float]:
    values = [float(value) for value in closes]
    for index, value in enumerate(values):
        if not math.isfinite(value):
            raise ValueError(f"close at index {index} is not finite: {value}")
    return values


def _check_period(name: str, period: int, minimum: int = 2) -> None:
    if isinstance(period, bool) or not isinstance(period, int) or period < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {period!r}")


def _check_macd_periods(fast: int, slow: int, signal: int) -> None:
    _check_period("fast", fast)
    _check_period("slow", slow)
    _check_period("signal", signal, minimum=1)
    if fast >= slow:
        raise ValueError(f"fast ({fast}) must be shorter than slow ({slow})")


def _rsi_value(avg_gain: float, avg_loss: float) -> float:
    total = avg_gain + avg_loss
    if total == 0.0:
        return 0.0
    return 100.0 * (avg_gain / total)


def rsi(closes: Sequence[float], period: int = RSI_PERIOD) -> list[float | None]:
    """Wilder's RSI of ``closes`` with TA-Lib's seeding; ``None`` before index ``period``."""
    _check_period("period", period)
    values = _checked_closes(closes)
    out: list[float | None] = [None] * len(values)
    if len(values) <= period:
        return out
    gain = 0.0
    loss = 0.0
    previous = values[0]
    for index in range(1, period + 1):
        change = values[index] - previous
        previous = values[index]
        if change < 0:
            loss -= change
        else:
            gain += change
    loss /= period
    gain /= period
    out[period] = _rsi_value(gain, loss)
    keep = period - 1
    for index in range(period + 1, len(values)):
        change = values[index] - previous
        previous = values[index]
        loss *= keep
        gain *= keep
        if change < 0:
            loss -= change
        else:
            gain += change
        loss /= period
        gain /= period
        out[index] = _rsi_value(gain, loss)
    return out


def _ema_from(
    values: Sequence[float], start: int, period: int, seed_from: int
) -> list[float | None]:
    """EMA over ``values[start:]`` seeded with the mean of ``values[seed_from : start + 1]``."""
    k = 2.0 / (period + 1)
    out: list[float | None] = [None] * len(values)
    total = 0.0
    for value in values[seed_from : start + 1]:
        total += value
    average = total / period
    out[start] = average
    for index in range(start + 1, len(values)):
        average = (values[index] - average) * k + average
        out[index] = average
    return out


def macd(
    closes: Sequence[float],
    fast: int = MACD_FAST,
    slow: int = MACD_SLOW,
    signal: int = MACD_SIGNAL,
) -> MacdSeries:
    """TA-Lib's MACD of ``closes``: (macd, signal, hist), ``None`` before ``slow + signal - 2``."""
    _check_macd_periods(fast, slow, signal)
    values = _checked_closes(closes)
    count = len(values)
    first = slow + signal - 2
    macd_out: list[float | None] = [None] * count
    signal_out: list[float | None] = [None] * count
    hist_out: list[float | None] = [None] * count
    if count <= first:
        return MacdSeries(macd_out, signal_out, hist_out)
    start = slow - 1
    slow_ema = _ema_from(values, start, slow, 0)
    fast_ema = _ema_from(values, start, fast, start - fast + 1)
    line = [0.0] * count
    for index in range(start, count):
        fast_value = fast_ema[index]
        slow_value = slow_ema[index]
        assert fast_value is not None and slow_value is not None
        line[index] = fast_value - slow_value
    signal_ema = _ema_from(line, first, signal, start)
    for index in range(first, count):
        signal_value = signal_ema[index]
        assert signal_value is not None
        macd_out[index] = line[index]
        signal_out[index] = signal_value
        hist_out[index] = line[index] - signal_value
    return MacdSeries(macd_out, signal_out, hist_out)


def _deviation(window: Sequence[float], middle: float) -> float:
    """Population standard deviation of ``window`` around ``middle`` (two-pass form)."""
    squares = 0.0
    for value in window:
        delta = value - middle
        squares += delta * delta
    return math.sqrt(squares / len(window))


def bollinger(
    closes: Sequence[float], period: int = BB_PERIOD, nbdev: float = BB_NBDEV
) -> BollingerSeries:
    """Bollinger bands (SMA ± ``nbdev`` population std); ``None`` before index ``period - 1``."""
    _check_period("period", period)
    if not math.isfinite(nbdev) or nbdev < 0:
        raise ValueError(f"nbdev must be a finite number >= 0, got {nbdev!r}")
    values = _checked_closes(closes)
    count = len(values)
    middle_out: list[float | None] = [None] * count
    upper_out: list[float | None] = [None] * count
    lower_out: list[float | None] = [None] * count
    total = 0.0
    for value in values[: period - 1]:
        total += value
    for index in range(period - 1, count):
        total += values[index]
        middle = total / period
        total -= values[index - period + 1]
        width = _deviation(values[index - period + 1 : index + 1], middle) * nbdev
        middle_out[index] = middle
        upper_out[index] = middle + width
        lower_out[index] = middle - width
    return BollingerSeries(middle_out, upper_out, lower_out)


def _newest_bollinger(
    values: Sequence[float], count: int, period: int = BB_PERIOD, nbdev: float = BB_NBDEV
) -> list[tuple[float | None, float | None, float | None]]:
    """``(middle, upper, lower)`` of the newest ``count`` indices, as :func:`bollinger` gives
    them (the same running total, so the same bits), without the older deviations."""
    total = 0.0
    for value in values[: period - 1]:
        total += value
    length = len(values)
    first_kept = length - count
    warming_up = max(0, min(length, period - 1) - first_kept)  # kept indices before a band
    out: list[tuple[float | None, float | None, float | None]] = [(None, None, None)] * warming_up
    for index in range(period - 1, length):
        total += values[index]
        middle = total / period
        total -= values[index - period + 1]
        if index >= first_kept:
            width = _deviation(values[index - period + 1 : index + 1], middle) * nbdev
            out.append((middle, middle + width, middle - width))
    return out


def newest_indicators(closes: Sequence[float], count: int = 2) -> list[IndicatorValues]:
    """The last ``count`` rows of :func:`compute_indicators` (fewer if there are fewer
    closes), equal to them bit for bit, without building the older rows."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count!r}")
    values = _checked_closes(closes)
    count = min(count, len(values))
    if not count:
        return []
    rsi_values = rsi(values)[-count:]
    macd_values = macd(values)
    bands = _newest_bollinger(values, count)
    return [
        IndicatorValues(
            rsi_14=rsi_values[offset],
            macd=macd_values.macd[offset - count],
            macd_signal=macd_values.signal[offset - count],
            macd_hist=macd_values.hist[offset - count],
            bb_middle=bands[offset][0],
            bb_upper=bands[offset][1],
            bb_lower=bands[offset][2],
        )
        for offset in range(count)
    ]


def compute_indicators(closes: Sequence[float]) -> list[IndicatorValues]:
    """RSI 14, MACD 12/26/9 and Bollinger 20/2 of every close, in batch."""
    rsi_values = rsi(closes)
    macd_values = macd(closes)
    bands = bollinger(closes)
    return [
        IndicatorValues(
            rsi_14=rsi_values[index],
            macd=macd_values.macd[index],
            macd_signal=macd_values.signal[index],
            macd_hist=macd_values.hist[index],
            bb_middle=bands.middle[index],
            bb_upper=bands.upper[index],
            bb_lower=bands.lower[index],
        )
        for index in range(len(rsi_values))
    ]


# Field order of IndicatorState's running values (also the layout of its undo snapshot).
_RUNNING_FIELDS: Final = (
    "count",
    "last_close",
    "avg_gain",
    "avg_loss",
    "slow_ema",
    "fast_ema",
    "signal_ema",
    "bb_total",
    "window",
    "last_open_time",
)


# The running values in _RUNNING_FIELDS order, read in one C call (a state is copied per bar).
_RUNNING_VALUES: Final = attrgetter(*_RUNNING_FIELDS)


class IndicatorState:
    """Incremental RSI 14, MACD 12/26/9 and Bollinger 20/2 of one series, for Flink keyed state.

    Feed closed bars in open-time order with :meth:`update`; each call returns the
    :class:`IndicatorValues` of that bar, equal (bit for bit) to :func:`compute_indicators` on
    the sequence of closes fed so far. The state is a few floats plus the last ``period - 1``
    closes of the Bollinger window (~40 numbers in all), and pickles with the standard
    ``pickle`` module.

    The series starts at the first bar the state is fed: a state created without history
    equals the batch functions over the bars fed since then (to continue a longer history,
    feed that history first, e.g. from ClickHouse). A bar with the same ``open_time`` as the
    last one *replaces* it (a versioned correction of
    the newest closed bar): the state keeps one undo snapshot for that. A bar older than the
    last one raises :class:`StaleBarError`; the caller decides what to do with it.
    """

    __slots__ = (
        "avg_gain",
        "avg_loss",
        "bb_total",
        "count",
        "fast_ema",
        "last_close",
        "last_open_time",
        "signal_ema",
        "slow_ema",
        "undo",
        "window",
    )

    def __init__(self) -> None:
        self.count = 0
        self.last_close = 0.0
        # During the warm-up these hold running sums; afterwards the smoothed averages.
        self.avg_gain = 0.0
        self.avg_loss = 0.0
        self.slow_ema = 0.0
        self.fast_ema = 0.0
        self.signal_ema = 0.0
        self.bb_total = 0.0
        self.window: tuple[float, ...] = ()  # the last BB_PERIOD - 1 closes
        self.last_open_time: int | None = None
        self.undo: tuple[Any, ...] | None = None

    def __getstate__(self) -> tuple[Any, ...]:
        return (*self._running(), self.undo)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        *running, self.undo = state
        self._restore(tuple(running))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IndicatorState):
            return NotImplemented
        return self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"IndicatorState(count={self.count}, last_open_time={self.last_open_time})"

    def _running(self) -> tuple[Any, ...]:
        running: tuple[Any, ...] = _RUNNING_VALUES(self)
        return running

    def copy(self) -> IndicatorState:
        """An independent copy (the state holds only numbers and tuples)."""
        twin = IndicatorState.__new__(IndicatorState)
        twin._restore(_RUNNING_VALUES(self))
        twin.undo = self.undo
        return twin

    def _restore(self, running: tuple[Any, ...]) -> None:
        for name, value in zip(_RUNNING_FIELDS, running, strict=True):
            setattr(self, name, value)

    @property
    def bars_seen(self) -> int:
        """How many closed bars the state has taken (corrections not counted twice)."""
        return self.count

    def update(self, close: float, open_time: int | None = None) -> IndicatorValues:
        """Take the next closed bar and return its indicators.

        ``open_time`` (epoch ms) is optional; when given, a repeat of the last open time
        replaces that bar and an older one raises :class:`StaleBarError`.
        """
        close = float(close)
        if not math.isfinite(close):
            raise ValueError(f"close is not finite: {close}")
        if open_time is not None and self.last_open_time is not None:
            if open_time == self.last_open_time:
                if self.undo is None:
                    raise StaleBarError(f"bar {open_time} can no longer be replaced")
                self._restore(self.undo)
            elif open_time < self.last_open_time:
                raise StaleBarError(
                    f"bar {open_time} is older than the last closed bar {self.last_open_time}"
                )
        self.undo = self._running()
        values = self._advance(close)
        self.last_open_time = open_time
        return values

    def _advance(self, close: float) -> IndicatorValues:
        index = self.count
        self.count = index + 1
        return IndicatorValues(
            rsi_14=self._advance_rsi(index, close),
            **self._advance_macd(index, close),
            **self._advance_bollinger(index, close),
        )

    def _advance_rsi(self, index: int, close: float) -> float | None:
        period = RSI_PERIOD
        previous = self.last_close
        self.last_close = close
        if index == 0:
            return None
        change = close - previous
        if index > period:
            self.avg_loss *= period - 1
            self.avg_gain *= period - 1
        if change < 0:
            self.avg_loss -= change
        else:
            self.avg_gain += change
        if index < period:
            return None
        self.avg_loss /= period
        self.avg_gain /= period
        return _rsi_value(self.avg_gain, self.avg_loss)

    def _advance_macd(self, index: int, close: float) -> dict[str, float | None]:
        start = MACD_SLOW - 1
        first = MACD_SLOW + MACD_SIGNAL - 2
        none: dict[str, float | None] = {"macd": None, "macd_signal": None, "macd_hist": None}
        if index < start:
            self.slow_ema += close
            if index > start - MACD_FAST:
                self.fast_ema += close
            return none
        if index == start:
            self.slow_ema = (self.slow_ema + close) / MACD_SLOW
            self.fast_ema = (self.fast_ema + close) / MACD_FAST
        else:
            self.slow_ema = (close - self.slow_ema) * (2.0 / (MACD_SLOW + 1)) + self.slow_ema
            self.fast_ema = (close - self.fast_ema) * (2.0 / (MACD_FAST + 1)) + self.fast_ema
        line = self.fast_ema - self.slow_ema
        if index < first:
            self.signal_ema += line
            return none
        if index == first:
            self.signal_ema = (self.signal_ema + line) / MACD_SIGNAL
        else:
            self.signal_ema = (line - self.signal_ema) * (2.0 / (MACD_SIGNAL + 1)) + self.signal_ema
        return {"macd": line, "macd_signal": self.signal_ema, "macd_hist": line - self.signal_ema}

    def _advance_bollinger(self, index: int, close: float) -> dict[str, float | None]:
        period = BB_PERIOD
        window = self.window
        if index < period - 1:
            self.bb_total += close
            self.window = (*window, close)
            return {"bb_middle": None, "bb_upper": None, "bb_lower": None}
        total = self.bb_total + close
        middle = total / period
        self.bb_total = total - window[0]
        full = (*window, close)
        self.window = full[1:]
        width = _deviation(full, middle) * BB_NBDEV
        return {"bb_middle": middle, "bb_upper": middle + width, "bb_lower": middle - width}
