"""SIGKILL of a Python worker of the running job: it recovers by itself, outputs exact.

A worker can die for many reasons (the OOM killer, a native crash). The job (the real
graph, bounded, on the golden input) is started on a local mini-cluster with checkpoints
every second and the restart strategy of ``klineflow job run --bounded``
(``jobs.job.BOUNDED_RUN_SETTINGS``); workers are killed mid-run and the test waits for the
job to end by itself. Afterwards every ClickHouse table (FINAL), every Redis key and every
dead letter must equal the golden snapshot of a clean run: none lost, none wrong, none
extra.

What used to happen: PyFlink stops a worker by killing the ``pyflink-udf-runner.sh`` shell
around it, so after a failure each old worker ends by itself when its connection drops; the
sink's worker, with chdb open, could hang for ever in chdb's native exit handlers holding
the chdb directory lock, and every restarted sink failed to open it until the restarts ran
out (``connectors/flink_sinks.py`` has the fix).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import redis

from jobs.job import BOUNDED_RUN_SETTINGS
from tests.chaos.chaos_support import (
    ChaosFigures,
    Worker,
    assert_golden_outputs,
    checkpoint_in_progress,
    completed_checkpoints,
    kill,
    python_workers,
    restarts,
    wait_until,
)
from tests.integration.conftest import TopicNames, free_ports
from tests.integration.job_contract_support import (
    cancel_job,
    contract_settings,
    golden_input,
    job_status,
    produce,
    start_job,
    wait_until_finished,
)
from tests.integration.test_job_contract import STARTUP_S

# The bounded run's own restart strategy (contract_settings turns restarts off).
BOUNDED_RESTARTS = tuple(
    (key, value) for key, value in BOUNDED_RUN_SETTINGS.items() if key.startswith("restart")
)
RECOVERY_S = 180.0
# The golden input takes the bounded job only a few seconds; small Python bundles (a round
# trip to the JVM every few records) stretch the run so that kills land in its middle.
# Results do not depend on bundle sizes (the golden snapshot holds at any of them).
SLOW_BUNDLES = (
    ("python.fn-execution.bundle.size", "20"),
    ("python.fn-execution.bundle.time", "1000"),
)


def choose(role: str, workers: list[Worker], rng: random.Random) -> Worker:
    """The worker to kill: the sink's (it holds chdb) or any other one."""
    sinks = [worker for worker in workers if worker.holds_chdb]
    others = [worker for worker in workers if not worker.holds_chdb]
    pool = sinks if role == "sink" else others
    assert pool, f"no {role} worker among {workers}"
    return rng.choice(pool)


def run_with_kills(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
    *,
    kills: list[str],
    seed: int,
    restart_overrides: tuple[tuple[str, str], ...] = BOUNDED_RESTARTS,
) -> ChaosFigures:
    """Run the golden input with one SIGKILL per entry of ``kills`` (``sink``, ``other``,
    ``checkpoint``: any worker while a checkpoint runs); check the outputs exactly."""
    rng = random.Random(seed)
    produce(kafka_bootstrap, topics.raw, golden_input().messages)
    (rest_port,) = free_ports(1)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=redis_url,
        name="chaos-worker-kill",
        flink_overrides=(
            *restart_overrides,
            *SLOW_BUNDLES,
            ("execution.checkpointing.interval", "1s"),
            ("execution.checkpointing.min-pause", "0ms"),
            ("rest.bind-port", str(rest_port)),
        ),
    )
    figures = ChaosFigures(case=f"worker-kill {'+'.join(kills)} seed {seed}")
    client = start_job(settings)
    job_id = str(client.get_job_id())
    finished = False
    try:
        ended = client.get_job_execution_result().done
        for role in kills:
            done = completed_checkpoints(rest_port, job_id)
            wait_until(
                lambda done=done: completed_checkpoints(rest_port, job_id) > done or ended(),
                timeout_s=STARTUP_S,
                what="a checkpoint before the kill",
            )
            assert not ended(), "the job ended before the kill"
            time.sleep(rng.uniform(0.0, 1.0))  # a random moment of the run, not a sync point
            if role == "checkpoint":
                wait_until(lambda: checkpoint_in_progress(rest_port, job_id), timeout_s=60,
                           what="a checkpoint in progress", interval_s=0.02)  # fmt: skip
            workers = wait_until(python_workers, timeout_s=10, what="the Python workers")
            victim = choose("sink" if role == "sink" else "other", workers, rng)
            assert job_status(client) == "RUNNING", "the job ended before the kill"
            kill(victim)
            figures.faults += 1
            killed_at = time.monotonic()
            wait_until(lambda: restarts(rest_port, job_id) >= figures.faults,
                       timeout_s=RECOVERY_S, what="Flink to notice the dead worker")  # fmt: skip
            done = completed_checkpoints(rest_port, job_id)
            wait_until(lambda done=done: completed_checkpoints(rest_port, job_id) > done
                       or client.get_job_execution_result().done(),
                       timeout_s=RECOVERY_S, what="a checkpoint after the restart")  # fmt: skip
            figures.recovery_s = max(figures.recovery_s, time.monotonic() - killed_at)
            figures.restarts = restarts(rest_port, job_id)
        wait_until_finished(client, timeout_s=600)
        finished = True
    finally:
        if not finished:
            cancel_job(client)
    assert figures.restarts == len(kills)  # each kill cost one restart, nothing more
    assert_golden_outputs(
        tmp_path=tmp_path,
        chdb_url=settings.sinks.clickhouse_url,
        redis_client=redis_client,
        kafka_bootstrap=kafka_bootstrap,
        dlq_topic=topics.dlq,
        figures=figures,
    )
    return figures


def test_a_killed_worker_costs_one_restart_and_nothing_else(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """The fast case (``make test``): one worker other than the sink's is killed, which used
    to leave the old sink worker holding chdb and the job failing for good."""
    run_with_kills(tmp_path, kafka_bootstrap, topics, redis_url, redis_client,
                   kills=["other"], seed=1)  # fmt: skip


@pytest.mark.chaos
@pytest.mark.parametrize(
    ("kills", "seed"),
    [
        (["sink"], 2),
        (["checkpoint"], 3),
        (["other", "sink", "checkpoint"], 4),
    ],
)
def test_workers_killed_at_random_moments_leave_exact_outputs(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
    kills: list[str],
    seed: int,
) -> None:
    """The sink's worker, any worker during a checkpoint, and three kills in one run (with
    restarts enough for them: the bounded run's own strategy allows two)."""
    overrides = BOUNDED_RESTARTS
    if len(kills) >= 2:
        attempts = ("restart-strategy.fixed-delay.attempts", str(len(kills) + 1))
        overrides = (*BOUNDED_RESTARTS, attempts)
    run_with_kills(tmp_path, kafka_bootstrap, topics, redis_url, redis_client,
                   kills=kills, seed=seed, restart_overrides=overrides)  # fmt: skip
