"""Fixtures for the integration tests: a real Kafka broker (KRaft) and a real Redis server.

The session starts its own broker and Redis on free loopback ports in a temporary directory,
so the tests never touch a developer's ``klineflow stack`` and run on a fresh machine after
``make setup``. Every test under ``tests/integration`` is marked ``integration``.

Fixtures (a contract other test modules rely on):

- ``kafka_bootstrap`` (session): ``"127.0.0.1:PORT"`` of the session's broker
- ``redis_url`` (session): ``"redis://127.0.0.1:PORT/0"`` of the session's Redis
- ``redis_client`` (function): a ``redis.Redis`` on ``redis_url``, database flushed first
- ``kafka_topics`` (function): :class:`TopicNames` with fresh raw (4 partitions) and
  dlq (1 partition) topics, already created
- ``redis_cluster`` (session): the session's :class:`LocalRedisCluster` (3 primaries,
  3 replicas, free loopback ports), started on first use
- ``redis_cluster_url`` (function): ``"redis+cluster://127.0.0.1:PORT"`` of that cluster,
  healthy (every slot served, every replica in sync) and with every primary flushed
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

# kafka-python loads its protocol schemas with deprecated importlib.resources calls at import.
KAFKA_PYTHON_DEPRECATIONS = ("read_text is deprecated", "open_text is deprecated")
for _message in KAFKA_PYTHON_DEPRECATIONS:
    warnings.filterwarnings("ignore", message=_message, category=DeprecationWarning)

from connectors.kafka_admin import DEAD_LETTER_TOPIC, ensure_topics  # noqa: E402
from jobs.redis_cluster import NODES, LocalRedisCluster  # noqa: E402
from jobs.stack import KafkaBroker, RedisServer, StackConfig, StackError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_LIBS = REPO_ROOT / "build" / "kafka" / "libs"
INTEGRATION_DIR = Path(__file__).resolve().parent
# Generous: the machine is shared with Flink mini-clusters; a start takes ~3 s when idle.
START_TIMEOUT_S = 120.0
# Short, so a failover takes seconds; not so short that a loaded machine votes one in by itself.
CLUSTER_NODE_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class TopicNames:
    """Fresh Kafka topics for one test: ``raw`` (4 partitions) and ``dlq`` (1 partition)."""

    raw: str
    dlq: str


def pytest_configure(config: pytest.Config) -> None:
    """Silence kafka-python's deprecated importlib.resources calls in tests too."""
    for message in KAFKA_PYTHON_DEPRECATIONS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from ``tests/integration`` as ``integration``."""
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port_block(count: int, bus_offset: int = 10_000) -> int:
    """A base port with ``base .. base+count-1`` and their cluster bus ports all free now.

    Bases are drawn from 15000-21999, so the bus ports stay below Linux's ephemeral range.
    """
    for _ in range(200):
        base = random.randrange(15_000, 22_000 - count)
        ports = [base + i for i in range(count)] + [base + bus_offset + i for i in range(count)]
        with contextlib.ExitStack() as stack:
            try:
                for port in ports:
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no block of {count} free ports (and their bus ports) on 127.0.0.1")


def fresh_stack_config(home: Path) -> StackConfig:
    """A stack config on fresh free loopback ports with its data under ``home``."""
    kafka_port, controller_port, redis_port = free_ports(3)
    return StackConfig(
        home=home,
        kafka_port=kafka_port,
        kafka_controller_port=controller_port,
        redis_port=redis_port,
        kafka_libs=KAFKA_LIBS,
        stop_with_parent=True,
    )


@pytest.fixture(scope="session")
def stack_config(tmp_path_factory: pytest.TempPathFactory) -> StackConfig:
    """The session's stack configuration (free ports, data in a temporary directory)."""
    return fresh_stack_config(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def kafka_broker(stack_config: StackConfig) -> Iterator[KafkaBroker]:
    """The session's running Kafka broker; stopped when the session ends."""
    broker = KafkaBroker(stack_config)
    try:
        broker.start(timeout_s=START_TIMEOUT_S)
    except StackError as exc:
        pytest.fail(f"could not start the Kafka broker for the tests:\n{exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """``"127.0.0.1:PORT"`` of the session's Kafka broker."""
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def redis_server(stack_config: StackConfig) -> Iterator[RedisServer]:
    """The session's running Redis server; stopped when the session ends."""
    server = RedisServer(stack_config)
    try:
        server.start(timeout_s=START_TIMEOUT_S)
    except StackError as exc:
        pytest.fail(f"could not start Redis for the tests:\n{exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """``"redis://127.0.0.1:PORT/0"`` of the session's Redis server."""
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session's Redis with database 0 emptied before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


def _topic_slug(test_name: str) -> str:
    """The test name reduced to characters Kafka allows in a topic name, kept short."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", test_name).strip("-")[:80] or "test"


@pytest.fixture
def kafka_topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> TopicNames:
    """Fresh, already created topics for this test: raw with 4 partitions, dlq with 1."""
    slug = _topic_slug(request.node.name)
    suffix = uuid.uuid4().hex[:8]
    names = TopicNames(raw=f"klines-raw-{slug}-{suffix}", dlq=f"klines-dlq-{slug}-{suffix}")
    ensure_topics(kafka_bootstrap, [names.raw], partitions=4)
    ensure_topics(kafka_bootstrap, [names.dlq], partitions=1, configs=DEAD_LETTER_TOPIC)
    return names


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """The session's running Redis Cluster; stopped when the session ends."""
    config = StackConfig(
        home=tmp_path_factory.mktemp("redis-cluster"),
        redis_cluster=True,
        redis_cluster_port=free_port_block(NODES),
        redis_cluster_node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS,
        stop_with_parent=True,
    )
    cluster = LocalRedisCluster(config)
    try:
        cluster.start(timeout_s=START_TIMEOUT_S)
    except StackError as exc:
        cluster.stop()
        pytest.fail(f"could not start the Redis Cluster for the tests:\n{exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: LocalRedisCluster) -> str:
    """The cluster's URL, once it is healthy and every primary is empty."""
    redis_cluster.wait_healthy(START_TIMEOUT_S)
    client = RedisCluster.from_url(redis_cluster.url.replace("redis+cluster://", "redis://"))
    try:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    finally:
        client.close()
    return redis_cluster.url
