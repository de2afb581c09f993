"""``klineflow gaps``: missing open times of a series (jobs/gaps_cmd.py)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.gaps_cmd import Gap, format_gaps, missing_ranges
from tests.unit.hostile_corpus import HOSTILE_SETTINGS

M = 60_000
T0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z


def test_missing_minutes_are_runs() -> None:
    present = [T0, T0 + M, T0 + 4 * M, T0 + 6 * M]
    gaps = missing_ranges(present, T0, T0 + 8 * M, M)
    assert gaps == [Gap(T0 + 2 * M, 2, M), Gap(T0 + 5 * M, 1, M), Gap(T0 + 7 * M, 1, M)]
    assert missing_ranges(present, T0, T0 + 2 * M, M) == []
    assert missing_ranges([], T0, T0 + 3 * M, M) == [Gap(T0, 3, M)]


def test_start_is_rounded_up_to_the_grid_and_off_grid_times_do_not_count() -> None:
    assert missing_ranges([T0 + M + 5], T0 + 1, T0 + 3 * M, M) == [Gap(T0 + M, 2, M)]


def test_table_and_json_output() -> None:
    gaps = [Gap(T0 + 2 * M, 2, M)]
    incomplete = [{"open_time": T0, "bars_present": 3, "bars_expected": 5}]
    table = format_gaps(gaps, incomplete, "table", "5m")
    assert "2025-03-14T00:02:00.000Z .. 2025-03-14T00:04:00.000Z  2 5m bars" in table
    assert "incomplete: 3/5 1m bars" in table
    assert format_gaps([], [], "table", "1m").strip() == "0 missing minutes"
    assert '"missing": 2' in format_gaps(gaps, [], "json", "1m")


def test_a_bad_step_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        missing_ranges([], 0, 1, 0)


@HOSTILE_SETTINGS
@given(st.sets(st.integers(min_value=0, max_value=200)), st.integers(0, 50), st.integers(0, 250))
def test_gaps_and_bars_cover_the_range_exactly_once(
    present: set[int], first: int, last: int
) -> None:
    start, end = T0 + first * M, T0 + last * M
    gaps = missing_ranges([T0 + p * M for p in present], start, end, M)
    missing = {g.start_ms + i * M for g in gaps for i in range(g.count)}
    grid = set(range(start, end, M))
    stored = {T0 + p * M for p in present} & grid
    assert missing | stored == grid and not missing & stored
    assert all(a.end_ms < b.start_ms for a, b in pairwise(gaps))
