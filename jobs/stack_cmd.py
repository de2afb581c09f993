"""``klineflow stack up|down|status``: the local Kafka broker and Redis (or a Redis Cluster)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from jobs.cliutil import env_bool_flag, env_flag
from jobs.stack import ServiceStatus, StackConfig, StackError
from jobs.stack_control import stack_down, stack_status, stack_up

ACTIONS = ("up", "down", "status")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``stack`` command to the ``klineflow`` parser."""
    parser = subparsers.add_parser(
        "stack",
        help="start, stop or inspect the local Kafka broker and Redis",
        description=(
            "The local stack: a single-node Apache Kafka broker (KRaft) and a Redis server, "
            "both on 127.0.0.1, with data, logs and pid files under --stack-dir. "
            "`up` waits until both answer (exit 1 with the log tail if not), `down` stops "
            "them (SIGTERM, then SIGKILL), `status` exits 0 only if both run and answer. "
            "With --redis-cluster, a Redis Cluster of 3 primaries and 3 replicas takes the "
            "single Redis's place, with --kafka-brokers N a KRaft cluster of N brokers the "
            "single broker's; `down` stops either kind."
        ),
    )
    parser.add_argument("action", choices=ACTIONS, help="what to do")
    add_stack_arguments(parser)
    parser.set_defaults(func=run_stack)


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """The stack's flags (also used by ``klineflow demo``); defaults: :class:`StackConfig`'s."""
    stack = StackConfig()
    env_flag(
        parser,
        "--stack-dir",
        env="KLINEFLOW_STACK_DIR",
        default=stack.home,
        type=Path,
        help="data, logs and pid files of the stack",
    )
    env_flag(
        parser,
        "--kafka-port",
        env="KLINEFLOW_KAFKA_PORT",
        default=stack.kafka_port,
        type=int,
        help="Kafka PLAINTEXT listener port on 127.0.0.1",
    )
    env_flag(
        parser,
        "--kafka-controller-port",
        env="KLINEFLOW_KAFKA_CONTROLLER_PORT",
        default=stack.kafka_controller_port,
        type=int,
        help="Kafka KRaft controller listener port on 127.0.0.1",
    )
    env_flag(
        parser,
        "--redis-port",
        env="KLINEFLOW_REDIS_PORT",
        default=stack.redis_port,
        type=int,
        help="Redis port on 127.0.0.1",
    )
    env_flag(
        parser,
        "--kafka-brokers",
        env="KLINEFLOW_KAFKA_BROKERS",
        default=stack.kafka_brokers,
        type=int,
        help=(
            "Kafka brokers: 1, or a KRaft cluster of N on --kafka-port .. +N-1 (controllers "
            "100 above; topics get replication factor 3 and min.insync.replicas 2 from 3)"
        ),
    )
    env_bool_flag(
        parser,
        "--redis-cluster",
        env="KLINEFLOW_REDIS_CLUSTER",
        help="a Redis Cluster (3 primaries + 3 replicas) instead of the single Redis",
    )
    env_flag(
        parser,
        "--redis-cluster-port",
        env="KLINEFLOW_REDIS_CLUSTER_PORT",
        default=stack.redis_cluster_port,
        type=int,
        help="first port of the Redis Cluster's six nodes on 127.0.0.1 (buses 10000 above)",
    )
    env_flag(
        parser,
        "--redis-cluster-node-timeout-ms",
        env="KLINEFLOW_REDIS_CLUSTER_NODE_TIMEOUT_MS",
        default=stack.redis_cluster_node_timeout_ms,
        type=int,
        help="cluster-node-timeout: how long a silent primary lasts before its replica takes over",
    )
    env_flag(
        parser,
        "--kafka-libs",
        env="KLINEFLOW_KAFKA_LIBS",
        default=stack.kafka_libs,
        type=Path,
        help="the Kafka broker's jars (`make setup` fills it)",
    )
    env_flag(
        parser,
        "--kafka-heap",
        env="KLINEFLOW_KAFKA_HEAP",
        default=stack.kafka_heap,
        help="the Kafka broker's JVM heap (-Xms/-Xmx)",
    )
    env_flag(
        parser,
        "--timeout",
        env="KLINEFLOW_STACK_TIMEOUT",
        default=90.0,
        type=float,
        help="seconds to wait for each service to start or stop",
    )


def config_from_args(args: argparse.Namespace) -> StackConfig:
    """The :class:`StackConfig` the parsed flags describe."""
    return StackConfig(
        home=args.stack_dir,
        kafka_port=args.kafka_port,
        kafka_brokers=args.kafka_brokers,
        kafka_controller_port=args.kafka_controller_port,
        redis_port=args.redis_port,
        redis_cluster=args.redis_cluster,
        redis_cluster_port=args.redis_cluster_port,
        redis_cluster_node_timeout_ms=args.redis_cluster_node_timeout_ms,
        kafka_libs=args.kafka_libs,
        kafka_heap=args.kafka_heap,
    )


def format_status_table(statuses: Sequence[ServiceStatus]) -> str:
    """A small aligned table: service, state, pid, address, log file."""
    rows = [("SERVICE", "STATE", "PID", "ADDRESS", "LOG")]
    rows += [
        (
            status.name,
            status.state,
            str(status.pid) if status.pid is not None else "-",
            status.address,
            str(status.log_file),
        )
        for status in statuses
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    )


def run_stack(args: argparse.Namespace) -> int:
    """Run ``klineflow stack ACTION``; returns the exit code."""
    # kafka-python logs every refused connection of the start-up health check at ERROR.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    config = config_from_args(args)
    if args.action == "up":
        try:
            statuses = stack_up(config, timeout_s=args.timeout)
        except StackError as exc:
            print(f"klineflow stack up failed: {exc}", file=sys.stderr)
            print(format_status_table(stack_status(config)), file=sys.stderr)
            return 1
        print(format_status_table(statuses))
        kafka, redis = statuses
        print(f"\nexport KAFKA_BOOTSTRAP_SERVERS={kafka.address} REDIS_URL={redis.address}")
        return 0
    if args.action == "down":
        try:
            statuses = stack_down(config, timeout_s=args.timeout)
        except StackError as exc:
            print(f"klineflow stack down failed: {exc}", file=sys.stderr)
            return 1
        print(format_status_table(statuses))
        return 0
    statuses = stack_status(config)
    print(format_status_table(statuses))
    return 0 if all(status.state == "running" for status in statuses) else 1
