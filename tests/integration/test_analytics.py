"""Volume profiles and indicators through the real pipeline: streaming equals batch.

The reference is the batch maths (``compute_volume_profile``, ``compute_indicators``) on the
*final* bars of each series, built here from the final 1m values the test generated (roll-up
closes: the close of the last minute present in the window). The streaming side is the job's
own operators, fed out of order, with in-progress updates, gaps, corrections and edge cases.

1. ``build_pipeline`` + ``build_analytics`` on a mini-cluster (from_collection,
   execute_and_collect): the last emission of every profile window and of every closed bar's
   indicators equals the batch result exactly, versions grow strictly, open windows are
   emitted live and closed once, and edge cases hold (a window with zero volume, every bar at
   one price, a single bar, a very wide range, gaps, unknown taker volume, a correction, a
   series too late for the windows).
2. The whole job (Kafka in, chdb and Redis out) with fixed-size profile rows: ClickHouse
   ``volume_profile`` / ``indicators`` (FINAL) and Redis ``vp:`` / ``ind:`` hold the batch
   results.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pyflink.common import Types
from pyflink.datastream import StreamExecutionEnvironment

from connectors.clickhouse import open_writer
from connectors.redis_store import decode_hash
from jobs.config import AnalyticsConfig, JobSettings, PipelineConfig, SinkConfig
from jobs.job import run_job
from jobs.pipeline import build_pipeline
from tests.integration.conftest import TopicNames
from tests.integration.test_rollups import (
    Scenario,
    Series,
    add_series,
    make_kline,
    mini_cluster_environment,
    produce,
)
from udfs.analytics import (
    IndicatorRecord,
    ProfileRecord,
    batch_indicator_versions,
    indicator_horizon_ms,
)
from udfs.dead_letter import decode_dead_letter
from udfs.indicators import IndicatorValues, compute_indicators
from udfs.record import TIMEFRAME_MS, Kline, VersionedBar, encode_kline
from udfs.volume_profile import VolumeProfile, compute_volume_profile

START = 1_735_689_600_000  # 2025-01-01T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE
PROFILE_TIMEFRAMES = ("15m", "1h", "4h", "1d")
ALL_TIMEFRAMES = ("1m", "5m", "15m", "1h", "4h", "1d")
LATENESS = PipelineConfig().allowed_lateness_ms

BTC = Series("binance", "BTC-USDT", "BTCUSDT", 94_000.0)
ETH_OKX = Series("okx", "ETH-USDT", "ETH-USDT", 3_300.0, has_quote=False)
EDGE = Series("bybit", "EDGE-USDT", "EDGEUSDT", 10.0)
LAGGING = Series("okx", "XRP-USDT", "XRP-USDT", 2.3)
SeriesKey = tuple[str, str]


def edge_values(minute: int) -> dict[str, Any] | None:
    """The edge-case series: hour 0 without volume, hour 1 at one price, a lone bar in hour
    2, a very wide bar in hour 3, then a gap until hour 5 (None: no bar that minute)."""
    hour, rest = divmod(minute, 60)
    base = {"trades": 1, "taker_buy_quote_volume": None, "quote_volume": None}
    if hour == 0:
        return {**base, "open": 10.0, "close": 10.5, "high": 11.0, "low": 9.5, "volume": 0.0,
                "taker_buy_volume": 0.0, "trades": 0}  # fmt: skip
    if hour == 1:
        return {**base, "open": 12.25, "close": 12.25, "high": 12.25, "low": 12.25,
                "volume": 1.0 + rest, "taker_buy_volume": 0.5}  # fmt: skip
    if hour == 2:
        if rest != 17:
            return None
        return {**base, "open": 11.0, "close": 11.5, "high": 12.0, "low": 10.5, "volume": 4.0,
                "taker_buy_volume": 1.0}  # fmt: skip
    if hour == 3:
        if rest == 30:
            return {**base, "open": 1e-6, "close": 9e8, "high": 1e9, "low": 1e-8,
                    "volume": 1e12, "taker_buy_volume": 2.5e11}  # fmt: skip
        return {**base, "open": 11.0, "close": 11.0 + rest / 100, "high": 12.0, "low": 10.0,
                "volume": 2.0, "taker_buy_volume": 1.0}  # fmt: skip
    if hour < 5:
        return None
    return {**base, "open": 11.0, "close": 11.0 + math.sin(rest), "high": 12.5, "low": 9.5,
            "volume": 3.0, "taker_buy_volume": None}  # fmt: skip


# --- the batch reference ------------------------------------------------------------------------


def final_klines(scenario: Scenario) -> dict[SeriesKey, dict[int, Kline]]:
    """(exchange, symbol) -> open_time -> the final 1m bar."""
    series_bars: dict[SeriesKey, dict[int, Kline]] = defaultdict(dict)
    for (series, minute), values in scenario.finals.items():
        kline = make_kline(series, minute, values, closed=True, event_offset=59_999)
        series_bars[(series.exchange, series.symbol)][kline.open_time] = kline
    return series_bars


def window_bars(bars: dict[int, Kline], timeframe: str) -> dict[int, list[Kline]]:
    length = TIMEFRAME_MS[timeframe]
    windows: dict[int, list[Kline]] = defaultdict(list)
    for open_time in sorted(bars):
        windows[open_time - open_time % length].append(bars[open_time])
    return windows


def reference_profiles(
    finals: dict[SeriesKey, dict[int, Kline]], **settings: Any
) -> dict[tuple[str, str, str, int], VolumeProfile]:
    expected = {}
    for (exchange, symbol), bars in finals.items():
        for timeframe in PROFILE_TIMEFRAMES:
            for start, klines in window_bars(bars, timeframe).items():
                expected[(exchange, symbol, timeframe, start)] = compute_volume_profile(
                    klines, **settings
                )
    return expected


def reference_closes(
    finals: dict[SeriesKey, dict[int, Kline]],
) -> dict[tuple[str, str, str], dict[int, float]]:
    """Per series and timeframe: open_time -> close of the final bar (roll-ups: last minute)."""
    closes: dict[tuple[str, str, str], dict[int, float]] = {}
    for (exchange, symbol), bars in finals.items():
        closes[(exchange, symbol, "1m")] = {t: bars[t].close for t in sorted(bars)}
        for timeframe in ALL_TIMEFRAMES[1:]:
            closes[(exchange, symbol, timeframe)] = {
                start: klines[-1].close for start, klines in window_bars(bars, timeframe).items()
            }
    return closes


def reference_indicators(
    closes: dict[tuple[str, str, str], dict[int, float]],
) -> dict[tuple[str, str, str, int], IndicatorValues]:
    expected = {}
    for key, by_time in closes.items():
        ordered = sorted(by_time)
        for open_time, values in zip(
            ordered, compute_indicators([by_time[t] for t in ordered]), strict=True
        ):
            expected[(*key, open_time)] = values
    return expected


def key_of(series: Series) -> SeriesKey:
    return (series.exchange, series.symbol)


def assert_finite(record: ProfileRecord | IndicatorRecord) -> None:
    values = record.row().values()
    numbers = [v for value in values if isinstance(value, list) for v in value]
    numbers += [v for v in values if isinstance(v, float)]
    assert all(math.isfinite(v) for v in numbers), record


# --- 1. the pipeline on a mini-cluster ------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamExecutionEnvironment]:
    yield mini_cluster_environment(tmp_path_factory.mktemp("checkpoints"))


def _tag(kind: str) -> Any:
    def tag(value: Any) -> tuple[str, Any]:
        return (kind, bytes(value) if kind == "dead" else value)

    return tag


def build_scenario(rng: random.Random) -> tuple[Scenario, list[Kline], int]:
    """Messages in arrival order, with a correction at the end; returns its minute too."""
    scenario = Scenario(messages=[], finals={})
    minutes = 1440 + 120
    add_series(scenario, BTC, list(range(minutes)), rng, in_progress=1, jitter_ms=20_000)
    gappy = [m for m in range(minutes) if rng.random() > 0.1 and not 300 <= m < 420]
    add_series(scenario, ETH_OKX, gappy, rng, in_progress=2, jitter_ms=110_000,
               duplicate_rate=0.1)  # fmt: skip
    for minute in range(6 * 60):
        values = edge_values(minute)
        if values is not None:
            scenario.finals[(EDGE, minute)] = values
            kline = make_kline(EDGE, minute, values, closed=True, event_offset=59_999)
            scenario.messages.append((kline.open_time + rng.uniform(0, 50_000), kline))
    scenario.messages.sort(key=lambda item: item[0])
    stream = [kline for _, kline in scenario.messages]
    # A correction 40 minutes back (its 15m window already closed, within the 1 h lateness).
    corrected_minute = minutes - 40
    corrected = dict(scenario.finals[(BTC, corrected_minute)])
    corrected["close"] += 7.5
    corrected["high"] = max(corrected["high"], corrected["close"]) + 250.0
    corrected["volume"] *= 2
    corrected["taker_buy_volume"] *= 2
    corrected["quote_volume"] *= 2
    scenario.finals[(BTC, corrected_minute)] = corrected
    stream.append(make_kline(BTC, corrected_minute, corrected, closed=True,
                             event_offset=45 * MINUTE))  # fmt: skip
    return scenario, stream, corrected_minute


def test_streaming_profiles_and_indicators_equal_batch(env: StreamExecutionEnvironment) -> None:
    rng = random.Random(5)
    scenario, stream, corrected_minute = build_scenario(rng)
    lagging = [make_kline(LAGGING, m, {"open": 2.3, "close": 2.3, "high": 2.4, "low": 2.2,
                                       "volume": 5.0, "quote_volume": None, "trades": None,
                                       "taker_buy_volume": None, "taker_buy_quote_volume": None},
                          closed=True, event_offset=59_999) for m in range(10, 13)]  # fmt: skip
    stream += lagging  # a day behind the watermark: too late for every window

    # Historical data: fire early whatever the wall clock says, to check live emissions.
    # Batches of 20 messages: the watermark moves at each batch's end, so the correction and
    # the lagging bars (the last messages) arrive a batch after bars within minutes of the
    # end have moved it, however fast the collection is read.
    pipeline = PipelineConfig(rollup_live_horizon_ms=-1, source_batch_records=20)
    raw = env.from_collection([encode_kline(k).decode() for k in stream], type_info=Types.STRING())
    streams = build_pipeline(raw, pipeline, AnalyticsConfig())
    pickled = Types.PICKLED_BYTE_ARRAY()
    tagged = (
        streams.bars.map(_tag("bar"), output_type=pickled)
        .union(streams.profiles.map(_tag("profile"), output_type=pickled))
        .union(streams.indicators.map(_tag("indicator"), output_type=pickled))
        .union(streams.dead_letters.map(_tag("dead"), output_type=pickled))
    )
    with tagged.execute_and_collect("test-analytics") as results:
        outputs = list(results)

    bar_versions: dict[tuple[str, str, str, int], int] = {}
    profiles: dict[tuple[str, str, str, int], list[ProfileRecord]] = defaultdict(list)
    indicators: dict[tuple[str, str, str, int], list[IndicatorRecord]] = defaultdict(list)
    for tag, value in outputs:
        if tag == "bar":
            bar: VersionedBar = value
            if bar.kline.is_closed:
                k = bar.kline
                bar_versions[(k.exchange, k.symbol, k.timeframe, k.open_time)] = bar.version
        elif tag == "profile":
            profiles[(value.exchange, value.symbol, value.timeframe, value.window_start)].append(
                value
            )
            assert_finite(value)
        elif tag == "indicator":
            indicators[(value.exchange, value.symbol, value.timeframe, value.open_time)].append(
                value
            )
            assert_finite(value)

    finals = final_klines(scenario)
    # Profiles: the last emission of each window equals the batch profile of its final bars.
    expected_profiles = reference_profiles(finals)
    assert set(profiles) == set(expected_profiles)
    for key, emissions in profiles.items():
        versions = [p.version for p in emissions]
        assert versions == sorted(set(versions)), key
        last = emissions[-1]
        assert last.is_closed, key
        assert last.profile == expected_profiles[key], key
        exchange, symbol, timeframe, start = key
        minutes = [t for t in finals[(exchange, symbol)] if start <= t < start +
                   TIMEFRAME_MS[timeframe]]  # fmt: skip
        assert last.bars_present == len(minutes), key
        assert last.version == 2 * sum(bar_versions[(exchange, symbol, "1m", t)]
                                       for t in minutes) + 1  # fmt: skip
    # Live: a clean in-order window is emitted on each closed 1m bar, then closed once.
    live = profiles[(BTC.exchange, BTC.symbol, "1h", START + 2 * HOUR)]
    assert [p.is_closed for p in live] == [False] * 60 + [True]
    assert [p.bars_present for p in live] == [*range(1, 61), 60]
    # The correction re-emitted its (closed) windows with a higher version.
    corrected_open = START + corrected_minute * MINUTE
    for timeframe in PROFILE_TIMEFRAMES:
        length = TIMEFRAME_MS[timeframe]
        window = profiles[(BTC.exchange, BTC.symbol, timeframe,
                           corrected_open - corrected_open % length)]  # fmt: skip
        assert any(p.profile != window[-1].profile for p in window), timeframe
    # Edge cases, besides being equal to batch.
    edge = {k[2:]: v[-1] for k, v in profiles.items() if k[1] == EDGE.symbol}
    silent = edge[("1h", START)].profile
    assert silent.total_volume == 0.0 and silent.poc is None and silent.vwap is None
    assert silent.value_area_low is None and silent.buy_volume == (0.0,) * 24
    flat = edge[("1h", START + HOUR)].profile
    assert flat.row_low == (12.25,) and flat.row_size == 0.0 and flat.poc == 12.25
    assert edge[("1h", START + 2 * HOUR)].bars_present == 1
    wide = edge[("15m", START + 3 * HOUR + 30 * MINUTE)].profile
    assert wide.row_low[0] == 1e-8 and wide.poc is not None and len(wide.row_low) == 24
    assert edge[("1h", START + 5 * HOUR)].profile.buy_volume is None  # a bar without taker data
    assert ("4h", START + 4 * HOUR) in edge and ("1h", START + 4 * HOUR) not in edge  # the gap
    okx = profiles[(ETH_OKX.exchange, ETH_OKX.symbol, "1d", START)][-1].profile
    assert okx.buy_volume is None and okx.vwap is not None

    # Indicators: the last emission of every closed bar equals batch on the final closes.
    closes = reference_closes(finals)
    closes[(LAGGING.exchange, LAGGING.symbol, "1m")] = {k.open_time: k.close for k in lagging}
    expected_indicators = reference_indicators(closes)
    assert set(indicators) == set(expected_indicators)
    for key, emissions in indicators.items():
        versions = [i.version for i in emissions]
        assert versions == sorted(set(versions)), key
        assert emissions[-1].values == expected_indicators[key], key
    for (exchange, symbol, timeframe), by_time in closes.items():
        want = batch_indicator_versions(
            [(t, bar_versions[(exchange, symbol, timeframe, t)]) for t in by_time],
            indicator_horizon_ms(timeframe, LATENESS),
        )
        got = {t: indicators[(exchange, symbol, timeframe, t)][-1].version for t in by_time}
        assert got == want, (exchange, symbol, timeframe)
    # Warm-up is null, never a number; afterwards every value is there.
    btc_1m = [indicators[(BTC.exchange, BTC.symbol, "1m", t)][-1].values
              for t in sorted(closes[(BTC.exchange, BTC.symbol, "1m")])]  # fmt: skip
    assert all(v.rsi_14 is None for v in btc_1m[:14]) and btc_1m[14].rsi_14 is not None
    assert all(v.macd is None for v in btc_1m[:33]) and btc_1m[33].macd_signal is not None
    assert all(v.bb_middle is None for v in btc_1m[:19]) and btc_1m[19].bb_lower is not None
    # The correction and the shuffled closed bars were recomputed, not dead-lettered.
    assert len(indicators[(BTC.exchange, BTC.symbol, "1m", corrected_open + MINUTE)]) == 2
    assert any(len(v) > 1 for k, v in indicators.items() if k[1] == ETH_OKX.symbol)

    letters = [decode_dead_letter(value) for tag, value in outputs if tag == "dead"]
    by_stage = defaultdict(list)
    for letter in letters:
        by_stage[letter.stage].append(letter)
    assert set(by_stage) == {"rollup", "profile"}, letters
    assert len(by_stage["profile"]) == len(lagging)
    assert all(x.reason.startswith("late") and "volume profiles are not updated" in x.reason
               for x in by_stage["profile"])  # fmt: skip


# --- 2. the whole job: Kafka in, chdb and Redis out ------------------------------------------


def test_job_writes_profiles_and_indicators_to_clickhouse_and_redis(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: TopicNames, redis_url: str,
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    rng = random.Random(11)
    scenario = Scenario(messages=[], finals={})
    minutes = 6 * 60 + 20
    add_series(scenario, BTC, list(range(minutes)), rng, in_progress=1, jitter_ms=30_000)
    kept = [m for m in range(minutes) if rng.random() > 0.05]
    add_series(scenario, ETH_OKX, kept, rng, in_progress=1, jitter_ms=30_000)
    scenario.messages.sort(key=lambda item: item[0])
    produce(kafka_bootstrap, kafka_topics.raw, [kline for _, kline in scenario.messages])

    row_size = 25.0
    settings = JobSettings(
        kafka_bootstrap=kafka_bootstrap,
        klines_topic=kafka_topics.raw,
        dlq_topic=kafka_topics.dlq,
        consumer_group=f"test-{kafka_topics.raw}",
        bounded=True,
        parallelism=2,
        pipeline=PipelineConfig(idleness_ms=5_000),
        sinks=SinkConfig(clickhouse_url=f"chdb://{tmp_path / 'chdb'}", redis_url=redis_url),
        analytics=AnalyticsConfig(profile_row_size=row_size),
        checkpoint_dir=tmp_path / "checkpoints",
        job_name="test-analytics-job",
        flink_overrides=(("restart-strategy.type", "none"), ("rest.port", "0")),
    )
    run_job(settings)

    finals = final_klines(scenario)
    expected_profiles = reference_profiles(finals, row_size=row_size)
    expected_indicators = reference_indicators(reference_closes(finals))
    with open_writer(settings.sinks.clickhouse_url, migrate_schema=False) as writer:
        assert writer.schema_version() >= 2
        profile_rows = writer.query(
            "SELECT * EXCEPT (window_start, window_end), "
            "toUnixTimestamp64Milli(window_start) AS start, "
            "toUnixTimestamp64Milli(window_end) AS end FROM crypto_kline.volume_profile FINAL"
        )
        indicator_rows = writer.query(
            "SELECT * EXCEPT (open_time), toUnixTimestamp64Milli(open_time) AS open_ms "
            "FROM crypto_kline.indicators FINAL"
        )
    stored_profiles = {
        (r["exchange"], r["symbol"], r["timeframe"], r["start"]): r for r in profile_rows
    }
    assert len(stored_profiles) == len(profile_rows)
    assert set(stored_profiles) == set(expected_profiles)
    for key, row in stored_profiles.items():
        want = expected_profiles[key]
        assert row["end"] == key[3] + TIMEFRAME_MS[key[2]] - 1
        assert row["version"] % 2 == 1, key  # the final emission
        fields = want.as_dict()
        fields["buy_volume"] = fields["buy_volume"] if fields["buy_volume"] is not None else []
        assert {name: row[name] for name in fields} == fields, key
        assert row["row_size"] % row_size == 0.0
    assert all(r["buy_volume"] == [] for k, r in stored_profiles.items() if k[0] == "okx")
    assert all(len(r["buy_volume"]) == len(r["row_low"]) for k, r in stored_profiles.items()
               if k[0] == "binance")  # fmt: skip

    stored_indicators = {
        (r["exchange"], r["symbol"], r["timeframe"], r["open_ms"]): r for r in indicator_rows
    }
    assert set(stored_indicators) == set(expected_indicators)
    for key, row in stored_indicators.items():
        assert {name: row[name] for name in IndicatorValues.__slots__} == (
            expected_indicators[key].as_dict()
        ), key

    strings = frozenset({"exchange", "symbol", "timeframe"})
    for series in (BTC, ETH_OKX):
        for timeframe in PROFILE_TIMEFRAMES:
            suffix = f"{series.exchange}:{series.symbol}:{timeframe}"
            stored = decode_hash(redis_client.hgetall(f"vp:{{{suffix}}}"), strings)  # type: ignore[arg-type]
            newest = max(k for k in expected_profiles if k[:3] == (*key_of(series), timeframe))
            want = expected_profiles[newest].as_dict()
            assert stored["window_start"] == newest[3] and stored["is_closed"] is True, suffix
            assert {name: stored[name] for name in want} == want, suffix
        for timeframe in ALL_TIMEFRAMES:
            suffix = f"{series.exchange}:{series.symbol}:{timeframe}"
            stored = decode_hash(redis_client.hgetall(f"ind:{{{suffix}}}"), strings)  # type: ignore[arg-type]
            newest = max(k for k in expected_indicators if k[:3] == (*key_of(series), timeframe))
            assert stored["open_time"] == newest[3], suffix
            want_values = expected_indicators[newest].as_dict()
            assert {name: stored[name] for name in want_values} == want_values, suffix
