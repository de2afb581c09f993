"""The upsert decisions of udfs/upsert.py, one rule at a time, then a shuffled stream."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from udfs.record import Kline
from udfs.upsert import (
    BarState,
    ClockAdvance,
    SeriesClock,
    SeriesMirror,
    UpsertOutcome,
    base_version,
    decide_upsert,
    is_beyond_lateness,
)

OPEN_TIME = 1_735_689_600_000  # 2025-01-01T00:00:00Z


def bar(close: float, event_offset_ms: int, *, closed: bool = False, volume: float = 5.0) -> Kline:
    return Kline(
        exchange="binance",
        symbol="BTC-USDT",
        raw_symbol="BTCUSDT",
        timeframe="1m",
        open_time=OPEN_TIME,
        close_time=OPEN_TIME + 59_999,
        open=100.0,
        high=max(110.0, close),
        low=min(90.0, close),
        close=close,
        volume=volume,
        quote_volume=None,
        trades=None,
        taker_buy_volume=None,
        taker_buy_quote_volume=None,
        is_closed=closed,
        event_time=OPEN_TIME + event_offset_ms,
        ingest_time=OPEN_TIME + event_offset_ms + 5,
    )


def run(updates: list[Kline]) -> list[tuple[UpsertOutcome, int]]:
    state: BarState | None = None
    outcomes = []
    for update in updates:
        decision = decide_upsert(state, update)
        outcomes.append((decision.outcome, decision.version))
        state = decision.state
    return outcomes


def test_first_update_is_emitted_with_data_derived_version() -> None:
    first = bar(101.0, 1_000)
    [(outcome, version)] = run([first])
    assert outcome is UpsertOutcome.NEW
    assert version == base_version(first) == first.event_time * 2


def test_newer_in_progress_update_wins_and_older_is_stale() -> None:
    outcomes = run([bar(101.0, 1_000), bar(102.0, 3_000), bar(101.5, 2_000)])
    assert [o for o, _ in outcomes] == [
        UpsertOutcome.NEW,
        UpsertOutcome.UPDATE,
        UpsertOutcome.STALE,
    ]
    assert outcomes[1][1] > outcomes[0][1]


def test_repeat_with_same_values_is_a_duplicate_even_with_later_event_time() -> None:
    outcomes = run([bar(101.0, 1_000), bar(101.0, 1_000), bar(101.0, 2_000)])
    assert [o for o, _ in outcomes] == [
        UpsertOutcome.NEW,
        UpsertOutcome.DUPLICATE,
        UpsertOutcome.DUPLICATE,
    ]


def test_closed_bar_is_final_against_in_progress_updates() -> None:
    outcomes = run(
        [
            bar(101.0, 1_000),
            bar(103.0, 59_999, closed=True),
            bar(104.0, 61_000),  # an in-progress update after the close (e.g. a replay)
            bar(103.0, 59_999, closed=True),  # the closed bar again
        ]
    )
    assert [o for o, _ in outcomes] == [
        UpsertOutcome.NEW,
        UpsertOutcome.UPDATE,
        UpsertOutcome.AFTER_CLOSE,
        UpsertOutcome.DUPLICATE,
    ]


def test_closed_update_wins_even_when_its_event_time_is_older() -> None:
    outcomes = run([bar(101.0, 50_000), bar(103.0, 40_000, closed=True)])
    assert outcomes[1][0] is UpsertOutcome.UPDATE
    assert outcomes[1][1] > outcomes[0][1]


def test_closed_bar_resent_with_other_values_is_a_correction() -> None:
    closed = bar(103.0, 59_999, closed=True)
    corrected = replace(closed, volume=7.5, event_time=closed.event_time + 10)
    outcomes = run([closed, corrected])
    assert outcomes[1][0] is UpsertOutcome.CORRECTION
    assert outcomes[1][1] > outcomes[0][1]


def test_correction_with_equal_event_time_still_gets_a_higher_version() -> None:
    closed = bar(103.0, 59_999, closed=True)
    corrected = replace(closed, volume=7.5)
    outcomes = run([closed, corrected])
    assert outcomes[1] == (UpsertOutcome.CORRECTION, outcomes[0][1] + 1)


def test_older_closed_resend_after_a_correction_is_stale() -> None:
    closed = bar(103.0, 59_999, closed=True)
    corrected = replace(closed, volume=7.5, event_time=closed.event_time + 10)
    outcomes = run([closed, corrected, replace(closed, volume=6.0)])
    assert outcomes[2][0] is UpsertOutcome.STALE


def test_versions_strictly_increase_and_last_emitted_is_final_for_any_arrival_order() -> None:
    updates = [bar(100.0 + i, 1_000 * i) for i in range(1, 40)]
    final = bar(150.0, 59_999, closed=True)
    rng = random.Random(7)
    for _ in range(200):
        stream = [*updates, final, *rng.sample(updates, 5), final]
        rng.shuffle(stream)
        state: BarState | None = None
        emitted: list[tuple[int, Kline]] = []
        for update in stream:
            decision = decide_upsert(state, update)
            state = decision.state
            if decision.outcome.emits:
                emitted.append((decision.version, update))
        versions = [v for v, _ in emitted]
        assert versions == sorted(set(versions)), "versions must grow strictly"
        assert emitted[-1][1] == final, "the closed bar is always the last word"


@pytest.mark.parametrize(
    ("watermark", "expected"),
    [
        (OPEN_TIME + 59_999 + 3_600_000, False),
        (OPEN_TIME + 59_999 + 3_600_001, True),
        (-(2**63), False),
    ],
)
def test_lateness_boundary(watermark: int, expected: bool) -> None:
    assert is_beyond_lateness(bar(1.0, 0), watermark, 3_600_000) is expected


def test_series_clock_moves_forward_only_and_prunes_behind_the_lateness() -> None:
    lateness, bar_ms = 3_600_000, 60_000
    clock = SeriesClock(OPEN_TIME, OPEN_TIME)
    assert clock.advance(OPEN_TIME - bar_ms, bar_ms, lateness) == ClockAdvance(clock, None)
    step = clock.advance(OPEN_TIME + bar_ms, bar_ms, lateness)
    assert step.clock.newest_open_time == OPEN_TIME + bar_ms
    assert step.expire_before is None  # pruning waits for a quarter of the lateness
    later = OPEN_TIME + lateness // 4
    pruned = clock.advance(later, bar_ms, lateness)
    assert pruned.clock == SeriesClock(later, later)
    assert pruned.expire_before == later - lateness - bar_ms
    # Everything still inside the lateness survives the prune.
    assert pruned.expire_before is not None
    assert not is_beyond_lateness(bar(1.0, 0), later, lateness)


def test_series_mirror_expires_only_bars_before_the_cut() -> None:
    state = BarState(0, True, (), 1)
    mirror = SeriesMirror(SeriesClock(OPEN_TIME, OPEN_TIME), {t: state for t in (10, 20, 30)})
    assert mirror.expire(25) == [10, 20]
    assert list(mirror.bars) == [30]
