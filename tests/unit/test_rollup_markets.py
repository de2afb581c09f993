"""Roll-ups keep the market of their 1m bars and say whether every minute was live."""

from __future__ import annotations

import pickle
from dataclasses import replace

from tests.unit.test_rollup import DAY, MINUTE, bar
from udfs.record import VersionedBar, validate_kline
from udfs.rollup import RollupAccumulator, add_bar, merge_accumulators, roll_up, summarize


def perp(minute: int, provenance: str, version: int | None = None) -> VersionedBar:
    one = bar(minute, version=version)
    kline = replace(
        one.kline,
        symbol="1000PEPE-USDT-PERP",
        raw_symbol="1000PEPEUSDT",
        market="perp",
        base_multiplier=1000,
        provenance=provenance,
    )
    return VersionedBar(kline, one.version)


def test_a_perp_roll_up_is_a_perp_bar_with_the_base_multiplier() -> None:
    (five,) = roll_up([perp(m, "ws") for m in range(5)], "5m")
    assert five.kline.symbol == "1000PEPE-USDT-PERP"
    assert (five.kline.market, five.kline.base_multiplier) == ("perp", 1000)
    assert five.kline.provenance == "ws" and five.bars_present == 5
    assert validate_kline(five.kline) == five.kline


def test_provenance_is_ws_only_when_every_minute_was_live() -> None:
    assert roll_up([perp(m, "ws") for m in range(4)], "5m")[0].kline.provenance == "ws"
    repaired = [perp(m, "rest" if m == 2 else "ws") for m in range(5)]
    assert roll_up(repaired, "5m")[0].kline.provenance == "mixed"
    history = [perp(m, "archive") for m in range(5)]
    assert roll_up(history, "5m")[0].kline.provenance == "archive"


def test_a_replaced_minute_moves_between_provenances() -> None:
    acc = RollupAccumulator()
    for minute in range(3):
        add_bar(acc, perp(minute, "ws", version=10))
    add_bar(acc, perp(1, "rest", version=11))  # a REST repair replaces minute 1
    assert summarize(acc).provenance == "mixed"
    assert acc.provenance_counts == {"ws": 2, "rest": 1}
    add_bar(acc, perp(1, "ws", version=12))  # the live correction replaces it again
    assert summarize(acc).provenance == "ws"
    assert acc.provenance_counts == {"ws": 3}
    add_bar(acc, perp(1, "rest", version=5))  # an older version is ignored
    assert acc.provenance_counts == {"ws": 3}
    restored = pickle.loads(pickle.dumps(acc))
    assert restored.provenance_counts == {"ws": 3} and restored.market == "perp"


def test_merging_accumulators_adds_their_provenances() -> None:
    a, b = RollupAccumulator(), RollupAccumulator()
    add_bar(a, perp(0, "ws"))
    add_bar(b, perp(1, "archive"))
    merged = merge_accumulators(a, b)
    assert merged.provenance_counts == {"ws": 1, "archive": 1}
    assert summarize(merged).provenance == "mixed"
    assert summarize(merged).market == "perp"
    assert merged.last_open_time == DAY + MINUTE
