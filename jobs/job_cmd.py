"""``klineflow job run|submit`` and ``klineflow cluster up|down|status``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jobs.cliutil import env_bool_flag, env_flag
from jobs.config import add_job_arguments, settings_from_args


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
        default="127.0.0.1:8081",
        help="REST address of the cluster's JobManager",
    )
    env_bool_flag(
        submit,
        "--wait",
        env="KLINEFLOW_SUBMIT_WAIT",
        help="block until the job ends instead of detaching",
    )
    submit.set_defaults(func=_submit)

    cluster = subparsers.add_parser(
        "cluster", help="the standalone Flink cluster from the PyFlink package (dashboard :8081)"
    )
    cluster.add_argument("action", choices=("up", "down", "status"))
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

    try:
        return submit_job(
            settings_from_args(args), jobmanager=args.jobmanager, detached=not args.wait
        )
    except JobSetupError as exc:
        print(f"klineflow job submit: {exc}", file=sys.stderr)
        return 1


def _cluster(args: argparse.Namespace) -> int:
    from jobs import cluster

    if args.action == "up":
        print(cluster.cluster_up())
    elif args.action == "down":
        print(cluster.cluster_down())
    else:
        print(cluster.cluster_status())
    return 0
