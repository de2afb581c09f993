"""The analytics state objects and records (udfs/analytics.py): no JVM, no servers."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from udfs.analytics import (
    IndicatorSeries,
    ProfileWindow,
    TooOldBarError,
    add_profile_bar,
    batch_indicator_versions,
    build_profile_record,
    merge_profile_windows,
    newest_per_window,
)
from udfs.indicators import compute_indicators
from udfs.record import Kline, VersionedBar
from udfs.volume_profile import compute_volume_profile

START = 1_735_689_600_000
MINUTE = 60_000


def bar(minute: int, close: float, *, version: int, taker: float | None = 1.0) -> VersionedBar:
    open_time = START + minute * MINUTE
    kline = Kline(
        "okx", "ETH-USDT", "ETH-USDT", "1m", open_time, open_time + MINUTE - 1,
        close, close + 2.0, close - 1.0, close, 3.0, None, None, taker, None,
        True, open_time + 59_999, open_time + 60_010,
    )  # fmt: skip
    return VersionedBar(kline, version)


def test_profile_window_replaces_minutes_and_versions_follow_the_rollup_scheme() -> None:
    window = ProfileWindow(rows=8)
    assert add_profile_bar(window, bar(0, 100.0, version=10))
    assert add_profile_bar(window, bar(1, 104.0, version=20))
    assert not add_profile_bar(window, bar(1, 999.0, version=20))  # not newer: ignored
    assert add_profile_bar(window, bar(1, 101.0, version=25))  # newer: replaces
    record = build_profile_record(window, "15m", START, closed=False)
    want = compute_volume_profile([bar(0, 100.0, version=1).kline, bar(1, 101.0, version=1).kline],
                                  rows=8)  # fmt: skip
    assert record.profile == want
    assert record.version == 2 * (10 + 25)
    assert (record.bars_present, record.bars_expected) == (2, 15)
    assert record.window_end == START + 15 * MINUTE - 1
    closed = build_profile_record(pickle.loads(pickle.dumps(window)), "15m", START, closed=True)
    assert closed.version == record.version + 1 and closed.is_closed
    assert closed.profile == want


def test_profile_rows_write_an_empty_array_and_nulls_never_invented_values() -> None:
    window = ProfileWindow()
    add_profile_bar(window, bar(0, 50.0, version=3, taker=None))
    add_profile_bar(window, bar(1, 51.0, version=4, taker=0.5))
    record = build_profile_record(window, "1h", START, closed=True)
    assert record.profile.buy_volume is None
    assert record.row()["buy_volume"] == []
    assert record.hash_fields()["buy_volume"] is None
    assert record.row()["window_start"] == START and record.hash_fields()["is_closed"] is True

    empty = ProfileWindow()
    zero = bar(0, 50.0, version=3)
    zero = VersionedBar(
        Kline(**{**zero.kline.to_dict(), "volume": 0.0, "taker_buy_volume": 0.0}), 3
    )
    add_profile_bar(empty, zero)
    flat = build_profile_record(empty, "1h", START, closed=True).row()
    assert flat["poc"] is None and flat["vwap"] is None and flat["total_volume"] == 0.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat["volume"])


def test_merge_keeps_the_newer_version_of_each_minute() -> None:
    a, b = ProfileWindow(), ProfileWindow()
    add_profile_bar(a, bar(0, 10.0, version=5))
    add_profile_bar(a, bar(1, 11.0, version=5))
    add_profile_bar(b, bar(1, 12.0, version=9))
    add_profile_bar(b, bar(2, 13.0, version=1))
    merged = merge_profile_windows(a, b)
    assert merged.versions == {START: 5, START + MINUTE: 9, START + 2 * MINUTE: 1}
    assert merged.version_sum == 15
    want = compute_volume_profile([bar(m, c, version=1).kline for m, c in ((0, 10.0), (1, 12.0),
                                                                          (2, 13.0))])  # fmt: skip
    assert build_profile_record(merged, "1h", START, closed=False).profile == want


def test_newest_per_window_keeps_the_highest_version() -> None:
    window = ProfileWindow()
    add_profile_bar(window, bar(0, 10.0, version=5))
    first = build_profile_record(window, "1h", START, closed=False)
    last = build_profile_record(window, "1h", START, closed=True)
    other = build_profile_record(window, "15m", START, closed=False)
    assert newest_per_window([last, first, other]) == [last, other]


def _final_rows(
    series: IndicatorSeries, arrivals: list[tuple[int, float, int]], *, checkpoints: bool
) -> dict:
    """Apply arrivals; return the last emission per open time, checking versions grow.

    ``checkpoints``: pickle the series after every bar (state survives a checkpoint, and
    the in-memory snapshots of folded states are dropped each time).
    """
    rows: dict[int, tuple[int, object]] = {}
    for open_time, close, version in arrivals:
        for emission in series.apply(open_time, close, version):
            held = rows.get(emission.open_time)
            assert held is None or emission.version > held[0], (emission, held)
            rows[emission.open_time] = (emission.version, emission.values)
        if checkpoints:
            series = pickle.loads(pickle.dumps(series))
    return rows


@pytest.mark.parametrize("checkpoints", [False, True], ids=["in-memory", "checkpointed"])
def test_indicators_equal_batch_through_shuffles_and_corrections(checkpoints: bool) -> None:
    rng = random.Random(7)
    horizon = 61 * MINUTE
    closes = {
        START + m * MINUTE: 100 + 10 * math.sin(m / 9) + rng.uniform(-1, 1)
        for m in range(400)
        if m % 37 != 5
    }  # fmt: skip  (gaps)
    versions = {t: 2 * (t + 59_999) + 1 for t in closes}
    arrivals = [(t, closes[t], versions[t]) for t in closes]
    # Shuffle closed bars within three minutes, and correct some bars up to 50 minutes back.
    arrivals.sort(key=lambda item: item[0] + rng.uniform(0, 3 * MINUTE))
    for _ in range(15):
        position = rng.randrange(60, len(arrivals))
        newest = max(t for t, _, _ in arrivals[:position])
        target = newest - rng.randrange(0, 50) * MINUTE
        if target not in closes:
            continue
        closes[target] += rng.uniform(-3, 3)
        versions[target] += rng.randrange(1, 1000)
        arrivals.insert(position, (target, closes[target], versions[target]))
    arrivals.append(arrivals[-1])  # a repeat changes nothing

    rows = _final_rows(IndicatorSeries(horizon), arrivals, checkpoints=checkpoints)
    ordered = sorted(closes)
    want = compute_indicators([closes[t] for t in ordered])
    assert sorted(rows) == ordered
    assert [rows[t][1] for t in ordered] == want  # exact, warm-up None included
    want_versions = batch_indicator_versions([(t, versions[t]) for t in ordered], horizon)
    assert {t: rows[t][0] for t in ordered} == want_versions
    assert max(want_versions.values()) < 2**63


def test_a_bar_older_than_the_horizon_is_refused_and_changes_nothing() -> None:
    series = IndicatorSeries(horizon_ms=10 * MINUTE)
    for minute in range(30):
        series.apply(START + minute * MINUTE, 100.0 + minute, 1 + minute)
    before = pickle.dumps(series)
    with pytest.raises(TooOldBarError, match="too old"):
        series.apply(START + 5 * MINUTE, 1.0, 1_000)
    with pytest.raises(ValueError, match="not finite"):
        series.apply(START + 40 * MINUTE, math.inf, 1_000)
    assert pickle.dumps(series) == before
    assert len(series.history) <= 21  # twice the horizon is kept, older closes are folded


def test_every_emission_carries_the_window_sum_of_versions() -> None:
    """The version of each emission (newest bars, corrections of the newest, folds) equals
    the sum of the versions in ``(t - horizon, t]`` recomputed from scratch."""
    rng = random.Random(11)
    horizon = 7 * MINUTE
    series = IndicatorSeries(horizon)
    versions: dict[int, int] = {}
    for minute in range(300):
        open_time = START + minute * MINUTE
        if minute % 5 == 3:
            continue  # gaps
        for _ in range(rng.choice((1, 1, 2))):  # sometimes corrected at once
            versions[open_time] = versions.get(open_time, 0) + rng.randrange(1, 50)
            (emission,) = series.apply(open_time, 100.0 + rng.uniform(-1, 1), versions[open_time])
            want = sum(v for t, v in versions.items() if open_time - horizon < t <= open_time)
            assert emission.version == want, minute
        if minute % 50 == 0:
            series = pickle.loads(pickle.dumps(series))
