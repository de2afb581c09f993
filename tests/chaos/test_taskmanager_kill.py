"""SIGKILL one of two TaskManagers while the bounded job runs on them: the job restarts from
its last checkpoint on the TaskManager left, and every bar lands exactly once.

A standalone cluster of the test's own (``jobs.cluster``: temporary home, free loopback
ports, ``--taskmanagers 2``, each with the slots the whole job needs) runs the job submitted
with ``flink run`` (``jobs.cluster.submit_job``) over the golden input
(``job_contract_support.golden_input``: 3 series, ~3,600 closed 1m bars and ~5,000 other
updates, on 4 partitions, parallelism 2, chdb + Redis). Once the sink has written some of it
and a checkpoint has completed, the TaskManager that runs the chdb sink is killed
(SIGKILL of its JVM). The test then checks:

- the killed JVM's Python workers exit with it (the chdb writer among them, so its lock on
  the chdb directory goes with its process: the restarted sink on the other TaskManager
  opens the directory and the job finishes);
- the JobManager drops the dead TaskManager, restores the latest checkpoint and finishes
  the job; ``klineflow cluster watch``, running as a subprocess since the cluster came up,
  brings the second TaskManager back by itself, says so in one log line naming the dead one,
  and ends with exit code 0 on SIGTERM, leaving the cluster running;
- every ClickHouse table (FINAL, versions included) and every Redis key equal the golden
  snapshot (``tests/golden/job_contract_snapshot.json``), which a mini-cluster run without
  failures produced; the dead letters equal it as a set (the DLQ producer is at-least-once,
  so a restart may send a letter twice).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from connectors.kafka_admin import DEAD_LETTER_TOPIC, ensure_topics
from jobs.cluster import (
    alive,
    cluster_down,
    cluster_processes,
    cluster_up,
    daemon_pids,
    descendants,
    rest_json,
    submit_job,
    taskmanager_processes,
    taskmanagers,
)
from jobs.cluster_settings import ClusterSettings
from jobs.config import JobSettings, PipelineConfig
from jobs.pipeline import required_slots
from tests.integration.conftest import (  # noqa: F401 - fixtures, used by name
    free_ports,
    kafka_bootstrap,
    kafka_broker,
    redis_client,
    redis_server,
    redis_url,
    stack_config,
)
from tests.integration.job_contract_support import (
    PARTITIONS,
    clickhouse_snapshot,
    contract_settings,
    dead_letters,
    differences,
    golden_input,
    keep_forever,
    produce,
    redis_snapshot,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

GOLDEN_PATH = Path(__file__).resolve().parents[1] / "golden" / "job_contract_snapshot.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
PARALLELISM = 2
REPO_FLINK_CONF = Path(__file__).resolve().parents[2] / "flink-conf" / "config.yaml"
# Generous: three JVMs and seven Python workers on a shared 2-core machine.
STARTUP_S = 400.0
FINISH_S = 600.0
# The watch's look at the cluster, and how long it may take to bring the TaskManager back
# (a JVM start and its registration, on the loaded machine) and to stop.
WATCH_INTERVAL_S = 1.0
BACK_S = 300.0
WATCH_STOP_S = 60.0
# Bundles of a few elements: each bundle end is a blocking state round trip per key, which
# stretches the ~15 s bounded run to minutes (a bounded run otherwise takes 10,000).
SMALL_BUNDLES = (
    ("python.fn-execution.bundle.size", "5"),
    ("python.fn-execution.bundle.time", "20"),
)
T = TypeVar("T")


def poll(condition: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.2)


def fast_checkpoints_conf(folder: Path) -> Path:
    """flink-conf/config.yaml with a checkpoint every second, so several complete while the
    job runs (the repo's 10 s would often see none before the input is through)."""
    folder.mkdir(parents=True)
    text = REPO_FLINK_CONF.read_text()
    for key, value in (("execution.checkpointing.interval", "1s"),
                       ("execution.checkpointing.min-pause", "500ms")):  # fmt: skip
        lines = [line for line in text.splitlines() if not line.startswith(f"{key}:")]
        text = "\n".join([*lines, f"{key}: {value}"]) + "\n"
    folder.joinpath("config.yaml").write_text(text)
    return folder


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterSettings]:
    """A 2-TaskManager cluster's settings (own home, free ports), each TaskManager with the
    slots the whole job needs; stopped at the end, with no process of it left."""
    rest_port, rpc_port = free_ports(2)
    settings = ClusterSettings(
        home=tmp_path / "cluster", rest_port=rest_port, rpc_port=rpc_port, taskmanagers=2,
        job_slots=required_slots(PARTITIONS, PARALLELISM, 1),
    )  # fmt: skip
    try:
        yield settings
    finally:
        watched = cluster_processes(settings)
        cluster_down(settings)
        left = [pid for pid in watched if alive(pid)]
        assert left == [], f"processes of the test cluster still run: {left}"


@pytest.fixture
def watch(
    cluster: ClusterSettings, tmp_path: Path
) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Starts ``klineflow cluster watch`` on the cluster (its log: ``watch.log`` in
    ``tmp_path``); stopped before the cluster's own teardown, so it cannot start daemons
    that ``cluster down`` stops."""
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        flags = ["--home", str(cluster.home), "--rest-port", str(cluster.rest_port),
                 "--rpc-port", str(cluster.rpc_port), "--taskmanagers", str(cluster.taskmanagers),
                 "--job-slots", str(cluster.job_slots),
                 "--interval-s", str(WATCH_INTERVAL_S)]  # fmt: skip
        with (tmp_path / "watch.log").open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "jobs.cli", "cluster", "watch", *flags],
                stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
            )  # fmt: skip
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=WATCH_STOP_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def watch_log(tmp_path: Path) -> str:
    """What the watch has logged so far."""
    return (tmp_path / "watch.log").read_text()


def job_vertex_taskmanagers(cluster: ClusterSettings, job_id: str, name_start: str) -> set[str]:
    """Resource ids of the TaskManagers that run the vertex whose name starts with
    ``name_start`` (``store-sink -> kafka-klines-dlq: ...``: the sink and the DLQ producer)."""
    job = rest_json(cluster, f"/jobs/{job_id}")
    (vertex,) = [v for v in job["vertices"] if v["name"].startswith(name_start)]
    placed = rest_json(cluster, f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")
    return {tm["taskmanager-id"] for tm in placed["taskmanagers"]}


def job_state(cluster: ClusterSettings, job_id: str) -> str:
    """The job's state name from the REST API (``RUNNING``, ``RESTARTING``, ...)."""
    return str(rest_json(cluster, f"/jobs/{job_id}")["state"])


# Job states after which it never runs again.
ENDED = frozenset({"FINISHED", "FAILED", "CANCELED", "SUSPENDED"})


def all_tasks_running(cluster: ClusterSettings, job_id: str) -> bool:
    """Whether every subtask of the job runs (or has already finished)."""
    job = rest_json(cluster, f"/jobs/{job_id}")
    counts: dict[str, int] = job["status-counts"]
    return job["state"] == "RUNNING" and all(
        counts.get(state, 0) == 0 for state in ("CREATED", "SCHEDULED", "DEPLOYING", "INITIALIZING")
    )


def checkpoints(cluster: ClusterSettings, job_id: str) -> dict[str, Any]:
    """The job's checkpoint statistics (``/jobs/:id/checkpoints``)."""
    data: dict[str, Any] = rest_json(cluster, f"/jobs/{job_id}/checkpoints")
    return data


def test_killing_a_taskmanager_mid_stream_restores_the_checkpoint_and_loses_nothing(
    tmp_path: Path,
    kafka_bootstrap: str,  # noqa: F811 - the fixture imported above
    redis_url: str,  # noqa: F811
    redis_client: redis.Redis,  # noqa: F811
    cluster: ClusterSettings,
    watch: Callable[[], subprocess.Popen[str]],
) -> None:
    suffix = uuid.uuid4().hex[:8]
    raw_topic, dlq_topic = f"klines-raw-tm-kill-{suffix}", f"klines-dlq-tm-kill-{suffix}"
    ensure_topics(kafka_bootstrap, [raw_topic], partitions=PARTITIONS)
    ensure_topics(kafka_bootstrap, [dlq_topic], partitions=1, configs=DEAD_LETTER_TOPIC)
    keep_forever(kafka_bootstrap, raw_topic, dlq_topic)
    golden = golden_input()
    produce(kafka_bootstrap, raw_topic, golden.messages)
    settings: JobSettings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=raw_topic,
        dlq_topic=dlq_topic,
        redis_url=redis_url,
        name="cluster-taskmanager-kill",
        parallelism=PARALLELISM,
        # One message an element and small bundles (--flink-option, which wins over the
        # bounded-run settings): a run long enough for the kill to land in its middle.
        pipeline=PipelineConfig(source_batch_records=1),
        flink_conf_dir=fast_checkpoints_conf(tmp_path / "flink-conf"),
    ).with_overrides(flink_overrides=SMALL_BUNDLES)  # and restarts on, as for bounded runs

    started = time.monotonic()
    print(cluster_up(cluster, settings))
    assert len(taskmanagers(cluster)) == 2
    # The supervisor, running from now on as a desk would run it (under systemd).
    watcher = watch()
    poll(lambda: "watching the cluster" in watch_log(tmp_path), timeout_s=60, what="the watch")
    assert submit_job(settings, jobmanager=cluster.jobmanager, cluster=cluster) == 0
    listing = poll(lambda: rest_json(cluster, "/jobs")["jobs"], timeout_s=60, what="the job")
    assert len(listing) == 1
    job_id = listing[0]["id"]
    poll(lambda: all_tasks_running(cluster, job_id) or job_state(cluster, job_id) in ENDED,
         timeout_s=STARTUP_S, what="all tasks up")  # fmt: skip
    assert job_state(cluster, job_id) == "RUNNING", "the job ended before all its tasks ran"
    # Both TaskManagers run part of the job (taskmanager.load-balance.mode: SLOTS).
    busy = {tm["id"] for tm in taskmanagers(cluster) if tm["freeSlots"] < tm["slotsNumber"]}
    assert len(busy) == 2, taskmanagers(cluster)

    # Mid-stream: the sink has written some of the output and a checkpoint has completed.
    # On an idle machine the sink runs only ~15 s, so the kill follows at once.
    def started_and_checkpointed() -> bool:
        if redis_client.dbsize() == 0:
            return False
        return int(checkpoints(cluster, job_id)["counts"]["completed"]) > 0

    poll(started_and_checkpointed, timeout_s=STARTUP_S, what="output and a checkpoint")
    assert job_state(cluster, job_id) == "RUNNING", "the job ended before the kill"
    keys_at_kill = redis_client.dbsize()

    (sink_tm,) = job_vertex_taskmanagers(cluster, job_id, "store-sink")
    victim = taskmanager_processes(cluster)[sink_tm]
    processes = taskmanager_processes(cluster)
    workers = poll(lambda: descendants(victim), timeout_s=60,
                   what=f"Python workers under the sink's TaskManager {sink_tm} (pid {victim}; "
                   f"TaskManagers {processes})")  # fmt: skip
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    # Its Python workers (the chdb writer among them) die with the JVM: the cluster's worker
    # Python (jobs/cluster.py: WORKER_PYTHON) kills them when their TaskManager is gone;
    # without it one was seen running on for minutes. The lock on the chdb directory is the
    # process's flock on its status file, released by the kernel when the process exits.
    poll(lambda: not any(alive(pid) for pid in workers),
         timeout_s=120, what="the killed TaskManager's Python workers to exit")  # fmt: skip
    workers_gone_s = time.monotonic() - killed_at
    # Dropped: its resource id is no longer listed (the watch may register a new TaskManager
    # about as soon as the JobManager drops the dead one, so the count alone could skip 1).
    poll(lambda: sink_tm not in {tm["id"] for tm in taskmanagers(cluster)},
         timeout_s=180, what="the dead TM dropped")  # fmt: skip
    assert len(taskmanagers(cluster)) <= 2
    dropped_s = time.monotonic() - killed_at
    back: list[float] = []

    def two_registered() -> bool:
        listed = taskmanagers(cluster)
        whole = len(listed) == 2 and all(int(tm["slotsNumber"]) > 0 for tm in listed)
        if whole and not back:
            back.append(time.monotonic() - killed_at)
        return whole

    def finished() -> bool:
        two_registered()
        state = job_state(cluster, job_id)
        assert state not in ("FAILED", "CANCELED"), f"the job is {state} after the kill"
        return state == "FINISHED"

    poll(finished, timeout_s=FINISH_S, what="the job to finish after the kill")
    finished_s = time.monotonic() - killed_at
    stats = checkpoints(cluster, job_id)
    restored = (stats.get("latest") or {}).get("restored")
    assert restored is not None and not restored["is_savepoint"], stats.get("latest")
    exceptions = rest_json(cluster, f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
    assert exceptions, "the job never failed over"
    print(
        f"\ncluster up + submit -> kill: {killed_at - started:.0f}s; Redis keys at the kill: "
        f"{keys_at_kill}; workers gone {workers_gone_s:.1f}s, TaskManager dropped "
        f"{dropped_s:.1f}s, job finished {finished_s:.1f}s after the kill; restored "
        f"checkpoint {restored['id']}; {len(exceptions)} failure(s): "
        + "; ".join(str(entry.get("exceptionName")) for entry in exceptions)
    )

    # Flink standalone never replaces a lost TaskManager: the running `cluster watch` starts
    # the missing one (bin/taskmanager.sh start), it registers, and the watch says so.
    poll(two_registered, timeout_s=BACK_S, what="the watch to bring the TaskManager back")
    assert len(taskmanagers(cluster)) == 2
    assert len(taskmanager_processes(cluster)) == 2
    log = watch_log(tmp_path)
    died = f"taskmanager pid {victim} (resource id {sink_tm}) died"
    # (A start that failed would be retried, after a backoff, with the same first line.)
    noticed = [line for line in log.splitlines() if died in line and ": starting " in line]
    assert noticed, log
    # One start replaces the killed TaskManager. The watch may have replaced the other one
    # too: PyFlink's Beam runner sometimes kills the surviving TaskManager while the failover
    # cancels its tasks ("Reference count must not be negative", see the README); without the
    # watch the job then failed. Every start replaces a TaskManager that died, none is extra.
    starts = [line for line in log.splitlines() if "started taskmanager pid" in line]
    (restart,) = [line for line in starts if f"it replaces {died[: -len(' died')]}," in line]
    assert all("which died" in line for line in starts), starts
    assert "registered after" in restart and "TaskManager(s) registered" in restart, restart
    shown = "\n  ".join([noticed[0], *starts])
    print(f"TaskManager back (REST lists 2) {back[0]:.1f}s after the kill; {len(starts)} "
          f"TaskManager(s) started by the watch:\n  {shown}")  # fmt: skip

    expected = json.loads(GOLDEN_PATH.read_text())
    actual = json.loads(
        json.dumps(
            {
                "clickhouse": clickhouse_snapshot(settings.sinks.clickhouse_url),
                "redis": redis_snapshot(redis_client),
            }
        )
    )
    # Kept for a look when the comparison fails (the test's temporary directory).
    (tmp_path / "snapshot.json").write_text(json.dumps(actual))
    (tmp_path / "exceptions.json").write_text(json.dumps(exceptions, indent=1))
    for section in ("clickhouse", "redis"):
        found = differences(expected[section], actual[section], path=section)
        assert not found, "\n".join(found)
    letters = dead_letters(kafka_bootstrap, dlq_topic,
                           min_messages=len(golden.malformed) + len(golden.late))  # fmt: skip
    unique = {json.dumps(letter, sort_keys=True) for letter in letters}
    assert unique == {json.dumps(letter, sort_keys=True) for letter in expected["dlq"]["letters"]}

    # SIGTERM ends the watch cleanly (exit code 0) and leaves the cluster running.
    watcher.send_signal(signal.SIGTERM)
    assert watcher.wait(timeout=WATCH_STOP_S) == 0, watch_log(tmp_path)
    assert f"watch stopped (SIGTERM) after starting {len(starts)} daemon(s)" in watch_log(tmp_path)
    assert len(daemon_pids(cluster, "standalonesession")) == 1
    assert len(taskmanager_processes(cluster)) == 2
