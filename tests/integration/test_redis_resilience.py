"""Redis live state beyond the CAS: update announcements and a Redis restart mid-stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from connectors.redis_store import RedisBarWriter, update_channel
from jobs.stack import RedisServer
from tests.integration.conftest import fresh_stack_config
from tests.integration.test_redis_store import make_bar


def collect_messages(pubsub: redis.client.PubSub, count: int, timeout_s: float = 10) -> list[dict]:
    messages: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            messages.append(orjson.loads(message["data"]))
    return messages


def test_each_applied_update_is_announced_once_and_stale_ones_never(
    redis_url: str, redis_client: redis.Redis
) -> None:
    channel = update_channel("kline", "binance", "BTC-USDT", "1m")
    assert channel == "kline-updates:{binance:BTC-USDT:1m}"
    pubsub = redis_client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    with RedisBarWriter(redis_url, recent_bars=10) as writer:
        for minute, version in ((0, 2), (0, 1), (0, 2), (1, 1), (0, 9), (1, 3), (1, 2)):
            writer.write_bars([make_bar(minute, version)])
        writer.write_bars([make_bar(1, 3, symbol="ETH-USDT")])  # another series, channel
    messages = collect_messages(pubsub, 4)
    # Applied: (0,2), (1,1), (1,3). Stale (0,1), (0,9) after minute 1, (1,2); repeat (0,2).
    assert [(m["open_time"] - make_bar(0, 1).kline.open_time, m["version"]) for m in messages] == [
        (0, 2),
        (60_000, 1),
        (60_000, 3),
    ]
    assert messages[-1]["close"] == make_bar(1, 3).kline.close
    assert collect_messages(pubsub, 1, timeout_s=0.5) == []
    pubsub.close()

    with RedisBarWriter(redis_url, recent_bars=10, publish=False) as quiet:
        pubsub = redis_client.pubsub()
        pubsub.subscribe(channel)
        pubsub.get_message(timeout=5)
        quiet.write_bars([make_bar(5, 1)])
        assert collect_messages(pubsub, 1, timeout_s=0.5) == []
        pubsub.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test only (it gets restarted), on a free port."""
    server = RedisServer(fresh_stack_config(tmp_path / "stack"))
    server.start(timeout_s=60)
    try:
        yield server
    finally:
        server.stop()


def test_a_redis_restart_mid_stream_only_delays_writes(own_redis: RedisServer) -> None:
    minutes, versions = 40, 5
    updates = [
        make_bar(minute, version, symbol)
        for minute in range(minutes)
        for version in range(1, versions + 1)
        for symbol in ("BTC-USDT", "ETH-USDT")
    ]
    halfway = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with RedisBarWriter(own_redis.url, recent_bars=minutes, reconnect_retries=40) as writer:
                for number, bar in enumerate(updates):
                    writer.write_bars([bar])
                    if number == len(updates) // 4:
                        halfway.set()
                    time.sleep(0.002)  # a live stream, not a burst: the restart lands inside it
        except redis.RedisError as exc:
            errors.append(exc)

    thread = threading.Thread(target=stream)
    thread.start()
    assert halfway.wait(timeout=30)
    own_redis.stop()
    own_redis.start(timeout_s=60)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert errors == []

    client = redis.Redis.from_url(own_redis.url)
    try:
        for symbol in ("BTC-USDT", "ETH-USDT"):
            latest = client.hgetall(f"kline:{{binance:{symbol}:1m}}")
            newest = make_bar(minutes - 1, versions, symbol)
            assert int(latest[b"open_time"]) == newest.kline.open_time
            assert int(latest[b"version"]) == versions
            members = client.zrange(f"klines:{{binance:{symbol}:1m}}", 0, -1)
            # Bars written after the restart are all there, each at its newest version.
            stored = {orjson.loads(m)["open_time"]: orjson.loads(m)["version"] for m in members}
            late = [m for m in range(minutes) if make_bar(m, 1).kline.open_time in stored]
            assert late and late[-1] == minutes - 1
            assert all(stored[make_bar(m, 1).kline.open_time] == versions for m in late)
    finally:
        client.close()
