"""A standalone Flink cluster started from the PyFlink package's scripts, and job submission.

The pip package ships ``bin/start-cluster.sh``, ``bin/taskmanager.sh`` and the dashboard but
keeps ``flink-python`` in ``opt/``; a Python job needs it on the cluster's classpath. So the
cluster runs with its own ``FLINK_LIB_DIR`` (links to the package's ``lib/`` plus
``flink-python``) and its own ``FLINK_CONF_DIR`` rendered from ``flink-conf/config.yaml``
with absolute paths, under the cluster's home (``ClusterSettings.home``, by default
``.klineflow/cluster/``); ``conf/workers`` lists one ``localhost`` line per TaskManager.

Losing a TaskManager: Flink restarts the job (its restart strategy) from the last checkpoint
on the slots left, which ``ClusterSettings.slots_per_taskmanager`` makes enough. Flink
standalone never starts a TaskManager again by itself: ``cluster watch`` (:func:`watch_cluster`)
does, a foreground supervisor that starts whatever daemon is missing with the package's
``bin/jobmanager.sh start`` / ``bin/taskmanager.sh start``; by hand, ``cluster up`` again
(it tops the cluster up to ``--taskmanagers``) or ``cluster add-taskmanager``. What to start
given what runs is :class:`Supervisor`, free of processes and clocks, so it is unit-tested.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeVar

from connectors.retry import Backoff, Uniform, first_line
from jobs.cluster_settings import ClusterSettings, WatchSettings
from jobs.config import PROJECT_ROOT, JobSettings, format_flink_options
from jobs.job import DETACHED_ENV, JobSetupError, job_configuration

# On top of flink-conf/config.yaml, for a cluster of several TaskManagers:
CLUSTER_FLINK_SETTINGS = {
    # Spread the job's slots over every TaskManager rather than filling the first one.
    "taskmanager.load-balance.mode": "SLOTS",
    # A killed TaskManager's RPC endpoint refuses connections, so each heartbeat RPC to it
    # fails at once: after heartbeat.rpc-failure-threshold (Flink's default, 2) failures in a
    # row, i.e. ~2 x this interval, the JobManager and ResourceManager drop it and its slots.
    # heartbeat.timeout (180 s in flink-conf, for a starved but live TaskManager) only
    # applies to heartbeats that go unanswered, not to refused ones. 1 s: the dead one is
    # gone before a bounded run's first restart (2 s delay, 2 attempts) deploys to it; with
    # 2 s a restart sometimes did, costing a second attempt (RecipientUnreachableException).
    "heartbeat.interval": "1000",
    "heartbeat.rpc-failure-threshold": "2",
}
STOP_TIMEOUT_S = 60.0
RESOURCE_ID = re.compile(r"Starting TaskManager with ResourceID: (\S+)")
# Written by `cluster down` before it stops anything: a `cluster watch` running since before
# that time ends instead of starting the daemons again (jobs/cluster.py: watch_cluster).
DOWN_MARKER: Final = "down-requested"

log = logging.getLogger(__name__)
T = TypeVar("T")


def pyflink_home() -> Path:
    """The PyFlink package directory, which doubles as FLINK_HOME."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def _cluster_env(cluster: ClusterSettings, conf_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLINK_HOME=str(pyflink_home()),
        FLINK_CONF_DIR=str(conf_dir or cluster.home / "conf"),
        FLINK_LIB_DIR=str(cluster.home / "lib"),
        FLINK_LOG_DIR=str(cluster.home / "log"),
        FLINK_PID_DIR=str(cluster.home / "pid"),
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


def _link_lib(cluster: ClusterSettings) -> None:
    """``FLINK_LIB_DIR``: links to the package's jars plus ``flink-python`` (idempotent; a
    running cluster's links are left in place)."""
    home = pyflink_home()
    lib = cluster.home / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    wanted = {
        jar.name: jar
        for jar in [
            *home.joinpath("lib").glob("*.jar"),
            *home.joinpath("opt").glob("flink-python*.jar"),
        ]
    }
    for present in lib.glob("*.jar"):
        if present.name not in wanted or present.resolve() != wanted[present.name]:
            present.unlink()
    for name, jar in wanted.items():
        if not lib.joinpath(name).is_symlink():
            lib.joinpath(name).symlink_to(jar)


def _write_conf(conf: Path, config: dict[str, str], workers: int, rest_port: int) -> None:
    home = pyflink_home()
    conf.mkdir(parents=True, exist_ok=True)
    for name in ("log4j.properties", "log4j-cli.properties", "log4j-console.properties"):
        conf.joinpath(name).write_bytes((home / "conf" / name).read_bytes())
    conf.joinpath("workers").write_text("localhost\n" * workers)
    conf.joinpath("masters").write_text(f"localhost:{rest_port}\n")
    lines = [f"{key}: {json.dumps(value)}" for key, value in sorted(config.items())]
    conf.joinpath("config.yaml").write_text(
        "# Rendered from flink-conf/config.yaml by `klineflow cluster up`; edit that file.\n"
        + "\n".join(lines)
        + "\n"
    )


WORKER_PYTHON = """#!/usr/bin/env bash
# The Python of this cluster's Python workers (python.executable), rendered by
# `klineflow cluster up` (jobs/cluster.py). A TaskManager killed with SIGKILL cannot stop its
# workers and PyFlink's pyflink-udf-runner.sh does not exec Python, so a worker can outlive
# its JVM, orphaned -- and the store sink's worker keeps chdb's lock on its directory. This
# runs Python as a child and kills it within a second of the TaskManager's exit.
python={python}
taskmanager=""
pid=$PPID
while [ "$pid" -gt 1 ] 2>/dev/null; do
  if [ "$(cat /proc/$pid/comm 2>/dev/null)" = java ]; then taskmanager=$pid; break; fi
  pid=$(awk '{{print $4}}' /proc/$pid/stat 2>/dev/null || echo 1)
done
[ -n "$taskmanager" ] || exec "$python" "$@"
"$python" "$@" <&0 &
child=$!
trap 'kill -TERM $child 2>/dev/null' TERM INT
while kill -0 "$child" 2>/dev/null; do
  if ! kill -0 "$taskmanager" 2>/dev/null; then kill -KILL "$child"; break; fi
  sleep 1
done
wait "$child"
"""


def worker_python(cluster: ClusterSettings) -> Path:
    """Write ``home/bin/python-worker`` (see :data:`WORKER_PYTHON`) and return its path."""
    path = cluster.home / "bin" / "python-worker"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(WORKER_PYTHON.format(python=shlex.quote(sys.executable)))
    path.chmod(0o755)
    return path


def cluster_flink_configuration(
    cluster: ClusterSettings, settings: JobSettings | None = None
) -> dict[str, str]:
    """The cluster's Flink configuration: ``job_configuration`` plus its ports and slots."""
    settings = settings or JobSettings(checkpoint_dir=cluster.home / "checkpoints")
    config = job_configuration(settings)
    config.pop("pipeline.name", None)
    config.setdefault("env.java.opts.all", package_java_options())
    config.update(CLUSTER_FLINK_SETTINGS)
    config.update(
        {
            "rest.port": str(cluster.rest_port),
            "jobmanager.rpc.port": str(cluster.rpc_port),
            "taskmanager.numberOfTaskSlots": str(cluster.slots_per_taskmanager),
            "python.executable": str(worker_python(cluster)),
        }
    )
    return config


def prepare_cluster_dirs(cluster: ClusterSettings, settings: JobSettings | None = None) -> None:
    """Render the cluster's conf and lib directories (idempotent)."""
    for folder in ("log", "pid"):
        (cluster.home / folder).mkdir(parents=True, exist_ok=True)
    _link_lib(cluster)
    config = cluster_flink_configuration(cluster, settings)
    _write_conf(cluster.home / "conf", config, cluster.taskmanagers, cluster.rest_port)


def rest_json(cluster: ClusterSettings, path: str) -> Any:
    """GET ``path`` of the cluster's REST API as JSON; None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{cluster.rest_url}{path}", timeout=5) as response:
            return json.load(response)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def taskmanagers(cluster: ClusterSettings) -> list[dict[str, Any]]:
    """The TaskManagers registered with the JobManager (REST ``/taskmanagers``)."""
    data = rest_json(cluster, "/taskmanagers")
    return list(data.get("taskmanagers", [])) if isinstance(data, dict) else []


def daemon_pids(cluster: ClusterSettings, daemon: str = "*") -> list[int]:
    """PIDs of this cluster's live daemons (``taskexecutor``, ``standalonesession``, or
    ``*`` for both), from its ``FLINK_PID_DIR``, in start order."""
    running = []
    for pid_file in sorted((cluster.home / "pid").glob(f"flink-*-{daemon}.pid")):
        for line in pid_file.read_text().split():
            if line.isdigit() and alive(int(line)):
                running.append(int(line))
    return running


def cluster_processes(cluster: ClusterSettings) -> set[int]:
    """Every live process started from this cluster's ``conf/``: its daemons and their
    Python workers, also those orphaned by a TaskManager that was killed (they inherit
    ``FLINK_CONF_DIR`` from their TaskManager)."""
    marker = f"FLINK_CONF_DIR={cluster.home / 'conf'}".encode()
    found: set[int] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if marker in environ.split(b"\0") and alive(int(proc.name)):
            found.add(int(proc.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (a TaskManager's Python workers and their children)."""
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    queue.append(child)
    return [child for child in found if alive(child)]


def taskmanager_processes(cluster: ClusterSettings) -> dict[str, int]:
    """Resource id (as in REST ``/taskmanagers``) -> PID of each live TaskManager.

    ``flink-daemon.sh`` appends the n-th TaskManager's PID as line n of the pid file and
    logs it to ``flink-*-taskexecutor-n-*.log``, whose first lines name its resource id.
    """
    found: dict[str, int] = {}
    for pid_file in (cluster.home / "pid").glob("flink-*-taskexecutor.pid"):
        for index, line in enumerate(pid_file.read_text().split()):
            if not (line.isdigit() and alive(int(line))):
                continue
            for log in (cluster.home / "log").glob(f"flink-*-taskexecutor-{index}-*.log"):
                match = RESOURCE_ID.search(log.read_text(errors="replace"))
                if match:
                    found[match.group(1)] = int(line)
    return found


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _script(name: str, cluster: ClusterSettings, *args: str, detach: bool = False) -> None:
    """Run ``bin/NAME ARGS`` of the package for ``cluster``; ``detach``: in a session of its
    own, so that a Ctrl-C or hang-up of the caller's terminal reaches neither the script
    (half-way through writing its pid file) nor the daemon it starts."""
    subprocess.run(
        [str(pyflink_home() / "bin" / name), *args],
        env=_cluster_env(cluster),
        check=True,
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        start_new_session=detach,
    )


def wait_for_taskmanagers(cluster: ClusterSettings, count: int, timeout_s: float) -> int:
    """Wait until ``count`` TaskManagers are registered, each with its slots; returns the
    total slots. (The REST API can list a TaskManager that has just registered with no slots
    yet: seen as "3 registered (6 slots)" for three TaskManagers of 3 slots.)"""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        registered = taskmanagers(cluster)
        slots = [int(tm.get("slotsNumber", 0)) for tm in registered]
        if len(registered) >= count and all(slots):
            return sum(slots)
        time.sleep(0.5)
    logs = sorted((cluster.home / "log").glob("*.log"), key=lambda path: path.stat().st_mtime)
    tail = "\n".join(logs[-1].read_text(errors="replace").splitlines()[-40:]) if logs else ""
    raise JobSetupError(
        f"{count} TaskManager(s) did not register within {timeout_s:.0f}s "
        f"({len(taskmanagers(cluster))} did)\n{tail}"
    )


def add_taskmanager(cluster: ClusterSettings, timeout_s: float = 180.0) -> str:
    """Start one more TaskManager (``bin/taskmanager.sh start``) and wait until it registers.

    This is what brings a lost TaskManager back: Flink standalone never restarts one.
    """
    if not daemon_pids(cluster, "standalonesession"):
        raise JobSetupError(f"no JobManager runs from {cluster.home}: `cluster up` first")
    before = len(taskmanagers(cluster))
    _script("taskmanager.sh", cluster, "start")
    slots = wait_for_taskmanagers(cluster, before + 1, timeout_s)
    return f"taskmanager added: {before + 1} registered ({slots} slots)"


def cluster_up(
    cluster: ClusterSettings, settings: JobSettings | None = None, timeout_s: float = 180.0
) -> str:
    """Start the JobManager and ``cluster.taskmanagers`` TaskManagers; wait until all have
    registered. On a running cluster, start only the TaskManagers missing (a lost one)."""
    if daemon_pids(cluster, "standalonesession"):
        missing = cluster.taskmanagers - len(daemon_pids(cluster, "taskexecutor"))
        for _ in range(max(missing, 0)):
            _script("taskmanager.sh", cluster, "start")
        slots = wait_for_taskmanagers(cluster, cluster.taskmanagers, timeout_s)
        started = f"; started {missing} TaskManager(s)" if missing > 0 else ""
        return f"cluster already running: dashboard {cluster.rest_url} ({slots} slots){started}"
    for port in (cluster.rest_port, cluster.rpc_port):
        if _port_in_use(port):
            raise JobSetupError(
                f"port {port} is taken by another process (a local `job run`, a test cluster, "
                "another cluster?): stop it or choose --rest-port/--rpc-port"
            )
    prepare_cluster_dirs(cluster, settings)
    _script("start-cluster.sh", cluster)
    slots = wait_for_taskmanagers(cluster, cluster.taskmanagers, timeout_s)
    return (
        f"cluster up: dashboard {cluster.rest_url}, {cluster.taskmanagers} TaskManager(s) "
        f"x {cluster.slots_per_taskmanager} slots ({slots} slots)"
    )


def cluster_down(cluster: ClusterSettings, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """Stop every TaskManager and the JobManager of this cluster and wait until they, and
    the TaskManagers' Python workers, are gone. A ``cluster watch`` of it ends (it does not
    start them again): this writes ``home/down-requested`` first."""
    if cluster.home.is_dir():  # first, so that a running `cluster watch` ends, not fights
        cluster.home.joinpath(DOWN_MARKER).write_text(f"{time.time()}\n")
    daemons = daemon_pids(cluster)
    managers = len(daemon_pids(cluster, "taskexecutor"))
    processes = cluster_processes(cluster)
    if not daemons and not processes:
        return "cluster not running; nothing to stop"
    processes |= {pid for daemon in daemons for pid in (daemon, *descendants(daemon))}
    # stop-all stops every TaskManager in the pid file, also those added after `up`.
    for script in ("taskmanager.sh", "jobmanager.sh"):
        subprocess.run(
            [str(pyflink_home() / "bin" / script), "stop-all"],
            env=_cluster_env(cluster), check=False, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = sorted(pid for pid in processes if alive(pid))
    for pid in left:  # the scripts SIGKILL a daemon after 10 s; this is for stray workers
        os.kill(pid, signal.SIGKILL)
    suffix = f" (killed {len(left)} process(es) still running: {left})" if left else ""
    return f"cluster stopped: {managers} TaskManager(s) and the JobManager{suffix}"


def cluster_status(cluster: ClusterSettings) -> str:
    """The cluster, then one line per registered TaskManager; or that it is not running."""
    if not daemon_pids(cluster, "standalonesession"):
        return "cluster: not running"
    overview = rest_json(cluster, "/overview")
    if not isinstance(overview, dict):
        return f"cluster: JobManager running, REST {cluster.rest_url} not answering yet"
    lines = [
        f"cluster: running at {cluster.rest_url}; taskmanagers={overview.get('taskmanagers')} "
        f"slots={overview.get('slots-total')} free={overview.get('slots-available')} "
        f"running jobs={overview.get('jobs-running')}"
    ]
    now_ms = time.time() * 1000
    pids = taskmanager_processes(cluster)
    for tm in taskmanagers(cluster):
        # The REST field holds the time of the last heartbeat (epoch ms; 0: none yet).
        last = float(tm.get("timeSinceLastHeartbeat", 0))
        heartbeat = f"{(now_ms - last) / 1000:.0f}s ago" if last > 0 else "none yet"
        lines.append(
            f"  taskmanager {tm.get('id')}: pid={pids.get(str(tm.get('id')), '?')} "
            f"slots={tm.get('slotsNumber')} free={tm.get('freeSlots')} "
            f"last heartbeat {heartbeat}"
        )
    running = daemon_pids(cluster, "taskexecutor")
    shown = " ".join(map(str, running)) or "none"
    lines.append(f"  taskmanager processes: {len(running)} ({shown})")
    return "\n".join(lines)


# --- supervision: `klineflow cluster watch` ------------------------------------------------

# Between failed attempts to start a daemon: ceilings of 2 s, 4 s, 8 s, ... up to 2 minutes,
# each wait at least half its ceiling (connectors/retry.py).
WATCH_BACKOFF: Final = Backoff(base_s=2.0, cap_s=120.0, min_fraction=0.5)
# How often a start in progress looks whether the daemon answers or registers yet.
START_POLL_S: Final = 0.5


class WatchStopped(Exception):
    """SIGTERM or SIGINT arrived while the watch waited for a daemon it started."""


class Stopper:
    """The stop request of a foreground loop: SIGTERM/SIGINT set it (:meth:`handling`) and
    :meth:`sleep` ends early once it is set.

    The handler only assigns an attribute: a signal handler that took a lock (as
    ``threading.Event.set`` does) could deadlock with the main thread inside ``wait``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.signal: int | None = None
        self._clock = clock

    @property
    def stopped(self) -> bool:
        """Whether a stop was requested."""
        return self.signal is not None

    def request(self, signum: int, _frame: FrameType | None = None) -> None:
        """Ask the loop to stop (the signal handler)."""
        self.signal = signum

    def sleep(self, seconds: float, step_s: float = 0.2) -> bool:
        """Sleep ``seconds`` in steps of ``step_s``; False as soon as a stop is requested."""
        deadline = self._clock() + seconds
        while not self.stopped:
            left = deadline - self._clock()
            if left <= 0:
                return True
            time.sleep(min(step_s, left))
        return False

    @contextlib.contextmanager
    def handling(self, *signums: signal.Signals) -> Iterator[Stopper]:
        """Route ``signums`` (SIGTERM and SIGINT by default) to :meth:`request` meanwhile."""
        wanted = signums or (signal.SIGTERM, signal.SIGINT)
        previous = {signum: signal.signal(signum, self.request) for signum in wanted}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What of a cluster runs at one moment (:func:`observe`).

    ``taskmanagers``: PIDs of the live TaskManager processes, in start order;
    ``resource_ids``: the resource id of those whose log names it yet; ``registered``: the
    TaskManagers the REST API lists (None: it does not answer); ``down_requested_at``: when
    ``cluster down`` last ran (epoch seconds; None: never).
    """

    jobmanager: int | None = None
    taskmanagers: tuple[int, ...] = ()
    resource_ids: Mapping[int, str] = field(default_factory=dict)
    registered: int | None = None
    down_requested_at: float | None = None


@dataclass(frozen=True, slots=True)
class Repair:
    """What the watch starts now, and what died that it replaces (PID, resource id)."""

    start_jobmanager: bool = False
    start_taskmanagers: int = 0
    lost_jobmanager: int | None = None
    lost_taskmanagers: tuple[tuple[int, str | None], ...] = ()

    def __bool__(self) -> bool:
        return self.start_jobmanager or self.start_taskmanagers > 0

    def describe(self, wanted: int, view: ClusterView, attempt: int = 1) -> str:
        """One line: what runs, what died, what is about to be started."""
        parts = []
        if self.start_jobmanager:
            died = f" (pid {self.lost_jobmanager} died)" if self.lost_jobmanager else ""
            parts.append(f"the JobManager is not running{died}")
        running = f"{len(view.taskmanagers)} of {wanted} TaskManager(s) running"
        if self.lost_taskmanagers:
            gone = [f"{describe_taskmanager(*lost)} died" for lost in self.lost_taskmanagers]
            running += f" ({', '.join(gone)})"
        parts.append(running)
        starting = [
            *(["the JobManager"] if self.start_jobmanager else []),
            *([f"{self.start_taskmanagers} TaskManager(s)"] if self.start_taskmanagers else []),
        ]
        retry = f" (attempt {attempt})" if attempt > 1 else ""
        return f"{'; '.join(parts)}: starting {' and '.join(starting)}{retry}"


def describe_taskmanager(pid: int, resource_id: str | None) -> str:
    """``taskmanager pid 123 (resource id ...)`` for a log line."""
    return f"taskmanager pid {pid}" + (f" (resource id {resource_id})" if resource_id else "")


def missing_daemons(wanted: int, view: ClusterView) -> tuple[bool, int]:
    """What the cluster lacks to have its shape: (no JobManager runs, TaskManagers short of
    ``wanted``). More TaskManagers than wanted (``add-taskmanager``) are left alone."""
    return view.jobmanager is None, max(wanted - len(view.taskmanagers), 0)


@dataclass(slots=True)
class Supervisor:
    """The decisions of ``cluster watch``, free of processes and clocks.

    Each look at the cluster (:meth:`decide`) says what to start, or nothing: the cluster has
    its shape, or a failed start's backoff (:meth:`failed`) is still running. It remembers
    the daemons it saw running, so that a repair names the ones that died since.
    ``started_at`` (epoch seconds) is when the watch began: a ``cluster down`` after it ends
    the watch (:meth:`ended_by_down`).
    """

    wanted: int
    started_at: float
    backoff: Backoff = WATCH_BACKOFF
    uniform: Uniform = random.uniform
    failures: int = 0
    retry_at: float = -math.inf
    repairs: int = 0
    jobmanager: int | None = None
    taskmanagers: dict[int, str | None] = field(default_factory=dict)
    lost_jobmanager: int | None = None
    lost_taskmanagers: dict[int, str | None] = field(default_factory=dict)

    def ended_by_down(self, view: ClusterView) -> bool:
        """Whether ``cluster down`` ran since the watch began (the watch then ends)."""
        return view.down_requested_at is not None and view.down_requested_at >= self.started_at

    def decide(self, view: ClusterView, now: float) -> Repair | None:
        """What to start now (``now``: monotonic seconds), or None."""
        if self.jobmanager is not None and self.jobmanager != view.jobmanager:
            self.lost_jobmanager = self.jobmanager
        for pid, resource_id in self.taskmanagers.items():
            if pid not in view.taskmanagers:
                self.lost_taskmanagers[pid] = resource_id
        self.jobmanager = view.jobmanager
        self.taskmanagers = {
            pid: view.resource_ids.get(pid) or self.taskmanagers.get(pid)
            for pid in view.taskmanagers
        }
        start_jobmanager, start_taskmanagers = missing_daemons(self.wanted, view)
        if not start_jobmanager and not start_taskmanagers:
            # Whole (again): also when someone else brought a daemon back.
            self.failures, self.retry_at = 0, -math.inf
            self.lost_jobmanager = None
            self.lost_taskmanagers.clear()
            return None
        if now < self.retry_at:
            return None
        return Repair(
            start_jobmanager=start_jobmanager,
            start_taskmanagers=start_taskmanagers,
            lost_jobmanager=self.lost_jobmanager if start_jobmanager else None,
            lost_taskmanagers=tuple(self.lost_taskmanagers.items())[:start_taskmanagers],
        )

    def jobmanager_started(self, pid: int) -> int | None:
        """Record a JobManager started; returns the PID of the one it replaces (if known)."""
        replaced, self.lost_jobmanager = self.lost_jobmanager, None
        self.jobmanager = pid
        self.repairs += 1
        return replaced

    def taskmanager_started(self, pid: int, resource_id: str) -> tuple[int, str | None] | None:
        """Record a TaskManager started; returns the one it replaces, the first lost."""
        self.taskmanagers[pid] = resource_id
        self.repairs += 1
        if not self.lost_taskmanagers:
            return None
        lost = next(iter(self.lost_taskmanagers))
        return lost, self.lost_taskmanagers.pop(lost)

    def succeeded(self) -> None:
        """The repair is done: the next failure backs off from the start again."""
        self.failures, self.retry_at = 0, -math.inf

    def failed(self, now: float) -> float:
        """A start failed at ``now``: returns the backoff before the next attempt."""
        delay = self.backoff.delay(self.failures, self.uniform)
        self.failures += 1
        self.retry_at = now + delay
        return delay

    def next_look_in(self, now: float, interval_s: float) -> float:
        """Seconds until the next look: the interval, or less when a retry falls due first."""
        if self.retry_at > now:
            return min(interval_s, self.retry_at - now)
        return interval_s


def observe(cluster: ClusterSettings) -> ClusterView:
    """What of ``cluster`` runs now: its daemons' pid files, logs and REST API."""
    jobmanagers = daemon_pids(cluster, "standalonesession")
    registered = None
    if jobmanagers:
        data = rest_json(cluster, "/taskmanagers")
        if isinstance(data, dict):
            registered = len(data.get("taskmanagers", []))
    marker = cluster.home / DOWN_MARKER
    return ClusterView(
        jobmanager=jobmanagers[-1] if jobmanagers else None,
        taskmanagers=tuple(daemon_pids(cluster, "taskexecutor")),
        resource_ids={pid: rid for rid, pid in taskmanager_processes(cluster).items()},
        registered=registered,
        down_requested_at=marker.stat().st_mtime if marker.exists() else None,
    )


def _await(
    condition: Callable[[], T | None], *, timeout_s: float, stopper: Stopper, what: str
) -> T:
    """Poll ``condition`` until it returns something truthy; JobSetupError after
    ``timeout_s``, WatchStopped as soon as a stop is requested."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise JobSetupError(f"{what} within {timeout_s:.0f}s")
        if not stopper.sleep(START_POLL_S):
            raise WatchStopped


def _daemon_log(cluster: ClusterSettings, daemon: str) -> str:
    """The newest log file of ``daemon`` (for an error message)."""
    logs = sorted((cluster.home / "log").glob(f"flink-*-{daemon}-*.log"),
                  key=lambda path: path.stat().st_mtime)  # fmt: skip
    return str(logs[-1]) if logs else str(cluster.home / "log")


def start_jobmanager(cluster: ClusterSettings, *, timeout_s: float, stopper: Stopper) -> int:
    """Start the JobManager (``bin/jobmanager.sh start``) and wait until its REST API
    answers; returns its PID. Renders the conf first only if there is none (a running
    cluster's TaskManagers were started with the one there)."""
    if not (cluster.home / "conf" / "config.yaml").exists():
        prepare_cluster_dirs(cluster)
    for port in (cluster.rest_port, cluster.rpc_port):
        if _port_in_use(port):
            raise JobSetupError(f"port {port} is taken by another process: no JobManager can start")
    pid = _start_daemon(cluster, "jobmanager.sh", "standalonesession", "JobManager")

    def answers() -> bool:
        if not alive(pid):
            raise JobSetupError(f"the new JobManager (pid {pid}) exited (see "
                                f"{_daemon_log(cluster, 'standalonesession')})")  # fmt: skip
        return isinstance(rest_json(cluster, "/overview"), dict)

    _await(answers, timeout_s=timeout_s, stopper=stopper,
           what=f"the new JobManager (pid {pid}) did not answer at {cluster.rest_url}")  # fmt: skip
    return pid


def _start_daemon(cluster: ClusterSettings, script: str, daemon: str, name: str) -> int:
    """Run ``bin/{script} start`` (detached) and return the PID of the ``daemon`` it started."""
    before = set(daemon_pids(cluster, daemon))
    _script(script, cluster, "start", detach=True)
    started = [pid for pid in daemon_pids(cluster, daemon) if pid not in before]
    if not started:
        raise JobSetupError(f"bin/{script} start left no {name} running (see "
                            f"{_daemon_log(cluster, daemon)})")  # fmt: skip
    return started[-1]


def start_taskmanager(
    cluster: ClusterSettings, *, timeout_s: float, stopper: Stopper
) -> tuple[int, str, list[dict[str, Any]]]:
    """Start one TaskManager (``bin/taskmanager.sh start``, as ``add_taskmanager``) and wait
    until it has registered with its slots; returns its PID, resource id and the
    TaskManagers registered then."""
    pid = _start_daemon(cluster, "taskmanager.sh", "taskexecutor", "TaskManager")

    def registered() -> tuple[str, list[dict[str, Any]]] | None:
        if not alive(pid):
            raise JobSetupError(f"the new TaskManager (pid {pid}) exited (see "
                                f"{_daemon_log(cluster, 'taskexecutor')})")  # fmt: skip
        resource_id = {p: rid for rid, p in taskmanager_processes(cluster).items()}.get(pid)
        listed = taskmanagers(cluster)
        mine = [tm for tm in listed if resource_id and tm.get("id") == resource_id]
        if resource_id and mine and int(mine[0].get("slotsNumber", 0)) > 0:
            return resource_id, listed
        return None

    resource_id, listed = _await(
        registered, timeout_s=timeout_s, stopper=stopper,
        what=f"the new TaskManager (pid {pid}) did not register with its slots",
    )  # fmt: skip
    return pid, resource_id, listed


def repair_cluster(
    cluster: ClusterSettings,
    repair: Repair,
    supervisor: Supervisor,
    *,
    timeout_s: float,
    stopper: Stopper,
) -> None:
    """Start what ``repair`` says, logging one line per daemon started (what it replaces,
    how long it took). Raises JobSetupError, CalledProcessError or OSError when a start
    fails (the daemons started before it stay), WatchStopped on a stop request."""
    if repair.start_jobmanager:
        began = time.monotonic()
        pid = start_jobmanager(cluster, timeout_s=timeout_s, stopper=stopper)
        replaced = supervisor.jobmanager_started(pid)
        log.info(
            "started the JobManager: pid %d, REST %s answering after %.1f s%s",
            pid, cluster.rest_url, time.monotonic() - began,
            f"; it replaces pid {replaced}, which died" if replaced else "",
        )  # fmt: skip
    for _ in range(repair.start_taskmanagers):
        began = time.monotonic()
        pid, resource_id, listed = start_taskmanager(cluster, timeout_s=timeout_s, stopper=stopper)
        lost = supervisor.taskmanager_started(pid, resource_id)
        slots = sum(int(tm.get("slotsNumber", 0)) for tm in listed)
        log.info(
            "started %s, registered after %.1f s%s: %d of %d TaskManager(s) registered "
            "(%d slots)",
            describe_taskmanager(pid, resource_id), time.monotonic() - began,
            f"; it replaces {describe_taskmanager(*lost)}, which died" if lost else "",
            len(listed), cluster.taskmanagers, slots,
        )  # fmt: skip


def watch_cluster(
    cluster: ClusterSettings,
    watch: WatchSettings,
    stopper: Stopper,
    *,
    backoff: Backoff = WATCH_BACKOFF,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Keep ``cluster`` at its shape until ``stopper`` is set: every ``watch.interval_s``,
    start the JobManager if it is not running and TaskManagers up to
    ``cluster.taskmanagers``, with ``backoff`` between failed attempts (``clock``: the
    monotonic seconds the backoff is timed by). Returns the line to end with; the cluster
    keeps running. A ``cluster down`` meanwhile ends the watch.
    """
    supervisor = Supervisor(cluster.taskmanagers, started_at=time.time(), backoff=backoff)
    log.info(
        "watching the cluster in %s (dashboard %s): keeping the JobManager and %d "
        "TaskManager(s) running, a look every %.1f s",
        cluster.home, cluster.rest_url, cluster.taskmanagers, watch.interval_s,
    )  # fmt: skip
    while not stopper.stopped:
        try:
            view = observe(cluster)
        except OSError as exc:  # a pid or log file that went away while it was read
            log.warning("could not read the cluster's state (%s); looking again", exc)
            stopper.sleep(watch.interval_s)
            continue
        if supervisor.ended_by_down(view):
            return (
                f"`cluster down` ran for {cluster.home}: the watch ends, having started "
                f"{supervisor.repairs} daemon(s)"
            )
        repair = supervisor.decide(view, clock())
        if repair:
            log.warning(repair.describe(cluster.taskmanagers, view, supervisor.failures + 1))
            began = time.monotonic()
            try:
                repair_cluster(cluster, repair, supervisor, timeout_s=watch.start_timeout_s,
                               stopper=stopper)  # fmt: skip
            except WatchStopped:
                break
            except (JobSetupError, subprocess.CalledProcessError, OSError) as exc:
                delay = supervisor.failed(clock())
                log.error(
                    "starting the missing daemon(s) failed after %.1f s (attempt %d): %s; "
                    "next attempt in %.1f s",
                    time.monotonic() - began, supervisor.failures, first_line(exc), delay,
                )  # fmt: skip
            else:
                supervisor.succeeded()
        stopper.sleep(supervisor.next_look_in(clock(), watch.interval_s))
    why = signal.Signals(stopper.signal).name if stopper.signal else "stop requested"
    try:
        view = observe(cluster)
    except OSError as exc:
        left = f"left as it is ({exc})"
    else:
        jobmanager = f"JobManager pid {view.jobmanager}" if view.jobmanager else "no JobManager"
        left = (
            f"keeps running: {jobmanager}, {len(view.taskmanagers)} TaskManager(s) "
            f"({' '.join(map(str, view.taskmanagers)) or 'none'})"
        )
    started = f"after starting {supervisor.repairs} daemon(s)"
    return f"watch stopped ({why}) {started}; the cluster {left}"


# Flags of ``jobs/job.py`` that ``job_arguments`` never passes: these URLs may hold secrets
# and travel in the environment instead (``submit_job``).
ENVIRONMENT_ONLY_FLAGS: Final = frozenset({"--clickhouse-url", "--redis-url", "--inference-url"})


def job_arguments(settings: JobSettings) -> list[str]:
    """The job's settings as the flags of ``jobs/job.py``: every flag, so that the submitted
    job runs with exactly these settings whatever its environment says.

    The ClickHouse, Redis and inference URLs may hold secrets, so they travel in the
    environment (``CLICKHOUSE_URL``, ``REDIS_URL``, ``INFERENCE_URL``), never on a command
    line that ``ps`` shows.
    """
    pipeline, sinks, analytics = settings.pipeline, settings.sinks, settings.analytics
    signals = settings.signals
    inference = signals.inference
    values: dict[str, object] = {
        "--bootstrap-servers": settings.kafka_bootstrap,
        "--topic": settings.klines_topic,
        "--dlq-topic": settings.dlq_topic,
        "--group-id": settings.consumer_group,
        "--max-out-of-orderness-ms": pipeline.max_out_of_orderness_ms,
        "--idleness-ms": pipeline.idleness_ms,
        "--allowed-lateness-ms": pipeline.allowed_lateness_ms,
        "--rollup-timeframes": ",".join(pipeline.rollup_timeframes) or "none",
        "--rollup-idle-close-ms": pipeline.rollup_idle_close_ms,
        "--rollup-live-horizon-ms": pipeline.rollup_live_horizon_ms,
        "--series-ttl-ms": pipeline.series_ttl_ms,
        "--source-batch-records": pipeline.source_batch_records,
        "--source-batch-bytes": pipeline.source_batch_bytes,
        "--source-batch-ms": pipeline.source_batch_ms,
        "--profile-timeframes": ",".join(analytics.profile_timeframes) or "none",
        "--profile-rows": analytics.profile_rows,
        "--profile-row-size": "none" if analytics.profile_row_size is None
        else repr(analytics.profile_row_size),
        "--profile-max-rows": analytics.profile_max_rows,
        "--clickhouse-batch-rows": sinks.clickhouse_batch_rows,
        "--clickhouse-flush-ms": sinks.clickhouse_flush_ms,
        "--clickhouse-retry-s": repr(sinks.clickhouse_retry_s),
        "--redis-batch-rows": sinks.redis_batch_rows,
        "--redis-flush-ms": sinks.redis_flush_ms,
        "--redis-recent-bars": sinks.redis_recent_bars,
        "--signal-timeframes": ",".join(signals.timeframes),
        "--inference-model": inference.model,
        "--inference-rps": repr(inference.requests_per_s),
        "--inference-tpm": repr(inference.tokens_per_min),
        "--inference-price-per-million": repr(inference.price_per_million_tokens),
        "--inference-timeout-ms": signals.timeout_ms,
        "--inference-capacity": signals.capacity,
        "--flink-conf-dir": settings.flink_conf_dir,
        "--checkpoint-dir": settings.checkpoint_dir,
        "--local-heap": settings.local_heap or "0",
    }  # fmt: skip
    optional = {
        "--parallelism": settings.parallelism,
        "--redis-ttl-s": sinks.redis_ttl_s,
        "--inference-api-key-file": inference.api_key_file,
        "--flink-option": format_flink_options(settings.flink_overrides),
    }
    switches = {
        "--rollup-emit-in-progress": pipeline.rollup_emit_in_progress,
        "--no-indicators": not analytics.indicators,
        "--no-redis-publish": not sinks.redis_publish,
        "--no-signals": not signals.enabled,
        "--bounded": settings.bounded,
    }
    args: list[str] = []
    for flag, value in values.items():
        args += [flag, str(value)]
    for flag, maybe in optional.items():
        if maybe is not None and maybe != "":
            args += [flag, str(maybe)]
    args += [flag for flag, on in switches.items() if on]
    return args


def job_fit(settings: JobSettings, parallelism_default: int, jobmanager: str) -> str | None:
    """Compare the slots the job needs with the TaskManagers registered at ``jobmanager``.

    Raises JobSetupError when the job cannot run there at all; returns a warning when it
    would not fit on the TaskManagers left after one dies (None: it would, or no
    TaskManager answers, which ``flink run`` reports itself).
    """
    from jobs.job import sink_parallelism, with_source_parallelism
    from jobs.pipeline import required_slots

    settings = with_source_parallelism(settings)
    parallelism = settings.parallelism or parallelism_default
    sources = settings.pipeline.source_parallelism or parallelism
    needed = required_slots(sources, parallelism, sink_parallelism(settings) or parallelism)
    try:
        with urllib.request.urlopen(f"http://{jobmanager}/taskmanagers", timeout=5) as response:
            slots = [int(tm["slotsNumber"]) for tm in json.load(response)["taskmanagers"]]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    if slots and needed > sum(slots):
        raise JobSetupError(
            f"the job needs {needed} task slots ({sources} partitions + parallelism "
            f"{parallelism} + the sink's), the cluster at {jobmanager} has {sum(slots)}: "
            "start it with more --job-slots or --taskmanagers"
        )
    if len(slots) > 1 and needed > sum(slots) - max(slots):
        return (
            f"warning: the job needs {needed} task slots; if a TaskManager dies, the others "
            f"have {sum(slots) - max(slots)} and the job waits until one is back "
            "(cluster up --job-slots)"
        )
    return None


def submit_job(
    settings: JobSettings,
    *,
    jobmanager: str,
    detached: bool = True,
    cluster: ClusterSettings | None = None,
) -> int:
    """Submit ``jobs/job.py`` with ``flink run`` to ``jobmanager``; returns its exit code.

    The client and the job read a configuration rendered for this job and this JobManager
    (``cluster.home/client-conf``): the job builds its environment from ``config.yaml`` of
    ``--flink-conf-dir``, whose ``rest.address``/``rest.port`` would otherwise be the ones of
    ``flink-conf/`` (:8081) and win over ``--jobmanager``. Submitting never rewrites the
    running cluster's own ``conf/``.
    """
    from jobs.job import prepare_services

    cluster = cluster or ClusterSettings()
    _link_lib(cluster)
    client_conf = cluster.home / "client-conf"
    config = cluster_flink_configuration(cluster, settings)
    host, _, port = jobmanager.rpartition(":")
    config.update({"rest.address": host or "127.0.0.1", "rest.port": port})
    _write_conf(client_conf, config, cluster.taskmanagers, cluster.rest_port)
    prepare_services(settings)
    warning = job_fit(settings, int(config.get("parallelism.default", "1")), jobmanager)
    if warning:
        print(warning, file=sys.stderr)
    settings = settings.with_overrides(flink_conf_dir=client_conf)
    command = [
        str(pyflink_home() / "bin" / "flink"), "run",
        "--jobmanager", jobmanager,
        "--pyClientExecutable", sys.executable,
        "--pyExecutable", config["python.executable"],
        *(["--detached"] if detached else []),
        "--python", str(PROJECT_ROOT / "jobs" / "job.py"),
        *job_arguments(settings),
    ]  # fmt: skip
    env = _cluster_env(cluster, conf_dir=client_conf)
    if detached:
        env[DETACHED_ENV] = "1"  # jobs/job.py then returns once the job is submitted
    else:
        env.pop(DETACHED_ENV, None)
    env["CLICKHOUSE_URL"] = settings.sinks.clickhouse_url
    env["REDIS_URL"] = settings.sinks.redis_url
    if settings.signals.inference.url:
        env["INFERENCE_URL"] = settings.signals.inference.url
    else:
        env.pop("INFERENCE_URL", None)  # the settings say: no inference
    return subprocess.run(command, env=env, cwd=PROJECT_ROOT, check=False).returncode
