"""A standalone Flink cluster started from the PyFlink pip package, and job submission to it.

The pip package ships ``bin/start-cluster.sh`` and the dashboard but keeps ``flink-python``
in ``opt/``; a Python job needs it on the cluster's classpath. So the cluster runs with its
own ``FLINK_LIB_DIR`` (links to the package's ``lib/`` plus ``flink-python``) and its own
``FLINK_CONF_DIR`` rendered from ``flink-conf/config.yaml`` with absolute paths, under
``.klineflow/cluster/``. The dashboard is on http://127.0.0.1:8081.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from jobs.config import PROJECT_ROOT, STATE_DIR, JobSettings
from jobs.job import JobSetupError, job_configuration

CLUSTER_DIR = STATE_DIR / "cluster"
REST_URL = "http://127.0.0.1:8081"


def pyflink_home() -> Path:
    """The PyFlink package directory, which doubles as FLINK_HOME."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def _cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLINK_HOME=str(pyflink_home()),
        FLINK_CONF_DIR=str(CLUSTER_DIR / "conf"),
        FLINK_LIB_DIR=str(CLUSTER_DIR / "lib"),
        FLINK_LOG_DIR=str(CLUSTER_DIR / "log"),
        FLINK_PID_DIR=str(CLUSTER_DIR / "pid"),
        PYFLINK_PYTHON=sys.executable,
    )
    return env


def package_java_options() -> str:
    """``env.java.opts.all`` of the PyFlink package's own config: the ``--add-opens`` and
    ``--add-exports`` flags Flink needs on Java 17, kept in step with the installed version."""
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load((pyflink_home() / "conf" / "config.yaml").read_text()) or {}
    options = data.get("env", {}).get("java", {}).get("opts", {}).get("all", "")
    return str(options)


def prepare_cluster_dirs(settings: JobSettings | None = None) -> None:
    """Render the cluster's conf and lib directories (idempotent)."""
    settings = settings or JobSettings()
    home = pyflink_home()
    lib = CLUSTER_DIR / "lib"
    conf = CLUSTER_DIR / "conf"
    for folder in (lib, conf, CLUSTER_DIR / "log", CLUSTER_DIR / "pid"):
        folder.mkdir(parents=True, exist_ok=True)
    for stale in lib.glob("*.jar"):
        stale.unlink()
    for jar in [
        *home.joinpath("lib").glob("*.jar"),
        *home.joinpath("opt").glob("flink-python*.jar"),
    ]:
        lib.joinpath(jar.name).symlink_to(jar)
    for name in ("log4j.properties", "log4j-cli.properties", "log4j-console.properties"):
        shutil.copyfile(home / "conf" / name, conf / name)
    conf.joinpath("workers").write_text("localhost\n")
    conf.joinpath("masters").write_text("localhost:8081\n")
    config = job_configuration(settings)
    config.pop("pipeline.name", None)
    config.setdefault("env.java.opts.all", package_java_options())
    lines = [f"{key}: {json.dumps(value)}" for key, value in sorted(config.items())]
    conf.joinpath("config.yaml").write_text(
        "# Rendered from flink-conf/config.yaml by `klineflow cluster up`; edit that file.\n"
        + "\n".join(lines)
        + "\n"
    )


def _overview() -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"{REST_URL}/overview", timeout=2) as response:
            data: dict[str, object] = json.load(response)
            return data
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _running_daemons() -> list[int]:
    """PIDs of this project's JobManager/TaskManager that are alive (from FLINK_PID_DIR)."""
    alive = []
    for pid_file in (CLUSTER_DIR / "pid").glob("flink-*.pid"):
        for line in pid_file.read_text().split():
            if line.isdigit() and Path(f"/proc/{line}").exists():
                alive.append(int(line))
    return alive


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cluster_up(timeout_s: float = 90.0) -> str:
    """Start the JobManager and one TaskManager; wait until the TaskManager has registered."""
    if _running_daemons():
        return f"cluster already running: dashboard {REST_URL}"
    if _port_in_use(8081):
        raise JobSetupError(
            "port 8081 is taken by another process (a local `job run` or a test mini-cluster?); "
            "stop it first: the cluster's dashboard needs 8081"
        )
    prepare_cluster_dirs()
    subprocess.run(
        [str(pyflink_home() / "bin" / "start-cluster.sh")],
        env=_cluster_env(),
        check=True,
        cwd=PROJECT_ROOT,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        overview = _overview()
        if overview and int(str(overview.get("taskmanagers", 0))) > 0:
            return f"cluster up: dashboard {REST_URL} ({overview.get('slots-total')} slots)"
        time.sleep(0.5)
    logs = sorted((CLUSTER_DIR / "log").glob("*.log"))
    tail = "\n".join(logs[-1].read_text(errors="replace").splitlines()[-40:]) if logs else ""
    raise JobSetupError(f"the Flink cluster did not come up within {timeout_s:.0f}s\n{tail}")


def cluster_down() -> str:
    """Stop the cluster started by ``cluster_up``."""
    if not _running_daemons():
        return "cluster not running; nothing to stop"
    subprocess.run(
        [str(pyflink_home() / "bin" / "stop-cluster.sh")],
        env=_cluster_env(),
        check=False,
        cwd=PROJECT_ROOT,
    )
    return "cluster stopped"


def cluster_status() -> str:
    """One line: running with how many TaskManagers/jobs, or not running."""
    overview = _overview() if _running_daemons() else None
    if overview is None:
        return "cluster: not running"
    return (
        f"cluster: running at {REST_URL}; taskmanagers={overview.get('taskmanagers')} "
        f"slots={overview.get('slots-total')} running jobs={overview.get('jobs-running')}"
    )


def job_arguments(settings: JobSettings) -> list[str]:
    """The job's settings as the flags of ``jobs/job.py``.

    The ClickHouse and Redis URLs may hold passwords, so they travel in the environment
    (``CLICKHOUSE_URL``, ``REDIS_URL``), never on a command line that ``ps`` shows.
    """
    args = [
        "--bootstrap-servers", settings.kafka_bootstrap,
        "--topic", settings.klines_topic,
        "--dlq-topic", settings.dlq_topic,
        "--group-id", settings.consumer_group,
        "--max-out-of-orderness-ms", str(settings.pipeline.max_out_of_orderness_ms),
        "--idleness-ms", str(settings.pipeline.idleness_ms),
        "--allowed-lateness-ms", str(settings.pipeline.allowed_lateness_ms),
        "--clickhouse-batch-rows", str(settings.sinks.clickhouse_batch_rows),
        "--clickhouse-flush-ms", str(settings.sinks.clickhouse_flush_ms),
        "--redis-recent-bars", str(settings.sinks.redis_recent_bars),
    ]  # fmt: skip
    if settings.sinks.redis_ttl_s is not None:
        args += ["--redis-ttl-s", str(settings.sinks.redis_ttl_s)]
    if settings.parallelism:
        args += ["--parallelism", str(settings.parallelism)]
    if settings.bounded:
        args.append("--bounded")
    return args


def submit_job(settings: JobSettings, *, jobmanager: str, detached: bool = True) -> int:
    """Submit ``jobs/job.py`` with ``flink run``; returns its exit code."""
    from jobs.job import prepare_services

    prepare_cluster_dirs(settings)
    prepare_services(settings)
    command = [
        str(pyflink_home() / "bin" / "flink"), "run",
        "--jobmanager", jobmanager,
        "--pyClientExecutable", sys.executable,
        "--pyExecutable", sys.executable,
        *(["--detached"] if detached else []),
        "--python", str(PROJECT_ROOT / "jobs" / "job.py"),
        *job_arguments(settings),
    ]  # fmt: skip
    env = _cluster_env()
    env["CLICKHOUSE_URL"] = settings.sinks.clickhouse_url
    env["REDIS_URL"] = settings.sinks.redis_url
    return subprocess.run(command, env=env, cwd=PROJECT_ROOT, check=False).returncode
