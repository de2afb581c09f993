"""``klineflow cluster up --taskmanagers 2`` / ``status`` / ``add-taskmanager`` / ``down``
through the command line, on a cluster of the test's own (temporary home, free loopback
ports): both TaskManagers register with the JobManager, ``status`` lists each, one more can be
added, ``down`` stops them all and leaves no process behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.cluster import (
    cluster_down,
    cluster_processes,
    daemon_pids,
    job_fit,
    taskmanager_processes,
)
from jobs.cluster_settings import ClusterSettings
from jobs.config import JobSettings
from jobs.job import JobSetupError
from tests.integration.conftest import TopicNames, free_ports

KLINEFLOW = [sys.executable, "-m", "jobs.cli"]
REPO_ROOT = Path(__file__).resolve().parents[2]
# Starting three JVMs takes ~15 s on an idle 2-core machine, a minute or more under load.
CLI_TIMEOUT_S = 400


def processes_of(home: Path) -> list[str]:
    """Command lines of the processes whose command line names ``home`` (the daemons'
    ``--configDir`` and log file are under it)."""
    found = subprocess.run(["pgrep", "-af", str(home)], check=False, capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterSettings]:
    """Settings of a 2-TaskManager cluster in ``tmp_path`` on free ports; whatever of it
    runs at the end is stopped, and no process of it may be left."""
    rest_port, rpc_port = free_ports(2)
    settings = ClusterSettings(
        home=tmp_path / "cluster", rest_port=rest_port, rpc_port=rpc_port, taskmanagers=2,
        job_slots=3,
    )  # fmt: skip
    try:
        yield settings
    finally:
        cluster_down(settings)
        assert processes_of(settings.home) == []


def klineflow(*args: str, cluster: ClusterSettings) -> str:
    """Run ``klineflow ARGS`` on ``cluster`` (flags) and return its stdout; fail on exit != 0."""
    flags = ["--home", str(cluster.home), "--rest-port", str(cluster.rest_port),
             "--rpc-port", str(cluster.rpc_port), "--taskmanagers", str(cluster.taskmanagers),
             "--job-slots", str(cluster.job_slots)]  # fmt: skip
    done = subprocess.run(
        [*KLINEFLOW, *args, *flags], check=False, capture_output=True, text=True,
        timeout=CLI_TIMEOUT_S, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, f"klineflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_cluster_up_with_two_taskmanagers_add_one_and_down_stops_all(
    cluster: ClusterSettings, tmp_path: Path, kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    out = klineflow("cluster", "up", cluster=cluster)
    assert "2 TaskManager(s) x 3 slots" in out  # job_slots 3 fit on the one left if one dies

    with urllib.request.urlopen(f"{cluster.rest_url}/taskmanagers", timeout=10) as response:
        registered = json.load(response)["taskmanagers"]
    assert len(registered) == 2
    assert [tm["slotsNumber"] for tm in registered] == [3, 3]
    assert (cluster.home / "conf" / "workers").read_text() == "localhost\n" * 2
    taskmanager_pids = daemon_pids(cluster, "taskexecutor")
    assert len(taskmanager_pids) == 2
    assert len(daemon_pids(cluster, "standalonesession")) == 1

    status = klineflow("cluster", "status", cluster=cluster)
    for tm in registered:
        assert f"taskmanager {tm['id']}: pid=" in status
    assert sorted(taskmanager_processes(cluster).values()) == sorted(taskmanager_pids)
    assert set(taskmanager_processes(cluster)) == {tm["id"] for tm in registered}
    assert "taskmanagers=2" in status

    # Up again on a running cluster starts nothing more.
    assert "cluster already running" in klineflow("cluster", "up", cluster=cluster)
    assert daemon_pids(cluster, "taskexecutor") == taskmanager_pids

    # A job that needs more slots than the TaskManagers have is refused before `flink run`
    # (4 partitions + parallelism 2 + the chdb sink: 7 slots; the cluster has 6), and one
    # that fits only while both live is warned about (4 + 1 + 1 = 6 > 3).
    job = JobSettings(
        kafka_bootstrap=kafka_bootstrap, klines_topic=kafka_topics.raw, parallelism=2,
        checkpoint_dir=tmp_path / "checkpoints",
    )  # fmt: skip
    with pytest.raises(JobSetupError, match="needs 7 task slots"):
        job_fit(job, 1, cluster.jobmanager)
    warning = job_fit(job.with_overrides(parallelism=1), 1, cluster.jobmanager)
    assert warning is not None and "the others have 3" in warning
    assert job_fit(job.with_overrides(parallelism=None), 1, cluster.jobmanager) is not None

    # add-taskmanager starts one more (what brings a lost one back) and it registers.
    assert "3 registered (9 slots)" in klineflow("cluster", "add-taskmanager", cluster=cluster)
    assert len(daemon_pids(cluster, "taskexecutor")) == 3
    assert job_fit(job.with_overrides(parallelism=1), 1, cluster.jobmanager) is None  # 6 <= 6

    out = klineflow("cluster", "down", cluster=cluster)
    assert "3 TaskManager(s) and the JobManager" in out
    assert "killed" not in out  # the scripts stopped everything themselves
    assert processes_of(cluster.home) == []
    assert daemon_pids(cluster) == []
    assert cluster_processes(cluster) == set()
    assert klineflow("cluster", "status", cluster=cluster).strip() == "cluster: not running"
