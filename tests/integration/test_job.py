"""The first job end to end: real Kafka in, Flink mini-cluster, real chdb and Redis out.

The input holds in-progress updates out of order, duplicates, a closed bar re-sent, bad
records of every kind, and a bar that is still open at the end. The expectation is computed
here, independently of udfs/upsert.py: per bar, the closed update if there is one, else the
in-progress update with the newest event time.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis

from connectors.clickhouse import open_writer
from connectors.kafka_admin import read_topic
from connectors.kafka_producer import create_producer
from jobs.config import JobSettings, PipelineConfig, SinkConfig
from jobs.job import run_job
from tests.integration.conftest import TopicNames
from udfs.dead_letter import decode_dead_letter
from udfs.record import Kline, encode_kline

START = 1_735_689_600_000  # 2025-01-01T00:00:00Z
MINUTES = 6
SERIES = (("binance", "BTC-USDT", "BTCUSDT", 94_000.0), ("okx", "ETH-USDT", "ETH-USDT", 3_300.0))


def make_update(
    exchange: str, symbol: str, raw: str, price: float, minute: int, step: int, *, closed: bool
) -> Kline:
    """Update number ``step`` of the bar of ``minute``; the closed update is the last step."""
    open_time = START + minute * 60_000
    close = price + minute + step * 0.25
    return Kline(
        exchange=exchange,
        symbol=symbol,
        raw_symbol=raw,
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + 59_999,
        open=price + minute,
        high=max(price + minute, close) + 1.0,
        low=min(price + minute, close) - 1.0,
        close=close,
        volume=1.5 * (step + 1),
        quote_volume=1.5 * (step + 1) * close if exchange == "binance" else None,
        trades=10 * (step + 1) if exchange == "binance" else None,
        taker_buy_volume=0.5 * (step + 1) if exchange == "binance" else None,
        taker_buy_quote_volume=0.5 * (step + 1) * close if exchange == "binance" else None,
        is_closed=closed,
        event_time=open_time + (59_999 if closed else 10_000 * (step + 1)),
        ingest_time=open_time + (60_050 if closed else 10_000 * (step + 1) + 40),
    )


def build_series_stream(
    exchange: str, symbol: str, raw: str, price: float, rng: random.Random
) -> list[Kline]:
    """Updates of one series: shuffled within each minute, duplicated, last minute open."""
    stream: list[Kline] = []
    for minute in range(MINUTES):
        last_minute = minute == MINUTES - 1
        updates = [
            make_update(exchange, symbol, raw, price, minute, step, closed=False)
            for step in range(4)
        ]
        rng.shuffle(updates)  # out-of-order in-progress updates
        updates.append(rng.choice(updates))  # an exact duplicate
        if not last_minute:
            closed = make_update(exchange, symbol, raw, price, minute, 4, closed=True)
            updates += [closed, closed]  # closed, then re-sent
            updates.append(updates[0])  # an in-progress update after the close
        stream += updates
    return stream


def expected_bars(stream: list[Kline]) -> dict[tuple[str, int], Kline]:
    """Per (series, open_time): the closed update, else the newest in-progress one."""
    best: dict[tuple[str, int], Kline] = {}
    for kline in stream:
        key = (kline.series_key, kline.open_time)
        current = best.get(key)
        if current is None or (not current.is_closed and (
            kline.is_closed or kline.event_time > current.event_time
        )):  # fmt: skip
            best[key] = kline
    return best


def good_record() -> dict[str, object]:
    return make_update("binance", "BTC-USDT", "BTCUSDT", 94_000.0, 0, 0, closed=False).to_dict()


BAD_RECORDS: list[tuple[bytes, str]] = [
    (b"this is not json", "not JSON"),
    (b'{"exchange": "binance", "open": NaN}', "not JSON"),
    (b"\xff\xfe\x00 binary garbage", "not JSON"),
    (orjson.dumps({**good_record(), "volume": -1.0}), "volume: -1.0 is negative"),
    (orjson.dumps({**good_record(), "high": 1.0}), "high: 1.0 is below max(open, close)"),
    (orjson.dumps({**good_record(), "open_time": START + 30_000}), "is not aligned to 1m"),
    (orjson.dumps({**good_record(), "timeframe": "7m"}), "unknown timeframe '7m'"),
    (orjson.dumps({**good_record(), "exchange": "kraken"}), "unknown exchange 'kraken'"),
    (orjson.dumps({**good_record(), "trades": "12"}), "trades: expected an integer"),
    (orjson.dumps({k: v for k, v in good_record().items() if k != "close"}), "missing field"),
]


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
        parallelism=2,
        # Roll-ups off: this test counts 1m rows; tests/integration/test_rollups.py covers them.
        pipeline=PipelineConfig(
            max_out_of_orderness_ms=60_000, idleness_ms=5_000, rollup_timeframes=()
        ),
        sinks=SinkConfig(
            clickhouse_url=f"chdb://{tmp_path / 'chdb'}",
            redis_url=redis_url,
            redis_recent_bars=4,
        ),
        checkpoint_dir=tmp_path / "checkpoints",
        job_name="test-job-end-to-end",
        flink_overrides=(("restart-strategy.type", "none"),),
    )


Message = tuple[bytes | None, bytes]  # key, value


def stamped(kline: Kline) -> Message:
    """A bar as the bridge and replay send it: keyed by its series."""
    return kline.series_key.encode(), encode_kline(kline)


def produce(bootstrap: str, topic: str, messages: list[Message]) -> None:
    # The project's producer settings (zstd compression): the job must read what replay writes.
    producer = create_producer(bootstrap)
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


def test_job_upserts_bars_into_chdb_and_redis_and_rejects_bad_input(
    settings: JobSettings, redis_client: redis.Redis
) -> None:
    rng = random.Random(2025)
    stream: list[Kline] = []
    messages: list[Message] = []
    for exchange, symbol, raw, price in SERIES:
        series = build_series_stream(exchange, symbol, raw, price, rng)
        stream += series
        messages += [stamped(k) for k in series]
    # Bad records interleaved with the good ones, on random partitions.
    for value, _ in BAD_RECORDS:
        messages.insert(rng.randrange(len(messages)), (None, value))
    bad_records = BAD_RECORDS
    produce(settings.kafka_bootstrap, settings.klines_topic, messages)

    run_job(settings)

    expected = expected_bars(stream)
    assert len(expected) == len(SERIES) * MINUTES

    # ClickHouse: exactly one row per bar under FINAL, with the expected values.
    with open_writer(settings.sinks.clickhouse_url, migrate_schema=False) as writer:
        assert writer.table_counts()["klines"] == len(expected)
        for exchange, symbol, _, _ in SERIES:
            rows = writer.fetch_klines(exchange, symbol, "1m")
            assert [row["open_time"] for row in rows] == [
                START + m * 60_000 for m in range(MINUTES)
            ]
            for row in rows:
                want = expected[(f"{exchange}:{symbol}:1m", row["open_time"])]
                for field in ("open", "high", "low", "close", "volume", "quote_volume",
                              "trades", "taker_buy_volume", "taker_buy_quote_volume",
                              "close_time"):  # fmt: skip
                    assert row[field] == getattr(want, field), (field, row, want)
                assert bool(row["is_closed"]) is want.is_closed
                assert row["bars_present"] == row["bars_expected"] == 1
                assert row["version"] >= want.event_time * 2
            # The last bar is still open at the end of the stream.
            assert [bool(r["is_closed"]) for r in rows] == [True] * (MINUTES - 1) + [False]

    # Redis: the newest bar per series in the hash; the last N bars in the sorted set.
    for exchange, symbol, _, _ in SERIES:
        key = f"{exchange}:{symbol}:1m"
        newest = expected[(key, START + (MINUTES - 1) * 60_000)]
        stored = redis_client.hgetall(f"kline:{{{key}}}")
        latest = {k.decode(): v.decode() for k, v in stored.items()}
        assert int(latest["open_time"]) == newest.open_time
        assert float(latest["close"]) == newest.close
        assert latest["is_closed"] in ("0", "false", "False")
        members = redis_client.zrange(f"klines:{{{key}}}", 0, -1, withscores=True)
        assert [int(score) for _, score in members] == [
            START + m * 60_000 for m in range(MINUTES - 4, MINUTES)
        ]
        for member, score in members:
            bar = orjson.loads(member)
            assert bar["close"] == expected[(key, int(score))].close

    # DLQ: every bad record, with its reason and its original bytes; nothing else.
    letters = [
        decode_dead_letter(value)
        for _, value in read_topic(
            settings.kafka_bootstrap, settings.dlq_topic, min_messages=len(bad_records)
        )
    ]
    assert sorted(letter.original for letter in letters) == sorted(v for v, _ in bad_records)
    for letter in letters:
        want_reason = next(reason for value, reason in bad_records if value == letter.original)
        assert want_reason in letter.reason
        assert letter.stage == "validate"


def test_rerunning_the_same_input_changes_nothing(
    settings: JobSettings, redis_client: redis.Redis
) -> None:
    """A replayed topic (new consumer group) yields the same versions: rows collapse."""
    rng = random.Random(7)
    exchange, symbol, raw, price = SERIES[0]
    series = build_series_stream(exchange, symbol, raw, price, rng)
    produce(settings.kafka_bootstrap, settings.klines_topic, [stamped(k) for k in series])
    run_job(settings)
    with open_writer(settings.sinks.clickhouse_url, migrate_schema=False) as writer:
        first = writer.fetch_klines(exchange, symbol, "1m")
    run_job(replace(settings, consumer_group=settings.consumer_group + "-again"))
    with open_writer(settings.sinks.clickhouse_url, migrate_schema=False) as writer:
        second = writer.fetch_klines(exchange, symbol, "1m")
        raw_rows = writer.query(
            "SELECT count() AS n FROM crypto_kline.klines WHERE symbol = {s:String}",
            {"s": symbol},
        )
    strip = [{k: v for k, v in row.items() if k != "updated_at"} for row in first]
    assert strip == [{k: v for k, v in row.items() if k != "updated_at"} for row in second]
    assert raw_rows[0]["n"] >= len(first)  # written twice before merges; FINAL collapses them
