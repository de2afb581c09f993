"""RedisBarWriter against the session's real Redis: CAS on (open_time, version), caps, TTLs."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
import redis

from connectors.redis_store import (
    BAR_HASH_FIELDS,
    CasItem,
    RedisBarWriter,
    bar_fields,
    bar_member,
    decode_bar_hash,
    decode_field,
    encode_field,
    redact_url,
)
from udfs.record import Kline, VersionedBar

START = 1_741_910_400_000  # 2025-03-14T00:00:00Z
MINUTE = 60_000


def make_bar(minute: int, version: int, symbol: str = "BTC-USDT", **changes: Any) -> VersionedBar:
    open_time = START + minute * MINUTE
    kline = Kline(
        exchange="binance",
        symbol=symbol,
        raw_symbol=symbol.replace("-", ""),
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + MINUTE - 1,
        open=100.0 + minute,
        high=110.0 + minute,
        low=90.0 + minute,
        close=100.0 + minute + version / 1000,  # every version carries distinct data
        volume=5.0 + version,
        quote_volume=None if version % 2 else 500.25 + version,
        trades=None if version % 3 else version,
        taker_buy_volume=None,
        taker_buy_quote_volume=None,
        is_closed=False,
        event_time=open_time + version,
        ingest_time=open_time + version + 1,
    )
    return VersionedBar(replace(kline, **changes), version)


@pytest.fixture
def writer(redis_url: str, redis_client: redis.Redis) -> Iterator[RedisBarWriter]:
    """A writer on the flushed session Redis, keeping 5 recent bars."""
    opened = RedisBarWriter(redis_url, recent_bars=5)
    try:
        yield opened
    finally:
        opened.close()


def hash_of(client: redis.Redis, symbol: str = "BTC-USDT") -> dict[str, Any]:
    return decode_bar_hash(client.hgetall(f"kline:{{binance:{symbol}:1m}}"))


def zset_of(client: redis.Redis, symbol: str = "BTC-USDT") -> list[tuple[dict[str, Any], int]]:
    members = client.zrange(f"klines:{{binance:{symbol}:1m}}", 0, -1, withscores=True)
    return [(orjson.loads(member), int(score)) for member, score in members]


# -- encoding ------------------------------------------------------------------------------


def test_field_encoding_round_trips_and_reads_naturally() -> None:
    bar = make_bar(0, version=2, is_closed=True)
    fields = bar_fields(bar)
    assert tuple(fields) == BAR_HASH_FIELDS
    encoded = {name: encode_field(value) for name, value in fields.items()}
    assert encoded["exchange"] == "binance"
    assert encoded["is_closed"] == "true"
    assert encoded["trades"] == "null"
    assert encoded["open_time"] == str(START)
    assert decode_bar_hash({k.encode(): v.encode() for k, v in encoded.items()}) == fields
    assert decode_field(b"123", is_string=True) == "123"
    member = bar_member(bar)
    assert member.startswith(b'{"version":2,')
    assert orjson.loads(member) == fields


def test_redact_url_hides_only_the_password() -> None:
    assert (
        redact_url("rediss://user:s3cret@cache.local:6380/2")
        == "rediss://user:***@cache.local:6380/2"
    )
    assert redact_url("redis://:s3cret@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert (
        redact_url("redis://h:6379/0?password=s3cret&socket_timeout=5")
        == "redis://h:6379/0?password=***&socket_timeout=5"
    )


# -- compare-and-set -----------------------------------------------------------------------


def test_newest_wins_for_any_arrival_order_and_concurrent_writers(
    redis_url: str, redis_client: redis.Redis
) -> None:
    rng = random.Random(20250314)
    symbols = ["BTC-USDT", "ETH-USDT", "SOL-USDT"]
    minutes = 12
    versions = 8
    updates = [
        make_bar(minute, version, symbol)
        for symbol in symbols
        for minute in range(minutes)
        for version in range(1, versions + 1)
    ]
    updates += updates[: len(updates) // 3]  # duplicates of some updates too
    rng.shuffle(updates)
    threads_n = 4
    shares = [updates[i::threads_n] for i in range(threads_n)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def work(share: list[VersionedBar]) -> None:
        try:
            with RedisBarWriter(redis_url, recent_bars=minutes) as own:
                start.wait(timeout=30)
                for i in range(0, len(share), 7):
                    own.write_bars(share[i : i + 7])
        except (redis.RedisError, ValueError, threading.BrokenBarrierError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    for symbol in symbols:
        newest = make_bar(minutes - 1, versions, symbol)
        assert hash_of(redis_client, symbol) == bar_fields(newest)
        stored = zset_of(redis_client, symbol)
        assert [score for _, score in stored] == [START + m * MINUTE for m in range(minutes)]
        assert [bar for bar, _ in stored] == [
            bar_fields(make_bar(m, versions, symbol)) for m in range(minutes)
        ]


def test_an_older_version_or_open_time_never_replaces_newer_data(
    writer: RedisBarWriter, redis_client: redis.Redis
) -> None:
    assert writer.write_bars([make_bar(3, version=5)]) == 2  # hash + sorted set
    assert writer.write_bars([make_bar(3, version=4)]) == 0  # stale version: nothing changes
    assert hash_of(redis_client)["version"] == 5
    assert [bar["version"] for bar, _ in zset_of(redis_client)] == [5]

    # An older bar with a much higher version: the sorted set gains it, the hash keeps bar 3.
    assert writer.write_bars([make_bar(2, version=99)]) == 1
    latest = hash_of(redis_client)
    assert (latest["open_time"], latest["version"]) == (START + 3 * MINUTE, 5)
    assert [score for _, score in zset_of(redis_client)] == [START + 2 * MINUTE, START + 3 * MINUTE]

    # A newer version of the same bar replaces hash and member (one member per open_time).
    assert writer.write_bars([make_bar(3, version=6)]) == 2
    assert hash_of(redis_client) == bar_fields(make_bar(3, version=6))
    assert [(bar["version"], score) for bar, score in zset_of(redis_client)] == [
        (99, START + 2 * MINUTE),
        (6, START + 3 * MINUTE),
    ]
    # A newer bar always replaces the hash, whatever its version.
    assert writer.write_bars([make_bar(4, version=1)]) == 2
    assert hash_of(redis_client)["open_time"] == START + 4 * MINUTE
    assert writer.read_latest_bar("binance", "BTC-USDT", "1m") == bar_fields(make_bar(4, version=1))


def test_equal_version_is_an_idempotent_rewrite(
    writer: RedisBarWriter, redis_client: redis.Redis
) -> None:
    bars = [make_bar(m, version=3) for m in range(3)]
    assert writer.write_bars(bars) == 2  # the hash and the sorted set
    snapshot = (redis_client.hgetall("kline:{binance:BTC-USDT:1m}"), zset_of(redis_client))
    assert writer.write_bars(bars) == 0
    assert writer.write_bars(list(reversed(bars))) == 0
    assert (redis_client.hgetall("kline:{binance:BTC-USDT:1m}"), zset_of(redis_client)) == snapshot
    assert redis_client.zcard("klines:{binance:BTC-USDT:1m}") == 3


def test_sorted_set_is_capped_at_the_newest_n_bars(
    writer: RedisBarWriter, redis_client: redis.Redis
) -> None:
    assert writer.write_bars([make_bar(m, version=1) for m in range(20)]) == 2
    assert [score for _, score in zset_of(redis_client)] == [
        START + m * MINUTE for m in range(15, 20)
    ]
    # A late bar older than the newest five does not get in (and counts as no change).
    assert writer.write_bars([make_bar(3, version=50)]) == 0
    assert redis_client.zcard("klines:{binance:BTC-USDT:1m}") == 5
    assert writer.read_recent_bars("binance", "BTC-USDT", "1m") == [
        bar_fields(make_bar(m, version=1)) for m in range(15, 20)
    ]


def test_one_batch_with_many_versions_of_a_bar_keeps_the_highest(
    writer: RedisBarWriter, redis_client: redis.Redis
) -> None:
    batch = [make_bar(0, version=v) for v in (4, 9, 2, 9, 7)]
    assert writer.write_bars(batch) == 2
    assert hash_of(redis_client)["version"] == 9
    assert [bar["version"] for bar, _ in zset_of(redis_client)] == [9]


def test_versions_beyond_double_precision_compare_exactly(
    writer: RedisBarWriter, redis_client: redis.Redis
) -> None:
    big = 2**60  # 2**60 and 2**60 + 1 are the same double
    assert writer.write_bars([make_bar(0, version=big + 1)]) == 2
    assert writer.write_bars([make_bar(0, version=big)]) == 0
    assert hash_of(redis_client)["version"] == big + 1
    assert [bar["version"] for bar, _ in zset_of(redis_client)] == [big + 1]


def test_ttl_applies_to_both_keys(redis_url: str, redis_client: redis.Redis) -> None:
    with RedisBarWriter(redis_url, ttl_s=120) as writer:
        writer.write_bars([make_bar(0, version=1)])
    for key in ("kline:{binance:BTC-USDT:1m}", "klines:{binance:BTC-USDT:1m}"):
        assert 0 < redis_client.ttl(key) <= 120
    with RedisBarWriter(redis_url) as writer:
        writer.write_bars([make_bar(1, version=1, symbol="ETH-USDT")])
    assert redis_client.ttl("kline:{binance:ETH-USDT:1m}") == -1


def test_the_script_is_reloaded_when_redis_forgets_it(
    writer: RedisBarWriter, redis_client: redis.Redis
) -> None:
    writer.write_bars([make_bar(0, version=1)])
    redis_client.script_flush()
    assert writer.write_bars([make_bar(1, version=1)]) == 2
    assert hash_of(redis_client)["open_time"] == START + MINUTE


def test_write_hashes_for_other_kinds_uses_the_same_cas(
    writer: RedisBarWriter, redis_client: redis.Redis
) -> None:
    def indicator(open_time: int, version: int, rsi: float | None) -> CasItem:
        return CasItem(
            exchange="okx",
            symbol="BTC-USDT",
            timeframe="5m",
            open_time=open_time,
            version=version,
            fields={"open_time": open_time, "rsi_14": rsi, "macd": 1.5, "version": version},
        )

    assert writer.write_hashes("ind", [indicator(START, 2, 55.5)]) == 1
    assert writer.write_hashes("ind", [indicator(START, 1, 10.0)]) == 0
    assert writer.write_hashes("ind", [indicator(START - 300_000, 9, 10.0)]) == 0
    stored = decode_bar_hash(redis_client.hgetall("ind:{okx:BTC-USDT:5m}"))
    assert stored == {"open_time": START, "rsi_14": 55.5, "macd": 1.5, "version": 2}
    assert writer.write_hashes("ind", [indicator(START + 300_000, 1, None)]) == 1
    assert decode_bar_hash(redis_client.hgetall("ind:{okx:BTC-USDT:5m}"))["rsi_14"] is None
    assert redis_client.exists("inds:{okx:BTC-USDT:5m}", "klines:{okx:BTC-USDT:5m}") == 0

    with pytest.raises(ValueError, match="unknown hash kind"):
        writer.write_hashes("bogus", [indicator(START, 1, None)])
    with pytest.raises(ValueError, match="keeps no sorted set"):
        writer.write_hashes("ind", [replace(indicator(START, 3, None), recent_member=b"{}")])
    with pytest.raises(ValueError, match="version must be a non-negative integer"):
        writer.write_hashes("ind", [indicator(START, -1, None)])


# -- connection ----------------------------------------------------------------------------


def test_bad_password_or_port_fails_at_construction_without_leaking_it(redis_url: str) -> None:
    with_password = redis_url.replace("redis://", "redis://:hunter2@")
    with pytest.raises(redis.ConnectionError) as info:
        RedisBarWriter(with_password)
    assert "hunter2" not in str(info.value)
    assert ":***@" in str(info.value)
    with pytest.raises(ValueError, match="recent_bars"):
        RedisBarWriter(redis_url, recent_bars=0)


def test_repr_and_close(redis_url: str) -> None:
    writer = RedisBarWriter(redis_url, recent_bars=7)
    assert repr(writer) == f"RedisBarWriter({redis_url!r}, recent_bars=7)"
    writer.close()
    writer.close()
    with pytest.raises(redis.ConnectionError, match="closed"):
        writer.write_bars([make_bar(0, version=1)])


def test_a_batch_ends_as_its_items_written_one_call_each_and_announces_in_order(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """One script call carries all items of a series: the final hash and sorted set equal
    those of writing the items one call each, whatever their order, and every applied update
    is announced once, in (open_time, version) order."""
    rng = random.Random(11)
    bars = [make_bar(minute, version) for minute in range(12) for version in (1, 2, 3)]
    rng.shuffle(bars)
    with RedisBarWriter(redis_url, recent_bars=5) as one_by_one:
        for bar in bars:
            one_by_one.write_bars([bar])
    expected = (hash_of(redis_client), zset_of(redis_client))
    redis_client.flushdb()
    pubsub = redis_client.pubsub()
    pubsub.subscribe("kline-updates:{binance:BTC-USDT:1m}")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    with RedisBarWriter(redis_url, recent_bars=5) as batched:
        assert batched.write_bars(bars) == 2
        batched.write_bars(bars[:7])  # stale again: changes and announces nothing
    assert (hash_of(redis_client), zset_of(redis_client)) == expected
    announced = []
    while (message := pubsub.get_message(timeout=1)) is not None:
        announced.append(orjson.loads(message["data"]))
    pubsub.close()
    # write_bars keeps the newest version of each bar in a batch: one per minute, in order,
    # each announcing the whole bar (only the newest item's fields travel to the hash).
    assert announced == [bar_fields(make_bar(minute, 3)) for minute in range(12)]


def test_a_batch_below_the_stored_item_changes_nothing_and_one_above_takes_its_fields(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Only the newest item of a call carries its hash fields: a call whose items are all
    older than the stored one leaves the hash alone; one whose newest item is newer stores
    exactly that item's fields."""
    with RedisBarWriter(redis_url, recent_bars=50) as writer:
        writer.write_bars([make_bar(5, 2)])
        stored = hash_of(redis_client)
        assert writer.write_bars([make_bar(3, 1), make_bar(4, 7), make_bar(5, 1)]) == 1
        assert hash_of(redis_client) == stored  # only the sorted set took minutes 3 and 4
        writer.write_bars([make_bar(2, 9), make_bar(6, 1), make_bar(4, 8)])
    assert hash_of(redis_client) == bar_fields(make_bar(6, 1))
    assert [member["open_time"] for member, _ in zset_of(redis_client)] == [
        START + minute * MINUTE for minute in (2, 3, 4, 5, 6)
    ]
