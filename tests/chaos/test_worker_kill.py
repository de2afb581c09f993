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

from jobs.config import PipelineConfig
from jobs.job import BOUNDED_RUN_SETTINGS
from tests.chaos.chaos_support import (
    ChaosFigures,
    Supervisor,
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
# trip to the JVM every few elements) and small source batches (5 messages an element, so
# the batcher and its flush before each checkpoint barrier are under test too) stretch the
# run so that kills land in its middle. Results do not depend on bundle or batch sizes (the
# golden snapshot holds at any of them).
SLOW_BUNDLES = (
    ("python.fn-execution.bundle.size", "2"),
    ("python.fn-execution.bundle.time", "1000"),
)
SMALL_BATCHES = PipelineConfig(source_batch_records=5)


def workers_with_sink() -> list[Worker]:
    """The job's Python workers once the sink's has chdb open (it opens on its first
    bundle), else an empty list."""
    workers = python_workers()
    return workers if any(worker.holds_chdb for worker in workers) else []


def choose(role: str, workers: list[Worker], rng: random.Random) -> Worker:
    """The worker to kill: the sink's (it holds chdb) or, for ``series``, the busiest of the
    others (an ingest worker early in the run, the series operator's later). Only live
    workers are listed: a finished task's worker has exited."""
    sinks = [worker for worker in workers if worker.holds_chdb]
    others = [worker for worker in workers if not worker.holds_chdb]
    assert sinks and others, f"no sink or no other worker among {workers}"
    if role == "any":
        role = rng.choice(["sink", "series"])
    if role == "sink":
        return sinks[0]
    return max(others, key=lambda worker: worker.cpu_ticks)


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
    """Run the golden input with one SIGKILL per entry of ``kills`` (``sink``, ``series``,
    ``checkpoint``: one of the two while a checkpoint runs); check the outputs exactly."""
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
        pipeline=SMALL_BATCHES,
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
    supervisor = Supervisor(client)
    job_id = str(client.get_job_id())
    finished = False
    try:
        ended = client.get_job_execution_result().done
        for role in kills:
            if not figures.faults:  # later kills follow the checkpoint after a recovery
                wait_until(
                    lambda: completed_checkpoints(rest_port, job_id) or ended(),
                    timeout_s=STARTUP_S,
                    what="a checkpoint before the kill",
                )
            workers = wait_until(
                lambda: workers_with_sink() or ended(),
                timeout_s=STARTUP_S,
                what="the sink's worker with chdb open",
            )
            assert not ended(), "the job ended before the kill"
            victim = choose("any" if role == "checkpoint" else role, workers, rng)
            if role == "checkpoint":
                wait_until(
                    lambda: checkpoint_in_progress(rest_port, job_id) or ended(),
                    timeout_s=60,
                    what="a checkpoint in progress",
                    interval_s=0.02,
                )
            else:
                time.sleep(rng.uniform(0.0, 1.0))  # a random moment, not a sync point
            assert not ended(), "the job ended before the kill"
            assert job_status(client) == "RUNNING", "the job is not running at the kill"
            kill(victim)
            figures.faults += 1
            killed_at = time.monotonic()
            # The count as seen while the job runs: after the last kill the run may end
            # before the next checkpoint, and an ended mini-cluster answers no REST call.
            seen = [figures.restarts]

            def noticed(seen: list[int] = seen) -> bool:
                seen[0] = max(seen[0], restarts(rest_port, job_id))
                return seen[0] >= figures.faults or ended()

            wait_until(noticed, timeout_s=RECOVERY_S, what="Flink to notice the dead worker")
            assert not ended(), "the job ended without noticing the dead worker"
            figures.restarts = seen[0]
            done = completed_checkpoints(rest_port, job_id)
            wait_until(lambda done=done: completed_checkpoints(rest_port, job_id) > done
                       or ended(),
                       timeout_s=RECOVERY_S, what="a checkpoint after the restart")  # fmt: skip
            figures.recovery_s = max(figures.recovery_s, time.monotonic() - killed_at)
            if not ended():
                figures.restarts = max(figures.restarts, restarts(rest_port, job_id))
        wait_until_finished(client, timeout_s=600)
        finished = True
    finally:
        if not finished:
            cancel_job(client)
    figures.task_managers_started = supervisor.join()
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
    """The fast case (``make test``): the busiest worker other than the sink's is killed,
    which used to leave the old sink worker holding chdb and the job failing for good."""
    run_with_kills(tmp_path, kafka_bootstrap, topics, redis_url, redis_client,
                   kills=["series"], seed=1)  # fmt: skip


@pytest.mark.chaos
@pytest.mark.parametrize(
    ("kills", "seed"),
    [
        (["sink"], 2),
        (["checkpoint"], 3),
        # Once marked xfail (indicator rows with lower versions after the series worker was
        # restored): restored windows lacked the bars of cleaned smaller windows, fixed in
        # udfs/windows.py WindowSet.restore.
        (["series", "sink"], 4),
    ],
    ids=["sink", "during-a-checkpoint", "series-then-sink"],
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
    """The sink's worker, the series' or the sink's during a checkpoint, and two kills in
    one run (with restarts enough for them: the bounded run's own strategy allows two)."""
    overrides = BOUNDED_RESTARTS
    if len(kills) >= 2:
        attempts = ("restart-strategy.fixed-delay.attempts", str(len(kills) + 1))
        overrides = (*BOUNDED_RESTARTS, attempts)
    run_with_kills(tmp_path, kafka_bootstrap, topics, redis_url, redis_client,
                   kills=kills, seed=seed, restart_overrides=overrides)  # fmt: skip


def test_a_task_manager_lost_to_a_fatal_error_is_replaced_and_the_job_recovers(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """What the mini-cluster does on a TaskManager's fatal error (a kill can cause one:
    Beam's "Reference count must not be negative"), done on purpose: its only TaskManager
    is terminated mid-run. The job runner's supervisor (``jobs.job.supervise``) starts a new
    one, the job restarts from its last checkpoint and the outputs are exact."""
    from connectors.flink_topology import local_mini_cluster, task_managers

    produce(kafka_bootstrap, topics.raw, golden_input().messages)
    (rest_port,) = free_ports(1)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=redis_url,
        name="chaos-task-manager-lost",
        # One message an element: the fault must land well before the end of the run.
        pipeline=PipelineConfig(source_batch_records=1),
        flink_overrides=(
            *BOUNDED_RESTARTS,
            *SLOW_BUNDLES,
            ("execution.checkpointing.interval", "1s"),
            ("execution.checkpointing.min-pause", "0ms"),
            ("rest.bind-port", str(rest_port)),
        ),
    )
    figures = ChaosFigures(case="task-manager-lost")
    client = start_job(settings)
    supervisor = Supervisor(client)
    job_id = str(client.get_job_id())
    mini_cluster = local_mini_cluster(client)
    assert mini_cluster is not None and task_managers(mini_cluster) == 1
    ended = client.get_job_execution_result().done
    finished = False
    try:
        wait_until(lambda: completed_checkpoints(rest_port, job_id) or ended(),
                   timeout_s=STARTUP_S, what="a checkpoint before the fault")  # fmt: skip
        assert not ended(), "the job ended before the fault"
        mini_cluster.terminateTaskManager(0).get()  # as MiniCluster's fatal error handler does
        figures.faults = 1
        killed_at = time.monotonic()
        wait_until(lambda: restarts(rest_port, job_id) or ended(), timeout_s=RECOVERY_S,
                   what="the job to fail over")  # fmt: skip
        done = completed_checkpoints(rest_port, job_id)
        wait_until(lambda: ended() or (task_managers(mini_cluster) == 1
                                       and completed_checkpoints(rest_port, job_id) > done),
                   timeout_s=RECOVERY_S, what="a new TaskManager and a checkpoint")  # fmt: skip
        figures.recovery_s = time.monotonic() - killed_at
        figures.restarts = restarts(rest_port, job_id)
        wait_until_finished(client, timeout_s=600)
        finished = True
    finally:
        if not finished:
            cancel_job(client)
    figures.task_managers_started = supervisor.join()
    assert figures.task_managers_started == 1
    assert figures.restarts >= 1
    assert_golden_outputs(
        tmp_path=tmp_path,
        chdb_url=settings.sinks.clickhouse_url,
        redis_client=redis_client,
        kafka_bootstrap=kafka_bootstrap,
        dlq_topic=topics.dlq,
        figures=figures,
    )
