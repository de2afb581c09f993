"""The Redis writer, readers and L2 cache on a real Redis Cluster (3 primaries, 3 replicas).

The session's cluster (``redis_cluster`` in conftest) runs on free loopback ports; every test
starts from a healthy cluster with every primary flushed. Expected states are computed here,
from the updates sent, by the rule the CAS promises: per series the hash holds the update with
the greatest (open_time, version), the sorted set the greatest version of each of the newest
``recent_bars`` open times. Failovers: ``CLUSTER FAILOVER`` on a replica (coordinated, fast)
runs in ``make test``; SIGKILL of a primary mid-stream is ``chaos``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import orjson
import pytest
import redis
from redis.cluster import RedisCluster

from connectors.inference.cache import RedisL2Cache
from connectors.redis_client import open_redis, parse_redis_url
from connectors.redis_store import RedisBarWriter, decode_bar_hash
from jobs.redis_cluster import LocalRedisCluster, RedisClusterNode
from tests.integration.conftest import TopicNames, free_ports
from tests.integration.job_contract_support import (
    contract_settings,
    differences,
    golden_input,
    keep_forever,
    produce,
    redis_snapshot,
    run_bounded,
)
from tests.integration.test_job_contract import GOLDEN_PATH
from tests.integration.test_redis_store import START, make_bar
from udfs.record import VersionedBar

RECENT = 4
WAIT_S = 60.0


def symbols(count: int) -> list[str]:
    """``count`` distinct canonical symbols (``S0-USDT`` ...)."""
    return [f"S{number}-USDT" for number in range(count)]


def expected_state(
    updates: Sequence[VersionedBar], recent: int
) -> dict[str, tuple[tuple[int, int], dict[int, int]]]:
    """Per symbol: the newest (open_time, version), and {open_time: version} of the set."""
    newest: dict[str, tuple[int, int]] = {}
    versions: dict[str, dict[int, int]] = {}
    for bar in updates:
        symbol, order = bar.kline.symbol, (bar.kline.open_time, bar.version)
        newest[symbol] = max(newest.get(symbol, order), order)
        per_time = versions.setdefault(symbol, {})
        per_time[order[0]] = max(per_time.get(order[0], order[1]), order[1])
    return {
        symbol: (
            newest[symbol],
            {t: versions[symbol][t] for t in sorted(versions[symbol])[-recent:]},
        )
        for symbol in newest
    }


def stored_state(client: RedisCluster, symbol: str) -> tuple[tuple[int, int], dict[int, int]]:
    """What the cluster holds for one symbol, in the shape of :func:`expected_state`."""
    latest = decode_bar_hash(client.hgetall(f"kline:{{binance:{symbol}:1m}}"))
    members = client.zrange(f"klines:{{binance:{symbol}:1m}}", 0, -1, withscores=True)
    in_set = {int(score): orjson.loads(member)["version"] for member, score in members}
    assert len(in_set) == len(members), f"{symbol}: two members share an open_time"
    # The hash's content is the update it names (close encodes minute and version).
    newest = make_bar((latest["open_time"] - START) // 60_000, latest["version"], symbol)
    assert latest["close"] == newest.kline.close, symbol
    return (latest["open_time"], latest["version"]), in_set


def assert_exact(client: RedisCluster, updates: Sequence[VersionedBar], recent: int) -> None:
    """Every series in the cluster is exactly what :func:`expected_state` says."""
    want = expected_state(updates, recent)
    got = {symbol: stored_state(client, symbol) for symbol in want}
    assert got == want


@pytest.fixture
def cluster_client(redis_cluster_url: str) -> Iterator[RedisCluster]:
    """A plain redis-py cluster client on the flushed cluster (the test's own eyes)."""
    client = RedisCluster.from_url(parse_redis_url(redis_cluster_url).url)
    try:
        yield client
    finally:
        client.close()


def primary_nodes(cluster: LocalRedisCluster) -> list[RedisClusterNode]:
    """The nodes that are primaries right now (a failover may have swapped a pair)."""
    primaries = []
    for node in cluster.nodes:
        with contextlib.closing(node.client()) as client:
            if client.info("replication")["role"] == "master":
                primaries.append(node)
    return primaries


def replica_of(cluster: LocalRedisCluster, primary: RedisClusterNode) -> RedisClusterNode:
    """The node replicating ``primary`` right now."""
    for node in cluster.nodes:
        with contextlib.closing(node.client()) as client:
            info = client.info("replication")
        if info["role"] == "slave" and int(info["master_port"]) == primary.port:
            return node
    raise AssertionError(f"no replica of {primary.address}")


def node_keys(node: RedisClusterNode) -> set[str]:
    """Every key stored on one node."""
    with contextlib.closing(node.client()) as client:
        return {key.decode() for key in client.scan_iter(count=1000)}


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` (every 50 ms) until it holds; fail with ``what`` after the timeout."""
    event = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        event.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- keys, slots, readers --------------------------------------------------------------------


def test_the_series_of_one_batch_spread_over_every_primary_with_each_series_on_one_node(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str, cluster_client: RedisCluster
) -> None:
    names = symbols(60)
    updates = [make_bar(minute, 1, symbol) for symbol in names for minute in range(6)]
    with RedisBarWriter(redis_cluster_url, recent_bars=RECENT) as writer:
        assert writer.cluster
        assert writer.write_bars(updates) == 2 * len(names)
        assert writer.read_latest_bar("binance", "S7-USDT", "1m") == decode_bar_hash(
            cluster_client.hgetall("kline:{binance:S7-USDT:1m}")
        )
        recent = writer.read_recent_bars("binance", "S7-USDT", "1m")
        assert [bar["open_time"] for bar in recent] == [START + m * 60_000 for m in range(2, 6)]
    assert_exact(cluster_client, updates, RECENT)

    per_node = {node.port: node_keys(node) for node in primary_nodes(redis_cluster)}
    assert len(per_node) == 3 and all(per_node.values()), {p: len(k) for p, k in per_node.items()}
    everything = set().union(*per_node.values())
    assert everything == {
        f"{kind}:{{binance:{s}:1m}}" for s in names for kind in ("kline", "klines")
    }
    for keys in per_node.values():
        for key in keys:  # a series' hash and sorted set always share a node
            kind, tag = key.split(":", 1)
            assert f"{'klines' if kind == 'kline' else 'kline'}:{tag}" in keys


def test_other_hash_kinds_and_announcements_on_a_cluster(
    redis_cluster_url: str, cluster_client: RedisCluster
) -> None:
    from connectors.redis_store import CasItem

    pubsub = cluster_client.pubsub()
    pubsub.psubscribe("kline-updates:*")
    wait_until(lambda: pubsub.get_message(timeout=0.05) is not None, "the subscription")
    names = symbols(12)
    with RedisBarWriter(redis_cluster_url, recent_bars=RECENT) as writer:
        writer.write_bars([make_bar(0, 2, symbol) for symbol in names])
        writer.write_bars([make_bar(0, 1, symbol) for symbol in names])  # stale: silent
        items = [
            CasItem("okx", symbol, "5m", START, version, {"rsi_14": float(version)})
            for symbol in names
            for version in (3, 1)
        ]
        assert writer.write_hashes("ind", items) == len(names)
    for symbol in names:
        stored = decode_bar_hash(cluster_client.hgetall(f"ind:{{okx:{symbol}:5m}}"))
        assert (stored["version"], stored["rsi_14"]) == (3, 3.0)
    # A PUBLISH from a script on any primary reaches a subscriber connected to one node.
    seen: list[str] = []

    def all_announced() -> bool:
        message = pubsub.get_message(timeout=0.05)
        if message is not None and message["type"] == "pmessage":
            seen.append(message["channel"].decode())
        return len(seen) >= len(names)

    wait_until(all_announced, "an announcement per series")
    assert sorted(seen) == sorted(f"kline-updates:{{binance:{s}:1m}}" for s in names)
    assert pubsub.get_message(timeout=0.3) is None  # the stale batch announced nothing
    pubsub.close()


def test_concurrent_writers_racing_old_and_new_versions_end_in_the_newest(
    redis_cluster_url: str, cluster_client: RedisCluster
) -> None:
    names = symbols(24)
    updates = [
        make_bar(minute, version, symbol)
        for symbol in names
        for minute in range(8)
        for version in range(1, 6)
    ]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def race(seed: int) -> None:
        order = list(updates)
        random.Random(seed).shuffle(order)
        try:
            with RedisBarWriter(redis_cluster_url, recent_bars=RECENT) as writer:
                barrier.wait(timeout=30)
                for start in range(0, len(order), 37):
                    writer.write_bars(order[start : start + 37])
        except (redis.RedisError, threading.BrokenBarrierError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert_exact(cluster_client, updates, RECENT)


def test_the_inference_l2_cache_on_a_cluster(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    async def scenario() -> tuple[list[bytes | None], bytes | None, int]:
        cache = RedisL2Cache(redis_cluster_url)
        try:
            for number in range(30):
                await cache.put(f"h{number}", f"v{number}".encode(), ttl_s=60)
            got = [await cache.get(f"h{number}") for number in range(30)]
            return got, await cache.get("missing"), cache.errors
        finally:
            await cache.close()

    got, missing, errors = asyncio.run(scenario())
    assert got == [f"v{number}".encode() for number in range(30)]
    assert (missing, errors) == (None, 0)
    holders = [node for node in primary_nodes(redis_cluster) if node_keys(node)]
    assert len(holders) == 3  # thirty single-key entries land on every primary


def test_a_cluster_password_stays_out_of_reprs_and_errors(redis_cluster: LocalRedisCluster) -> None:
    (closed_port,) = free_ports(1)  # nothing listens there
    url = f"redis+cluster://app:s3cret-pw@127.0.0.1:{closed_port}"
    with pytest.raises(redis.ConnectionError) as caught:
        RedisBarWriter(url)
    assert "s3cret-pw" not in str(caught.value) and "app:***@" in str(caught.value)
    assert "s3cret-pw" not in repr(parse_redis_url(url))
    assert "s3cret-pw" not in repr(RedisL2Cache(url))
    with pytest.raises(ValueError, match="database 0") as refused:
        open_redis(f"redis+cluster://app:s3cret-pw@127.0.0.1:{closed_port}/3")
    assert "s3cret-pw" not in str(refused.value)


def test_with_replica_acks_a_write_is_done_only_once_its_replica_has_it(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str, cluster_client: RedisCluster
) -> None:
    names = symbols(30)
    url = f"{redis_cluster_url}?replica_acks=1&replica_ack_timeout_ms=200"
    with RedisBarWriter(url, recent_bars=RECENT) as writer:
        assert writer.replica_acks == 1
        writer.write_bars([make_bar(0, 1, symbol) for symbol in names])
        # Read at once from the replicas themselves: every key is already there.
        on_replicas: set[str] = set()
        for primary in primary_nodes(redis_cluster):
            on_replicas |= node_keys(replica_of(redis_cluster, primary))
        assert on_replicas == {
            f"{kind}:{{binance:{s}:1m}}" for s in names for kind in ("kline", "klines")
        }

        # A replica that cannot answer (SIGSTOP): its primary's writes stay unconfirmed,
        # are sent again until retry_s, then fail; the other primaries' writes are done.
        slot = cluster_client.keyslot("kline:{binance:S0-USDT:1m}")
        holder = cluster_client.nodes_manager.get_node_from_slot(slot)
        primary = next(node for node in redis_cluster.nodes if node.port == holder.port)
        replica = replica_of(redis_cluster, primary)
        pid = replica.status().pid
        assert pid is not None
        writer.retry_s = 1.0
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(redis.ConnectionError, match="replicas acknowledged"):
                writer.write_bars([make_bar(1, 1, "S0-USDT")])
        finally:
            os.kill(pid, signal.SIGCONT)
        writer.retry_s = WAIT_S
        assert writer.write_bars([make_bar(2, 1, "S0-USDT")]) == 2
    assert stored_state(cluster_client, "S0-USDT")[0] == (START + 2 * 60_000, 1)


# -- failover --------------------------------------------------------------------------------


class Stream:
    """Two writers racing across a failover: ``new`` sends each bar's final version minute
    by minute, ``old`` sends every older version of the same bars in random order. Both keep
    going (re-sending their last minute) until :attr:`failed_over` is set, then send one
    more minute, so writes land before, during and after the failover."""

    def __init__(self, url: str, names: Sequence[str], minutes: int, versions: int) -> None:
        self.url = url
        self.names = names
        self.minutes = minutes
        self.versions = versions
        self.halfway = threading.Event()
        self.failed_over = threading.Event()
        self.errors: list[BaseException] = []
        self.sent: list[VersionedBar] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(self._new_minute,)),
            threading.Thread(target=self._run, args=(self._old_minute,)),
        ]

    def _new_minute(self, minute: int, rng: random.Random) -> list[VersionedBar]:
        return [make_bar(minute, self.versions, symbol) for symbol in self.names]

    def _old_minute(self, minute: int, rng: random.Random) -> list[VersionedBar]:
        bars = [
            make_bar(minute, version, symbol)
            for symbol in self.names
            for version in range(1, self.versions)
        ]
        rng.shuffle(bars)
        return bars

    def _run(self, make: Callable[[int, random.Random], list[VersionedBar]]) -> None:
        rng = random.Random(7)
        try:
            with RedisBarWriter(self.url, recent_bars=RECENT, retry_s=WAIT_S) as writer:
                for minute in range(self.minutes):
                    self._send(writer, make(minute, rng))
                    if minute == self.minutes // 2:
                        self.halfway.set()
                while not self.failed_over.is_set():
                    self._send(writer, make(self.minutes - 1, rng))
                self._send(writer, make(self.minutes, rng))
        except redis.RedisError as exc:
            self.errors.append(exc)
            self.halfway.set()

    def _send(self, writer: RedisBarWriter, bars: list[VersionedBar]) -> None:
        for start in range(0, len(bars), 16):
            writer.write_bars(bars[start : start + 16])
        with self._lock:
            self.sent.extend(bars)

    def __enter__(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.failed_over.set()
        for thread in self._threads:
            thread.join(timeout=2 * WAIT_S)
        assert not any(thread.is_alive() for thread in self._threads)


def failover_scenario(
    redis_cluster: LocalRedisCluster,
    url: str,
    client: RedisCluster,
    fail: Callable[[RedisClusterNode, RedisClusterNode], None],
    after_promotion: Callable[[], None] = lambda: None,
) -> None:
    """Stream across ``fail(primary, replica)`` of the primary holding ``S0-USDT``; once the
    replica is promoted, ``after_promotion()`` runs while the stream goes on."""
    names = symbols(18)
    slot = client.keyslot("kline:{binance:S0-USDT:1m}")
    holder = client.nodes_manager.get_node_from_slot(slot)
    primary = next(node for node in redis_cluster.nodes if node.port == holder.port)
    replica = replica_of(redis_cluster, primary)
    with Stream(url, names, minutes=12, versions=4) as stream:
        assert stream.halfway.wait(timeout=WAIT_S)
        fail(primary, replica)

        def promoted() -> bool:
            with (
                contextlib.closing(replica.client()) as admin,
                contextlib.suppress(redis.RedisError),
            ):
                return bool(admin.info("replication")["role"] == "master")
            return False

        wait_until(promoted, f"{replica.address} to take over from {primary.address}")
        after_promotion()
        stream.failed_over.set()
    assert stream.errors == []
    assert_exact(client, stream.sent, RECENT)
    # The series' keys were written on the promoted replica, and its newest bar is the extra
    # minute sent after the failover.
    assert "kline:{binance:S0-USDT:1m}" in node_keys(replica)
    final = stored_state(client, "S0-USDT")[0]
    assert final == (START + 12 * 60_000, 4)


def test_writes_race_through_a_manual_failover_and_nothing_is_lost(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str, cluster_client: RedisCluster
) -> None:
    def manual_failover(primary: RedisClusterNode, replica: RedisClusterNode) -> None:
        with contextlib.closing(replica.client()) as admin:
            admin.execute_command("CLUSTER FAILOVER")

    failover_scenario(redis_cluster, redis_cluster_url, cluster_client, manual_failover)


@pytest.mark.chaos
def test_writes_race_through_a_primary_killed_with_sigkill_and_nothing_is_lost(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str, cluster_client: RedisCluster
) -> None:
    """With ``replica_acks=1`` every write the writers counted as done was on the replica
    when the primary died, so the final state is exact by construction, not by luck; the
    writes to the promoted replica wait (unconfirmed, sent again) until the killed node is
    back as its replica."""
    killed: list[RedisClusterNode] = []

    def kill(primary: RedisClusterNode, replica: RedisClusterNode) -> None:
        pid = primary.status().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.append(primary)

    def restart_killed() -> None:
        killed[0].start(timeout_s=WAIT_S)
        redis_cluster.wait_healthy(WAIT_S)

    url = f"{redis_cluster_url}?replica_acks=1&replica_ack_timeout_ms=200"
    try:
        failover_scenario(redis_cluster, url, cluster_client, kill, restart_killed)
    finally:
        for node in killed:  # back as a replica of its successor, for the next tests
            node.start(timeout_s=WAIT_S)  # (a no-op once restart_killed ran)
        redis_cluster.wait_healthy(WAIT_S)
    assert all(node.status().running for node in redis_cluster.nodes)


def test_the_writer_and_a_plain_client_agree_on_every_slot(redis_cluster_url: str) -> None:
    """A key of each series hashes by its tag alone: both keys, one slot (CLUSTER KEYSLOT)."""
    client = open_redis(redis_cluster_url)
    try:
        assert isinstance(client, RedisCluster)
        for symbol in symbols(20):
            slots = {
                int(client.cluster_keyslot(f"{kind}:{{binance:{symbol}:1m}}"))
                for kind in ("kline", "klines", "vp", "ind", "signal")
            }
            assert slots == {int(client.cluster_keyslot(f"{{binance:{symbol}:1m}}"))}
    finally:
        client.close()


# -- the whole job ---------------------------------------------------------------------------


@pytest.mark.chaos  # slow (a bounded Flink job, ~1 min), not a fault: kept out of `make test`
def test_the_job_on_a_cluster_leaves_exactly_the_golden_redis_state(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    redis_cluster: LocalRedisCluster,
    redis_cluster_url: str,
    cluster_client: RedisCluster,
) -> None:
    """The golden input through the job with ``REDIS_URL=redis+cluster://``: the sinks write
    every kind (bars of every timeframe, profiles, indicators, signals) to the cluster, and
    what the cluster holds is key for key, value for value the golden file's Redis section
    (written on a single Redis)."""
    keep_forever(kafka_bootstrap, kafka_topics.raw, kafka_topics.dlq)
    produce(kafka_bootstrap, kafka_topics.raw, golden_input().messages)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=kafka_topics.raw,
        dlq_topic=kafka_topics.dlq,
        redis_url=redis_cluster_url,
        name="contract-golden-redis-cluster",
        parallelism=2,
    )
    run_bounded(settings)
    expected = json.loads(GOLDEN_PATH.read_text())["redis"]
    actual = json.loads(json.dumps(redis_snapshot(cast(redis.Redis, cluster_client))))
    found = differences(expected, actual)
    assert not found, "\n".join(found)
    holders = [node for node in primary_nodes(redis_cluster) if node_keys(node)]
    assert len(holders) == 3
