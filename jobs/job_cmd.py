"""``klineflow job run|submit`` and ``klineflow cluster up|down|status|add-taskmanager|watch``."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from jobs.cliutil import env_bool_flag, env_flag
from jobs.cluster_settings import (
    ClusterSettings,
    WatchSettings,
    add_cluster_arguments,
    add_home_argument,
    add_watch_arguments,
    cluster_settings_from_args,
    watch_settings_from_args,
)
from jobs.config import add_job_arguments, settings_from_args

# `job submit` targets the cluster on this REST port by default (`cluster --rest-port`).
REST_PORT_ENV = "KLINEFLOW_CLUSTER_REST_PORT"
CLUSTER_ACTIONS = {
    "up": "start the JobManager and --taskmanagers TaskManagers (on a running cluster: start "
    "the missing ones, e.g. after one died)",
    "down": "stop every TaskManager and the JobManager",
    "status": "the cluster and each registered TaskManager",
    "add-taskmanager": "start one more TaskManager (bin/taskmanager.sh start): brings a lost "
    "one back",
    "watch": "stay in the foreground and keep the cluster at its shape: start the JobManager "
    "or TaskManagers that are not running, with a backoff between failed starts; "
    "SIGTERM/SIGINT end it (exit 0) and leave the cluster running",
}


def register(subparsers: Any) -> None:
    """Add the ``job`` and ``cluster`` commands."""
    job = subparsers.add_parser("job", help="run the Flink job locally or submit it to a cluster")
    actions = job.add_subparsers(dest="job_action", metavar="ACTION", required=True)

    run = actions.add_parser("run", help="run the job on a local mini-cluster (blocks)")
    add_job_arguments(run)
    run.set_defaults(func=_run)

    submit = actions.add_parser("submit", help="submit the job to the standalone cluster")
    add_job_arguments(submit)
    env_flag(
        submit,
        "--jobmanager",
        env="FLINK_JOBMANAGER",
        default=f"127.0.0.1:{os.environ.get(REST_PORT_ENV) or ClusterSettings().rest_port}",
        help="REST address of the cluster's JobManager (by default on the cluster's "
        "KLINEFLOW_CLUSTER_REST_PORT)",
    )
    add_home_argument(submit)
    env_bool_flag(
        submit,
        "--wait",
        env="KLINEFLOW_SUBMIT_WAIT",
        help="block until the job ends instead of detaching",
    )
    submit.set_defaults(func=_submit)

    cluster = subparsers.add_parser(
        "cluster",
        help="the standalone Flink cluster from the PyFlink package (dashboard :8081)",
        description="; ".join(f"{name}: {text}" for name, text in CLUSTER_ACTIONS.items()),
    )
    cluster.add_argument("action", choices=tuple(CLUSTER_ACTIONS))
    add_cluster_arguments(cluster)
    add_watch_arguments(cluster)
    cluster.set_defaults(func=_cluster)


def _run(args: argparse.Namespace) -> int:
    """Run the job; a service that is down ends it with one line on stderr and exit 1."""
    from jobs.job import JobSetupError, run_job

    try:
        run_job(settings_from_args(args))
    except JobSetupError as exc:
        print(f"klineflow job run: {exc}", file=sys.stderr)
        return 1
    return 0


def _submit(args: argparse.Namespace) -> int:
    """Submit the job; a service that is down ends it with one line on stderr and exit 1."""
    from jobs.cluster import submit_job
    from jobs.job import JobSetupError

    cluster = replace(ClusterSettings(), home=Path(args.home).resolve())
    try:
        return submit_job(
            settings_from_args(args),
            jobmanager=args.jobmanager,
            detached=not args.wait,
            cluster=cluster,
        )
    except JobSetupError as exc:
        print(f"klineflow job submit: {exc}", file=sys.stderr)
        return 1


def _cluster(args: argparse.Namespace) -> int:
    from jobs import cluster

    settings = cluster_settings_from_args(args)
    watch = watch_settings_from_args(args)
    if args.watch and args.action != "up":
        print(f"klineflow cluster {args.action}: --watch goes with `up` only", file=sys.stderr)
        return 2
    if args.action == "up":
        print(cluster.cluster_up(settings), flush=True)
        if args.watch:
            return _watch(settings, watch)
    elif args.action == "down":
        print(cluster.cluster_down(settings))
    elif args.action == "add-taskmanager":
        print(cluster.add_taskmanager(settings))
    elif args.action == "watch":
        return _watch(settings, watch)
    else:
        print(cluster.cluster_status(settings))
    return 0


def _watch(settings: ClusterSettings, watch: WatchSettings) -> int:
    """``cluster watch`` in the foreground until SIGTERM/SIGINT (exit 0, cluster left running)."""
    import logging

    from jobs.cluster import Stopper, watch_cluster

    with Stopper().handling() as stopper:
        logging.getLogger("jobs.cluster").info(watch_cluster(settings, watch, stopper))
    return 0
