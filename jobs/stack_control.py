"""The local stack as a whole: ``stack up``, ``down`` and ``status`` over its services.

The stack is Kafka, either the single broker (``jobs/stack.py``) or, with
``StackConfig.kafka_brokers`` > 1, a KRaft cluster (``jobs/kafka_cluster.py``), and Redis,
either the single server or, with ``StackConfig.redis_cluster``, the local Redis Cluster
(``jobs/redis_cluster.py``). ``down`` stops whatever of them runs, whichever way it was
started; ``status`` shows what the config names, and the other kind too while it runs.
"""

from __future__ import annotations

import dataclasses

from jobs.kafka_cluster import LocalKafkaCluster, started_broker_indexes
from jobs.redis_cluster import LocalRedisCluster
from jobs.stack import KafkaBroker, RedisServer, ServiceStatus, StackConfig


def stack_up(config: StackConfig, timeout_s: float = 90.0) -> list[ServiceStatus]:
    """Start every service (those already running are left alone) and wait until they answer.

    Returns the status of Kafka (the broker or the cluster), then of Redis (the server or
    the cluster).
    """
    if config.kafka_brokers > 1:
        kafka_cluster = LocalKafkaCluster(config)
        kafka_cluster.start(timeout_s=timeout_s)
        kafka = kafka_cluster.status()
    else:
        kafka = KafkaBroker(config).start(timeout_s=timeout_s)
    if config.redis_cluster:
        cluster = LocalRedisCluster(config)
        cluster.start(timeout_s=timeout_s)
        return [kafka, cluster.status()]
    return [kafka, RedisServer(config).start(timeout_s=timeout_s)]


def stack_down(config: StackConfig, timeout_s: float = 30.0) -> list[ServiceStatus]:
    """Stop every service, Redis (single and cluster) first, then Kafka (cluster and single)."""
    cluster = LocalRedisCluster(config)
    cluster.stop(timeout_s=timeout_s)
    redis_status = RedisServer(config).stop(timeout_s=timeout_s)
    for index in reversed(started_broker_indexes(config)):
        KafkaBroker(config, index).stop(timeout_s=timeout_s)
    kafka = KafkaBroker(config).stop(timeout_s=timeout_s)
    if config.kafka_brokers > 1:
        kafka = LocalKafkaCluster(config).status()
    return [kafka, cluster.status() if config.redis_cluster else redis_status]


def stack_status(config: StackConfig) -> list[ServiceStatus]:
    """The status of the configured Kafka and Redis, and of the other kinds while they run."""
    statuses = []
    single = KafkaBroker(config).status()
    if config.kafka_brokers <= 1 or single.running:
        statuses.append(single)
    started = started_broker_indexes(config)
    if config.kafka_brokers > 1 or started:
        brokers = max(config.kafka_brokers, max(started, default=0) + 1, 2)
        statuses.append(
            LocalKafkaCluster(dataclasses.replace(config, kafka_brokers=brokers)).status()
        )
    redis_single = RedisServer(config).status()
    redis_cluster = LocalRedisCluster(config)
    if not config.redis_cluster or redis_single.running:
        statuses.append(redis_single)
    if config.redis_cluster or redis_cluster.any_running():
        statuses.append(redis_cluster.status())
    return statuses
