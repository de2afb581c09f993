"""Several markets in one bridge process, without sockets: a bridge per market, one sink.

Each market has its own connections, tracker and repairer; they share the sink (one flush),
the stats line (summed, and per market) and a lost closed bar goes back to its own market.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from connectors.bridge import BridgeConfig, BridgeGroup, Connection
from connectors.exchanges import Bybit, Okx
from connectors.exchanges.base import ExchangeAdapter
from tests.unit.hostile_corpus import BYBIT_PUSH, OPEN_MS
from udfs.record import decode_kline


class FakeSink:
    """Records what the bridges send; ``close`` counts calls (flushing is what matters)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.closed = 0

    async def send(self, topic: str, key: bytes, value: bytes, closed_bar: Any) -> None:
        self.sent.append((topic, key, value))

    def healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {"sent": len(self.sent)}

    @property
    def pending(self) -> int:
        return 0

    async def close(self, timeout_s: float = 30.0) -> bool:
        self.closed += 1
        return True


def _config(topic: str) -> BridgeConfig:
    return BridgeConfig(
        ws_url="ws://127.0.0.1:9", rest_url="http://127.0.0.1:9", topic=topic, dlq_topic="dlq"
    )


def make_group() -> tuple[BridgeGroup, FakeSink]:
    """Bybit spot BTCUSDT to ``raw``, linear BTCUSDT and ETHUSDT to ``perps``."""
    sink = FakeSink()
    markets: list[tuple[ExchangeAdapter, BridgeConfig]] = [
        (Bybit("spot", ["BTCUSDT"]), _config("raw")),
        (Bybit("linear", ["BTCUSDT", "ETHUSDT"]), _config("perps")),
    ]
    return BridgeGroup(markets, sink, None), sink  # type: ignore[arg-type]  # no REST here


def _push(symbol: str, *, confirm: bool) -> str:
    item = {**BYBIT_PUSH["data"][0], "confirm": confirm}
    return orjson.dumps({**BYBIT_PUSH, "topic": f"kline.1.{symbol}", "data": [item]}).decode()


async def _feed(group: BridgeGroup, market: str, frames: list[str]) -> None:
    bridge = next(bridge for bridge in group.bridges if bridge.adapter.market == market)
    connection = Connection(bridge, bridge.shards[0], f"{bridge.shards[0].name}.1")
    for frame in frames:
        await bridge.handle_frame(connection, frame)


def test_each_market_has_its_own_connections_and_sends_to_its_topic() -> None:
    group, sink = make_group()
    assert group.markets == ["spot", "linear"]
    assert [shard.name for bridge in group.bridges for shard in bridge.shards] == [
        "bybit-spot-0",
        "bybit-linear-0",
    ]
    spot, linear = group.bridges
    assert spot.repairer.client is not linear.repairer.client  # a REST client per market
    assert spot.tracker is not linear.tracker

    async def scenario() -> None:
        await _feed(group, "spot", [_push("BTCUSDT", confirm=True)])
        await _feed(
            group, "linear", [_push("BTCUSDT", confirm=True), _push("ETHUSDT", confirm=False)]
        )

    asyncio.run(scenario())
    sent = [(topic, key.decode(), decode_kline(value)) for topic, key, value in sink.sent]
    assert [(topic, key, kline.market) for topic, key, kline in sent] == [
        ("raw", "bybit:BTC-USDT:1m", "spot"),
        ("perps", "bybit:BTC-USDT-PERP:1m", "perp"),
        ("perps", "bybit:ETH-USDT-PERP:1m", "perp"),
    ]
    assert {kline.raw_symbol for _, _, kline in sent[:2]} == {"BTCUSDT"}  # one spelling, two bars


def test_one_stats_line_sums_the_markets_and_keeps_each_markets_counters() -> None:
    group, _ = make_group()

    async def scenario() -> None:
        await _feed(group, "spot", [_push("BTCUSDT", confirm=False), "not json"])
        await _feed(group, "linear", [_push("BTCUSDT", confirm=False)] * 2)

    asyncio.run(scenario())
    stats = group.stats()
    assert stats["exchange"] == "bybit" and stats["markets"] == ["spot", "linear"]
    assert stats["totals"]["messages"] == 4
    assert stats["totals"]["bars_produced"] == 2
    assert stats["totals"]["duplicates_dropped"] == 1 and stats["totals"]["malformed"] == 1
    assert stats["sink"] == {"sent": 2}  # the shared sink, reported once
    spot, linear = stats["by_market"]["spot"], stats["by_market"]["linear"]
    assert "sink" not in spot and "sink" not in linear
    assert (spot["market"], linear["market"]) == ("spot", "linear")
    assert list(spot["connections"]) == ["bybit-spot-0"]
    assert list(linear["connections"]) == ["bybit-linear-0"]
    assert (spot["totals"]["malformed"], linear["totals"]["duplicates_dropped"]) == (1, 1)
    assert stats["rest"]["requests"] == 0 and stats["repair"]["gaps_detected"] == 0


def test_a_lost_closed_bar_goes_back_to_the_repairer_of_its_market() -> None:
    group, sink = make_group()
    asyncio.run(_feed(group, "linear", [_push("ETHUSDT", confirm=True)]))
    (_, key, value) = sink.sent[0]
    group.on_closed_bar_lost(decode_kline(value))
    spot, linear = group.bridges
    assert linear.tracker.gaps(key.decode()) == [(OPEN_MS, OPEN_MS + 60_000)]
    assert linear.repairer.pending_series == 1
    assert spot.repairer.pending_series == 0 and spot.tracker.series.keys() <= {"bybit:BTC-USDT:1m"}


def test_a_fatal_error_in_one_market_stops_all_and_flushes_the_shared_sink_once() -> None:
    group, sink = make_group()
    for bridge in group.bridges:
        bridge.shards = []

    async def broken_repairer() -> None:
        raise RuntimeError("boom")

    group.bridges[1].repairer.run = broken_repairer  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(group.run(asyncio.Event()))
    assert sink.closed == 1


def test_a_stopped_group_returns_its_final_counters() -> None:
    group, sink = make_group()
    for bridge in group.bridges:
        bridge.shards = []

    async def scenario() -> dict[str, Any]:
        stop = asyncio.Event()
        stop.set()
        return await group.run(stop)

    final = asyncio.run(scenario())
    assert set(final["by_market"]) == {"spot", "linear"}
    assert sink.closed == 0  # closing the sink on a clean stop is the caller's one flush


def test_a_group_is_one_exchange_with_each_market_once() -> None:
    sink = FakeSink()
    with pytest.raises(ValueError, match="one exchange per bridge process"):
        BridgeGroup(
            [
                (Bybit("spot", ["BTCUSDT"]), _config("raw")),
                (Okx("spot", ["BTC-USDT"]), _config("raw")),
            ],
            sink,
            None,  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="a market comes twice"):
        BridgeGroup(
            [
                (Bybit("spot", ["BTCUSDT"]), _config("raw")),
                (Bybit("spot", ["ETHUSDT"]), _config("raw")),
            ],
            sink,
            None,  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="at least one market"):
        BridgeGroup([], sink, None)  # type: ignore[arg-type]
