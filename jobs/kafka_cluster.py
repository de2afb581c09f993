"""A local Kafka cluster: ``StackConfig.kafka_brokers`` KRaft nodes on loopback.

Every node is a combined broker and controller (``jobs.stack.KafkaBroker`` with an index),
so the controller quorum is as large as the cluster and survives one node down out of three.
Topics get replication factor 3 and ``min.insync.replicas`` 2 there
(``connectors.kafka_replication.replication_for``; the broker defaults, the internal topics and
``connectors.kafka_admin.ensure_topics`` all follow it). The nodes are launched together
(none answers before a quorum of controllers is up), then each is waited for.
"""

from __future__ import annotations

import time
from pathlib import Path

from jobs.stack import LOOPBACK, KafkaBroker, ServiceStatus, StackConfig

CLUSTER_NAME = "kafka-cluster"
LAST_BROKER_GRACE_S = 10.0


def kafka_cluster_bootstrap(config: StackConfig) -> str:
    """``127.0.0.1:P0,127.0.0.1:P1,...``: every broker of the cluster."""
    return ",".join(f"{LOOPBACK}:{config.kafka_port + i}" for i in range(config.kafka_brokers))


def started_broker_indexes(config: StackConfig) -> list[int]:
    """Indexes of the cluster brokers with a pid file in the stack home (running or stale)."""
    home = Path(config.home).expanduser().resolve()
    indexes = []
    for pid_file in home.glob("kafka-*.pid"):
        suffix = pid_file.stem.removeprefix("kafka-")
        if suffix.isdigit():
            indexes.append(int(suffix))
    return sorted(indexes)


class LocalKafkaCluster:
    """The brokers of the local Kafka cluster, started, inspected and stopped together."""

    def __init__(self, config: StackConfig) -> None:
        if config.kafka_brokers < 2:
            raise ValueError("a Kafka cluster has at least 2 brokers (1 is the single broker)")
        self.config = config
        self.brokers = [KafkaBroker(config, index) for index in range(config.kafka_brokers)]

    @property
    def bootstrap(self) -> str:
        """Every broker's address (see :func:`kafka_cluster_bootstrap`)."""
        return kafka_cluster_bootstrap(self.config)

    def start(self, timeout_s: float = 90.0) -> list[ServiceStatus]:
        """Launch every broker, then wait until each answers as a registered broker."""
        deadline = time.monotonic() + timeout_s
        pids = [broker.launch() for broker in self.brokers]
        return [
            broker.wait_ready(pid, max(1.0, deadline - time.monotonic()))
            for broker, pid in zip(self.brokers, pids, strict=True)
        ]

    def stop(self, timeout_s: float = 30.0) -> list[ServiceStatus]:
        """Stop every broker (SIGTERM to all at once, then wait for each); their statuses.

        The last broker standing waits for a controller quorum that has left to confirm its
        controlled shutdown; it gets at most :data:`LAST_BROKER_GRACE_S`, then SIGKILL (its
        logs are recovered on the next start).
        """
        for broker in self.brokers:
            broker.request_stop()
        grace = min(timeout_s, LAST_BROKER_GRACE_S)
        return [broker.stop(timeout_s=grace) for broker in self.brokers]

    def status(self) -> ServiceStatus:
        """The cluster as one service: running if every broker runs, answering if each does."""
        statuses = [broker.status() for broker in self.brokers]
        return ServiceStatus(
            name=CLUSTER_NAME,
            running=all(status.running for status in statuses),
            answering=all(status.answering for status in statuses),
            pid=None,
            address=self.bootstrap,
            log_file=Path(self.config.home).expanduser().resolve() / CLUSTER_NAME,
        )

    def any_running(self) -> bool:
        """True if a broker of ours runs (per its pid file)."""
        return any(broker.status().running for broker in self.brokers)
