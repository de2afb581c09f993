"""Bybit's REST kline answer has no confirm flag: its newest row is the minute in progress.

The parser used to tell that minute only by the clock, so a machine clock running a few
seconds ahead of Bybit's at the turn of a minute stored the open bar, with in-progress values,
as closed (the backfill + live seam test found it with a clock 5 s ahead).
"""

from __future__ import annotations

from typing import Any

import pytest

from connectors.exchanges import Bybit
from connectors.exchanges.bybit import OPEN_BAR_CLOCK_AHEAD_MS

MINUTE = 60_000
START = 1_717_171_200_000  # three rows: START, START+1m, START+2m (the newest)
NEWEST = START + 2 * MINUTE
FAR_END = START + 10 * 24 * 60 * MINUTE  # a range reaching "now" and beyond


def _answer(*open_times: int) -> dict[str, Any]:
    rows = [[str(t), "1", "2", "0.5", "1.5", "3", "4.5"] for t in sorted(open_times, reverse=True)]
    return {"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "list": rows}}


@pytest.mark.parametrize("ahead_ms", [1, 5_000, OPEN_BAR_CLOCK_AHEAD_MS - 1])
def test_newest_row_is_open_when_the_clock_runs_ahead(ahead_ms: int) -> None:
    adapter = Bybit("spot", ["BTCUSDT"])
    info = adapter.symbols["BTCUSDT"]
    clock = NEWEST + MINUTE + ahead_ms  # by our clock the newest minute has just ended
    page = adapter.parse_rest(info, _answer(START, START + MINUTE, NEWEST), START, FAR_END, clock)
    assert [kline.open_time for kline in page.klines] == [START, START + MINUTE]
    assert page.unconfirmed == [NEWEST]


def test_newest_row_is_closed_when_the_range_ends_with_its_minute() -> None:
    """A bounded range (a repair, an older page): nothing newer could have been listed."""
    adapter = Bybit("linear", ["ETHUSDT"])
    info = adapter.symbols["ETHUSDT"]
    page = adapter.parse_rest(
        info, _answer(START, START + MINUTE, NEWEST), START, NEWEST + MINUTE, NEWEST + MINUTE + 1
    )
    assert [kline.open_time for kline in page.klines] == [START, START + MINUTE, NEWEST]
    assert page.unconfirmed == []


def test_newest_row_long_ended_is_closed() -> None:
    """A symbol no longer trading: its last bar ended long before our clock."""
    adapter = Bybit("spot", ["BTCUSDT"])
    info = adapter.symbols["BTCUSDT"]
    clock = NEWEST + MINUTE + OPEN_BAR_CLOCK_AHEAD_MS
    page = adapter.parse_rest(info, _answer(START, START + MINUTE, NEWEST), START, FAR_END, clock)
    assert [kline.open_time for kline in page.klines] == [START, START + MINUTE, NEWEST]
    assert page.unconfirmed == []


def test_clock_still_tells_the_open_minute() -> None:
    adapter = Bybit("spot", ["BTCUSDT"])
    info = adapter.symbols["BTCUSDT"]
    page = adapter.parse_rest(info, _answer(START, START + MINUTE, NEWEST), START, FAR_END,
                              NEWEST + MINUTE // 2)  # fmt: skip
    assert page.unconfirmed == [NEWEST]
    assert [kline.open_time for kline in page.klines] == [START, START + MINUTE]


def test_a_malformed_newest_row_does_not_hide_the_open_one() -> None:
    adapter = Bybit("spot", ["BTCUSDT"])
    info = adapter.symbols["BTCUSDT"]
    answer = _answer(START, NEWEST)
    answer["result"]["list"].insert(0, ["not a time", "1", "2", "0.5", "1.5", "3", "4.5"])
    page = adapter.parse_rest(info, answer, START, FAR_END, NEWEST + MINUTE + 5_000)
    assert [kline.open_time for kline in page.klines] == [START]
    assert page.unconfirmed == [NEWEST]
    assert len(page.rejected) == 1
