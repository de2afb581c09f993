"""The rules analyser on hand-made bar sequences, one per pattern and condition."""

from __future__ import annotations

import pytest

from udfs import rules
from udfs.signals import ContextBar, MarketContext, SignalRequest, rules_signal


def bar(o: float, h: float, low: float, c: float, t: int = 0) -> ContextBar:
    return ContextBar(t, o, h, low, c, 10.0)


def falling(n: int, start: float = 120.0) -> list[ContextBar]:
    """n bearish bars stepping down by 2 (moderate bodies, no pattern of their own)."""
    return [bar(start - 2 * i, start - 2 * i + 0.5, start - 2 * i - 2.5, start - 2 * i - 2)
            for i in range(n)]  # fmt: skip


def rising(n: int, start: float = 100.0) -> list[ContextBar]:
    """n bullish bars stepping up by 2."""
    return [bar(start + 2 * i, start + 2 * i + 2.5, start + 2 * i - 0.5, start + 2 * i + 2)
            for i in range(n)]  # fmt: skip


def test_doji_is_detected_and_neutral() -> None:
    candles = [*rising(3), bar(106.0, 108.0, 104.0, 106.1)]
    assert rules.is_doji(candles[-1])
    assert rules.candle_pattern(candles) == ("doji", 0)
    assert not rules.is_doji(bar(100, 104, 99, 103))
    assert not rules.is_doji(bar(100, 100, 100, 100))  # no range at all


def test_hammer_needs_shape_and_a_prior_decline() -> None:
    hammer = bar(108.0, 110.0, 100.0, 109.5)  # body 1.5, lower shadow 8, upper 0.5
    after_decline = [*falling(5), hammer]
    assert rules.is_hammer(after_decline)
    assert rules.candle_pattern(after_decline) == ("hammer", 1)
    assert not rules.is_hammer([*rising(5), hammer])  # same shape after a rise: no hammer
    assert not rules.is_hammer([*falling(5), bar(100, 110, 99, 109)])  # big body


def test_shooting_star_needs_shape_and_a_prior_rise() -> None:
    star = bar(112.0, 120.0, 110.0, 110.5)  # body 1.5, upper shadow 8, lower 0.5
    after_rise = [*rising(5), star]
    assert rules.is_shooting_star(after_rise)
    assert rules.candle_pattern(after_rise) == ("shooting_star", -1)
    assert not rules.is_shooting_star([*falling(5), star])


def test_bullish_engulfing() -> None:
    candles = [*falling(3), bar(104.0, 104.5, 101.5, 102.0), bar(101.5, 106.0, 101.0, 105.0)]
    assert rules.is_bullish_engulfing(candles)
    assert rules.candle_pattern(candles) == ("bullish_engulfing", 1)
    # The second body does not reach above the first open: no engulfing.
    assert not rules.is_bullish_engulfing(
        [bar(104.0, 104.5, 101.5, 102.0), bar(101.5, 104.0, 101.0, 103.5)]
    )


def test_bearish_engulfing() -> None:
    candles = [*rising(3), bar(106.0, 108.5, 105.5, 108.0), bar(108.5, 109.0, 104.0, 105.0)]
    assert rules.is_bearish_engulfing(candles)
    assert rules.candle_pattern(candles) == ("bearish_engulfing", -1)
    assert not rules.is_bearish_engulfing(candles[:-1])


def test_morning_star() -> None:
    candles = [
        *falling(3),
        bar(110.0, 110.5, 99.5, 100.0),  # long bearish
        bar(99.0, 99.8, 97.5, 98.5),  # small body below its close
        bar(99.0, 107.5, 98.5, 107.0),  # long bullish closing above 105 (the middle)
    ]
    assert rules.is_morning_star(candles)
    assert rules.candle_pattern(candles) == ("morning_star", 1)
    weak_finish = [*candles[:-1], bar(99.0, 104.5, 98.5, 104.0)]  # closes below the middle
    assert not rules.is_morning_star(weak_finish)


def test_evening_star() -> None:
    candles = [
        *rising(3),
        bar(100.0, 110.5, 99.5, 110.0),  # long bullish
        bar(111.0, 112.5, 110.2, 111.5),  # small body above its close
        bar(111.0, 111.5, 102.5, 103.0),  # long bearish closing below 105
    ]
    assert rules.is_evening_star(candles)
    assert rules.candle_pattern(candles) == ("evening_star", -1)
    assert not rules.is_evening_star([*candles[:-2], bar(111, 112.5, 110.2, 111.5),
                                      bar(111, 111.5, 106.5, 107)])  # fmt: skip


def test_plain_trend_bars_have_no_candle_pattern() -> None:
    assert rules.candle_pattern(rising(6)) is None
    assert rules.candle_pattern(falling(6)) is None


def closes_to_bars(closes: list[float]) -> list[ContextBar]:
    out = []
    previous = closes[0]
    for i, close in enumerate(closes):
        out.append(bar(previous, max(previous, close) + 0.1, min(previous, close) - 0.1, close, i))
        previous = close
    return out


def test_rsi_oversold_after_a_long_decline_is_bullish() -> None:
    candles = closes_to_bars([200.0 - 3 * i for i in range(30)])
    snapshot = rules.indicator_snapshot(candles)
    assert snapshot.rsi is not None and snapshot.rsi <= 30
    conditions = dict(rules.indicator_conditions(snapshot, candles[-1].close))
    assert conditions["rsi_oversold"] == 1


def test_rsi_overbought_after_a_long_rise_is_bearish() -> None:
    candles = closes_to_bars([100.0 + 3 * i for i in range(30)])
    conditions = dict(rules.indicator_conditions(rules.indicator_snapshot(candles), 187.0))
    assert conditions["rsi_overbought"] == -1


def test_macd_crosses() -> None:
    # A long decline then a sharp recovery: the histogram turns positive at some bar.
    closes = [200.0 - i for i in range(40)] + [160.0 + 4 * i for i in range(1, 15)]
    found = set()
    for end in range(35, len(closes) + 1):
        snap = rules.indicator_snapshot(closes_to_bars(closes[:end]))
        found.update(name for name, _ in rules.indicator_conditions(snap, closes[end - 1]))
    assert "macd_bullish_cross" in found
    closes = [100.0 + i for i in range(40)] + [140.0 - 4 * i for i in range(1, 15)]
    found = set()
    for end in range(35, len(closes) + 1):
        snap = rules.indicator_snapshot(closes_to_bars(closes[:end]))
        found.update(name for name, _ in rules.indicator_conditions(snap, closes[end - 1]))
    assert "macd_bearish_cross" in found


def test_bollinger_breaks() -> None:
    flat = [100.0 + (0.5 if i % 2 else -0.5) for i in range(25)]
    up = rules.indicator_snapshot(closes_to_bars([*flat, 110.0]))
    assert ("above_upper_bollinger", -1) in rules.indicator_conditions(up, 110.0)
    down = rules.indicator_snapshot(closes_to_bars([*flat, 90.0]))
    assert ("below_lower_bollinger", 1) in rules.indicator_conditions(down, 90.0)


def test_short_history_has_no_indicator_conditions() -> None:
    snapshot = rules.indicator_snapshot(closes_to_bars([100.0, 90.0, 80.0]))
    assert snapshot.rsi is None and snapshot.macd_hist is None and snapshot.bb_upper is None
    assert rules.indicator_conditions(snapshot, 80.0) == []


def test_analyse_combines_votes_into_recommendation_confidence_and_levels() -> None:
    candles = [*falling(3), bar(104.0, 104.5, 101.5, 102.0), bar(101.5, 106.0, 101.0, 105.0)]
    analysis = rules.analyse(candles)
    assert analysis.recommendation == "bullish"
    assert analysis.pattern.startswith("bullish_engulfing")
    assert 0.3 < analysis.confidence <= 0.9
    assert min(analysis.key_levels) == pytest.approx(min(c.low for c in candles))
    assert max(analysis.key_levels) == pytest.approx(max(c.high for c in candles))
    nothing = rules.analyse(rising(4))
    assert (nothing.pattern, nothing.recommendation, nothing.confidence) == ("none", "neutral", 0.2)


def test_rules_signal_fills_the_signal_record() -> None:
    candles = [*rising(3), bar(106.0, 108.0, 104.0, 106.1, t=1_735_689_600_000)]
    context = MarketContext("binance", "BTC-USDT", "1m", tuple(candles))
    signal = rules_signal(SignalRequest(context, version=7))
    assert (signal.source, signal.pattern, signal.recommendation) == ("rules", "doji", "neutral")
    assert (signal.open_time, signal.version, signal.degraded, signal.cached) == (
        1_735_689_600_000, 7, False, False,
    )  # fmt: skip
    assert signal.latency_ms is None and signal.tokens is None
