"""The klineflow Flink job: attach the Kafka source and the sinks around ``build_pipeline``.

Run locally with ``klineflow job run`` (a mini-cluster inside this process's JVM) or submit it
to a standalone cluster with ``klineflow job submit``, which runs this file through
``flink run --python`` (see ``main``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from connectors.flink_topology import limit_local_jvm_heap, use_python_worker_processes
from jobs.config import (
    PROJECT_ROOT,
    JobSettings,
    SinkConfig,
    add_job_arguments,
    settings_from_args,
)

log = logging.getLogger(__name__)

KAFKA_CONNECTOR_JAR_GLOB = "flink-sql-connector-kafka-*.jar"
# The job's own Java operators (jvm/), built by `make setup`.
OPERATORS_JAR = "klineflow-operators.jar"
# The scheme of an embedded ClickHouse (chdb) URL: one process per data directory.
CHDB_SCHEME = "chdb:"
BOUNDED_RUN_SETTINGS = {
    # A bounded run (replay, backfill, demo) should end: retry a couple of times, then fail
    # loudly instead of restarting forever like the streaming job.
    "restart-strategy.type": "fixed-delay",
    "restart-strategy.fixed-delay.attempts": "2",
    "restart-strategy.fixed-delay.delay": "2s",
    # It is all backlog, read as fast as it goes: large Python bundles (each bundle end
    # commits every touched key's state in blocking round trips), where a live job keeps
    # flink-conf's short bundles for latency.
    "python.fn-execution.bundle.size": "10000",
    "python.fn-execution.bundle.time": "1000",
    "execution.buffer-timeout.interval": "100ms",
}


# Set (to "1") by `klineflow job submit` unless --wait: the driver inside `flink run
# --detached` returns once the cluster has the job instead of waiting for its end.
DETACHED_ENV = "KLINEFLOW_DETACHED"
# How long the job's start waits for Kafka to answer before it gives up with one line.
SERVICE_TIMEOUT_S = 30.0


class JobSetupError(RuntimeError):
    """The job cannot start: a missing jar, config file or service."""


def load_flink_config(conf_dir: Path) -> dict[str, str]:
    """Read ``config.yaml`` (flat keys) into Flink's string form."""
    from ruamel.yaml import YAML

    path = conf_dir / "config.yaml"
    if not path.is_file():
        raise JobSetupError(f"{path} is missing: the Flink configuration lives in flink-conf/")
    data = YAML(typ="safe").load(path.read_text()) or {}
    return {str(key): _flink_value(value) for key, value in data.items()}


def _flink_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def connector_jars(jars_dir: Path) -> list[Path]:
    """The Flink connector jars (and the codecs they need) fetched by ``make setup``, and the
    job's own operators built by it."""
    jars = sorted(jars_dir.glob("*.jar"))
    if not any(jar.match(KAFKA_CONNECTOR_JAR_GLOB) for jar in jars):
        raise JobSetupError(
            f"no Kafka connector jar in {jars_dir}: run `make setup` (mvn fetches it from pom.xml)"
        )
    if not any(jar.name == OPERATORS_JAR for jar in jars):
        raise JobSetupError(
            f"no {OPERATORS_JAR} in {jars_dir}: run `make setup` (javac builds it from jvm/)"
        )
    return jars


def job_configuration(settings: JobSettings) -> dict[str, str]:
    """The Flink configuration of a run: flink-conf/config.yaml plus run-time paths."""
    config = load_flink_config(settings.flink_conf_dir)
    settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    config["execution.checkpointing.dir"] = settings.checkpoint_dir.resolve().as_uri()
    # A cluster's rendered conf names its own worker Python (jobs/cluster.py: worker_python).
    config.setdefault("python.executable", sys.executable)
    config["python.client.executable"] = sys.executable
    config["pipeline.jars"] = ";".join(
        jar.resolve().as_uri() for jar in connector_jars(settings.flink_jars_dir)
    )
    config["pipeline.name"] = settings.job_name
    if settings.bounded:
        config.update(BOUNDED_RUN_SETTINGS)
    config.update(settings.flink_overrides)
    return config


def local_configuration(settings: JobSettings) -> dict[str, str]:
    """``job_configuration`` for an in-process mini-cluster.

    Its dashboard takes the first free port from 8081 up, so a local run, the tests and a
    standalone cluster can run side by side. Its slot count follows the job: one per source
    subtask (``pipeline.source_parallelism``, when known) plus one per subtask of each
    other slot sharing group (``jobs.pipeline.required_slots``).
    """
    from jobs.pipeline import required_slots

    config = job_configuration(settings)
    config.setdefault("rest.bind-port", "8081-8180")
    parallelism = settings.parallelism or int(config.get("parallelism.default", "1"))
    source_parallelism = settings.pipeline.source_parallelism or parallelism
    sinks = sink_parallelism(settings) or parallelism
    config["taskmanager.numberOfTaskSlots"] = str(
        required_slots(source_parallelism, parallelism, sinks)
    )
    return config


def create_environment(settings: JobSettings) -> Any:
    """A StreamExecutionEnvironment configured for this job (local or inside ``flink run``).

    Local runs get Python worker processes (``use_python_worker_processes``).
    """
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    configuration = Configuration()
    for key, value in local_configuration(settings).items():
        configuration.set_string(key, value)
    use_python_worker_processes()
    env = StreamExecutionEnvironment.get_execution_environment(configuration)
    if settings.parallelism:
        env.set_parallelism(settings.parallelism)
    return env


def with_source_parallelism(settings: JobSettings) -> JobSettings:
    """``settings`` with ``pipeline.source_parallelism`` set: one source subtask per
    partition of the klines topic unless given (it decides the slots a job needs)."""
    from connectors.kafka_admin import partition_count

    if settings.pipeline.source_parallelism:
        return settings
    partitions = partition_count(settings.kafka_bootstrap, settings.klines_topic)
    return settings.with_overrides(
        pipeline=replace(settings.pipeline, source_parallelism=partitions)
    )


def store_sink_arguments(sinks: SinkConfig, *, secrets_path: Path | None = None) -> dict[str, Any]:
    """The plain values ``connectors.flink_sinks.StoreSinkFunction`` is built from.

    The function is pickled into the job graph, so it never gets a password: when a URL has
    one, both URLs are written in full to ``secrets_path`` (mode 0600), which the workers
    read, and the function gets the redacted URLs and that path. ValueError if a URL has a
    secret and no ``secrets_path`` is given.
    """
    from connectors.flink_sinks import SinkSecrets
    from connectors.redaction import redact_url

    secrets = SinkSecrets(clickhouse_url=sinks.clickhouse_url, redis_url=sinks.redis_url)
    secrets_file: str | None = None
    if secrets.needed:
        if secrets_path is None:
            raise ValueError("the sink URLs hold a password: give a secrets_path to keep it")
        secrets_file = str(secrets.write(secrets_path).resolve())
    return dict(
        clickhouse_url=redact_url(sinks.clickhouse_url),
        redis_url=redact_url(sinks.redis_url),
        secrets_file=secrets_file,
        clickhouse_batch_rows=sinks.clickhouse_batch_rows,
        clickhouse_flush_ms=sinks.clickhouse_flush_ms,
        clickhouse_retry_s=sinks.clickhouse_retry_s,
        redis_batch_rows=sinks.redis_batch_rows,
        redis_flush_ms=sinks.redis_flush_ms,
        redis_recent_bars=sinks.redis_recent_bars,
        redis_ttl_s=sinks.redis_ttl_s,
        redis_publish=sinks.redis_publish,
    )


def sink_secrets_path(settings: JobSettings) -> Path:
    """Where a run keeps its sink secrets for the workers: beside its checkpoints (the
    project's ``.klineflow/`` by default), one file per job name."""
    return settings.checkpoint_dir.resolve().parent / "secrets" / f"{settings.job_name}-sinks.json"


def inference_secrets_path(settings: JobSettings) -> Path:
    """Where a run keeps the inference URLs for its workers when one holds a password."""
    return sink_secrets_path(settings).with_name(f"{settings.job_name}-inference.json")


def uses_pipelined_commits(settings: JobSettings) -> bool:
    """Whether the job's Python workers pipeline their keyed-state commits: a live job only.

    It pays where bundles are small (live, 300 updates/s over 1,000 series: p99 0.9-1.7 s
    instead of 2.4-5 s); a bounded run's 10,000-record bundles gained nothing from it (-2 to
    -15 % in three same-run pairs).
    """
    return not settings.bounded


def sink_parallelism(settings: JobSettings) -> int | None:
    """chdb allows one process per directory: its sink runs alone (None: the job's)."""
    return 1 if settings.sinks.clickhouse_url.startswith(CHDB_SCHEME) else settings.parallelism


def attach_job(env: Any, settings: JobSettings) -> None:
    """Source -> pipeline -> sinks on ``env``: everything that touches the outside is here."""
    from pyflink.common import Types
    from pyflink.common.watermark_strategy import WatermarkStrategy

    from connectors.flink_kafka import dead_letter_sink, klines_source
    from connectors.flink_sinks import StoreSinkFunction, attach_sink
    from jobs.pipeline import SERIES_GROUP, SINKS_GROUP, build_pipeline
    from jobs.signals import with_inference

    settings = with_source_parallelism(settings)
    pipeline = settings.pipeline
    raw = (
        env.from_source(
            klines_source(
                settings.kafka_bootstrap,
                settings.klines_topic,
                settings.consumer_group,
                bounded=settings.bounded,
            ),
            # Watermarks come right after parsing (event time is the bar's open_time), in
            # one source subtask per partition: see build_pipeline.
            WatermarkStrategy.no_watermarks(),
            "kafka-klines-raw",
            type_info=Types.PRIMITIVE_ARRAY(Types.BYTE()),
        )
        .uid("kafka-klines-raw")
        .set_parallelism(pipeline.source_parallelism)
    )
    analytics = settings.analytics if settings.analytics.enabled else None
    signals = settings.signals if settings.signals.enabled else None
    pipelined_commits = uses_pipelined_commits(settings)
    streams = build_pipeline(raw, pipeline, analytics, signals,
                             pipelined_commits=pipelined_commits)  # fmt: skip
    records = streams.records
    if signals is not None and signals.inference.url:
        records = with_inference(records, signals, secrets_path=inference_secrets_path(settings))
    dead_letters = attach_sink(
        records,
        StoreSinkFunction(
            **store_sink_arguments(settings.sinks, secrets_path=sink_secrets_path(settings)),
            pipelined_commits=pipelined_commits,
        ),
        "store-sink",
        parallelism=sink_parallelism(settings),
        group=SINKS_GROUP,
        producer_group=SERIES_GROUP,
    )
    dlq = dead_letters.sink_to(dead_letter_sink(settings.kafka_bootstrap, settings.dlq_topic))
    dlq.name("kafka-klines-dlq").uid("kafka-klines-dlq")
    dlq_parallelism = sink_parallelism(settings)
    if dlq_parallelism is not None:
        dlq.set_parallelism(dlq_parallelism)


def prepare_services(settings: JobSettings) -> None:
    """Create the topics and apply the ClickHouse schema before the job starts.

    Raises :class:`JobSetupError` with one line saying which service failed and why (Kafka
    not reachable, ClickHouse down or its chdb directory in use), passwords redacted.
    """
    from kafka.errors import KafkaError

    from connectors.clickhouse import ClickHouseError, migrate
    from connectors.kafka_admin import DEAD_LETTER_TOPIC, TopicError, ensure_topics
    from connectors.redaction import redact_url

    bootstrap = settings.kafka_bootstrap
    try:
        with _quiet("kafka"):
            ensure_topics(bootstrap, [settings.klines_topic], timeout_s=SERVICE_TIMEOUT_S)
            ensure_topics(bootstrap, [settings.dlq_topic], timeout_s=SERVICE_TIMEOUT_S,
                          configs=DEAD_LETTER_TOPIC)  # fmt: skip
    except KafkaError as exc:
        raise JobSetupError(f"Kafka at {bootstrap} is not reachable: {_one_line(exc)}") from exc
    except TopicError as exc:
        raise JobSetupError(f"Kafka at {bootstrap}: {_one_line(exc)}") from exc
    url = settings.sinks.clickhouse_url
    try:
        if url.startswith(CHDB_SCHEME):
            native = _migrate_chdb_in_child(url)
        else:
            with _quiet("clickhouse_driver", "connectors"), _native_stderr() as captured:
                migrate(url)
            native = "".join(captured)
    except (ClickHouseError, ValueError) as exc:
        message = redact_url(_one_line(exc)).replace(url, redact_url(url))
        raise JobSetupError(f"ClickHouse at {redact_url(url)} is not usable: {message}") from exc
    sys.stderr.write(native)  # on success, what chdb printed is shown as it was


# Exit status of _MIGRATE_CHDB when migrate raised what prepare_services reports.
_MIGRATE_REFUSED = 3
# The child of _migrate_chdb_in_child: the URL on stdin; a refusal's message as one JSON
# string on stdout.
_MIGRATE_CHDB = f"""
import json, sys
from connectors.clickhouse import ClickHouseError, migrate
try:
    migrate(sys.stdin.read())
except (ClickHouseError, ValueError) as exc:
    print(json.dumps(str(exc)))
    sys.exit({_MIGRATE_REFUSED})
"""


def _migrate_chdb_in_child(url: str) -> str:
    """Apply the schema of an embedded chdb directory in a child process; returns what
    chdb printed to stderr.

    chdb maps ~200 MB into the process that loads it and never unloads: applied here, the
    schema would keep it in ``job run``'s process for as long as the job runs (the sink's
    Python worker loads its own). Raises ``ClickHouseError`` with the child's message when
    migrate refused (a directory held by another process, a newer schema), and when the
    child failed otherwise.
    """
    import json
    import subprocess

    from connectors.clickhouse import ClickHouseError

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if part
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", _MIGRATE_CHDB],
            input=url, capture_output=True, text=True, env=env, timeout=SERVICE_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise ClickHouseError(
            f"the schema migration did not finish within {SERVICE_TIMEOUT_S:g} s"
        ) from exc
    if done.returncode == 0:
        return done.stderr
    if done.returncode == _MIGRATE_REFUSED:
        raise ClickHouseError(json.loads(done.stdout.strip().splitlines()[-1]))
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    raise ClickHouseError(f"the schema migration failed in its child process: {last}")


@contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2 for the duration (chdb prints
    its own errors there); the yielded list holds the text afterwards."""
    import tempfile

    text: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+", errors="replace") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text.append(captured.read())


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Silence these loggers (their retries log each failed attempt with a traceback; the
    caller reports the failure once)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _one_line(exc: BaseException) -> str:
    """The exception as one short line: its first line, else its type name."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    name = type(exc).__name__
    if not first or first == name:
        return f"not reachable ({name})"
    return first[:300]


def run_job(settings: JobSettings) -> None:
    """Build and run the job, blocking until it ends (bounded) or is cancelled."""
    from jobs.worker_secrets import remove_secret_variables, with_api_key_in_file

    prepare_services(settings)
    settings = with_source_parallelism(settings)
    # Before the JVM starts: the workers inherit its environment and Beam logs it.
    settings = with_api_key_in_file(settings, sink_secrets_path(settings).parent)
    removed = remove_secret_variables(settings)
    if removed:
        log.info("kept out of the workers' environment: %s", ", ".join(removed))
    limit_local_jvm_heap(settings.local_heap)
    env = create_environment(settings)
    attach_job(env, settings)
    log.info("starting job %s (bounded=%s)", settings.job_name, settings.bounded)
    client = env.execute_async(settings.job_name)
    if os.environ.get(DETACHED_ENV) == "1":
        log.info("submitted job %s (detached): it runs on the cluster", client.get_job_id())
        return
    try:
        supervise(client)
    except KeyboardInterrupt:
        client.cancel().result()
        raise


# How often supervise() looks at the local mini-cluster's TaskManagers.
SUPERVISE_POLL_S = 1.0
# After starting a TaskManager, how long to give it to register before starting another.
TASK_MANAGER_START_GRACE_S = 60.0


def supervise(client: Any, *, poll_s: float = SUPERVISE_POLL_S) -> int:
    """Wait until the job of ``client`` (``env.execute_async``) ends; raise if it failed,
    else return how many TaskManagers it had to start.

    Meanwhile, on a local mini-cluster, bring back a TaskManager that a fatal error stopped.
    A SIGKILLed Python worker can make Beam's environment clean-up fail inside the task's
    failure handling (``DefaultJobBundleFactory``: "Reference count must not be negative"),
    which Flink treats as fatal for the whole TaskManager; the mini-cluster then stops its
    only TaskManager and never starts another, and the restarted job waits for slots for
    ever. Starting a new one lets the job restart from its last checkpoint. (The standalone
    cluster's TaskManager is a process of its own: its supervisor brings it back.)
    """
    from py4j.protocol import Py4JJavaError

    from connectors.flink_topology import local_mini_cluster, start_task_manager, task_managers

    mini_cluster = local_mini_cluster(client)
    result = client.get_job_execution_result()
    started_at = -TASK_MANAGER_START_GRACE_S
    started = 0
    while not result.done():
        if mini_cluster is not None and time.monotonic() - started_at > TASK_MANAGER_START_GRACE_S:
            try:
                lost = task_managers(mini_cluster) == 0
            except Py4JJavaError as exc:  # the cluster shuts down as the job ends
                log.debug("cannot read the mini-cluster's TaskManagers: %s", exc)
                lost = False
            if lost and not result.done():
                log.warning(
                    "the mini-cluster lost its TaskManager (a fatal error); starting a new one"
                )
                start_task_manager(mini_cluster)
                started += 1
                started_at = time.monotonic()
        time.sleep(poll_s)
    result.result()  # raises if the job failed
    return started


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for ``flink run --python jobs/job.py -- [job flags]``."""
    parser = argparse.ArgumentParser(prog="klineflow-job")
    add_job_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    run_job(settings_from_args(args))


if __name__ == "__main__":
    main()
