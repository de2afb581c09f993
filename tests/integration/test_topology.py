"""The job's graph as built: every reach into PyFlink internals does what it claims
(``connectors.flink_topology``), and the set of operator uids is pinned so that a change
that breaks savepoints shows up here.

Builds the graph of ``attach_job`` without running it (no broker is contacted: the source
parallelism is given).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyflink.common import Configuration
from pyflink.datastream import KeyedProcessFunction, StreamExecutionEnvironment

from connectors.flink_topology import (
    JVM_ARGS_VARIABLE,
    PYTHON_WORKER_MODE_VARIABLE,
    SOURCE_WATERMARKS_CLASS,
    TIMER_SAFE_OPERATOR_CLASS,
    transformation_uids,
)
from jobs.config import JobSettings, PipelineConfig
from jobs.job import attach_job, create_environment, local_configuration
from jobs.signals import SignalConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY_BY_MAP = "_stream_key_by_map_operator"
# Every stateful or named operator of the job, by name = uid. Changing this set (or a uid)
# makes old savepoints unusable for that operator: do it on purpose, say so in the notes.
JOB_UIDS = {
    "kafka-klines-raw",
    "batch-records",
    "ingest",
    "event-time-watermarks",
    "series",
    "store-sink-key",
    "store-sink",
    "kafka-klines-dlq",
}
INFERENCE_UIDS = {"signal-requests", "series-records", "signal-inference"}


def job_settings(tmp_path: Path, **changes: Any) -> JobSettings:
    return JobSettings(
        checkpoint_dir=tmp_path / "checkpoints",
        parallelism=2,
        pipeline=PipelineConfig(source_parallelism=4),
        **changes,
    )


def local_environment(settings: JobSettings, *, parallelism: int) -> Any:
    """A mini-cluster environment with the job's local configuration (jars included)."""
    configuration = Configuration()
    for key, value in local_configuration(settings).items():
        configuration.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(configuration)
    env.set_parallelism(parallelism)
    return env


@pytest.fixture()
def built(tmp_path: Path) -> Iterator[tuple[Any, JobSettings]]:
    settings = job_settings(tmp_path)
    env = local_environment(settings, parallelism=2)
    attach_job(env, settings)
    yield env, settings


def _graph(env: Any) -> dict[str, Any]:
    """Name -> Java transformation."""
    seen: dict[str, Any] = {}
    pending = list(env._j_stream_execution_environment.getTransformations())
    while pending:
        transformation = pending.pop()
        if transformation.getName() not in seen:
            seen[transformation.getName()] = transformation
            pending.extend(transformation.getInputs())
    return seen


def test_every_operator_has_its_pinned_uid(built: tuple[Any, JobSettings]) -> None:
    env, _ = built
    uids = {uid for uid in transformation_uids(env).values() if uid is not None}
    assert uids == JOB_UIDS
    unnamed = [
        name for name, uid in transformation_uids(env).items()
        if uid is None and not name.startswith(("Partition", "Union"))
    ]  # fmt: skip
    assert unnamed == []


def test_inference_adds_its_operators_with_uids(tmp_path: Path) -> None:
    from connectors.inference import InferenceSettings

    settings = job_settings(
        tmp_path, signals=SignalConfig(inference=InferenceSettings(url="http://127.0.0.1:9/v1"))
    )
    env = StreamExecutionEnvironment.get_execution_environment(Configuration())
    attach_job(env, settings)
    uids = {uid for uid in transformation_uids(env).values() if uid is not None}
    assert uids == JOB_UIDS | INFERENCE_UIDS


def test_the_plan_has_three_python_steps_and_no_python_key_step(
    built: tuple[Any, JobSettings],
) -> None:
    """What PyFlink runs: the ingest step, the series operator with the sink's key step
    chained into it, and the sink; Flink itself keys the series operator's input, and the
    ingest step takes each source subtask's batches whole (rescale)."""
    env, _ = built
    nodes = {node["contents"]: node for node in json.loads(env.get_execution_plan())["nodes"]}
    by_id = {node["id"]: name for name, node in nodes.items()}
    (edge,) = nodes["ingest"]["predecessors"]
    assert (by_id[edge["id"]], edge["ship_strategy"]) == ("batch-records", "RESCALE")
    (edge,) = nodes["event-time-watermarks"]["predecessors"]
    assert (by_id[edge["id"]], edge["ship_strategy"]) == ("ingest", "FORWARD")
    series = nodes["series, store-sink-key"]
    (edge,) = series["predecessors"]
    assert (by_id[edge["id"]], edge["ship_strategy"]) == ("event-time-watermarks", "HASH")
    (edge,) = nodes["store-sink"]["predecessors"]
    assert (by_id[edge["id"]], edge["ship_strategy"]) == ("series, store-sink-key", "HASH")
    assert not any(KEY_BY_MAP in name for name in nodes)
    assert (series["parallelism"], nodes["store-sink"]["parallelism"]) == (2, 1)


def test_the_source_runs_one_subtask_per_partition_and_ingest_the_jobs_parallelism(
    built: tuple[Any, JobSettings],
) -> None:
    """Four partitions at parallelism 2: two Python ingest workers, not four; the watermarks
    stay per source subtask (``source_watermarks``)."""
    env, settings = built
    graph = _graph(env)
    partitions = settings.pipeline.source_parallelism
    assert graph["batch-records"].getParallelism() == partitions
    for name in ("ingest", "event-time-watermarks", "series"):
        assert graph[name].getParallelism() == 2, name
    operator = graph["event-time-watermarks"].getOperatorFactory().getOperator()
    assert operator.getClass().getName() == SOURCE_WATERMARKS_CLASS
    assert graph["store-sink"].getParallelism() == 1  # chdb: one writer


def test_keyed_python_operators_checkpoint_their_timers(built: tuple[Any, JobSettings]) -> None:
    """The series operator and the sink run the timer-safe operator
    (``timer_safe_checkpoints``), also once PyFlink has fused the sink's key step into the
    series operator."""
    env, _ = built
    graph = _graph(env)
    for name in ("series", "store-sink"):
        operator = graph[name].getOperatorFactory().getOperator()
        assert operator.getClass().getName() == TIMER_SAFE_OPERATOR_CLASS, name
    stream_graph = env._generate_stream_graph(clear_transformations=False)
    operators = {
        node.getOperatorName(): node.getOperatorFactory().getOperator().getClass().getName()
        for node in stream_graph.getStreamNodes().toArray()
        if node.getOperatorName() in ("series, store-sink-key", "store-sink")
    }
    assert operators == {
        "series, store-sink-key": TIMER_SAFE_OPERATOR_CLASS,
        "store-sink": TIMER_SAFE_OPERATOR_CLASS,
    }


def test_local_runs_get_python_worker_processes(tmp_path: Path) -> None:
    os.environ.pop(PYTHON_WORKER_MODE_VARIABLE, None)
    create_environment(job_settings(tmp_path))
    assert os.environ[PYTHON_WORKER_MODE_VARIABLE] == "process"


# Starts PyFlink's JVM the way a local run does and prints the heap it got.
_MAX_HEAP_SCRIPT = """
import sys
from connectors.flink_topology import limit_local_jvm_heap
limit_local_jvm_heap(sys.argv[1])
from pyflink.java_gateway import get_gateway
print(get_gateway().jvm.java.lang.Runtime.getRuntime().maxMemory())
"""


def _local_jvm_max_heap(heap: str, jvm_args: str | None) -> int:
    env = {name: value for name, value in os.environ.items() if name != JVM_ARGS_VARIABLE}
    if jvm_args is not None:
        env[JVM_ARGS_VARIABLE] = jvm_args
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _MAX_HEAP_SCRIPT, heap],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return int(done.stdout.split()[-1])


def test_local_runs_start_their_jvm_with_the_heap_limit() -> None:
    mib = 1 << 20
    assert _local_jvm_max_heap("256m", None) <= 256 * mib
    # JVM_ARGS that set a heap win; other options in them are kept.
    assert _local_jvm_max_heap("256m", "-Xmx384m -Dklineflow.test=1") > 256 * mib
    # '' leaves the JVM's own default: a quarter of the RAM, far above 256 MiB here.
    assert _local_jvm_max_heap("", None) > 1024 * mib


def _unpacked(batch: bytes) -> list[str]:
    from udfs.batches import unpack_batch

    return [record.decode() for record in unpack_batch(batch)]


def test_batch_records_packs_records_in_order_by_count_and_bytes(tmp_path: Path) -> None:
    from pyflink.common import Types

    from connectors.flink_topology import batch_records

    env = local_environment(job_settings(tmp_path), parallelism=1)
    records = [f"record-{index:02d}" for index in range(10)]  # 9 bytes each, 13 framed
    raw = env.from_collection(records, type_info=Types.STRING())
    by_count = batch_records(raw, "by-count", max_records=3, max_bytes=10_000, max_delay_ms=60_000)
    # 44 bytes: the 4-byte source header and three framed records stay under it, four reach it.
    by_bytes = batch_records(raw, "by-bytes", max_records=100, max_bytes=44, max_delay_ms=60_000)
    pickled = Types.PICKLED_BYTE_ARRAY()
    tagged = by_count.map(lambda batch: ("count", _unpacked(batch)), output_type=pickled).union(
        by_bytes.map(lambda batch: ("bytes", _unpacked(batch)), output_type=pickled)
    )
    assert transformation_uids(env)["by-count"] == "by-count"
    with tagged.execute_and_collect("test-batch-records") as results:
        batches = list(results)
    # Without the batch that announces the source (no records), if it came first.
    count = [batch for tag, batch in batches if tag == "count" and batch]
    size = [batch for tag, batch in batches if tag == "bytes" and batch]
    # The last, partial batch is sent at the end of the input (not after the 60 s delay).
    assert [len(batch) for batch in count] == [3, 3, 3, 1]
    assert [len(batch) for batch in size] == [4, 4, 2]  # sent once 44 bytes are reached
    assert [record for batch in count for record in batch] == records
    assert [record for batch in size for record in batch] == records


def test_batch_records_sends_a_batch_once_its_first_record_waited_max_delay(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: Any
) -> None:
    """Live input (an unbounded Kafka source): a batch goes out max_delay_ms after its first
    record, not only when full or at a checkpoint."""
    import threading
    import time

    from pyflink.common import Types
    from pyflink.common.watermark_strategy import WatermarkStrategy

    from connectors.flink_kafka import klines_source
    from connectors.flink_topology import batch_records
    from connectors.kafka_producer import create_producer

    env = local_environment(job_settings(tmp_path), parallelism=1)
    source = klines_source(kafka_bootstrap, kafka_topics.raw, "batch-delay", bounded=False)
    raw = env.from_source(source, WatermarkStrategy.no_watermarks(), "raw",
                          type_info=Types.PRIMITIVE_ARRAY(Types.BYTE()))  # fmt: skip
    batches = batch_records(raw, "by-delay", max_records=1000, max_bytes=1 << 20, max_delay_ms=20)
    records = [f"record-{index:02d}" for index in range(6)]

    running = threading.Event()

    def produce() -> None:
        producer = create_producer(kafka_bootstrap)
        for index, record in enumerate(records):
            producer.send(kafka_topics.raw, value=record.encode(), partition=0)
            producer.flush()
            if index == 0:
                running.wait(timeout=120)  # the job is up once the first record came back
            time.sleep(0.3)  # pacing: records arrive one by one, as live updates do
        producer.close()

    sent: list[list[str]] = []
    with batches.map(_unpacked, output_type=Types.PICKLED_BYTE_ARRAY()).execute_and_collect(
        "test-batch-records-delay"
    ) as results:
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        for batch in results:
            if not batch:
                continue  # the batch that announces the source
            sent.append(batch)
            running.set()
            if sum(map(len, sent)) >= len(records):
                break
    producer.join(timeout=30)
    assert [record for batch in sent for record in batch] == records
    # Checkpoints come every 10 s: without the delay the five paced records (1.5 s) would
    # travel together.
    assert len(sent) >= 4


class _BundleEndCounter(KeyedProcessFunction):  # type: ignore[misc]
    """Emits each value with the number of this operator's bundles that had ended before."""

    def open(self, runtime_context: Any) -> None:
        from connectors.flink_topology import call_at_bundle_end

        self.ended = 0
        call_at_bundle_end(runtime_context, self._bundle_ended)

    def _bundle_ended(self) -> None:
        self.ended += 1

    def process_element(self, value: int, ctx: Any) -> Iterator[tuple[int, int]]:
        yield value, self.ended


def test_call_at_bundle_end_runs_at_the_end_of_each_bundle_of_a_worker(tmp_path: Path) -> None:
    from pyflink.common import Types

    # Bundles of 3 elements (and a bundle time no run of 9 elements reaches).
    settings = job_settings(tmp_path, flink_overrides=(
        ("python.fn-execution.bundle.size", "3"), ("python.fn-execution.bundle.time", "60000"),
    ))  # fmt: skip
    env = local_environment(settings, parallelism=1)
    values = env.from_collection(list(range(9)), type_info=Types.INT())
    counted = values.key_by(lambda value: 0, key_type=Types.INT()).process(
        _BundleEndCounter(), output_type=Types.TUPLE([Types.INT(), Types.INT()])
    )
    with counted.execute_and_collect("test-bundle-end") as results:
        seen = sorted((value, ended) for value, ended in results)
    assert seen == [(value, value // 3) for value in range(9)]
