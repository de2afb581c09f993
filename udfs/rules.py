"""The built-in rules analyser: candlestick patterns and RSI / MACD / Bollinger conditions.

It produces the signals when no inference endpoint is configured (so the demo shows signals
without an API key) and the content of every degraded signal (timeout, open breaker, invalid
reply). Everything here is plain Python on sequences of :class:`Candle`; the newest bar is the
last one.

Patterns (the newest bar, or the newest two / three bars):

- doji: body at most 10 % of the range
- hammer: small body in the upper part of the range, lower shadow >= 2 x body, after a decline
- shooting star: small body in the lower part of the range, upper shadow >= 2 x body, after a rise
- bullish / bearish engulfing: the newest body engulfs the opposite-coloured body before it
- morning / evening star: a long body, a small one beyond it, then a long opposite body that
  closes past the middle of the first

Indicator conditions on the values of ``udfs.indicators`` (RSI 14 Wilder, MACD 12/26/9,
Bollinger 20 x 2 population standard deviations, TA-Lib-exact): RSI <= 30 oversold / >= 70
overbought, a MACD histogram sign change, a close outside the Bollinger bands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Final, Protocol

from udfs.indicators import newest_indicators

RSI_OVERSOLD: Final = 30.0
RSI_OVERBOUGHT: Final = 70.0

DOJI_BODY_RATIO: Final = 0.1
SMALL_BODY_RATIO: Final = 0.35
SHADOW_TO_BODY: Final = 2.0
OPPOSITE_SHADOW_RATIO: Final = 0.25
TREND_BARS: Final = 5
STAR_BODY_RATIO: Final = 0.5
KEY_LEVEL_BARS: Final = 20


class Candle(Protocol):
    """What the analyser reads from a bar (``udfs.signals.ContextBar`` and ``Kline`` fit)."""

    @property
    def open(self) -> float: ...
    @property
    def high(self) -> float: ...
    @property
    def low(self) -> float: ...
    @property
    def close(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Analysis:
    """A pattern analysis, from the rules or from a model reply (validated)."""

    pattern: str
    recommendation: str  # bullish | bearish | neutral
    confidence: float  # 0..1
    key_levels: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class IndicatorSnapshot:
    """The newest indicator values of a series; None where the history is too short."""

    rsi: float | None
    macd: float | None
    macd_signal: float | None
    macd_hist: float | None
    macd_hist_prev: float | None
    bb_middle: float | None
    bb_upper: float | None
    bb_lower: float | None


# --- candle geometry ------------------------------------------------------------------------


def body(candle: Candle) -> float:
    """|close - open|."""
    return abs(candle.close - candle.open)


def candle_range(candle: Candle) -> float:
    """high - low."""
    return candle.high - candle.low


def upper_shadow(candle: Candle) -> float:
    """high - max(open, close)."""
    return candle.high - max(candle.open, candle.close)


def lower_shadow(candle: Candle) -> float:
    """min(open, close) - low."""
    return min(candle.open, candle.close) - candle.low


def is_bullish(candle: Candle) -> bool:
    """close > open."""
    return candle.close > candle.open


def is_bearish(candle: Candle) -> bool:
    """close < open."""
    return candle.close < candle.open


def trend(candles: Sequence[Candle]) -> int:
    """+1 rising, -1 falling, 0 flat/unknown: the last close against the first (>= 2 bars)."""
    if len(candles) < 2:
        return 0
    first, last = candles[0].close, candles[-1].close
    if last > first:
        return 1
    if last < first:
        return -1
    return 0


# --- single-bar patterns --------------------------------------------------------------------


def is_doji(candle: Candle) -> bool:
    """Open and close (nearly) equal: body <= 10 % of a non-zero range."""
    span = candle_range(candle)
    return span > 0 and body(candle) <= DOJI_BODY_RATIO * span


def _hammer_shape(candle: Candle) -> bool:
    span = candle_range(candle)
    real = body(candle)
    return (
        span > 0
        and real > DOJI_BODY_RATIO * span
        and real <= SMALL_BODY_RATIO * span
        and lower_shadow(candle) >= SHADOW_TO_BODY * real
        and upper_shadow(candle) <= OPPOSITE_SHADOW_RATIO * span
    )


def _shooting_star_shape(candle: Candle) -> bool:
    span = candle_range(candle)
    real = body(candle)
    return (
        span > 0
        and real > DOJI_BODY_RATIO * span
        and real <= SMALL_BODY_RATIO * span
        and upper_shadow(candle) >= SHADOW_TO_BODY * real
        and lower_shadow(candle) <= OPPOSITE_SHADOW_RATIO * span
    )


def is_hammer(candles: Sequence[Candle]) -> bool:
    """The newest bar is a hammer after a decline of the bars before it."""
    return (
        len(candles) >= 3
        and _hammer_shape(candles[-1])
        and trend(candles[-1 - TREND_BARS : -1]) < 0
    )


def is_shooting_star(candles: Sequence[Candle]) -> bool:
    """The newest bar is a shooting star after a rise of the bars before it."""
    return (
        len(candles) >= 3
        and _shooting_star_shape(candles[-1])
        and trend(candles[-1 - TREND_BARS : -1]) > 0
    )


# --- two- and three-bar patterns ------------------------------------------------------------


def is_bullish_engulfing(candles: Sequence[Candle]) -> bool:
    """A bearish bar, then a bullish bar whose body covers it and is larger."""
    if len(candles) < 2:
        return False
    prev, cur = candles[-2], candles[-1]
    return (
        is_bearish(prev)
        and is_bullish(cur)
        and cur.open <= prev.close
        and cur.close >= prev.open
        and body(cur) > body(prev)
    )


def is_bearish_engulfing(candles: Sequence[Candle]) -> bool:
    """A bullish bar, then a bearish bar whose body covers it and is larger."""
    if len(candles) < 2:
        return False
    prev, cur = candles[-2], candles[-1]
    return (
        is_bullish(prev)
        and is_bearish(cur)
        and cur.open >= prev.close
        and cur.close <= prev.open
        and body(cur) > body(prev)
    )


def _long_body(candle: Candle) -> bool:
    span = candle_range(candle)
    return span > 0 and body(candle) >= STAR_BODY_RATIO * span


def is_morning_star(candles: Sequence[Candle]) -> bool:
    """Long bearish bar, a small body below its close, a bullish bar closing past its middle."""
    if len(candles) < 3:
        return False
    first, star, last = candles[-3], candles[-2], candles[-1]
    return (
        is_bearish(first)
        and _long_body(first)
        and body(star) <= 0.3 * body(first)
        and max(star.open, star.close) <= first.close
        and is_bullish(last)
        and _long_body(last)
        and last.close > (first.open + first.close) / 2
    )


def is_evening_star(candles: Sequence[Candle]) -> bool:
    """Long bullish bar, a small body above its close, a bearish bar closing past its middle."""
    if len(candles) < 3:
        return False
    first, star, last = candles[-3], candles[-2], candles[-1]
    return (
        is_bullish(first)
        and _long_body(first)
        and body(star) <= 0.3 * body(first)
        and min(star.open, star.close) >= first.close
        and is_bearish(last)
        and _long_body(last)
        and last.close < (first.open + first.close) / 2
    )


# Checked in this order; the first match names the candle pattern. Direction: +1/-1/0.
PATTERNS: Final = (
    ("morning_star", is_morning_star, 1),
    ("evening_star", is_evening_star, -1),
    ("bullish_engulfing", is_bullish_engulfing, 1),
    ("bearish_engulfing", is_bearish_engulfing, -1),
    ("hammer", is_hammer, 1),
    ("shooting_star", is_shooting_star, -1),
    ("doji", lambda candles: bool(candles) and is_doji(candles[-1]), 0),
)


def candle_pattern(candles: Sequence[Candle]) -> tuple[str, int] | None:
    """The first matching pattern of :data:`PATTERNS` on the newest bars and its direction."""
    for name, matches, direction in PATTERNS:
        if matches(candles):
            return name, direction
    return None


# --- indicators (udfs.indicators: TA-Lib-exact RSI 14, MACD 12/26/9, Bollinger 20/2) -------


def indicator_snapshot(candles: Sequence[Candle]) -> IndicatorSnapshot:
    """The newest RSI, MACD and Bollinger values of ``candles`` (None where too short)."""
    if not candles:
        return IndicatorSnapshot(None, None, None, None, None, None, None, None)
    values = newest_indicators([c.close for c in candles], 2)
    last = values[-1]
    return IndicatorSnapshot(
        rsi=last.rsi_14,
        macd=last.macd,
        macd_signal=last.macd_signal,
        macd_hist=last.macd_hist,
        macd_hist_prev=values[-2].macd_hist if len(values) >= 2 else None,
        bb_middle=last.bb_middle,
        bb_upper=last.bb_upper,
        bb_lower=last.bb_lower,
    )


def indicator_conditions(snapshot: IndicatorSnapshot, close: float) -> list[tuple[str, int]]:
    """The conditions that hold on the newest bar, each with its direction (+1 / -1)."""
    found: list[tuple[str, int]] = []
    if snapshot.rsi is not None:
        if snapshot.rsi <= RSI_OVERSOLD:
            found.append(("rsi_oversold", 1))
        elif snapshot.rsi >= RSI_OVERBOUGHT:
            found.append(("rsi_overbought", -1))
    if snapshot.macd_hist is not None and snapshot.macd_hist_prev is not None:
        if snapshot.macd_hist_prev <= 0 < snapshot.macd_hist:
            found.append(("macd_bullish_cross", 1))
        elif snapshot.macd_hist_prev >= 0 > snapshot.macd_hist:
            found.append(("macd_bearish_cross", -1))
    if snapshot.bb_upper is not None and snapshot.bb_lower is not None:
        if close > snapshot.bb_upper:
            found.append(("above_upper_bollinger", -1))
        elif close < snapshot.bb_lower:
            found.append(("below_lower_bollinger", 1))
    return found


def key_levels(candles: Sequence[Candle], snapshot: IndicatorSnapshot) -> tuple[float, ...]:
    """Support / resistance: the recent low and high, and the Bollinger bands when known."""
    if not candles:
        return ()
    recent = candles[-KEY_LEVEL_BARS:]
    levels = {min(c.low for c in recent), max(c.high for c in recent)}
    for band in (snapshot.bb_lower, snapshot.bb_upper):
        if band is not None and math.isfinite(band):
            levels.add(band)
    return tuple(sorted(round(level, 10) for level in levels))


def _finite_or_none(value: Any) -> float | None:
    if type(value) is float:  # nearly always: skip the checks below
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _is_usable(candle: Candle) -> bool:
    """All four prices are finite numbers (anything else cannot be compared or measured)."""
    prices = (candle.open, candle.high, candle.low, candle.close)
    return all(_finite_or_none(price) is not None for price in prices)


def sanitised_snapshot(snapshot: IndicatorSnapshot) -> IndicatorSnapshot:
    """``snapshot`` with every value that is not a finite number (a string, NaN) set to None."""
    cleaned = {f.name: _finite_or_none(getattr(snapshot, f.name)) for f in fields(snapshot)}
    return replace(snapshot, **cleaned)


def analyse(candles: Sequence[Candle], snapshot: IndicatorSnapshot | None = None) -> Analysis:
    """The rules verdict on the newest bar of ``candles`` (oldest first).

    Each finding votes with its direction; the recommendation is the sign of the sum and the
    confidence grows with the number of agreeing findings (0.2 with no finding, at most 0.9).
    ``snapshot`` defaults to :func:`indicator_snapshot` of the candles. This is the fallback
    of every degraded signal, so it never raises: candles whose prices are not finite numbers
    are left out and snapshot values that are not finite numbers count as unknown.
    """
    if not all(_is_usable(candle) for candle in candles):
        candles = [candle for candle in candles if _is_usable(candle)]
    if not candles:
        return Analysis("none", "neutral", 0.0, ())
    snapshot = sanitised_snapshot(snapshot) if snapshot is not None else indicator_snapshot(candles)
    findings: list[tuple[str, int]] = []
    pattern = candle_pattern(candles)
    if pattern is not None:
        findings.append(pattern)
    findings.extend(indicator_conditions(snapshot, candles[-1].close))
    score = sum(direction for _, direction in findings)
    recommendation = "bullish" if score > 0 else "bearish" if score < 0 else "neutral"
    if not findings:
        confidence = 0.2
    else:
        sign = (score > 0) - (score < 0)
        agreeing = sum(1 for _, direction in findings if direction == sign)
        confidence = min(0.9, 0.3 + 0.15 * agreeing)
    name = "+".join(found for found, _ in findings) or "none"
    return Analysis(name, recommendation, round(confidence, 4), key_levels(candles, snapshot))
