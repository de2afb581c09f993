"""The local stack against the real processes: Kafka broker (KRaft) and Redis.

Shares the session's broker and Redis where it can; the start/stop tests run their own
services on fresh ports in a temporary directory.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from connectors.kafka_admin import (
    DEAD_LETTER_TOPIC,
    admin_client,
    end_offsets_total,
    ensure_topics,
    read_topic,
)
from connectors.redis_store import RedisBarWriter
from jobs.cli import main as klineflow_main
from jobs.redis_cluster import NODES, LocalRedisCluster
from jobs.stack import (
    KafkaBroker,
    RedisServer,
    StackConfig,
    StackError,
    port_accepts,
)
from jobs.stack_control import stack_status

from .conftest import TopicNames, free_port_block, fresh_stack_config


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def own_config(tmp_path: Path) -> StackConfig:
    """A stack config of this test alone (fresh ports, data in the test's tmp dir)."""
    return fresh_stack_config(tmp_path / "stack")


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A socket that listens on a loopback port (and never speaks any protocol)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


# -- the session services -----------------------------------------------------------------


def test_session_broker_status_reflects_the_running_process(kafka_broker: KafkaBroker) -> None:
    status = kafka_broker.status()
    assert status.state == "running"
    assert status.answering
    assert status.pid is not None and pid_alive(status.pid)
    assert status.address == kafka_broker.bootstrap == f"127.0.0.1:{kafka_broker.config.kafka_port}"
    assert status.log_file.exists()
    server_log = status.log_file.read_text()
    assert "Kafka Server started" in server_log or "started (kafka.server" in server_log


def test_starting_a_running_broker_again_returns_the_same_process(
    kafka_broker: KafkaBroker,
) -> None:
    pid_before = kafka_broker.status().pid
    # A second handle on the same home finds the process through the pid file.
    again = KafkaBroker(kafka_broker.config).start(timeout_s=30)
    assert again.pid == pid_before
    assert again.state == "running"


def test_broker_listens_on_loopback_with_single_node_defaults(kafka_broker: KafkaBroker) -> None:
    properties = kafka_broker.server_properties.read_text()
    assert f"listeners=PLAINTEXT://127.0.0.1:{kafka_broker.config.kafka_port}," in properties
    assert "process.roles=broker,controller" in properties
    assert "offsets.topic.replication.factor=1" in properties
    assert "transaction.state.log.replication.factor=1" in properties
    assert "group.initial.rebalance.delay.ms=0" in properties
    assert "num.partitions=4" in properties
    assert str(kafka_broker.data_dir).startswith(str(kafka_broker.home))


def test_session_redis_answers_and_starting_again_is_harmless(
    redis_server: RedisServer, redis_url: str
) -> None:
    status = redis_server.status()
    assert status.state == "running"
    assert status.address == redis_url
    assert RedisServer(redis_server.config).start(timeout_s=10).pid == status.pid
    client = redis.Redis.from_url(redis_url)
    try:
        server_info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
        bind_config: dict[str, str] = client.config_get("bind")  # type: ignore[assignment]
        assert int(server_info["process_id"]) == status.pid
        assert bind_config["bind"] == "127.0.0.1"
    finally:
        client.close()


def test_redis_client_fixture_starts_from_an_empty_database(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("kline:{binance:BTC-USDT:1m}", "x")
    assert redis_client.get("kline:{binance:BTC-USDT:1m}") == b"x"


def test_redis_client_fixture_flushed_what_the_previous_test_wrote(
    redis_client: redis.Redis,
) -> None:
    assert redis_client.get("kline:{binance:BTC-USDT:1m}") is None


# -- topics ---------------------------------------------------------------------------------


def test_kafka_topics_fixture_creates_raw_with_4_and_dlq_with_1_partition(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    assert kafka_topics.raw != kafka_topics.dlq
    with admin_client(kafka_bootstrap) as admin:
        described = {
            t["name"]: t for t in admin.describe_topics([kafka_topics.raw, kafka_topics.dlq])
        }
    assert len(described[kafka_topics.raw]["partitions"]) == 4
    assert len(described[kafka_topics.dlq]["partitions"]) == 1


def test_produce_and_read_back_through_ensure_topics_and_read_topic(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    ensure_topics(kafka_bootstrap, [kafka_topics.raw, kafka_topics.dlq])  # idempotent
    sent = [(f"binance:BTC-USDT:1m:{i % 3}".encode(), f"bar-{i}".encode()) for i in range(50)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for key, value in sent:
            producer.send(kafka_topics.raw, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()

    assert end_offsets_total(kafka_bootstrap, kafka_topics.raw) == 50
    received = read_topic(kafka_bootstrap, kafka_topics.raw, timeout_s=30)
    assert sorted(received) == sorted(sent)
    # One key stays in one partition, in order.
    for key in {key for key, _ in sent}:
        assert [v for k, v in received if k == key] == [v for k, v in sent if k == key]
    assert read_topic(kafka_bootstrap, kafka_topics.dlq, timeout_s=5) == []
    assert end_offsets_total(kafka_bootstrap, kafka_topics.dlq) == 0


def test_read_topic_returns_what_is_there_when_min_messages_is_not_reached(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(kafka_topics.dlq, value=b"only one")
        producer.flush(timeout=30)
    finally:
        producer.close()
    assert read_topic(kafka_bootstrap, kafka_topics.dlq, timeout_s=1.5, min_messages=2) == [
        (None, b"only one")
    ]


def test_read_topic_of_a_missing_topic_is_empty(kafka_bootstrap: str) -> None:
    assert read_topic(kafka_bootstrap, f"missing-{uuid.uuid4().hex[:8]}", timeout_s=5) == []


def test_auto_created_topics_get_4_partitions(kafka_bootstrap: str) -> None:
    topic = f"auto-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(topic, value=b"hello").get(timeout=30)
    finally:
        producer.close()
    with admin_client(kafka_bootstrap) as admin:
        assert len(admin.describe_topics([topic])[0]["partitions"]) == 4
    assert read_topic(kafka_bootstrap, topic, timeout_s=10) == [(None, b"hello")]


# -- lifecycle of services of our own ----------------------------------------------------------


def test_broker_stop_by_pid_and_restart_keeps_cluster_and_topics(own_config: StackConfig) -> None:
    broker = KafkaBroker(own_config)
    first = broker.start(timeout_s=60)
    assert first.pid is not None
    cluster_id = broker.cluster_id()
    ensure_topics(broker.bootstrap, ["kept"], partitions=2)

    stopped = broker.stop(timeout_s=30)
    assert stopped.state == "stopped"
    assert not pid_alive(first.pid)
    assert not broker.pid_file.exists()
    assert not port_accepts("127.0.0.1", own_config.kafka_port)

    restarted = KafkaBroker(own_config)
    try:
        second = restarted.start(timeout_s=60)
        assert second.pid != first.pid
        assert restarted.cluster_id() == cluster_id
        assert read_topic(restarted.bootstrap, "kept", timeout_s=10) == []
        with admin_client(restarted.bootstrap) as admin:
            assert "kept" in admin.list_topics()
    finally:
        restarted.stop()


def test_redis_stop_by_pid_kills_after_the_timeout(own_config: StackConfig) -> None:
    server = RedisServer(own_config)
    started = server.start(timeout_s=20)
    assert started.pid is not None and pid_alive(started.pid)
    # No grace time at all: SIGTERM, then SIGKILL right away. Either way it must be gone.
    assert server.stop(timeout_s=0).state == "stopped"
    assert not pid_alive(started.pid)
    assert server.status().state == "stopped"


def test_stale_pid_files_are_recognised_and_removed(own_config: StackConfig) -> None:
    server = RedisServer(own_config)
    server.home.mkdir(parents=True)
    # Our own pid with a different start time: the pid was "reused" by another process.
    server.pid_file.write_text(f"{os.getpid()}\n1\n")
    assert server.status().state == "stopped"
    assert not server.pid_file.exists()
    # A pid that does not exist.
    server.pid_file.write_text("999999999\n1\n")
    assert server.stop().state == "stopped"
    # Garbage.
    server.pid_file.write_text("not a pid\n")
    status = server.start(timeout_s=20)
    try:
        assert status.state == "running"
    finally:
        server.stop()


def test_kafka_port_in_use_fails_with_the_log_tail(
    own_config: StackConfig, listening_socket: socket.socket
) -> None:
    busy_port = int(listening_socket.getsockname()[1])
    config = dataclasses.replace(own_config, kafka_port=busy_port)
    broker = KafkaBroker(config)
    with pytest.raises(StackError) as failure:
        broker.start(timeout_s=60)
    message = str(failure.value)
    assert "exited" in message
    assert "Address already in use" in failure.value.log_tail
    assert "last lines of the log" in message
    assert not broker.pid_file.exists()
    assert broker.status().state == "stopped"


def test_redis_port_in_use_fails_with_the_log_tail(
    own_config: StackConfig, listening_socket: socket.socket
) -> None:
    config = dataclasses.replace(own_config, redis_port=int(listening_socket.getsockname()[1]))
    with pytest.raises(StackError) as failure:
        RedisServer(config).start(timeout_s=20)
    assert "Address already in use" in str(failure.value)


def test_missing_kafka_jars_say_how_to_get_them(tmp_path: Path) -> None:
    config = StackConfig(home=tmp_path / "stack", kafka_libs=tmp_path / "no-such-libs")
    with pytest.raises(StackError, match=r"make setup.*mvn fetches the Kafka broker"):
        KafkaBroker(config).start()


def test_missing_redis_server_says_how_to_install_it(
    own_config: StackConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"apt-get install redis-server"):
        RedisServer(own_config).start()


# -- the command line ---------------------------------------------------------------------------


def test_cli_status_of_a_stopped_stack_exits_1(
    own_config: StackConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    code = klineflow_main(["stack", "status", "--stack-dir", str(own_config.home)])
    output = capsys.readouterr().out
    assert code == 1
    assert "kafka" in output and "redis" in output and "stopped" in output


def test_cli_up_status_down(own_config: StackConfig, capsys: pytest.CaptureFixture[str]) -> None:
    flags = [
        "--stack-dir",
        str(own_config.home),
        "--kafka-port",
        str(own_config.kafka_port),
        "--kafka-controller-port",
        str(own_config.kafka_controller_port),
        "--redis-port",
        str(own_config.redis_port),
        "--kafka-libs",
        str(own_config.kafka_libs),
    ]
    try:
        assert klineflow_main(["stack", "up", *flags]) == 0
        up_output = capsys.readouterr().out
        assert f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{own_config.kafka_port}" in up_output
        assert klineflow_main(["stack", "status", *flags]) == 0
        status_output = capsys.readouterr().out
        assert status_output.count("running") == 2
    finally:
        assert klineflow_main(["stack", "down", *flags]) == 0
    assert [s.state for s in stack_status(own_config)] == ["stopped", "stopped"]


def test_cli_up_status_down_with_a_redis_cluster(
    own_config: StackConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    base = free_port_block(NODES)
    flags = [
        "--stack-dir",
        str(own_config.home),
        "--kafka-port",
        str(own_config.kafka_port),
        "--kafka-controller-port",
        str(own_config.kafka_controller_port),
        "--redis-cluster-port",
        str(base),
        "--kafka-libs",
        str(own_config.kafka_libs),
    ]
    cluster = LocalRedisCluster(dataclasses.replace(own_config, redis_cluster_port=base))
    try:
        assert klineflow_main(["stack", "up", "--redis-cluster", *flags]) == 0
        up_output = capsys.readouterr().out
        assert f"REDIS_URL=redis+cluster://127.0.0.1:{base}" in up_output
        assert cluster.healthy()
        with RedisBarWriter(f"redis+cluster://127.0.0.1:{base + 4}") as writer:  # any node
            assert writer.cluster
        # Without the flag, status still shows the running cluster (and the stopped Redis).
        assert klineflow_main(["stack", "status", *flags]) == 1
        status_output = capsys.readouterr().out
        assert "redis-cluster" in status_output and "stopped" in status_output
        assert klineflow_main(["stack", "status", "--redis-cluster", *flags]) == 0
        assert capsys.readouterr().out.count("running") == 2
    finally:
        # `down` without the flag stops the cluster too.
        assert klineflow_main(["stack", "down", *flags]) == 0
    assert not cluster.any_running()
    assert [s.state for s in stack_status(own_config)] == ["stopped", "stopped"]


def test_cli_up_fails_with_exit_1_and_the_reason(
    own_config: StackConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = klineflow_main(
        ["stack", "up", "--stack-dir", str(own_config.home), "--kafka-libs", str(tmp_path / "x")]
    )
    assert code == 1
    assert "make setup" in capsys.readouterr().err


def test_cli_help_does_not_import_pyflink() -> None:
    probe = (
        "import sys; from jobs import stack_cmd; "
        "sys.exit(1 if any(m.startswith('pyflink') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_services_of_a_test_session_stop_when_it_dies(own_config: StackConfig) -> None:
    """``stop_with_parent``: a killed pytest must not leave servers running."""
    assert own_config.stop_with_parent
    script = (
        "import os; from pathlib import Path; from jobs.stack import RedisServer, StackConfig; "
        f"cfg = StackConfig(home=Path({str(own_config.home)!r}), "
        f"redis_port={own_config.redis_port}, stop_with_parent=True); "
        "print(RedisServer(cfg).start(timeout_s=20).pid, flush=True); "
        "os.kill(os.getpid(), 9)"
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    redis_pid = int(child.stdout.split()[0])
    server = RedisServer(own_config)
    deadline = time.monotonic() + 20
    while pid_alive(redis_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(redis_pid)
    assert server.status().state == "stopped"


def test_dead_letters_are_stamped_with_their_arrival_not_their_bar(kafka_bootstrap: str) -> None:
    """A dead letter of a replayed bar carries last year's timestamp; on the dead-letter
    topic the broker stamps its arrival instead, so time-based retention keeps it."""
    topic = f"dlq-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], partitions=1, configs=DEAD_LETTER_TOPIC)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    last_year = int(time.time() * 1000) - 365 * 86_400_000
    producer.send(topic, b"letter", timestamp_ms=last_year)
    producer.flush(timeout=30)
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=20_000)  # fmt: skip
    try:
        record = next(iter(consumer))
    finally:
        consumer.close()
    assert record.value == b"letter"
    assert record.timestamp_type == 1  # LogAppendTime
    assert record.timestamp > last_year + 300 * 86_400_000
