"""Bridge logic without sockets: backoff, token bucket, Retry-After, per-series tracking."""

from __future__ import annotations

import dataclasses

import pytest

from connectors.bridge import SeriesTracker, Verdict, lag_summary
from connectors.bridge.tracker import _add_range, _remove_range
from connectors.retry import ReconnectBackoff, TokenBucket, parse_retry_after
from udfs.record import Kline

MIN = 60_000
T0 = 1_717_171_200_000


def bar(
    minute: int, *, closed: bool = False, volume: float = 1.0, event: int | None = None
) -> Kline:
    open_time = T0 + minute * MIN
    return Kline(
        exchange="binance",
        symbol="BTC-USDT",
        raw_symbol="BTCUSDT",
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + MIN - 1,
        open=1.0,
        high=2.0,
        low=0.5,
        close=1.5,
        volume=volume,
        quote_volume=None,
        trades=None,
        taker_buy_volume=None,
        taker_buy_quote_volume=None,
        is_closed=closed,
        event_time=event if event is not None else open_time + int(volume * 1000),
        ingest_time=open_time + 70_000,
    )


KEY = "binance:BTC-USDT:1m"


# --- backoff ---------------------------------------------------------------------------------


def test_backoff_is_full_jitter_up_to_an_exponential_ceiling_capped_at_60s() -> None:
    upper = ReconnectBackoff(base_s=0.5, cap_s=60.0, random_uniform=lambda low, high: high)
    assert [upper.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    lower = ReconnectBackoff(random_uniform=lambda low, high: low)
    assert lower.next_delay() == 0.0
    seen: list[tuple[float, float]] = []
    recording = ReconnectBackoff(random_uniform=lambda low, high: seen.append((low, high)) or 0.0)
    recording.next_delay()
    assert seen == [(0.0, 0.5)]
    assert ReconnectBackoff().ceiling(10_000) == 60.0  # no float overflow after a long outage


def test_backoff_resets_only_after_a_stable_connection() -> None:
    backoff = ReconnectBackoff(stable_after_s=60.0, random_uniform=lambda low, high: high)
    for _ in range(5):
        backoff.next_delay()
    backoff.on_connected(now=100.0)
    backoff.on_disconnected(now=130.0)  # up 30 s: flapping, keep growing
    assert backoff.attempt == 5
    backoff.on_connected(now=200.0)
    backoff.on_disconnected(now=261.0)  # up 61 s: stable, start over
    assert backoff.attempt == 0 and backoff.next_delay() == 0.5


def test_token_bucket_spaces_requests_and_honours_blocks() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=2.0)
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == pytest.approx(0.5)
    assert bucket.reserve(0.0) == pytest.approx(1.0)
    bucket.block_until(10.0)
    bucket.block_until(5.0)  # never shortens a block
    assert bucket.reserve(3.0) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0, burst=1)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), (" 2.5 ", 2.5), (None, 5.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 5.0),
     ("-1", 5.0), ("nan", 5.0)],
)  # fmt: skip
def test_retry_after(header: str | None, expected: float) -> None:
    assert parse_retry_after(header, 5.0) == expected


# --- ranges ----------------------------------------------------------------------------------


def test_ranges_merge_and_split() -> None:
    gaps: list[list[int]] = []
    _add_range(gaps, 10, 20)
    _add_range(gaps, 30, 40)
    _add_range(gaps, 20, 25)  # touches: merges
    assert gaps == [[10, 25], [30, 40]]
    _add_range(gaps, 5, 35)
    assert gaps == [[5, 40]]
    assert _remove_range(gaps, 10, 20) == 10
    assert gaps == [[5, 10], [20, 40]]
    assert _remove_range(gaps, 0, 100) == 25 and gaps == []


# --- series tracker --------------------------------------------------------------------------


def feed(tracker: SeriesTracker, *klines: Kline) -> list[Verdict]:
    return [tracker.accept_live(kline)[0] for kline in klines]


def test_normal_flow_produces_everything_and_finds_no_gap() -> None:
    tracker = SeriesTracker()
    verdicts = feed(
        tracker,
        bar(0, volume=1),
        bar(0, volume=2),
        bar(0, closed=True, volume=3),
        bar(1, volume=1),
        bar(1, closed=True, volume=2),
        bar(2, volume=1),
    )
    assert verdicts == [Verdict.PRODUCE] * 6
    assert tracker.gaps(KEY) == []


def test_missed_final_update_is_a_gap_that_a_late_closed_bar_or_repair_fills() -> None:
    tracker = SeriesTracker()
    feed(tracker, bar(0, closed=True), bar(1, volume=1))
    verdict, _, gaps = tracker.accept_live(bar(3, volume=1))  # bars 1 and 2 never closed
    assert verdict is Verdict.PRODUCE
    assert gaps == [(T0 + MIN, T0 + 3 * MIN)]
    # The lagging overlap connection still delivers bar 1's final update: it fills the gap.
    assert tracker.accept_live(bar(1, closed=True, volume=2))[0] is Verdict.PRODUCE
    assert tracker.gaps(KEY) == [(T0 + 2 * MIN, T0 + 3 * MIN)]
    # ... but an older in-progress update is stale, and a filled bar is not produced twice.
    assert tracker.accept_live(bar(1, volume=1.5))[0] is Verdict.STALE
    assert tracker.accept_live(bar(1, closed=True, volume=2))[0] is Verdict.STALE
    # REST repair produces what is still missing, once.
    assert tracker.accept_repaired(bar(2, closed=True)) is True
    assert tracker.accept_repaired(bar(2, closed=True)) is False
    assert tracker.accept_repaired(bar(1, closed=True)) is False
    assert tracker.gaps(KEY) == []


def test_overlapping_connections_never_produce_one_message_twice() -> None:
    tracker = SeriesTracker()
    new_link = [bar(5, volume=1), bar(5, volume=2), bar(5, closed=True, volume=3), bar(6)]
    old_link = [bar(5, volume=1), bar(5, volume=2), bar(5, closed=True, volume=3), bar(6)]
    verdicts = []
    for first, second in zip(new_link, old_link, strict=True):
        verdicts += feed(tracker, first, second)
    assert verdicts.count(Verdict.PRODUCE) == 4
    assert set(verdicts[1::2]) == {Verdict.DUPLICATE}


def test_out_of_order_updates_of_the_open_bar_are_stale() -> None:
    tracker = SeriesTracker()
    feed(tracker, bar(0, volume=2, event=T0 + 2000))
    assert tracker.accept_live(bar(0, volume=1, event=T0 + 1000))[0] is Verdict.STALE
    # a closed bar is final: a later in-progress update of it is stale
    feed(tracker, bar(0, closed=True, volume=3))
    assert tracker.accept_live(bar(0, volume=4))[0] is Verdict.STALE
    # a differing closed version (an exchange correction) is produced
    assert tracker.accept_live(bar(0, closed=True, volume=3.5))[0] is Verdict.PRODUCE


def test_ingest_time_event_times_stay_monotonic_and_volume_orders_updates() -> None:
    tracker = SeriesTracker(event_time_is_ingest=True)
    first = dataclasses.replace(bar(0, volume=2), event_time=T0 + 5000)
    feed(tracker, first)
    clock_stepped_back = dataclasses.replace(bar(0, volume=3), event_time=T0 + 4000)
    verdict, produced, _ = tracker.accept_live(clock_stepped_back)
    assert verdict is Verdict.PRODUCE and produced.event_time == T0 + 5000
    lagging = dataclasses.replace(bar(0, volume=2.5), event_time=T0 + 9000)
    assert tracker.accept_live(lagging)[0] is Verdict.STALE


def test_startup_backfill_and_finishing_a_repair() -> None:
    tracker = SeriesTracker(startup_backfill_ms=3 * MIN)
    _, _, gaps = tracker.accept_live(bar(10))
    assert gaps == [(T0 + 7 * MIN, T0 + 10 * MIN)]
    assert tracker.accept_repaired(bar(8, closed=True))
    # The exchange had no bar 7 (given up) and bar 9 is not final yet (kept).
    given_up = tracker.finish_repair(KEY, T0 + 7 * MIN, T0 + 10 * MIN, [T0 + 9 * MIN])
    assert given_up == 1
    assert tracker.gaps(KEY) == [(T0 + 9 * MIN, T0 + 10 * MIN)]


def test_gaps_are_bounded_by_the_repair_horizon() -> None:
    tracker = SeriesTracker(max_gap_ms=10 * MIN)
    feed(tracker, bar(0, closed=True))
    tracker.accept_live(bar(100))
    assert tracker.gaps(KEY) == [(T0 + 90 * MIN, T0 + 100 * MIN)]
    assert tracker.gaps_dropped_ms == 89 * MIN


def test_lost_delivery_of_a_closed_bar_becomes_a_gap() -> None:
    tracker = SeriesTracker()
    feed(tracker, bar(0, closed=True), bar(1))
    tracker.add_gap(KEY, T0, T0 + MIN)
    assert tracker.accept_repaired(bar(0, closed=True))


def test_lag_summary() -> None:
    assert lag_summary([]) == {"n": 0, "p50": None, "p99": None, "max": None}
    summary = lag_summary(list(range(1, 101)))
    assert summary == {"n": 100, "p50": 50, "p99": 100, "max": 100}
