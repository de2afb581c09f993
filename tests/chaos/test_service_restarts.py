"""Kafka's broker and Redis restarted under the running job: nothing lost, bounded restarts.

The whole job (bounded, the golden input, the bounded run's restart strategy with room for
a few restarts) runs against a broker or a Redis of this test only; once the first bars
are in Redis the service is killed (the broker with SIGKILL, Redis stopped) and started
again on the same port and data a few seconds later. Afterwards every table (FINAL), Redis
key and dead letter equals the golden snapshot, and the job restarted at most a few times.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from connectors.kafka_admin import DEAD_LETTER_TOPIC, ensure_topics
from jobs.stack import KafkaBroker, RedisServer
from tests.chaos.chaos_support import (
    ChaosFigures,
    assert_golden_outputs,
    finish_counting_restarts,
    wait_until,
)
from tests.integration.conftest import (
    START_TIMEOUT_S,
    free_ports,
)
from tests.integration.job_contract_support import (
    cancel_job,
    contract_settings,
    golden_input,
    keep_forever,
    produce,
    start_job,
)
from tests.integration.test_job_contract import STARTUP_S
from tests.integration.test_redis_resilience import own_redis  # noqa: F401 - a fixture

pytestmark = pytest.mark.chaos
OUTAGE_S = 8.0
MAX_RESTARTS = 4
SLOW_BUNDLES = (("python.fn-execution.bundle.size", "20"),)


def run_with_outage(
    tmp_path: Path,
    *,
    bootstrap: str,
    redis_url: str,
    case: str,
    outage: Callable[[], None],
) -> None:
    """The golden input through the job; ``outage()`` once the first bars are in Redis."""
    raw, dlq = f"raw-{case}", f"dlq-{case}"
    ensure_topics(bootstrap, [raw], partitions=4)
    ensure_topics(bootstrap, [dlq], partitions=1, configs=DEAD_LETTER_TOPIC)
    keep_forever(bootstrap, raw, dlq)
    produce(bootstrap, raw, golden_input().messages)
    (rest_port,) = free_ports(1)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=bootstrap,
        raw_topic=raw,
        dlq_topic=dlq,
        redis_url=redis_url,
        name=f"chaos-{case}",
        flink_overrides=(
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", str(MAX_RESTARTS)),
            ("restart-strategy.fixed-delay.delay", "2s"),
            *SLOW_BUNDLES,
            ("execution.checkpointing.interval", "1s"),
            ("rest.bind-port", str(rest_port)),
        ),
    )
    client = start_job(settings)
    watcher = redis.Redis.from_url(redis_url)
    figures = ChaosFigures(case=case, faults=1)
    try:
        wait_until(lambda: next(iter(watcher.scan_iter("kline:*")), None),
                   timeout_s=STARTUP_S, what="the first bars in Redis")  # fmt: skip
        assert not client.get_job_execution_result().done(), "the job ended before the outage"
        started = time.monotonic()
        outage()
        figures.recovery_s = time.monotonic() - started
        figures.restarts = finish_counting_restarts(
            client, rest_port, str(client.get_job_id()), timeout_s=900
        )
    except BaseException:
        cancel_job(client)
        raise
    assert figures.restarts <= MAX_RESTARTS
    try:
        assert_golden_outputs(
            tmp_path=tmp_path,
            chdb_url=settings.sinks.clickhouse_url,
            redis_client=watcher,
            kafka_bootstrap=bootstrap,
            dlq_topic=dlq,
            figures=figures,
        )
    finally:
        watcher.close()


def test_a_kafka_broker_killed_mid_stream_loses_nothing(
    tmp_path: Path, own_broker: KafkaBroker, redis_url: str, redis_client: redis.Redis
) -> None:
    def kill_and_restart() -> None:
        pid = own_broker.status().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not own_broker.status().running, timeout_s=30, what="the kill")
        time.sleep(OUTAGE_S)  # the outage itself: the broker stays down this long
        own_broker.start(timeout_s=START_TIMEOUT_S)

    run_with_outage(tmp_path, bootstrap=own_broker.bootstrap, redis_url=redis_url,
                    case="kafka-restart", outage=kill_and_restart)  # fmt: skip


def test_a_redis_restart_mid_stream_loses_nothing(
    tmp_path: Path,
    kafka_bootstrap: str,
    own_redis: RedisServer,  # noqa: F811 - the fixture imported above
) -> None:
    def restart() -> None:
        own_redis.stop()
        time.sleep(OUTAGE_S)  # the outage itself: Redis stays down this long
        own_redis.start(timeout_s=60)

    run_with_outage(tmp_path, bootstrap=kafka_bootstrap, redis_url=own_redis.url,
                    case="redis-restart", outage=restart)  # fmt: skip
