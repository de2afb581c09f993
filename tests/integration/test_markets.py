"""Issue 13 end to end: spot and derivatives of one pair never collide, units stay honest.

Real recorded frame shapes go through the real adapters and archive reader into Kafka, the
bounded job rolls them up, and ClickHouse and Redis are read back: every collision case of the
issue is stored as two series, with the base-asset volume and the bar's provenance.
"""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from connectors.archives import Kline as ArchiveKline
from connectors.archives import iter_source, plan_sources
from connectors.clickhouse import open_writer
from connectors.exchanges import BinanceSpot, Bybit, ExchangeAdapter, Okx
from jobs.config import JobSettings, PipelineConfig, SinkConfig
from jobs.job import run_job
from tests.integration.conftest import TopicNames
from tests.integration.test_job import produce, stamped
from tests.unit.hostile_corpus import (
    BINANCE_COINM_PUSH,
    BYBIT_PUSH,
    OKX_PUSH,
    OKX_SWAP_PUSH,
    OPEN_MS,
)
from udfs.record import STRING_FIELDS, Kline

MINUTES = 5  # one complete 5m window (OPEN_MS is 5m-aligned)
MINUTE = 60_000
assert OPEN_MS % (5 * MINUTE) == 0


def _shifted(frame: dict[str, Any], minute: int, bump: float) -> dict[str, Any]:
    """The frame of ``minute`` (times moved on, prices moved by ``bump``, same volumes)."""
    out = copy.deepcopy(frame)
    offset = minute * MINUTE

    def move(value: Any, is_time: bool) -> Any:
        if is_time:
            return type(value)(int(value) + offset)
        return f"{float(value) + bump:.2f}"

    if "data" in out and isinstance(out["data"], dict):  # Binance
        k = out["data"]["k"]
        out["data"]["E"] += offset
        k["t"], k["T"] = k["t"] + offset, k["T"] + offset
        for name in ("o", "h", "l", "c"):
            k[name] = move(k[name], False)
    elif "topic" in out:  # Bybit
        out["ts"] += offset
        item = out["data"][0]
        item["start"], item["end"] = item["start"] + offset, item["end"] + offset
        item["timestamp"] += offset
        for name in ("open", "high", "low", "close"):
            item[name] = move(item[name], False)
    else:  # OKX
        row = out["data"][0]
        row[0] = move(row[0], True)
        for index in (1, 2, 3, 4):
            row[index] = move(row[index], False)
    return out


def live_bars(adapter: ExchangeAdapter, frame: dict[str, Any], bump: float) -> list[Kline]:
    bars: list[Kline] = []
    for minute in range(MINUTES):
        ingest = OPEN_MS + minute * MINUTE + 60_100
        parsed = adapter.parse_frame(orjson.dumps(_shifted(frame, minute, bump)).decode(), ingest)
        assert not parsed.rejected, parsed.rejected
        bars += parsed.klines
    return bars


UM_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    "taker_buy_quote_volume,ignore"
)


def archive_bars(root: Path, market_dir: str, with_header: bool) -> list[ArchiveKline]:
    """Five minutes of BTCUSDT in the data.binance.vision layout of ``market_dir``."""
    rows = [
        f"{OPEN_MS + m * MINUTE},67512.01,67544.00,67508.00,67530.00,18.86934,"
        f"{OPEN_MS + m * MINUTE + 59_999},1274220.8258747,1300,10.08735,681240.2663708,0"
        for m in range(MINUTES)
    ]
    folder = root / "data" / market_dir / "daily" / "klines" / "BTCUSDT" / "1m"
    folder.mkdir(parents=True)
    path = folder / "BTCUSDT-1m-2024-05-31.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(path.name.replace(".zip", ".csv"),
                         "\n".join(([UM_HEADER] if with_header else []) + rows) + "\n")  # fmt: skip
    (source,) = plan_sources([path])
    out = [row for row in iter_source(source) if isinstance(row, ArchiveKline)]
    assert len(out) == MINUTES
    return out


@pytest.fixture
def settings(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: TopicNames, redis_url: str
) -> JobSettings:
    return JobSettings(
        kafka_bootstrap=kafka_bootstrap,
        klines_topic=kafka_topics.raw,
        dlq_topic=kafka_topics.dlq,
        consumer_group=f"test-{kafka_topics.raw}",
        bounded=True,
        parallelism=1,
        pipeline=PipelineConfig(
            max_out_of_orderness_ms=60_000, idleness_ms=5_000, rollup_timeframes=("5m",)
        ),
        sinks=SinkConfig(clickhouse_url=f"chdb://{tmp_path / 'chdb'}", redis_url=redis_url),
        checkpoint_dir=tmp_path / "checkpoints",
        job_name="test-markets",
        flink_overrides=(("restart-strategy.type", "none"),),
    )


def _redis_bar(client: redis.Redis, series: str) -> dict[str, Any]:
    """The newest-bar hash of ``series`` (whatever hash-tag form the keys use)."""
    (key,) = list(client.scan_iter(match=f"kline:*{series}*"))
    stored = client.hgetall(key)
    return {
        k.decode(): v.decode() if k.decode() in STRING_FIELDS else orjson.loads(v)
        for k, v in stored.items()
    }


def test_spot_and_derivatives_of_one_pair_are_stored_apart_with_base_units(
    settings: JobSettings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bars = [
        # Bybit spot and linear BTCUSDT: the same raw symbol, the same minute.
        *live_bars(Bybit("spot", ["BTCUSDT"]), BYBIT_PUSH, 0.0),
        *live_bars(Bybit("linear", ["BTCUSDT"]), BYBIT_PUSH, 10.0),
        # OKX spot and SWAP (contracts of 0.01 BTC).
        *live_bars(Okx("spot", ["BTC-USDT"]), OKX_PUSH, 0.0),
        *live_bars(Okx("linear", ["BTC-USDT-SWAP"]), OKX_SWAP_PUSH, 5.0),
        # Binance COIN-M (contracts of 100 USD) beside the spot and USDT-M archives.
        *live_bars(BinanceSpot("inverse", ["BTCUSD_PERP"]), BINANCE_COINM_PUSH, 0.0),
        *archive_bars(tmp_path / "spot", "spot", with_header=False),
        *archive_bars(tmp_path / "um", "futures/um", with_header=True),
    ]
    produce(settings.kafka_bootstrap, settings.klines_topic, [stamped(k) for k in bars])
    run_job(settings)

    expected = {
        # series: (market, provenance, volume of one 1m bar, close of the first bar)
        ("bybit", "BTC-USDT"): ("spot", "ws", 18.869342, 67530.0),
        ("bybit", "BTC-USDT-PERP"): ("perp", "ws", 18.869342, 67540.0),
        ("okx", "BTC-USDT"): ("spot", "ws", 18.86934, 67530.0),
        ("okx", "BTC-USDT-PERP"): ("perp", "ws", 18.86934, 67535.0),
        ("binance", "BTC-USD-PERP"): ("perp", "ws", 1.92550381, 67530.0),
        ("binance", "BTC-USDT"): ("spot", "archive", 18.86934, 67530.0),
        ("binance", "BTC-USDT-PERP"): ("perp", "archive", 18.86934, 67530.0),
    }
    with open_writer(settings.sinks.clickhouse_url, migrate_schema=False) as writer:
        for (exchange, symbol), (market, provenance, volume, close) in expected.items():
            rows = writer.fetch_klines(exchange, symbol, "1m")
            assert len(rows) == MINUTES, (exchange, symbol)
            first = rows[0]
            assert (first["market"], first["provenance"]) == (market, provenance)
            assert first["volume"] == pytest.approx(volume), (exchange, symbol)
            assert first["close"] == close, (exchange, symbol)
            assert first["low"] <= first["quote_volume"] / first["volume"] <= first["high"]
            (five,) = writer.fetch_klines(exchange, symbol, "5m")
            assert (five["market"], five["provenance"]) == (market, provenance)
            assert five["bars_present"] == MINUTES
            assert five["volume"] == pytest.approx(volume * MINUTES)
        coin = writer.fetch_klines("binance", "BTC-USD-PERP", "1m")[0]
        assert coin["quote_volume"] == 130_000.0  # 1300 contracts x 100 USD

    for (exchange, symbol), (market, provenance, _, _) in expected.items():
        latest = _redis_bar(redis_client, f"{exchange}:{symbol}:1m")
        assert (latest["symbol"], latest["market"], latest["provenance"]) == (
            symbol, market, provenance
        )  # fmt: skip
        assert latest["open_time"] == OPEN_MS + (MINUTES - 1) * MINUTE
