"""Where the standalone Flink cluster lives and how big it is: one small frozen object.

``klineflow cluster up|down|status|add-taskmanager|watch`` and ``job submit`` read it from
flags that fall back to environment variables (``add_cluster_arguments``), so a test can run
its own cluster in a temporary directory on free loopback ports, beside a developer's cluster
in ``.klineflow/cluster`` on :8081. How ``cluster watch`` supervises it is
:class:`WatchSettings` (``add_watch_arguments``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from jobs.cliutil import default_of, env_bool_flag, env_flag
from jobs.config import STATE_DIR


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """A standalone cluster: its home directory, ports, TaskManagers and slots.

    ``job_slots`` is what the largest job submitted needs (``jobs.pipeline.required_slots``:
    one per Kafka partition, plus the series group's parallelism, plus the sink's: 1 with
    chdb). The default, 8, fits the 4 partitions of ``klines.raw`` at parallelism 2 with a
    server ClickHouse (4 + 2 + 2) or at parallelism 3 with chdb (4 + 3 + 1).
    """

    home: Path = STATE_DIR / "cluster"
    rest_port: int = 8081
    rpc_port: int = 6123
    taskmanagers: int = 1
    job_slots: int = 8

    def __post_init__(self) -> None:
        if self.taskmanagers < 1:
            raise ValueError(f"taskmanagers must be >= 1, got {self.taskmanagers}")
        if self.job_slots < 1:
            raise ValueError(f"job_slots must be >= 1, got {self.job_slots}")

    @property
    def rest_url(self) -> str:
        """The JobManager's REST API and dashboard."""
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def jobmanager(self) -> str:
        """The ``--jobmanager`` address of ``flink run`` for this cluster."""
        return f"127.0.0.1:{self.rest_port}"

    @property
    def slots_per_taskmanager(self) -> int:
        """Slots of each TaskManager: the whole job fits on the TaskManagers left after one
        dies (on the only one, when there is one)."""
        survivors = max(self.taskmanagers - 1, 1)
        return math.ceil(self.job_slots / survivors)


def add_home_argument(parser: argparse.ArgumentParser) -> None:
    """``--home``: the cluster's directory (``job submit`` renders its client conf there)."""
    env_flag(
        parser,
        "--home",
        env="KLINEFLOW_CLUSTER_HOME",
        type=Path,
        default=default_of(ClusterSettings, "home"),
        help="directory of the cluster's rendered conf, lib, logs and pid files",
    )


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The cluster's flags; each falls back to an environment variable named in --help."""
    add_home_argument(parser)
    env_flag(
        parser,
        "--rest-port",
        env="KLINEFLOW_CLUSTER_REST_PORT",
        type=int,
        default=default_of(ClusterSettings, "rest_port"),
        help="the JobManager's REST port (dashboard, flink run) on 127.0.0.1",
    )
    env_flag(
        parser,
        "--rpc-port",
        env="KLINEFLOW_CLUSTER_RPC_PORT",
        type=int,
        default=default_of(ClusterSettings, "rpc_port"),
        help="the JobManager's RPC port on 127.0.0.1 (TaskManagers register there)",
    )
    env_flag(
        parser,
        "--taskmanagers",
        env="KLINEFLOW_TASKMANAGERS",
        type=int,
        default=default_of(ClusterSettings, "taskmanagers"),
        help="TaskManagers to run (each sized so the job fits on the others if one dies)",
    )
    env_flag(
        parser,
        "--job-slots",
        env="KLINEFLOW_JOB_SLOTS",
        type=int,
        default=default_of(ClusterSettings, "job_slots"),
        help="task slots the largest job needs: partitions + parallelism + sink parallelism "
        "(1 with chdb)",
    )


def cluster_settings_from_args(args: argparse.Namespace) -> ClusterSettings:
    """Build the frozen settings from parsed flags."""
    return ClusterSettings(
        home=Path(args.home).resolve(),
        rest_port=args.rest_port,
        rpc_port=args.rpc_port,
        taskmanagers=args.taskmanagers,
        job_slots=args.job_slots,
    )


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """How ``klineflow cluster watch`` supervises the cluster.

    ``interval_s``: the time between two looks at the cluster's daemons (a TaskManager that
    dies is noticed within it). ``start_timeout_s``: how long a daemon the watch starts may
    take to answer (the JobManager's REST API) or register (a TaskManager) before the start
    counts as failed and the next attempt waits for the backoff.
    """

    interval_s: float = 5.0
    start_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        if not self.start_timeout_s > 0:
            raise ValueError(f"start_timeout_s must be > 0, got {self.start_timeout_s}")


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``cluster watch`` (and ``cluster up --watch``), each with its variable."""
    group = parser.add_argument_group("cluster watch (and cluster up --watch)")
    env_flag(
        group,
        "--interval-s",
        env="KLINEFLOW_WATCH_INTERVAL_S",
        type=float,
        default=default_of(WatchSettings, "interval_s"),
        help="seconds between two looks at the JobManager and the TaskManagers",
    )
    env_flag(
        group,
        "--start-timeout-s",
        env="KLINEFLOW_WATCH_START_TIMEOUT_S",
        type=float,
        default=default_of(WatchSettings, "start_timeout_s"),
        help="seconds a daemon the watch starts may take to answer or register before the "
        "start counts as failed (and is retried after a backoff)",
    )
    env_bool_flag(
        group,
        "--watch",
        env="KLINEFLOW_CLUSTER_WATCH",
        help="cluster up only: then stay in the foreground as `cluster watch`",
    )


def watch_settings_from_args(args: argparse.Namespace) -> WatchSettings:
    """Build the watch's frozen settings from parsed flags."""
    return WatchSettings(interval_s=args.interval_s, start_timeout_s=args.start_timeout_s)
