"""A real 3-broker KRaft cluster on loopback: replicated topics and a broker killed mid-stream.

Three JVMs take ~25-40 s to start on the shared 2-core machine, so the module is ``chaos``
(``make chaos``); one cluster serves both tests.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError

from connectors.kafka_admin import DEAD_LETTER_TOPIC, admin_client, ensure_topics, read_topic
from connectors.kafka_producer import DeliveryCounter, create_producer
from jobs.kafka_cluster import LocalKafkaCluster
from jobs.stack import StackConfig, StackError
from tests.integration.conftest import KAFKA_LIBS, START_TIMEOUT_S, free_port_block
from tests.integration.job_contract_support import (
    cancel_job,
    contract_settings,
    dead_letters,
    golden_input,
    job_status,
    keep_forever,
    produce,
    redis_snapshot,
    start_job,
    wait_for,
)
from tests.integration.test_job_contract import GOLDEN_PATH, STARTUP_S

pytestmark = pytest.mark.chaos

BROKERS = 3


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    """Three brokers of this module, on free ports, stopped at its end."""
    config = StackConfig(
        home=tmp_path_factory.mktemp("kafka-cluster"),
        kafka_port=free_port_block(BROKERS, bus_offset=100),
        kafka_brokers=BROKERS,
        kafka_libs=KAFKA_LIBS,
        kafka_heap="256m",
        stop_with_parent=True,
    )
    cluster = LocalKafkaCluster(config)
    try:
        cluster.start(timeout_s=START_TIMEOUT_S)
    except StackError as exc:
        cluster.stop()
        pytest.fail(f"could not start the Kafka cluster:\n{exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def topic_layout(bootstrap: str, topic: str) -> tuple[list[list[int]], str]:
    """The replicas of each partition and the topic's ``min.insync.replicas``."""
    with admin_client(bootstrap) as admin:
        (described,) = admin.describe_topics([topic])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    replicas = [sorted(p["replica_nodes"]) for p in described["partitions"]]
    return replicas, configs["topic"][topic]["min.insync.replicas"]["value"]


def test_topics_on_three_brokers_keep_three_copies_and_need_two(
    kafka_cluster: LocalKafkaCluster,
) -> None:
    ensure_topics(kafka_cluster.bootstrap, ["replicated"], partitions=4)
    replicas, min_isr = topic_layout(kafka_cluster.bootstrap, "replicated")
    assert replicas == [[1, 2, 3]] * 4
    assert min_isr == "2"
    assert kafka_cluster.status().state == "running"


def test_a_broker_killed_mid_stream_loses_nothing_and_duplicates_nothing(
    kafka_cluster: LocalKafkaCluster, tmp_path: Path
) -> None:
    """acks=all + idempotence: every record acknowledged, each exactly once, in order per
    key, although the leader of partition 0 dies (SIGKILL) while the producer sends."""
    topic = "broker-kill"
    ensure_topics(kafka_cluster.bootstrap, [topic], partitions=4)
    with admin_client(kafka_cluster.bootstrap) as admin:
        (described,) = admin.describe_topics([topic])
    leader = next(p["leader_id"] for p in described["partitions"] if p["partition_index"] == 0)
    victim = kafka_cluster.brokers[leader - 1]
    records = 20_000
    keys = [f"series-{n % 16}".encode() for n in range(records)]
    halfway = threading.Event()
    # Few records in flight: the stream lasts well beyond the kill, acknowledged as it goes.
    counter = DeliveryCounter(max_pending=200)
    producer = create_producer(kafka_cluster.bootstrap, linger_ms=5, batch_size=16 * 1024)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for number in range(records):
                counter.send(producer, topic, value=str(number).encode(), key=keys[number])
                if number == records // 2:
                    halfway.set()
            producer.flush(timeout=120)
        except KafkaError as exc:  # reported below: the test fails on it
            errors.append(exc)
            halfway.set()

    thread = threading.Thread(target=send)
    thread.start()
    try:
        assert halfway.wait(timeout=120)
        pid = victim.status().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        sent_at_kill = counter.succeeded
        thread.join(timeout=180)
        assert not thread.is_alive()
    finally:
        producer.close()
    assert errors == []
    assert sent_at_kill < records  # the kill landed mid-stream
    assert (counter.succeeded, counter.failed) == (records, 0)

    survivors = ",".join(b.bootstrap for b in kafka_cluster.brokers if b is not victim)
    got = read_topic(survivors, topic, min_messages=records, timeout_s=120)
    values = [int(value) for _, value in got]
    assert sorted(values) == list(range(records))  # nothing lost, nothing twice
    per_key: dict[bytes | None, list[int]] = {}
    for key, value in got:
        per_key.setdefault(key, []).append(int(value))
    assert all(seq == sorted(seq) for seq in per_key.values())  # order kept per key

    victim.start(timeout_s=START_TIMEOUT_S)  # back, for the module's other tests


def test_cli_stack_up_with_three_brokers_status_and_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.cli import main as klineflow_main
    from tests.integration.conftest import free_ports

    (redis_port,) = free_ports(1)
    base = free_port_block(BROKERS, bus_offset=100)
    flags = ["--stack-dir", str(tmp_path / "stack"), "--kafka-port", str(base),
             "--redis-port", str(redis_port), "--kafka-libs", str(KAFKA_LIBS),
             "--kafka-heap", "256m"]  # fmt: skip
    bootstrap = ",".join(f"127.0.0.1:{base + i}" for i in range(BROKERS))
    try:
        assert klineflow_main(["stack", "up", "--kafka-brokers", "3", *flags]) == 0
        assert f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}" in capsys.readouterr().out
        assert klineflow_main(["stack", "status", "--kafka-brokers", "3", *flags]) == 0
        assert "kafka-cluster" in capsys.readouterr().out
        ensure_topics(bootstrap, ["from-cli"], partitions=2)
        assert topic_layout(bootstrap, "from-cli") == ([[1, 2, 3]] * 2, "2")
    finally:
        assert klineflow_main(["stack", "down", *flags]) == 0  # no flag: finds the brokers
    capsys.readouterr()
    assert klineflow_main(["stack", "status", "--kafka-brokers", "3", *flags]) == 1
    assert capsys.readouterr().out.count("stopped") == 2


def live_1m_state(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The 1m bars of a Redis snapshot (``kline:``/``klines:`` keys of 1m series): what an
    unbounded job has written in full while its roll-up windows may still be open."""
    return {
        key: value
        for key, value in snapshot.items()
        if key.startswith(("kline:{", "klines:{")) and key.endswith(":1m}")
    }


def test_the_job_reading_the_cluster_rides_out_a_broker_killed_mid_stream(
    kafka_cluster: LocalKafkaCluster,
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """The golden input, half before and half after the leader of partition 0 is SIGKILLed,
    into an unbounded job reading from the cluster: the job never fails, and Redis ends with
    exactly the golden file's 1m bars and the DLQ with exactly its dead letters."""
    bootstrap = kafka_cluster.bootstrap
    raw, dlq = "golden-raw", "golden-dlq"
    ensure_topics(bootstrap, [raw], partitions=4)
    ensure_topics(bootstrap, [dlq], partitions=1, configs=DEAD_LETTER_TOPIC)
    keep_forever(bootstrap, raw, dlq)
    golden = golden_input()
    half = len(golden.messages) // 2
    expected = json.loads(GOLDEN_PATH.read_text())
    want_bars = live_1m_state(expected["redis"])
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=bootstrap,
        raw_topic=raw,
        dlq_topic=dlq,
        redis_url=redis_url,
        bounded=False,
        name="contract-kafka-cluster-broker-kill",
        parallelism=2,
    )
    with admin_client(bootstrap) as admin:
        (described,) = admin.describe_topics([raw])
    leader = next(p["leader_id"] for p in described["partitions"] if p["partition_index"] == 0)
    victim = kafka_cluster.brokers[leader - 1]
    survivors = ",".join(b.bootstrap for b in kafka_cluster.brokers if b is not victim)
    client = start_job(settings)
    try:
        produce(bootstrap, raw, golden.messages[:half])
        wait_for(lambda: next(iter(redis_client.scan_iter("kline:*")), None),
                 timeout_s=STARTUP_S, what="the job's first bars", client=client)  # fmt: skip
        pid = victim.status().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        produce(survivors, raw, golden.messages[half:])
        wait_for(lambda: live_1m_state(redis_snapshot(redis_client)) == want_bars,
                 timeout_s=STARTUP_S, what="every 1m bar of the golden file",
                 client=client)  # fmt: skip
        assert job_status(client) == "RUNNING"
        letters = dead_letters(survivors, dlq,
                               min_messages=len(golden.malformed) + len(golden.late))  # fmt: skip
        assert letters == expected["dlq"]["letters"]
    finally:
        cancel_job(client)
        victim.start(timeout_s=START_TIMEOUT_S)
