"""Roll-ups 1m -> 5m .. 1d through the real pipeline, checked against pandas.

The reference is computed here with pandas from the final 1m values, independently of
``udfs/rollup.py``: per series and UTC-floored window, open = first, close = last, high =
max, low = min, sums (null when any bar lacks the value), count of bars.

1. ``build_pipeline`` on a mini-cluster (from_collection, execute_and_collect): clean series
   over several days, series with in-progress updates shuffled within the watermark bound
   and duplicated, series with gaps, a correction inside the allowed lateness, one outside
   it (the upsert rejects it) and a series whose bars are too late for the roll-ups.
2. The whole job (Kafka, chdb, Redis): the last version of every roll-up bar in ClickHouse
   (FINAL) and the newest 1h and 1d bars in Redis equal the reference.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import pandas as pd
import pytest
import redis
from pyflink.common import Configuration, Types
from pyflink.datastream import StreamExecutionEnvironment

from connectors.clickhouse import open_writer
from connectors.kafka_producer import create_producer
from jobs.config import JobSettings, PipelineConfig, SinkConfig
from jobs.job import job_configuration, run_job
from jobs.pipeline import build_pipeline
from tests.integration.conftest import TopicNames
from udfs.dead_letter import decode_dead_letter
from udfs.record import Kline, VersionedBar, encode_kline

START = 1_735_689_600_000  # 2025-01-01T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE
TIMEFRAMES = {"5m": "5min", "15m": "15min", "1h": "1h", "4h": "4h", "1d": "1D"}
SUM_COLUMNS = ("volume", "quote_volume", "trades", "taker_buy_volume", "taker_buy_quote_volume")


@dataclass(frozen=True)
class Series:
    exchange: str
    symbol: str
    raw_symbol: str
    price: float
    has_quote: bool = True


def final_values(series: Series, minute: int, rng: random.Random) -> dict[str, Any]:
    """Random but valid closed values of one 1m bar."""
    unit = series.price / 1000  # price moves relative to the price: never negative
    base = series.price * (1 + 0.01 * math.sin(minute / 97.0)) + rng.uniform(-1, 1) * unit
    open_, close = base + rng.uniform(-0.5, 0.5) * unit, base + rng.uniform(-0.5, 0.5) * unit
    volume = rng.uniform(0.001, 50.0)
    return {
        "open": open_,
        "close": close,
        "high": max(open_, close) + rng.uniform(0, 1) * unit,
        "low": min(open_, close) - rng.uniform(0, 1) * unit,
        "volume": volume,
        "quote_volume": volume * base if series.has_quote else None,
        "trades": rng.randint(0, 500) if series.has_quote else None,
        "taker_buy_volume": volume * 0.4 if series.has_quote else None,
        "taker_buy_quote_volume": volume * 0.4 * base if series.has_quote else None,
    }


def make_kline(
    series: Series, minute: int, values: dict[str, Any], *, closed: bool, event_offset: int
) -> Kline:
    open_time = START + minute * MINUTE
    return Kline(
        exchange=series.exchange,
        symbol=series.symbol,
        raw_symbol=series.raw_symbol,
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + MINUTE - 1,
        is_closed=closed,
        event_time=open_time + event_offset,
        ingest_time=open_time + event_offset + 20,
        **values,
    )


def developing(values: dict[str, Any], fraction: float) -> dict[str, Any]:
    """An in-progress snapshot: part of the volume, a close inside the final range."""
    partial = dict(values)
    partial["close"] = values["low"] + (values["high"] - values["low"]) * fraction
    partial["high"] = max(values["open"], partial["close"])
    partial["low"] = min(values["open"], partial["close"])
    for column in SUM_COLUMNS:
        if values[column] is not None:
            partial[column] = (
                int(values[column] * fraction) if column == "trades" else values[column] * fraction
            )
    return partial


@dataclass
class Scenario:
    """Messages in arrival order (sort key, Kline) and the final 1m values per bar."""

    messages: list[tuple[float, Kline]]
    finals: dict[tuple[Series, int], dict[str, Any]]


def add_series(
    scenario: Scenario,
    series: Series,
    minutes: list[int],
    rng: random.Random,
    *,
    in_progress: int = 0,
    jitter_ms: int = 0,
    duplicate_rate: float = 0.0,
) -> None:
    """The closed bar of each minute, preceded by ``in_progress`` updates.

    Arrival is ordered by open time plus a random jitter below two bar lengths, which keeps
    every update ahead of the watermark (bound 60 s): shuffled, never late.
    """
    for minute in minutes:
        values = final_values(series, minute, rng)
        scenario.finals[(series, minute)] = values
        updates = [
            make_kline(
                series,
                minute,
                developing(values, (step + 1) / (in_progress + 1)),
                closed=False,
                event_offset=10_000 * (step + 1),
            )
            for step in range(in_progress)
        ]
        updates.append(make_kline(series, minute, values, closed=True, event_offset=59_999))
        if rng.random() < duplicate_rate:
            updates.append(rng.choice(updates))
        for kline in updates:
            scenario.messages.append((kline.open_time + rng.uniform(0, jitter_ms), kline))


def reference_rollups(
    finals: dict[tuple[Series, int], dict[str, Any]], exclude: frozenset[Series] = frozenset()
) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """pandas: (exchange, symbol, timeframe, open_time ms) -> expected roll-up values."""
    rows = [
        {
            "exchange": series.exchange,
            "symbol": series.symbol,
            "ts": pd.Timestamp(START + minute * MINUTE, unit="ms", tz="UTC"),
            **values,
        }
        for (series, minute), values in finals.items()
        if series not in exclude
    ]
    frame = pd.DataFrame(rows).sort_values(["exchange", "symbol", "ts"])
    expected: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for timeframe, freq in TIMEFRAMES.items():
        frame["window"] = frame["ts"].dt.floor(freq)
        grouped = frame.groupby(["exchange", "symbol", "window"], sort=True)
        table = grouped.agg(
            open=("open", "first"),
            high=("high", "max"),
            low=("low", "min"),
            close=("close", "last"),
            bars_present=("open", "size"),
        )
        for column in SUM_COLUMNS:
            sums = grouped[column].sum()
            complete = grouped[column].count() == table["bars_present"]
            table[column] = sums.where(complete, other=None).astype(object)
        expected_minutes = pd.Timedelta(freq) // pd.Timedelta("1min")
        for (exchange, symbol, window), row in table.iterrows():
            open_ms = int(window.value // 1_000_000)
            values = row.to_dict()
            values["bars_expected"] = expected_minutes
            expected[(exchange, symbol, timeframe, open_ms)] = values
    return expected


def assert_matches(actual: dict[str, Any], want: dict[str, Any], context: Any) -> None:
    """OHLC exactly equal, sums within 1e-9 relative, counts equal."""
    for column in ("open", "high", "low", "close"):
        assert actual[column] == want[column], (column, actual, want, context)
    for column in SUM_COLUMNS:
        if want[column] is None or (isinstance(want[column], float) and math.isnan(want[column])):
            assert actual[column] is None, (column, actual, context)
        else:
            assert actual[column] == pytest.approx(float(want[column]), rel=1e-9, abs=0), (
                column,
                actual,
                want,
                context,
            )
    assert actual["bars_present"] == want["bars_present"], (actual, want, context)
    assert actual["bars_expected"] == want["bars_expected"], (actual, want, context)


def bar_values(bar: VersionedBar) -> dict[str, Any]:
    values = {name: getattr(bar.kline, name) for name in ("open", "high", "low", "close")}
    values.update({name: getattr(bar.kline, name) for name in SUM_COLUMNS})
    values["bars_present"], values["bars_expected"] = bar.bars_present, bar.bars_expected
    return values


# --- 1. the pipeline on a mini-cluster ---------------------------------------------------------


def mini_cluster_environment(checkpoints: Path) -> StreamExecutionEnvironment:
    settings = JobSettings(checkpoint_dir=checkpoints)
    configuration = Configuration()
    for key, value in job_configuration(settings).items():
        configuration.set_string(key, value)
    configuration.set_string("restart-strategy.type", "none")
    configuration.set_string("rest.port", "0")  # other mini-clusters may hold 8081
    environment = StreamExecutionEnvironment.get_execution_environment(configuration)
    environment.set_parallelism(1)
    return environment


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamExecutionEnvironment]:
    yield mini_cluster_environment(tmp_path_factory.mktemp("checkpoints"))


def _tag_bar(bar: VersionedBar) -> tuple[str, Any]:
    return ("bar", bar)


def _tag_letter(letter: bytes) -> tuple[str, Any]:
    return ("dead", bytes(letter))


CLEAN = [
    Series("binance", "BTC-USDT", "BTCUSDT", 94_000.0),
    Series("binance", "ETH-USDT", "ETHUSDT", 3_300.0),
    Series("bybit", "SOL-USDT", "SOLUSDT", 190.0),
]
MESSY = [
    Series("binance", "BNB-USDT", "BNBUSDT", 700.0),
    Series("okx", "ETH-USDT", "ETH-USDT", 3_300.0, has_quote=False),
]
GAPPY = [Series("bybit", "DOGE-USDT", "DOGEUSDT", 0.3), Series("okx", "BTC-USDT", "BTC-USDT", 9e4)]
LAGGING = Series("okx", "XRP-USDT", "XRP-USDT", 2.3)
DAYS = 2.5
TOTAL_MINUTES = int(DAYS * 1440)


def test_rollups_match_pandas_through_shuffles_gaps_and_corrections(
    env: StreamExecutionEnvironment,
) -> None:
    rng = random.Random(20250101)
    scenario = Scenario(messages=[], finals={})
    every_minute = list(range(TOTAL_MINUTES))
    for series in CLEAN:
        add_series(scenario, series, every_minute, rng)
    for series in MESSY:
        add_series(
            scenario, series, every_minute[: 2 * 1440], rng,
            in_progress=3, jitter_ms=110_000, duplicate_rate=0.2,
        )  # fmt: skip
    for series in GAPPY:
        hole = set(range(600, 600 + 3 * 60))  # three hours without a bar
        minutes = [m for m in every_minute if m not in hole and rng.random() > 0.15]
        add_series(scenario, series, minutes, rng, in_progress=1, jitter_ms=30_000)
    scenario.messages.sort(key=lambda item: item[0])
    stream = [kline for _, kline in scenario.messages]

    # After everything: a correction 30 min back (inside the 1 h lateness), one 3 h back
    # (outside it: the upsert rejects it), and a new series days behind the watermark (its
    # 1m bars are stored, its roll-ups are too late).
    corrected_series, corrected_minute = CLEAN[0], TOTAL_MINUTES - 30
    corrected = dict(scenario.finals[(corrected_series, corrected_minute)])
    corrected["close"] += 0.125
    # 5 % above the price: the new high of every window holding the bar.
    corrected["high"] = max(corrected["high"], corrected["close"]) + 0.05 * corrected_series.price
    # Three times the volume, at the same prices (quote volumes too: a bar's implied price
    # quote_volume / volume must stay inside its range, udfs/record.py).
    for column in ("volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume"):
        corrected[column] *= 3
    scenario.finals[(corrected_series, corrected_minute)] = corrected
    stream.append(
        make_kline(corrected_series, corrected_minute, corrected, closed=True,
                   event_offset=40 * MINUTE)
    )  # fmt: skip
    too_old = dict(scenario.finals[(CLEAN[1], TOTAL_MINUTES - 180)])
    growth = (too_old["volume"] + 1.0) / too_old["volume"]
    too_old["volume"] += 1.0
    too_old["quote_volume"] *= growth  # the same implied price (see above)
    stream.append(
        make_kline(CLEAN[1], TOTAL_MINUTES - 180, too_old, closed=True, event_offset=4 * HOUR)
    )
    # Days behind, so that the watermark (emitted periodically) is surely past them.
    lagging_minutes = range(10, 15)
    for minute in lagging_minutes:
        values = final_values(LAGGING, minute, rng)
        scenario.finals[(LAGGING, minute)] = values
        stream.append(make_kline(LAGGING, minute, values, closed=True, event_offset=59_999))

    raw = env.from_collection([encode_kline(k).decode() for k in stream], type_info=Types.STRING())
    # Historical data: fire early whatever the wall clock says, to check live emissions.
    streams = build_pipeline(raw, PipelineConfig(rollup_live_horizon_ms=-1))
    tagged = streams.bars.map(_tag_bar, output_type=Types.PICKLED_BYTE_ARRAY()).union(
        streams.dead_letters.map(_tag_letter, output_type=Types.PICKLED_BYTE_ARRAY())
    )
    with tagged.execute_and_collect("test-rollups") as results:
        outputs = list(results)

    emissions: dict[tuple[str, str, str, int], list[VersionedBar]] = defaultdict(list)
    for tag, value in outputs:
        if tag == "bar" and value.kline.timeframe != "1m":
            k = value.kline
            emissions[(k.exchange, k.symbol, k.timeframe, k.open_time)].append(value)
    expected = reference_rollups(scenario.finals, exclude=frozenset({LAGGING}))

    assert set(emissions) == set(expected)
    for key, versions in emissions.items():
        assert [b.version for b in versions] == sorted({b.version for b in versions}), key
        last = versions[-1]
        assert last.kline.is_closed, key
        assert last.kline.close_time == last.kline.open_time + last.bars_expected * MINUTE - 1
        assert_matches(bar_values(last), expected[key], key)

    # Live: in a clean in-order series every closed 1m bar re-emits its open windows, then
    # the watermark closes each window once.
    series = CLEAN[2]
    for timeframe, length in (("5m", 5), ("1h", 60), ("1d", 1440)):
        key = (series.exchange, series.symbol, timeframe, START + length * MINUTE)
        flags = [b.kline.is_closed for b in emissions[key]]
        assert flags == [False] * length + [True], (key, flags)
        present = [b.bars_present for b in emissions[key]]
        assert present == [*range(1, length + 1), length]
    # Completeness: the hole and the random gaps show in the counts.
    gappy = GAPPY[0]
    hole_hour = (gappy.exchange, gappy.symbol, "1h", START + 11 * HOUR)
    assert hole_hour not in emissions
    first_day = emissions[(gappy.exchange, gappy.symbol, "1d", START)][-1]
    assert first_day.bars_present < 1440 - 180 and first_day.bars_expected == 1440

    # The correction inside the lateness re-emitted every roll-up holding it.
    corrected_open = START + corrected_minute * MINUTE
    for timeframe, freq in TIMEFRAMES.items():
        length = pd.Timedelta(freq) // pd.Timedelta("1ms")
        key = (corrected_series.exchange, corrected_series.symbol, timeframe,
               corrected_open - corrected_open % length)  # fmt: skip
        assert emissions[key][-1].kline.high == corrected["high"], key
        assert any(b.kline.high != corrected["high"] for b in emissions[key]), key

    letters = [decode_dead_letter(value) for tag, value in outputs if tag == "dead"]
    late_upsert = [x for x in letters if x.stage == "upsert"]
    late_rollup = [x for x in letters if x.stage == "rollup"]
    assert len(letters) == 1 + len(lagging_minutes)
    assert len(late_upsert) == 1 and late_upsert[0].reason.startswith("late")
    assert late_upsert[0].key == f"{CLEAN[1].exchange}:{CLEAN[1].symbol}:1m"
    assert {orjson.loads(x.original)["open_time"] for x in late_rollup} == {
        START + m * MINUTE for m in lagging_minutes
    }
    assert all(x.reason.startswith("late") for x in late_rollup)
    # The lagging series' 1m bars are still stored (emitted), only its roll-ups are not.
    lagging_1m = {
        value.kline.open_time
        for tag, value in outputs
        if tag == "bar" and value.kline.symbol == LAGGING.symbol and value.kline.timeframe == "1m"
    }
    assert lagging_1m == {START + m * MINUTE for m in lagging_minutes}


# --- 2. the whole job: Kafka in, chdb and Redis out --------------------------------------------


def produce(bootstrap: str, topic: str, klines: list[Kline]) -> None:
    producer = create_producer(bootstrap)
    try:
        for kline in klines:
            producer.send(topic, key=kline.series_key.encode(), value=encode_kline(kline))
        producer.flush(timeout=30)
    finally:
        producer.close()


def test_job_writes_the_last_version_of_every_rollup_to_clickhouse_and_redis(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: TopicNames, redis_url: str,
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    rng = random.Random(42)
    scenario = Scenario(messages=[], finals={})
    job_series = [CLEAN[0], MESSY[1], GAPPY[0]]
    minutes = 1440 + 150  # a full day and the start of the next one
    for series in job_series:
        kept = [m for m in range(minutes) if series is not GAPPY[0] or rng.random() > 0.1]
        add_series(scenario, series, kept, rng, in_progress=2, jitter_ms=110_000,
                   duplicate_rate=0.1)  # fmt: skip
    scenario.messages.sort(key=lambda item: item[0])
    stream = [kline for _, kline in scenario.messages]
    produce(kafka_bootstrap, kafka_topics.raw, stream)

    settings = JobSettings(
        kafka_bootstrap=kafka_bootstrap,
        klines_topic=kafka_topics.raw,
        dlq_topic=kafka_topics.dlq,
        consumer_group=f"test-{kafka_topics.raw}",
        bounded=True,
        parallelism=2,
        pipeline=PipelineConfig(idleness_ms=5_000),
        sinks=SinkConfig(clickhouse_url=f"chdb://{tmp_path / 'chdb'}", redis_url=redis_url),
        checkpoint_dir=tmp_path / "checkpoints",
        job_name="test-rollups-job",
        flink_overrides=(("restart-strategy.type", "none"), ("rest.port", "0")),
    )
    run_job(settings)

    expected = reference_rollups(scenario.finals)
    with open_writer(settings.sinks.clickhouse_url, migrate_schema=False) as writer:
        by_timeframe = writer.query(
            "SELECT timeframe, count() AS n FROM crypto_kline.klines FINAL GROUP BY timeframe", {}
        )
        assert {row["timeframe"] for row in by_timeframe} == {"1m", *TIMEFRAMES}, by_timeframe
        for series in job_series:
            for timeframe in TIMEFRAMES:
                rows = writer.fetch_klines(series.exchange, series.symbol, timeframe)
                want = {
                    key[3]: values
                    for key, values in expected.items()
                    if key[:3] == (series.exchange, series.symbol, timeframe)
                }
                assert [row["open_time"] for row in rows] == sorted(want), (series, timeframe)
                for row in rows:
                    context = (series.symbol, timeframe, row["open_time"])
                    assert_matches(row, want[row["open_time"]], context)
                    assert bool(row["is_closed"]), context
        total = writer.table_counts()["klines"]
    assert total == len(expected) + len(scenario.finals)  # roll-ups + 1m bars, one row each

    for series in job_series:
        for timeframe in ("1h", "1d"):
            suffix = f"{series.exchange}:{series.symbol}:{timeframe}"
            stored = cast(dict[bytes, bytes], redis_client.hgetall(f"kline:{{{suffix}}}"))
            latest = {k.decode(): v.decode() for k, v in stored.items()}
            newest = max(key for key in expected if key[:3] == (*suffix.split(":")[:2], timeframe))
            newest_values = expected[newest]
            assert int(latest["open_time"]) == newest[3], suffix
            assert float(latest["close"]) == newest_values["close"], suffix
            assert float(latest["high"]) == newest_values["high"], suffix
            assert int(latest["bars_present"]) == newest_values["bars_present"], suffix
            assert float(latest["volume"]) == pytest.approx(
                float(newest_values["volume"]), rel=1e-9
            )
