"""The klineflow Flink job: attach the Kafka source and the sinks around ``build_pipeline``.

Run locally with ``klineflow job run`` (a mini-cluster inside this process's JVM) or submit it
to a standalone cluster with ``klineflow job submit``, which runs this file through
``flink run --python`` (see ``main``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from connectors.flink_topology import use_python_worker_processes
from jobs.config import JobSettings, SinkConfig, add_job_arguments, settings_from_args

log = logging.getLogger(__name__)

KAFKA_CONNECTOR_JAR_GLOB = "flink-sql-connector-kafka-*.jar"
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
    """The Flink connector jars (and the codecs they need) fetched by ``make setup``."""
    jars = sorted(jars_dir.glob("*.jar"))
    if not any(jar.match(KAFKA_CONNECTOR_JAR_GLOB) for jar in jars):
        raise JobSetupError(
            f"no Kafka connector jar in {jars_dir}: run `make setup` (mvn fetches it from pom.xml)"
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


def store_sink_arguments(sinks: SinkConfig) -> dict[str, Any]:
    """The plain values ``connectors.flink_sinks.StoreSinkFunction`` is built from."""
    return dict(
        clickhouse_url=sinks.clickhouse_url,
        redis_url=sinks.redis_url,
        clickhouse_batch_rows=sinks.clickhouse_batch_rows,
        clickhouse_flush_ms=sinks.clickhouse_flush_ms,
        clickhouse_retry_s=sinks.clickhouse_retry_s,
        redis_batch_rows=sinks.redis_batch_rows,
        redis_flush_ms=sinks.redis_flush_ms,
        redis_recent_bars=sinks.redis_recent_bars,
        redis_ttl_s=sinks.redis_ttl_s,
        redis_publish=sinks.redis_publish,
    )


def sink_parallelism(settings: JobSettings) -> int | None:
    """chdb allows one process per directory: its sink runs alone (None: the job's)."""
    return 1 if settings.sinks.clickhouse_url.startswith("chdb:") else settings.parallelism


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
    streams = build_pipeline(raw, pipeline, analytics, signals)
    records = streams.records
    if signals is not None and signals.inference.url:
        records = with_inference(records, signals)
    dead_letters = attach_sink(
        records,
        StoreSinkFunction(**store_sink_arguments(settings.sinks)),
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
    """Create the topics and apply the ClickHouse schema before the job starts."""
    from connectors.clickhouse import migrate
    from connectors.kafka_admin import DEAD_LETTER_TOPIC, ensure_topics

    ensure_topics(settings.kafka_bootstrap, [settings.klines_topic])
    ensure_topics(settings.kafka_bootstrap, [settings.dlq_topic], configs=DEAD_LETTER_TOPIC)
    migrate(settings.sinks.clickhouse_url)


def run_job(settings: JobSettings) -> None:
    """Build and run the job, blocking until it ends (bounded) or is cancelled."""
    prepare_services(settings)
    settings = with_source_parallelism(settings)
    env = create_environment(settings)
    attach_job(env, settings)
    log.info("starting job %s (bounded=%s)", settings.job_name, settings.bounded)
    env.execute(settings.job_name)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for ``flink run --python jobs/job.py -- [job flags]``."""
    parser = argparse.ArgumentParser(prog="klineflow-job")
    add_job_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    run_job(settings_from_args(args))


if __name__ == "__main__":
    main()
