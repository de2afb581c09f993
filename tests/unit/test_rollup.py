"""Roll-up maths (udfs/rollup.py), without a JVM. When windows fire: test_windows.py."""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import replace

import pytest

from udfs.record import TIMEFRAME_MS, Kline, VersionedBar
from udfs.rollup import (
    RollupAccumulator,
    add_bar,
    bars_expected,
    build_rollup_bar,
    is_late_for_rollups,
    is_window_closed,
    merge_accumulators,
    parse_rollup_timeframes,
    roll_up,
    rollup_version,
    summarize,
    window_starts,
)

DAY = 1_735_689_600_000  # 2025-01-01T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE


def bar(
    minute: int,
    *,
    close: float = 100.0,
    high: float | None = None,
    low: float | None = None,
    volume: float = 1.0,
    quote_volume: float | None = 100.0,
    trades: int | None = 5,
    closed: bool = True,
    version: int | None = None,
    event_offset: int = 59_999,
) -> VersionedBar:
    open_time = DAY + minute * MINUTE
    kline = Kline(
        "binance", "BTC-USDT", "BTCUSDT", "1m", open_time, open_time + 59_999,
        100.0, high if high is not None else max(100.0, close) + 1,
        low if low is not None else min(100.0, close) - 1, close, volume, quote_volume, trades,
        volume / 2, quote_volume / 2 if quote_volume is not None else None,
        closed, open_time + event_offset, open_time + event_offset + 5,
    )  # fmt: skip
    default_version = 2 * kline.event_time + int(closed)
    return VersionedBar(kline, version if version is not None else default_version)


def test_parse_timeframes_sorts_by_length_and_rejects_bad_names() -> None:
    assert parse_rollup_timeframes("1d, 5m,1h") == ("5m", "1h", "1d")
    assert parse_rollup_timeframes("none") == ()
    assert parse_rollup_timeframes("") == ()
    with pytest.raises(ValueError, match="unknown roll-up timeframe '7m'"):
        parse_rollup_timeframes("5m,7m")
    with pytest.raises(ValueError, match="1m is the source"):
        parse_rollup_timeframes("1m,5m")


def test_windows_are_aligned_to_the_utc_epoch() -> None:
    open_time = DAY + 5 * 3_600_000 + 17 * MINUTE  # 05:17 UTC
    lengths = [TIMEFRAME_MS[t] for t in ("5m", "15m", "1h", "4h", "1d")]
    hour = 3_600_000
    assert window_starts(open_time, lengths) == [
        DAY + 5 * hour + 15 * MINUTE,
        DAY + 5 * hour + 15 * MINUTE,
        DAY + 5 * hour,
        DAY + 4 * hour,
        DAY,
    ]
    assert bars_expected("4h") == 240
    assert bars_expected("1d") == 1440


def test_updated_bar_replaces_its_previous_version_instead_of_adding() -> None:
    acc = RollupAccumulator()
    add_bar(acc, bar(0, close=101.0, volume=1.0, closed=False, event_offset=10_000))
    add_bar(acc, bar(1, close=99.0, volume=2.0))
    add_bar(acc, bar(0, close=102.0, volume=3.0, closed=False, event_offset=20_000))
    add_bar(acc, bar(0, close=103.0, volume=4.0))
    summary = summarize(acc)
    assert summary.bars_present == 2
    assert summary.volume == 6.0
    assert summary.trades == 10
    assert summary.open == 100.0
    assert summary.close == 99.0  # the latest minute's close, whatever arrived last
    assert summary.high == 104.0
    assert summary.low == 98.0


def test_older_version_of_a_bar_is_ignored() -> None:
    acc = RollupAccumulator()
    add_bar(acc, bar(0, close=103.0, volume=4.0))
    add_bar(acc, bar(0, close=150.0, volume=9.0, closed=False, event_offset=1_000))
    summary = summarize(acc)
    assert (summary.close, summary.volume) == (103.0, 4.0)


def test_replacing_the_bar_that_held_the_high_and_low_rescans() -> None:
    acc = RollupAccumulator()
    add_bar(acc, bar(0, high=150.0, low=50.0, closed=False, event_offset=1_000))
    add_bar(acc, bar(1, high=120.0, low=80.0))
    add_bar(acc, bar(0, high=110.0, low=90.0))  # corrected: no longer the extreme
    summary = summarize(acc)
    assert (summary.high, summary.low) == (120.0, 80.0)


def test_sum_is_null_while_any_bar_lacks_the_value() -> None:
    acc = RollupAccumulator()
    add_bar(acc, bar(0, quote_volume=100.0))
    add_bar(acc, bar(1, quote_volume=None, trades=None, closed=False, event_offset=1_000))
    summary = summarize(acc)
    assert summary.quote_volume is None and summary.trades is None
    assert summary.taker_buy_quote_volume is None
    add_bar(acc, bar(1, quote_volume=50.0, trades=2))
    summary = summarize(acc)
    assert (summary.quote_volume, summary.trades, summary.taker_buy_quote_volume) == (
        150.0,
        7,
        75.0,
    )


def test_replacing_a_dominant_value_keeps_the_small_ones_exact() -> None:
    acc = RollupAccumulator()
    add_bar(acc, bar(0, volume=1e300, quote_volume=None, closed=False, event_offset=1_000))
    add_bar(acc, bar(1, volume=0.25, quote_volume=None))
    add_bar(acc, bar(0, volume=0.5, quote_volume=None))
    assert summarize(acc).volume == 0.75


def test_versions_grow_strictly_and_the_final_adds_one() -> None:
    acc = RollupAccumulator()
    versions = []
    updates = [
        bar(0, closed=False, event_offset=5_000),
        bar(0, closed=False, event_offset=30_000),
        bar(0),
        bar(1),
        bar(1, close=101.0, version=2 * (DAY + 3 * MINUTE) + 1),  # a correction
    ]
    for update in updates:
        add_bar(acc, update)
        versions.append(rollup_version(summarize(acc).version_sum, closed=False))
    final = rollup_version(summarize(acc).version_sum, closed=True)
    assert versions == sorted(set(versions))
    assert final == versions[-1] + 1
    assert summarize(acc).version_sum == updates[2].version + updates[4].version


def test_merge_equals_adding_everything_to_one_accumulator() -> None:
    rng = random.Random(3)
    updates = [bar(m, close=100 + rng.random(), volume=rng.random()) for m in range(15)]
    one, left, right = RollupAccumulator(), RollupAccumulator(), RollupAccumulator()
    for update in updates:
        add_bar(one, update)
        add_bar(left if rng.random() < 0.5 else right, update)
    merged = summarize(merge_accumulators(left, right))
    whole = summarize(one)
    assert replace(merged, volume=0.0, first_arrival_ms=0) == replace(
        whole, volume=0.0, first_arrival_ms=0
    )
    assert merged.volume == pytest.approx(whole.volume, rel=1e-12)


def test_batch_roll_up_matches_a_direct_computation() -> None:
    rng = random.Random(11)
    minutes = sorted(rng.sample(range(3 * 1440), 2000))  # three days with gaps
    updates = []
    for minute in minutes:
        close = 100 + rng.uniform(-5, 5)
        updates.append(bar(minute, close=close + 1, closed=False, event_offset=1_000))
        updates.append(bar(minute, close=close, volume=rng.uniform(0, 10)))
    rng.shuffle(updates)
    # Shuffling may put an in-progress update after its closed bar: the version decides.
    finals = {u.kline.open_time: u for u in updates if u.kline.is_closed}
    for timeframe in ("15m", "4h", "1d"):
        length = TIMEFRAME_MS[timeframe]
        got = roll_up(updates, timeframe)
        groups: dict[int, list[Kline]] = {}
        for open_time in sorted(finals):
            groups.setdefault(open_time - open_time % length, []).append(finals[open_time].kline)
        assert [b.kline.open_time for b in got] == sorted(groups)
        for rolled in got:
            members = groups[rolled.kline.open_time]
            k = rolled.kline
            assert (k.open, k.close) == (members[0].open, members[-1].close)
            assert k.high == max(m.high for m in members)
            assert k.low == min(m.low for m in members)
            assert k.volume == pytest.approx(math.fsum(m.volume for m in members), rel=1e-12)
            assert k.close_time == k.open_time + length - 1
            assert (rolled.bars_present, rolled.bars_expected) == (len(members), length // MINUTE)
            assert k.timeframe == timeframe and k.is_closed


def test_built_bar_carries_window_bounds_counts_and_version() -> None:
    acc = RollupAccumulator()
    add_bar(acc, bar(61), arrival_ms=123)
    add_bar(acc, bar(62))
    rolled = build_rollup_bar(summarize(acc), "1h", DAY + 3_600_000, closed=False)
    assert rolled.kline.open_time == DAY + 3_600_000
    assert rolled.kline.close_time == DAY + 2 * 3_600_000 - 1
    assert (rolled.bars_present, rolled.bars_expected) == (2, 60)
    assert rolled.version == 2 * (bar(61).version + bar(62).version)
    assert rolled.kline.event_time == bar(62).kline.event_time
    assert summarize(acc).first_arrival_ms == 123


def test_accumulator_survives_pickling() -> None:
    acc = RollupAccumulator()
    add_bar(acc, bar(0), arrival_ms=7)
    add_bar(acc, bar(1, quote_volume=None))
    restored = pickle.loads(pickle.dumps(acc))
    assert summarize(restored) == summarize(acc)
    assert restored.entries == acc.entries


def test_lateness_boundary_follows_the_smallest_window() -> None:
    five = TIMEFRAME_MS["5m"]
    lateness = 3_600_000
    open_time = DAY + 2 * MINUTE  # its 5m window ends at DAY + 5 min
    last_kept = DAY + five - 1 + lateness - 1
    assert not is_late_for_rollups(open_time, five, last_kept, lateness)
    assert is_late_for_rollups(open_time, five, last_kept + 1, lateness)


def test_window_closes_by_watermark_or_by_wall_clock_only_when_live() -> None:
    end = DAY + 5 * MINUTE - 1
    assert is_window_closed(end, end, 0, 0, 0)
    assert not is_window_closed(end, end - 1, 10**13, 0, 0)
    # Fallback 3 min: live window (first bar arrived before it was due), wall clock past due.
    assert is_window_closed(end, end - 1, end + 180_000, 180_000, end - 30_000)
    assert not is_window_closed(end, end - 1, end + 179_999, 180_000, end - 30_000)
    # A replay of old data arrives long after the window was due: never closed by the clock.
    assert not is_window_closed(end, end - 1, end + 10**9, 180_000, end + 10**8)
