"""The bridge under poison input, without sockets: it counts, samples its log and lives on.

A fake sink stands in for Kafka (``handle_frame`` and the repairer only call ``send``); the
REST client gets a fake aiohttp session that answers with a given body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.bridge import Bridge, BridgeConfig, Connection, KafkaSink, LogSampler
from connectors.exchanges import BinanceSpot, Bybit, Okx
from connectors.exchanges.base import ExchangeAdapter, ParsedFrame, RestError
from connectors.rest_repair import RestKlineClient
from tests.unit.hostile_corpus import (
    BINANCE_PUSH,
    BYBIT_PUSH,
    BYBIT_REST,
    HOSTILE_SETTINGS,
    OKX_PUSH,
    OPEN_MS,
    damaged_texts,
)
from udfs.dead_letter import MAX_DEAD_LETTER_BYTES, decode_dead_letter


class FakeSink:
    """Records what the bridge sends; ``close`` counts calls (flushing is what matters)."""

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


def make_bridge(adapter: ExchangeAdapter, session: Any = None) -> tuple[Bridge, FakeSink]:
    sink = FakeSink()
    config = BridgeConfig(
        ws_url="ws://127.0.0.1:9", rest_url="http://127.0.0.1:9", topic="raw", dlq_topic="dlq"
    )
    return Bridge(adapter, config, sink, session), sink


async def feed(bridge: Bridge, frames: list[str]) -> Connection:
    connection = Connection(bridge, bridge.shards[0], "test.1")
    for frame in frames:
        await bridge.handle_frame(connection, frame)
    return connection


ADAPTERS = {
    "binance": (lambda: BinanceSpot("spot", ["BTCUSDT"]), BINANCE_PUSH),
    "okx": (lambda: Okx("spot", ["BTC-USDT"]), OKX_PUSH),
    "bybit": (lambda: Bybit("spot", ["BTCUSDT"]), BYBIT_PUSH),
}


@pytest.mark.parametrize("exchange", sorted(ADAPTERS))
def test_poison_frames_are_counted_dead_lettered_and_the_good_ones_still_produced(
    exchange: str,
) -> None:
    make_adapter, push = ADAPTERS[exchange]

    @HOSTILE_SETTINGS
    @given(st.lists(damaged_texts(push), min_size=1, max_size=8))
    def check(frames: list[str]) -> None:
        bridge, sink = make_bridge(make_adapter())
        good = orjson.dumps(push).decode()
        connection = asyncio.run(feed(bridge, [*frames, good]))
        stats = connection.shard.stats
        assert stats.messages == len(frames) + 1
        assert stats.bars_produced >= 1  # the good frame after the poison still goes out
        assert stats.rejected == sum(topic == "dlq" for topic, _, _ in sink.sent)
        for topic, _, value in sink.sent:
            if topic == "dlq":
                assert len(value) <= MAX_DEAD_LETTER_BYTES
                assert decode_dead_letter(value).reason

    check()


class ExplodingAdapter(BinanceSpot):
    """An adapter whose parser breaks its "never raises" contract."""

    def parse_frame(self, text: str, ingest_time: int) -> ParsedFrame:
        raise OverflowError("int too large to convert to float")


def test_a_parser_that_raises_anyway_costs_one_malformed_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge, sink = make_bridge(ExplodingAdapter("spot", ["BTCUSDT"]))
    with caplog.at_level(logging.WARNING, logger="connectors.bridge"):
        connection = asyncio.run(feed(bridge, ["{}"] * 50))
    assert connection.shard.stats.malformed == 50
    assert sink.sent == []
    lines = [r.getMessage() for r in caplog.records if "malformed_frame" in r.getMessage()]
    assert 1 <= len(lines) <= 6  # sampled: the first few, then 1 in 1000
    assert "internal: OverflowError" in lines[0]


def test_rejected_bars_are_logged_sampled(caplog: pytest.LogCaptureFixture) -> None:
    bad = orjson.dumps(
        {
            **BINANCE_PUSH,
            "data": {**BINANCE_PUSH["data"], "k": {**BINANCE_PUSH["data"]["k"], "t": "²"}},
        }
    )
    bridge, sink = make_bridge(BinanceSpot("spot", ["BTCUSDT"]))
    with caplog.at_level(logging.WARNING, logger="connectors.bridge"):
        asyncio.run(feed(bridge, [bad.decode()] * 200))
    assert len(sink.sent) == 200 and bridge.dead_letters == 200
    lines = [r.getMessage() for r in caplog.records if "bar_rejected" in r.getMessage()]
    assert 1 <= len(lines) <= 6
    assert "t: '²' is not an integer" in lines[0]


def test_log_sampler_allows_a_burst_then_one_per_period() -> None:
    now = [0.0]
    sampler = LogSampler(burst=2, every_s=10.0, clock=lambda: now[0])
    assert [sampler.allow()[0] for _ in range(5)] == [True, True, False, False, False]
    now[0] = 11.0
    assert sampler.allow() == (True, 3)


def test_a_fatal_error_flushes_the_sink_before_the_bridge_exits() -> None:
    bridge, sink = make_bridge(BinanceSpot("spot", ["BTCUSDT"]))
    bridge.shards = []

    async def broken_repairer() -> None:
        raise RuntimeError("boom")

    bridge.repairer.run = broken_repairer  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(bridge.run(asyncio.Event()))
    assert sink.closed == 1


class RecordingProducer:
    def __init__(self) -> None:
        self.flushed = 0
        self.closed = 0

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1

    def close(self, timeout: float | None = None) -> None:
        self.closed += 1


def test_kafka_sink_close_is_idempotent() -> None:
    producer = RecordingProducer()

    async def run() -> tuple[bool, bool]:
        sink = KafkaSink(producer)
        sink.start()
        return await sink.close(timeout_s=5), await sink.close(timeout_s=5)

    assert asyncio.run(run()) == (True, True)
    assert producer.flushed == 1 and producer.closed == 1


# --- REST answers through the client ------------------------------------------------------


class FakeResponse:
    def __init__(self, body: bytes) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self._body = body

    async def read(self) -> bytes:
        return self._body


class FakeSession:
    def __init__(self, body: bytes) -> None:
        self.body = body

    @asynccontextmanager
    async def _get(self) -> AsyncIterator[FakeResponse]:
        yield FakeResponse(self.body)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self._get()


def fetch(adapter: ExchangeAdapter, body: bytes) -> RestKlineClient:
    client = RestKlineClient(adapter, "http://127.0.0.1:9", FakeSession(body))  # type: ignore[arg-type]
    info = next(iter(adapter.symbols.values()))
    with pytest.raises(RestError) as caught:
        asyncio.run(client.fetch_closed(info, OPEN_MS, OPEN_MS + 60_000))
    assert str(caught.value)
    return client


def test_bybit_ret_code_as_a_list_is_a_rest_error_not_a_dead_repairer() -> None:
    fetch(Bybit("spot", ["BTCUSDT"]), orjson.dumps({**BYBIT_REST, "retCode": []}))


class ExplodingRest(Bybit):
    def parse_rest(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("unhashable type: 'list'")


def test_a_rest_parser_that_raises_anyway_is_one_unusable_answer() -> None:
    client = fetch(ExplodingRest("spot", ["BTCUSDT"]), orjson.dumps(BYBIT_REST))
    assert client.stats.malformed_answers == 1


def test_repairs_failing_on_poison_answers_are_counted_and_logged_sampled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    symbols = [f"C{i}USDT" for i in range(30)]
    bridge, _ = make_bridge(
        Bybit("spot", symbols), FakeSession(orjson.dumps({**BYBIT_REST, "retCode": []}))
    )
    repairer = bridge.repairer
    for key in bridge.symbol_by_key:
        bridge.tracker.add_gap(key, OPEN_MS, OPEN_MS + 60_000)

    async def run() -> None:
        for key in bridge.symbol_by_key:
            repairer.notify(key, 0.0)
        worker = asyncio.create_task(repairer._worker())
        while repairer.stats.repair_failures < len(symbols):
            await asyncio.sleep(0.01)
        worker.cancel()

    with caplog.at_level(logging.WARNING, logger="connectors.bridge"):
        asyncio.run(asyncio.wait_for(run(), timeout=20))
    assert repairer.stats.repair_failures == len(symbols)
    lines = [r.getMessage() for r in caplog.records if "repair_failed" in r.getMessage()]
    assert 1 <= len(lines) <= 11
    assert "retCode [] is not an integer" in lines[0]
