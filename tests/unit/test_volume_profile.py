"""Volume profile and VWAP of udfs/volume_profile.py against a brute-force reference.

The reference integrates each bar's volume numerically: every row is cut into
``SUBSTEPS`` equal sub-steps and a bar contributes ``volume / (high - low) * dx`` for each
sub-step whose midpoint lies in [low, high). Counting sub-step midpoints instead of measuring
the overlap misplaces at most one sub-step at each end of a bar, so the reference is off by at
most ``2 * volume / (high - low) * dx`` per bar (summed over bars; see ``grid_tolerance``).
That is the tolerance of the comparison, plus 1e-9 relative for float rounding.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pytest

from udfs.record import Kline
from udfs.volume_profile import (
    ProfileAccumulator,
    VolumeProfile,
    compute_volume_profile,
    vwap,
)

MINUTE_MS = 60_000
START = 1_735_689_600_000  # 2025-01-01T00:00:00Z
SUBSTEPS = 10_000


def kline(
    minute: int,
    low: float,
    high: float,
    volume: float,
    *,
    close: float | None = None,
    quote_volume: float | None = None,
    taker_buy_volume: float | None = None,
    symbol: str = "BTC-USDT",
) -> Kline:
    close = (low + high) / 2 if close is None else close
    open_time = START + minute * MINUTE_MS
    return Kline(
        exchange="binance",
        symbol=symbol,
        raw_symbol=symbol.replace("-", ""),
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + MINUTE_MS - 1,
        open=close,
        high=high,
        low=low,
        close=close,
        volume=volume,
        quote_volume=quote_volume,
        trades=None,
        taker_buy_volume=taker_buy_volume,
        taker_buy_quote_volume=None,
        is_closed=True,
        event_time=open_time + MINUTE_MS,
        ingest_time=open_time + MINUTE_MS,
    )


# --- the reference ---------------------------------------------------------------------------


@dataclass
class Reference:
    edges: list[float]
    volume: np.ndarray
    buy_volume: np.ndarray | None
    tolerance: np.ndarray  # per row


def reference_edges(bars: Sequence[Kline], rows: int, row_size: float | None) -> list[float]:
    low = min(bar.low for bar in bars)
    high = max(bar.high for bar in bars)
    if row_size is None:
        if high == low:
            return [low, low]
        return [low + (high - low) * i / rows for i in range(rows)] + [high]
    first = math.floor(low / row_size)
    while first * row_size > low:
        first -= 1
    last = max(first + 1, math.ceil(high / row_size))
    while last * row_size < high:
        last += 1
    return [k * row_size for k in range(first, last + 1)]


def reference_row_of(price: float, edges: list[float]) -> int:
    row = 0
    for index in range(len(edges) - 1):
        if edges[index] <= price:
            row = index
    return row


def reference_profile(
    bars: Sequence[Kline], rows: int = 24, row_size: float | None = None
) -> Reference:
    edges = reference_edges(bars, rows, row_size)
    count = len(edges) - 1
    volume = np.zeros(count)
    buy = np.zeros(count)
    tolerance = np.zeros(count)
    with_buy = all(bar.taker_buy_volume is not None for bar in bars)
    for index in range(count):
        lo, hi = edges[index], edges[index + 1]
        dx = (hi - lo) / SUBSTEPS
        midpoints = lo + (np.arange(SUBSTEPS) + 0.5) * dx
        for bar in bars:
            if bar.high == bar.low:
                continue
            inside = np.count_nonzero((midpoints >= bar.low) & (midpoints < bar.high))
            density = bar.volume / (bar.high - bar.low)
            volume[index] += density * dx * inside
            tolerance[index] += 2 * density * dx
            if with_buy:
                assert bar.taker_buy_volume is not None
                buy[index] += bar.taker_buy_volume / (bar.high - bar.low) * dx * inside
    for bar in bars:
        if bar.high == bar.low:
            row = reference_row_of(bar.low, edges)
            volume[row] += bar.volume
            if with_buy:
                assert bar.taker_buy_volume is not None
                buy[row] += bar.taker_buy_volume
    tolerance += 1e-9 * sum(bar.volume for bar in bars)
    return Reference(edges, volume, buy if with_buy else None, tolerance)


def reference_poc(ref: Reference, low: float, high: float) -> int:
    peak = ref.volume.max()
    candidates = [i for i, v in enumerate(ref.volume) if v >= peak - 2 * ref.tolerance.max()]
    middle = (low + high) / 2

    def distance(i: int) -> float:
        return abs((ref.edges[i] + ref.edges[i + 1]) / 2 - middle)

    return min(candidates, key=lambda i: (round(distance(i), 9), i))


def reference_value_area(volume: Sequence[float], poc: int) -> tuple[int, int]:
    total = sum(volume)
    first = last = poc
    included = volume[poc]
    while included < 0.7 * total * (1 - 1e-9):
        above = volume[last + 1] if last + 1 < len(volume) else -1.0
        below = volume[first - 1] if first > 0 else -1.0
        if above >= below:
            last += 1
            included += above
        else:
            first -= 1
            included += below
    return first, last


def reference_vwap(bars: Sequence[Kline]) -> float | None:
    total = sum(bar.volume for bar in bars)
    if total == 0:
        return None
    if all(bar.quote_volume is not None for bar in bars):
        return sum(bar.quote_volume or 0.0 for bar in bars) / total
    return sum((bar.high + bar.low + bar.close) / 3 * bar.volume for bar in bars) / total


def random_window(
    seed: int, count: int, *, price: float = 100.0, spread: float = 2.0
) -> list[Kline]:
    rng = random.Random(seed)
    bars = []
    level = price
    for minute in range(count):
        level += rng.gauss(0, spread / 4)
        if rng.random() < 0.15:
            low = high = round(level, 2)  # a one-price (single trade) minute
        else:
            low = level - rng.uniform(0, spread)
            high = level + rng.uniform(0, spread)
        volume = rng.lognormvariate(1.0, 1.0)
        close = rng.uniform(low, high)
        bars.append(
            kline(
                minute,
                low,
                high,
                volume,
                close=close,
                quote_volume=volume * rng.uniform(low, high),
                taker_buy_volume=volume * rng.random(),
            )
        )
    return bars


def assert_matches_reference(
    profile: VolumeProfile, bars: Sequence[Kline], rows: int = 24, row_size: float | None = None
) -> Reference:
    ref = reference_profile(bars, rows, row_size)
    np.testing.assert_allclose(profile.row_low, ref.edges[:-1], rtol=1e-12, atol=0)
    diff = np.abs(np.array(profile.volume) - ref.volume)
    assert (diff <= ref.tolerance).all(), (diff - ref.tolerance).max()
    if ref.buy_volume is None:
        assert profile.buy_volume is None
    else:
        assert profile.buy_volume is not None
        assert (np.abs(np.array(profile.buy_volume) - ref.buy_volume) <= ref.tolerance).all()
    assert profile.total_volume == pytest.approx(sum(bar.volume for bar in bars), rel=1e-12)
    expected_vwap = reference_vwap(bars)
    if expected_vwap is None:
        assert profile.vwap is None
    else:
        assert profile.vwap == pytest.approx(expected_vwap, rel=1e-12)
    return ref


# --- agreement with the reference -------------------------------------------------------------


@pytest.mark.parametrize(("seed", "count"), [(1, 15), (2, 60), (3, 240), (4, 7)])
def test_random_windows_match_brute_force(seed: int, count: int) -> None:
    bars = random_window(seed, count)
    profile = compute_volume_profile(bars)
    ref = assert_matches_reference(profile, bars)

    low = min(bar.low for bar in bars)
    high = max(bar.high for bar in bars)
    poc = reference_poc(ref, low, high)
    assert profile.poc == pytest.approx((ref.edges[poc] + ref.edges[poc + 1]) / 2, rel=1e-12)
    first, last = reference_value_area(list(ref.volume), poc)
    assert profile.value_area_low == pytest.approx(ref.edges[first], rel=1e-12)
    assert profile.value_area_high == pytest.approx(ref.edges[last + 1], rel=1e-12)
    in_area = sum(
        v
        for v, lo in zip(profile.volume, profile.row_low, strict=True)
        if profile.value_area_low <= lo < profile.value_area_high
    )
    assert in_area >= 0.7 * profile.total_volume * (1 - 1e-9)


@pytest.mark.parametrize(("seed", "row_size"), [(5, 0.25), (6, 1.0), (7, 0.1)])
def test_fixed_row_size_matches_brute_force_and_is_aligned(seed: int, row_size: float) -> None:
    bars = random_window(seed, 90)
    profile = compute_volume_profile(bars, row_size=row_size)
    assert_matches_reference(profile, bars, row_size=row_size)
    assert profile.row_size == row_size
    multiples = np.array(profile.row_low) / row_size
    np.testing.assert_allclose(multiples, np.round(multiples), atol=1e-6)
    np.testing.assert_allclose(np.diff(multiples), 1.0, atol=1e-6)
    low = min(bar.low for bar in bars)
    high = max(bar.high for bar in bars)
    assert profile.row_low[0] <= low < profile.row_low[0] + row_size
    assert profile.row_low[-1] < high <= profile.row_low[-1] + row_size


def test_fixed_row_size_high_on_a_multiple_adds_no_empty_row() -> None:
    bars = [kline(0, 100.0, 102.0, 4.0), kline(1, 102.0, 102.0, 1.0)]
    profile = compute_volume_profile(bars, row_size=0.5)
    assert profile.row_low == (100.0, 100.5, 101.0, 101.5)
    # The one-price bar at the high lands in the top row, which includes the high.
    assert profile.volume == pytest.approx((1.0, 1.0, 1.0, 2.0))


def test_fixed_row_size_scales_up_to_max_rows_keeping_alignment() -> None:
    bars = [kline(0, 100.0, 350.0, 10.0)]
    profile = compute_volume_profile(bars, row_size=0.01, max_rows=100)
    assert profile.rows <= 100
    multiple = profile.row_size / 0.01
    assert multiple == pytest.approx(round(multiple)) and round(multiple) >= 250 / 100 / 0.01
    assert profile.row_low[0] <= 100.0 and profile.row_low[-1] + profile.row_size >= 350.0
    assert_matches_reference(profile, bars, row_size=profile.row_size)


# --- edge cases -------------------------------------------------------------------------------


def test_single_bar_spreads_evenly_and_breaks_ties_at_the_middle() -> None:
    bars = [kline(0, 100.0, 124.0, 48.0, close=110.0, taker_buy_volume=12.0)]
    profile = compute_volume_profile(bars)
    assert profile.row_size == 1.0
    assert profile.volume == pytest.approx([2.0] * 24, rel=1e-12)
    assert profile.buy_volume == pytest.approx([0.5] * 24, rel=1e-12)
    # All rows tie: rows 11 and 12 are equally near the middle (112), the lower wins.
    assert profile.poc == 111.5
    # From row 11, ties go above up to the top row (13 rows), then 4 rows below: 17/24 >= 70 %.
    assert (profile.value_area_low, profile.value_area_high) == (107.0, 124.0)
    assert profile.vwap == pytest.approx((124.0 + 100.0 + 110.0) / 3)


def test_every_bar_at_one_price_is_a_single_row() -> None:
    bars = [
        kline(0, 250.0, 250.0, 2.0, quote_volume=500.0, taker_buy_volume=1.0),
        kline(3, 250.0, 250.0, 3.0, quote_volume=750.0, taker_buy_volume=0.5),
    ]
    profile = compute_volume_profile(bars)
    assert profile == VolumeProfile(
        row_size=0.0,
        row_low=(250.0,),
        volume=(5.0,),
        buy_volume=(1.5,),
        poc=250.0,
        value_area_low=250.0,
        value_area_high=250.0,
        vwap=250.0,
        total_volume=5.0,
    )
    fixed = compute_volume_profile(bars, row_size=0.3)
    assert fixed.rows == 1 and fixed.volume == (5.0,)
    assert fixed.row_low[0] <= 250.0 < fixed.row_low[0] + 0.3
    assert fixed.poc == pytest.approx(fixed.row_low[0] + 0.15)


def test_zero_volume_window_has_rows_but_no_poc_value_area_or_vwap() -> None:
    bars = [
        kline(0, 100.0, 101.0, 0.0, quote_volume=0.0, taker_buy_volume=0.0),
        kline(1, 100.5, 102.0, 0.0, quote_volume=0.0, taker_buy_volume=0.0),
    ]
    profile = compute_volume_profile(bars)
    assert profile.rows == 24 and profile.row_low[0] == 100.0
    assert profile.volume == (0.0,) * 24
    assert profile.buy_volume == (0.0,) * 24
    assert (profile.poc, profile.value_area_low, profile.value_area_high, profile.vwap) == (
        None,
        None,
        None,
        None,
    )
    assert profile.total_volume == 0.0
    assert vwap(bars) is None
    one_price = compute_volume_profile([kline(0, 5.0, 5.0, 0.0)])
    assert one_price.poc is None and one_price.volume == (0.0,) and one_price.buy_volume is None


def test_very_wide_range_stays_finite_and_matches_reference() -> None:
    bars = [
        kline(0, 1e-8, 2e-8, 1e12, taker_buy_volume=1e11),
        kline(1, 1e-8, 1e9, 5.0, taker_buy_volume=1.0),
        kline(2, 9e8, 1e9, 3.0, taker_buy_volume=3.0),
    ]
    profile = compute_volume_profile(bars)
    assert_matches_reference(profile, bars)
    values = [*profile.volume, *(profile.buy_volume or ()), profile.poc, profile.vwap]
    assert all(v is not None and math.isfinite(v) for v in values)
    assert math.fsum(profile.volume) == pytest.approx(profile.total_volume, rel=1e-12)
    assert profile.volume[0] > 1e12 - 1  # the tiny-price bar sits entirely in the first row
    assert profile.poc == pytest.approx(profile.row_low[0] + profile.row_size / 2)


def test_gaps_leave_empty_rows_between_clusters() -> None:
    bars = [kline(m, 100.0, 101.0, 9.0) for m in (0, 1, 2, 7)] + [
        kline(m, 123.0, 124.0, 1.0)
        for m in (30, 59)  # minutes 3..6, 8..29, 31..58 missing
    ]
    profile = compute_volume_profile(bars)
    assert_matches_reference(profile, bars)
    assert profile.volume[1:23] == (0.0,) * 22
    assert profile.volume[0] == pytest.approx(36.0) and profile.volume[23] == pytest.approx(2.0)
    assert profile.poc == 100.5
    assert (profile.value_area_low, profile.value_area_high) == (100.0, 101.0)


def test_buy_volume_is_none_unless_every_bar_has_taker_volume() -> None:
    bars = random_window(8, 30)
    assert compute_volume_profile(bars).buy_volume is not None
    bars[17] = replace(bars[17], taker_buy_volume=None)
    profile = compute_volume_profile(bars)
    assert profile.buy_volume is None
    assert_matches_reference(profile, bars)


def test_vwap_uses_quote_volume_only_when_every_bar_has_it() -> None:
    bars = [
        kline(0, 99.0, 101.0, 2.0, close=100.0, quote_volume=201.0),
        kline(1, 100.0, 104.0, 1.0, close=103.0, quote_volume=102.0),
    ]
    assert vwap(bars) == pytest.approx(303.0 / 3.0)
    bars[1] = replace(bars[1], quote_volume=None)
    assert vwap(bars) == pytest.approx((100.0 * 2 + (104 + 100 + 103) / 3 * 1) / 3)
    assert compute_volume_profile(bars).vwap == vwap(bars)


def test_one_price_bars_on_an_edge_go_to_the_row_above_and_the_high_to_the_top_row() -> None:
    bars = [kline(0, 100.0, 104.0, 0.0), kline(1, 101.0, 101.0, 3.0), kline(2, 104.0, 104.0, 5.0)]
    profile = compute_volume_profile(bars, rows=4)
    assert profile.volume == (0.0, 3.0, 0.0, 5.0)
    assert profile.poc == 103.5


def test_poc_ties_prefer_the_middle_then_the_lower_row() -> None:
    # Rows of width 1 over [0, 4]; the middle is 2.
    edges = [kline(0, 0.0, 4.0, 0.0)]
    equidistant = compute_volume_profile(
        [*edges, kline(1, 0.5, 0.5, 5.0), kline(2, 3.5, 3.5, 5.0)], rows=4
    )
    assert equidistant.poc == 0.5
    nearer = compute_volume_profile(
        [*edges, kline(1, 1.5, 1.5, 5.0), kline(2, 3.5, 3.5, 5.0)], rows=4
    )
    assert nearer.poc == 1.5


def test_value_area_grows_toward_the_larger_side_ties_above() -> None:
    # Rows [0,1) .. [4,5] with volumes 10, 20, 40, 20, 10 (per cent).
    volumes = (10.0, 20.0, 40.0, 20.0, 10.0)
    bars = [kline(i, i + 0.5, i + 0.5, v) for i, v in enumerate(volumes)]
    bars.append(kline(9, 0.0, 5.0, 0.0))
    profile = compute_volume_profile(bars, rows=5)
    assert profile.volume == volumes
    # 40 -> +20 above (tie) -> 20 below beats 10 above -> 80 % >= 70 %.
    assert (profile.value_area_low, profile.value_area_high) == (1.0, 4.0)
    skewed = [kline(i, i + 0.5, i + 0.5, v) for i, v in enumerate((5.0, 5.0, 40.0, 30.0, 20.0))]
    skewed.append(kline(9, 0.0, 5.0, 0.0))
    profile = compute_volume_profile(skewed, rows=5)
    assert (profile.value_area_low, profile.value_area_high) == (2.0, 4.0)  # 40 + 30 = 70 %


# --- the accumulator ---------------------------------------------------------------------------


@pytest.mark.parametrize("row_size", [None, 0.5])
def test_accumulator_replaces_updates_and_equals_batch(row_size: float | None) -> None:
    final = random_window(9, 60)
    rng = random.Random(10)
    updates: list[Kline] = []
    for bar in final:
        for _ in range(rng.randint(0, 3)):  # earlier versions of the still-open minute
            scale = rng.uniform(0.1, 0.9)
            updates.append(
                replace(
                    bar,
                    volume=bar.volume * scale,
                    high=bar.high + rng.uniform(0, 3),
                    taker_buy_volume=None,
                    is_closed=False,
                )
            )
        updates.append(bar)
    rng.shuffle(updates)  # minutes interleave; within a minute arrival order decides
    accumulator = ProfileAccumulator(rows=24, row_size=row_size)
    assert accumulator.profile() is None
    seen: dict[int, Kline] = {}
    for step, bar in enumerate(updates):
        accumulator.upsert(bar)
        seen[bar.open_time] = bar
        if step % 37 == 0:
            accumulator = pickle.loads(pickle.dumps(accumulator))
            live = accumulator.profile()
            assert live == compute_volume_profile(list(seen.values()), row_size=row_size)
    assert len(accumulator) == len(final)
    batch = compute_volume_profile(list(seen.values()), row_size=row_size)
    assert accumulator.profile() == batch
    assert batch.total_volume == pytest.approx(sum(bar.volume for bar in seen.values()))


def test_accumulator_never_double_counts_a_minute() -> None:
    accumulator = ProfileAccumulator(rows=4)
    accumulator.upsert(kline(0, 100.0, 104.0, 8.0))
    accumulator.upsert(kline(0, 100.0, 104.0, 8.0))
    accumulator.upsert(kline(1, 100.0, 100.0, 2.0))
    accumulator.upsert(kline(1, 104.0, 104.0, 1.0))  # the minute's newer version moved
    profile = accumulator.profile()
    assert profile is not None
    assert profile.total_volume == 9.0
    assert profile.volume == pytest.approx((2.0, 2.0, 2.0, 3.0))
    second_minute = START + MINUTE_MS
    assert accumulator.remove(second_minute) and not accumulator.remove(second_minute)
    assert accumulator.profile() == compute_volume_profile([kline(0, 100.0, 104.0, 8.0)], rows=4)


def test_accumulator_state_is_compact() -> None:
    accumulator = ProfileAccumulator()
    for bar in random_window(11, 1440):
        accumulator.upsert(bar)
    assert len(pickle.dumps(accumulator)) < 1440 * 120


# --- contract errors ---------------------------------------------------------------------------


def test_invalid_settings_and_bars_are_rejected() -> None:
    bars = [kline(0, 1.0, 2.0, 1.0)]
    for kwargs in (
        {"rows": 0},
        {"row_size": 0.0},
        {"row_size": -1.0},
        {"row_size": math.nan},
        {"max_rows": 0},
    ):
        with pytest.raises(ValueError):
            compute_volume_profile(bars, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            ProfileAccumulator(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one bar"):
        compute_volume_profile([])
    with pytest.raises(ValueError, match="two bars"):
        compute_volume_profile([bars[0], bars[0]])
    with pytest.raises(ValueError, match="more than one series"):
        compute_volume_profile([bars[0], kline(1, 1.0, 2.0, 1.0, symbol="ETH-USDT")])
    with pytest.raises(ValueError, match="not finite"):
        compute_volume_profile([kline(0, 1.0, math.inf, 1.0)])
    with pytest.raises(ValueError, match="low"):
        compute_volume_profile([kline(0, 3.0, 2.0, 1.0)])
    with pytest.raises(ValueError, match="negative"):
        ProfileAccumulator().upsert(kline(0, 1.0, 2.0, -1.0))


def test_as_dict_gives_lists_for_the_sinks() -> None:
    row = compute_volume_profile([kline(0, 1.0, 2.0, 1.0)], rows=2).as_dict()
    assert row["row_low"] == [1.0, 1.5] and row["volume"] == [0.5, 0.5]
    assert row["buy_volume"] is None and row["total_volume"] == 1.0


def test_accumulator_remove_keeps_the_other_bars() -> None:
    bars = random_window(12, 40)
    accumulator = ProfileAccumulator(rows=12)
    for bar in bars:
        accumulator.upsert(bar)
    for index in (0, 17, 39):  # first slot, a middle one, the last one
        assert accumulator.remove(bars[index].open_time)
    kept = [bar for index, bar in enumerate(bars) if index not in (0, 17, 39)]
    assert accumulator.open_times == [bar.open_time for bar in kept]
    assert accumulator.profile() == compute_volume_profile(kept, rows=12)
    accumulator.upsert(bars[17])
    restored = pickle.loads(pickle.dumps(accumulator))
    assert restored.profile() == compute_volume_profile([*kept, bars[17]], rows=12)


@pytest.mark.parametrize("row_size", [None, 0.5])
@pytest.mark.parametrize("seed", [21, 22, 23])
def test_accumulator_equals_batch_after_every_live_update(
    seed: int, row_size: float | None
) -> None:
    """A live window: the newest minute updated over and over, new minutes appended, now and
    then an older minute corrected, a minute arriving late or removed; the profile after
    every step equals the batch function's exactly (the accumulator reuses the spreading of
    the unchanged minutes, which must never show)."""
    rng = random.Random(seed)
    final = random_window(seed, 90)
    accumulator = ProfileAccumulator(rows=24, row_size=row_size)
    held: dict[int, Kline] = {}
    late = {bar.open_time for bar in rng.sample(final, 5)}
    steps = 0
    for bar in final:
        if bar.open_time in late:
            continue
        for _ in range(rng.randint(1, 4)):  # in-progress versions of the newest minute
            scale = rng.uniform(0.2, 1.0)
            taker = None if rng.random() < 0.05 else bar.volume * scale / 2
            update = replace(bar, volume=bar.volume * scale, is_closed=False,
                             taker_buy_volume=taker, low=bar.low - rng.uniform(0, 0.5))  # fmt: skip
            accumulator.upsert(update)
            held[bar.open_time] = update
            assert accumulator.profile() == compute_volume_profile(
                list(held.values()), row_size=row_size
            )
            steps += 1
        accumulator.upsert(bar)
        held[bar.open_time] = bar
        roll = rng.random()
        if roll < 0.1 and len(held) > 3:  # a correction of an older minute
            older = rng.choice(sorted(held)[:-1])
            corrected = replace(held[older], volume=held[older].volume * 1.5)
            accumulator.upsert(corrected)
            held[older] = corrected
        elif roll < 0.15 and late:  # a late minute arrives in the middle
            missing = min(late)
            late.discard(missing)
            arrival = next(b for b in final if b.open_time == missing)
            accumulator.upsert(arrival)
            held[missing] = arrival
        elif roll < 0.18 and len(held) > 3:
            gone = rng.choice(sorted(held)[:-1])
            assert accumulator.remove(gone)
            del held[gone]
        assert accumulator.profile() == compute_volume_profile(
            list(held.values()), row_size=row_size
        )
    assert steps > 90


def test_a_profile_that_overflows_is_refused_not_published() -> None:
    huge = [kline(0, 1.0, 2.0, 1.5e308), kline(1, 1.0, 2.0, 1.5e308)]
    with pytest.raises(ValueError, match="overflowed"):
        compute_volume_profile(huge, rows=4)
    accumulator = ProfileAccumulator(rows=4)
    for bar in huge:
        accumulator.upsert(bar)
    with pytest.raises(ValueError, match="overflowed"):
        accumulator.profile()
