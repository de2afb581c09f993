"""How many copies a topic keeps: the one rule for topics and brokers (no Kafka import)."""

from __future__ import annotations


def replication_for(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of topics on ``brokers`` brokers.

    3 and 2 from three brokers on (a write survives one broker down, and ``acks=all`` waits
    for two copies), 1 and 1 on one broker, 2 and 1 on two.
    """
    if brokers >= 3:
        return 3, 2
    return max(1, brokers), 1
