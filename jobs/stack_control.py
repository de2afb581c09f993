"""The local stack as a whole: ``stack up``, ``down`` and ``status`` over its services.

The stack is the Kafka broker and either the single Redis (``jobs/stack.py``) or, with
``StackConfig.redis_cluster``, the local Redis Cluster (``jobs/redis_cluster.py``). ``down``
stops whatever of the two runs, whichever way it was started; ``status`` shows the Redis the
config names, and the other one too while it runs.
"""

from __future__ import annotations

from jobs.redis_cluster import LocalRedisCluster
from jobs.stack import KafkaBroker, RedisServer, ServiceStatus, StackConfig


def stack_up(config: StackConfig, timeout_s: float = 90.0) -> list[ServiceStatus]:
    """Start every service (those already running are left alone) and wait until they answer.

    Returns the Kafka broker's status, then the single Redis's or the cluster's.
    """
    kafka = KafkaBroker(config).start(timeout_s=timeout_s)
    if config.redis_cluster:
        cluster = LocalRedisCluster(config)
        cluster.start(timeout_s=timeout_s)
        return [kafka, cluster.status()]
    return [kafka, RedisServer(config).start(timeout_s=timeout_s)]


def stack_down(config: StackConfig, timeout_s: float = 30.0) -> list[ServiceStatus]:
    """Stop every service, Redis (single and cluster) first, then Kafka."""
    cluster = LocalRedisCluster(config)
    cluster.stop(timeout_s=timeout_s)
    redis_status = RedisServer(config).stop(timeout_s=timeout_s)
    kafka = KafkaBroker(config).stop(timeout_s=timeout_s)
    return [kafka, cluster.status() if config.redis_cluster else redis_status]


def stack_status(config: StackConfig) -> list[ServiceStatus]:
    """The status of the broker, the configured Redis, and the other Redis if it runs."""
    statuses = [KafkaBroker(config).status()]
    single = RedisServer(config).status()
    cluster = LocalRedisCluster(config)
    if not config.redis_cluster or single.running:
        statuses.append(single)
    if config.redis_cluster or cluster.any_running():
        statuses.append(cluster.status())
    return statuses
