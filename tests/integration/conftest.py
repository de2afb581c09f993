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
"""

from __future__ import annotations

import contextlib
import re
import socket
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

# kafka-python loads its protocol schemas with deprecated importlib.resources calls at import.
KAFKA_PYTHON_DEPRECATIONS = ("read_text is deprecated", "open_text is deprecated")
for _message in KAFKA_PYTHON_DEPRECATIONS:
    warnings.filterwarnings("ignore", message=_message, category=DeprecationWarning)

from connectors.kafka_admin import DEAD_LETTER_TOPIC, ensure_topics  # noqa: E402
from jobs.stack import KafkaBroker, RedisServer, StackConfig, StackError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_LIBS = REPO_ROOT / "build" / "kafka" / "libs"
INTEGRATION_DIR = Path(__file__).resolve().parent
# Generous: the machine is shared with Flink mini-clusters; a start takes ~3 s when idle.
START_TIMEOUT_S = 120.0


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
