"""When a family of 1m-bar windows fires (udfs/windows.py), without a JVM."""

from __future__ import annotations

from tests.unit.test_rollup import DAY, HOUR, MINUTE, bar
from udfs.rollup import is_window_closed
from udfs.series import RollupAccumulating
from udfs.windows import NEVER, WindowSet, WindowTiming

LATENESS = HOUR


def windows(
    *timeframes: str, emit_in_progress: bool = False, idle_close_ms: int = 0,
    live_horizon_ms: int = -1,
) -> WindowSet:  # fmt: skip
    timing = WindowTiming(LATENESS, emit_in_progress, idle_close_ms, live_horizon_ms)
    return WindowSet(timeframes or ("5m",), RollupAccumulating(), timing)


def fired(firings: list) -> list[tuple[str, int, bool]]:
    return [(f.timeframe, f.start - DAY, f.closed) for f in firings]


def test_fires_early_on_closed_bars_finally_at_the_end_and_on_late_bars() -> None:
    family = windows(idle_close_ms=180_000)
    live_now = DAY + MINUTE
    assert family.add(bar(1, closed=False, event_offset=1_000), DAY, live_now) == []
    assert fired(family.add(bar(1), DAY, live_now)) == [("5m", 0, False)]
    end = DAY + 5 * MINUTE - 1
    assert family.next_event_due() == end
    assert family.next_processing_due() == end + 180_000
    # The idle fallback closes the live window by the wall clock before the watermark comes.
    assert fired(family.on_processing_time(end + 180_000, DAY)) == [("5m", 0, True)]
    assert family.next_processing_due() == NEVER
    assert fired(family.on_watermark(end)) == [("5m", 0, True)]
    assert family.on_watermark(end) == []  # final once
    assert family.next_event_due() == end + LATENESS
    # A correction within the lateness fires the window again, closed.
    assert fired(family.add(bar(2, closed=False), end + 1, DAY + 10**9)) == [("5m", 0, True)]
    assert family.on_watermark(end + LATENESS) == []
    assert len(family) == 0  # cleaned up


def test_replays_fire_each_window_once_unless_live_by_the_wall_clock() -> None:
    family = windows(live_horizon_ms=HOUR)
    window_end = DAY + 5 * MINUTE
    assert fired(family.add(bar(1), DAY, window_end + HOUR - 1)) == [("5m", 0, False)]
    assert family.add(bar(2), DAY, window_end + HOUR + 1) == []
    assert fired(family.on_watermark(window_end - 1)) == [("5m", 0, True)]
    assert fired(windows().add(bar(1), DAY, window_end + 10 * HOUR)) == [("5m", 0, False)]


def test_in_progress_updates_fire_only_when_asked_and_replays_get_no_idle_timer() -> None:
    update = bar(1, closed=False, event_offset=1_000)
    assert windows().add(update, DAY, DAY + MINUTE) == []
    eager = windows(emit_in_progress=True, idle_close_ms=180_000)
    assert fired(eager.add(update, DAY, DAY + 10**9)) == [("5m", 0, False)]
    assert eager.next_processing_due() == NEVER  # old data: no fallback


def test_one_window_per_timeframe_and_the_gate_follows_the_smallest() -> None:
    family = windows("1d", "5m", "1h")
    firings = family.add(bar(67), DAY, DAY)
    assert sorted(fired(firings)) == [("1d", 0, False), ("1h", HOUR, False),
                                      ("5m", 65 * MINUTE, False)]  # fmt: skip
    end_of_5m = DAY + 70 * MINUTE - 1
    assert not family.is_late(DAY + 67 * MINUTE, end_of_5m + LATENESS - 1)
    assert family.is_late(DAY + 67 * MINUTE, end_of_5m + LATENESS)


def test_restore_rebuilds_windows_without_firing_them() -> None:
    family = windows("5m", "1h")
    for minute in range(3):
        family.add(bar(minute), DAY, DAY)
    family.on_watermark(DAY + 5 * MINUTE - 1)
    rebuilt = windows("5m", "1h")
    rebuilt.restore([bar(m) for m in range(3)], family.finalized_keys(), DAY)
    assert rebuilt.on_watermark(DAY + 5 * MINUTE - 1) == []  # already final
    hour = rebuilt.on_watermark(DAY + HOUR - 1)
    assert [f.window.accumulator.version_sum for f in hour] == [
        sum(bar(m).version for m in range(3))
    ]
    assert is_window_closed(DAY + HOUR - 1, DAY + HOUR - 1, 0, 0, 0)
