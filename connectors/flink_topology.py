"""Every reach into PyFlink's internals, in one place, each with a test of its effect.

PyFlink's Python API lacks a few things the job needs; each function here reaches into
the Java objects behind it (``_j_data_stream``, PyFlink's own Java helpers) or into a
private switch of PyFlink, and ``tests/integration/test_topology.py`` checks what each one
does to a built graph, so that an upgrade that breaks one fails a test instead of quietly
slowing the job down.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

from pyflink.datastream import DataStream, KeyedStream

# Read by PyFlink when a job starts from Python: "process" or "loopback" (its default for
# mini-clusters). Private to PyFlink, but it is how PyFlink's own tests choose.
PYTHON_WORKER_MODE_VARIABLE: Final = "_python_worker_execution_mode"


def use_python_worker_processes() -> None:
    """Run a local mini-cluster's Python operators in worker processes, as a cluster does.

    Without this PyFlink runs every Python operator of a job started from Python inside the
    calling process ("loopback" mode): one GIL, so the whole job gets one core.
    """
    os.environ[PYTHON_WORKER_MODE_VARIABLE] = "process"


# Read by PyFlink's gateway launcher (pyflink_gateway_server.py): options put first on the
# command line of the JVM a job started from Python runs in (its mini-cluster).
JVM_ARGS_VARIABLE: Final = "JVM_ARGS"


def limit_local_jvm_heap(heap: str) -> None:
    """Start the JVM of a local run (when PyFlink starts it) with ``-Xmx{heap}``.

    Only the JVM PyFlink launches itself is affected: one already running (a test session,
    ``flink run``) keeps its heap. ``JVM_ARGS`` that already set ``-Xmx`` win; ``heap`` ''
    leaves the JVM's default.
    """
    options = os.environ.get(JVM_ARGS_VARIABLE, "").split()
    if not heap or any(option.startswith("-Xmx") for option in options):
        return
    os.environ[JVM_ARGS_VARIABLE] = " ".join([*options, f"-Xmx{heap}"])


def key_by_first_field(stream: DataStream, value_type: Any) -> KeyedStream:
    """Key a stream of ``Row(key, value)`` by its first field, with no Python step.

    ``DataStream.key_by`` adds a Python map that computes the key and wraps each element in
    ``Row(key, element)``; a stream that already carries the key in that shape is keyed by
    Flink's ``KeyByKeySelector`` directly (what ``key_by`` does after its map), and the
    keyed Python function downstream receives ``value`` with ``key`` as its current key.
    ``value_type`` is the type of the second field.
    """
    from pyflink.common import Types
    from pyflink.java_gateway import get_gateway

    key_type = Types.ROW([Types.STRING()]).get_java_type_info()
    j_keyed = stream._j_data_stream.keyBy(get_gateway().jvm.KeyByKeySelector(), key_type)
    return KeyedStream(j_keyed, value_type, stream)


def name_key_step(keyed: KeyedStream, name: str, *, group: str | None = None) -> None:
    """Name (and uid) the Python key-extracting map that ``key_by`` put before ``keyed``,
    and put it in slot sharing group ``group`` (that of its producer, so PyFlink chains it
    into the producer instead of running it as a hop of its own)."""
    from pyflink.java_gateway import get_gateway

    key_map = keyed._j_data_stream.getTransformation().getInputs().get(0)
    key_map.setName(name)
    key_map.setUid(name)
    if group is not None:
        j_group = get_gateway().jvm.org.apache.flink.api.common.operators.SlotSharingGroup
        key_map.setSlotSharingGroup(j_group.newBuilder(group).build())


def transformation_uids(env: Any) -> dict[str, str | None]:
    """Name -> uid of every transformation of ``env``'s graph (before PyFlink chains it)."""
    seen: dict[int, Any] = {}
    pending = list(env._j_stream_execution_environment.getTransformations())
    while pending:
        transformation = pending.pop()
        if transformation.getId() in seen:
            continue
        seen[transformation.getId()] = transformation
        pending.extend(transformation.getInputs())
    return {t.getName(): t.getUid() for t in seen.values()}


def serialized_job_graph(env: Any) -> bytes:
    """The job graph of ``env`` as the bytes Flink ships to the cluster: every vertex's
    configuration (operators and their pickled Python functions) Java-serialized.

    PyFlink's own graph generation (``_generate_stream_graph``: Python operator chaining
    included) builds the stream graph; the transformations are kept, so the job can still
    run. For tests that look for secrets in what a submitted job carries.
    """
    from pyflink.java_gateway import get_gateway

    utils = get_gateway().jvm.org.apache.flink.util.InstantiationUtil
    job_graph = env._generate_stream_graph(clear_transformations=False).getJobGraph()
    parts = [bytes(utils.serializeObject(job_graph.getJobConfiguration()))]
    for vertex in job_graph.getVerticesAsArray():
        parts.append(bytes(utils.serializeObject(vertex.getConfiguration())))
    return b"".join(parts)


_MINI_CLUSTER_JOB_CLIENT: Final = "org.apache.flink.runtime.minicluster.MiniClusterJobClient"


def local_mini_cluster(job_client: Any) -> Any | None:
    """The Java ``MiniCluster`` that runs the job of ``job_client`` (from
    ``env.execute_async``) when it runs locally, else None (a remote cluster).

    Flink's ``MiniClusterJobClient`` keeps it in a private field.
    """
    from pyflink.util.java_utils import get_field_value

    j_client = job_client._j_job_client
    if j_client.getClass().getName() != _MINI_CLUSTER_JOB_CLIENT:
        return None
    return get_field_value(j_client, "miniCluster")


def task_managers(mini_cluster: Any) -> int:
    """How many TaskManagers are registered with the mini-cluster's ResourceManager."""
    return int(mini_cluster.getResourceOverview().get().getNumberTaskManagers())


def start_task_manager(mini_cluster: Any) -> None:
    """Start one more TaskManager in the mini-cluster (with the cluster's configuration:
    same slots and memory as the first)."""
    mini_cluster.startTaskManager()


# The Java operator of ``batch_records`` (jvm/io/klineflow/flink/RecordBatcher.java), in the
# jar ``make setup`` builds into build/flink-jars/.
RECORD_BATCHER_CLASS: Final = "io.klineflow.flink.RecordBatcher"


def batch_records(
    stream: DataStream,
    name: str,
    *,
    max_records: int,
    max_bytes: int,
    max_delay_ms: int,
) -> DataStream:
    """Pack consecutive elements of ``stream`` (bytes or str) into batches of bytes, in Java.

    Each batch is one element (``udfs.batches.unpack_batch`` reads it), sent when full, after
    ``max_delay_ms``, and before every checkpoint barrier and watermark, so the Python
    operator that follows pays PyFlink's per-element transport once per batch. The operator
    chains to ``stream``'s (same parallelism, no shuffle) and keeps no state; ``name`` is its
    name and uid.
    """
    from pyflink.common import Types

    batcher = _operators_jar_class(RECORD_BATCHER_CLASS)
    operator = batcher(int(max_records), int(max_bytes), int(max_delay_ms))
    output_type = Types.PRIMITIVE_ARRAY(Types.BYTE())
    j_stream = stream._j_data_stream.transform(name, output_type.get_java_type_info(), operator)
    return DataStream(j_stream.uid(name))


# The per-source watermark operator (jvm/io/klineflow/flink/SourceWatermarks.java), same jar.
SOURCE_WATERMARKS_CLASS: Final = "io.klineflow.flink.SourceWatermarks"


def source_watermarks(
    stream: DataStream,
    name: str,
    output_type: Any,
    *,
    out_of_orderness_ms: int,
    idleness_ms: int,
    batch_end_key: str,
) -> DataStream:
    """Event time and watermarks per source subtask, in Java, after the ingest step.

    ``stream`` carries ``Row(key, payload, source, event_time)``; the result ``Row(key,
    payload)`` (``output_type``) with ``event_time`` as each record's timestamp and the
    watermarks of a bounded-out-of-orderness generator with idleness run per source subtask
    (the Java class says how), so the ingest step may run at a lower parallelism than the
    source as long as each source subtask feeds one of its subtasks (``rescale``). The
    operator chains to ``stream``'s and keeps no state; ``name`` is its name and uid.
    """
    operator = _operators_jar_class(SOURCE_WATERMARKS_CLASS)(
        int(out_of_orderness_ms), int(idleness_ms), batch_end_key
    )
    j_stream = stream._j_data_stream.transform(name, output_type.get_java_type_info(), operator)
    return DataStream(j_stream.uid(name))


def environment_parallelism(stream: DataStream) -> int:
    """The default parallelism of the environment ``stream`` belongs to."""
    return int(stream._j_data_stream.getExecutionEnvironment().getParallelism())


# The timer-safe keyed process operator (jvm/io/klineflow/flink/TimerSafeKeyedProcessOperator
# .java), in the same jar.
TIMER_SAFE_OPERATOR_CLASS: Final = "io.klineflow.flink.TimerSafeKeyedProcessOperator"


def timer_safe_checkpoints(stream: DataStream) -> DataStream:
    """Make the checkpoints of the keyed Python operator that produced ``stream`` hold every
    timer its function registered before the barrier; returns ``stream``.

    PyFlink 2.2.1 (process mode) queues the timers a bundle registers as mailbox actions and
    takes the snapshot before running them, so a restore can bring back a key's state
    without its timers (a sink's rows never flushed, a window never fired). The operator is
    swapped for a subclass that registers them first (the Java class says how). Thread
    mode's operator is left as it is (not checked for the same fault).
    """
    transformation = stream._j_data_stream.getTransformation()
    operator_class = transformation.getOperatorFactory().getOperator().getClass().getName()
    if operator_class.endswith(".EmbeddedPythonKeyedProcessOperator"):
        return stream
    _operators_jar_class(TIMER_SAFE_OPERATOR_CLASS).install(transformation)
    return stream


def _operators_jar_class(name: str) -> Any:
    """A class of the job's own Java operators (``klineflow-operators.jar``), by full name."""
    from py4j.java_gateway import JavaClass
    from pyflink.java_gateway import get_gateway

    found: Any = get_gateway().jvm
    for part in name.split("."):
        found = getattr(found, part)
    if not isinstance(found, JavaClass):
        raise RuntimeError(
            f"{name} is not on the classpath: build/flink-jars/klineflow-operators.jar is "
            "missing or not in pipeline.jars (run `make setup`)"
        )
    return found


class _DeferredStateWrites:
    """Stands in for a Python worker's gRPC state handler while keyed state is committed.

    Appends and clears are sent at once (they keep their order: one request queue, one
    stream, served in order by the JVM) and answered with a finished future, so the commit
    goes on to the next key instead of waiting a round trip per key and state; reads pass
    through. :meth:`wait` then waits for every answer.
    """

    def __init__(self, underlying: Any) -> None:
        from apache_beam.runners.worker.sdk_worker import _Future

        self._underlying = underlying
        self._sent: list[Any] = []
        self._answered = _Future.done()  # what every deferred write returns at once

    def append_raw(self, state_key: Any, data: bytes) -> Any:
        return self._defer(self._underlying.append_raw(state_key, data))

    def clear(self, state_key: Any) -> Any:
        return self._defer(self._underlying.clear(state_key))

    def _defer(self, future: Any) -> Any:
        self._sent.append(future)
        return self._answered

    def __getattr__(self, name: str) -> Any:
        return getattr(self._underlying, name)

    def wait(self) -> None:
        """Wait for the answers to every write sent.

        Raises RuntimeError when the JVM refused a write or the state stream broke.
        """
        underlying = self._underlying
        for future in self._sent:
            while not future.wait(timeout=1.0):
                if underlying._exception is not None:
                    raise RuntimeError("the state stream to the JVM broke") from (
                        underlying._exception
                    )
                if underlying._done:
                    raise RuntimeError("the state stream to the JVM was closed")
            response = future.get()
            if response is not None and response.error:
                raise RuntimeError(f"the JVM refused a keyed-state write: {response.error}")


_PIPELINED_MARK: Final = "_klineflow_pipelined"


def pipeline_keyed_state_commits() -> None:
    """Make this Python worker's keyed-state commits send all their writes, then wait once.

    At the end of every bundle PyFlink commits every (key, state) in its state cache (up to
    ``python.state.cache-size`` entries, touched in that bundle or not: a clean one is a few
    checks, so a bundle costs O(cached keys) in Python), and each commit with writes waits
    for its own round trip to the JVM before the next is sent
    (``RemoteKeyedStateBackend.commit``). A live bundle writes a few keys with two or three
    states each, so that is several blocking round trips per update. With this,
    the writes go out back to back and the commit waits once, for all of them; what reaches
    the JVM, and in which order, is unchanged. Idempotent; call it in the worker (a
    function's ``open``).
    """
    from pyflink.fn_execution.state_impl import RemoteKeyedStateBackend

    if getattr(RemoteKeyedStateBackend.commit, _PIPELINED_MARK, False):
        return
    commit_one_by_one = RemoteKeyedStateBackend.commit

    def commit(self: Any) -> None:
        bags = self._state_handler  # Beam's caching handler (value and list state)
        maps = self._map_state_handler  # PyFlink's map state handler
        underlying = maps._underlying
        deferred = _DeferredStateWrites(underlying)
        bags._underlying = maps._underlying = deferred
        try:
            commit_one_by_one(self)
        finally:
            bags._underlying = maps._underlying = underlying
        deferred.wait()

    setattr(commit, _PIPELINED_MARK, True)
    commit.__wrapped__ = commit_one_by_one  # type: ignore[attr-defined]
    RemoteKeyedStateBackend.commit = commit


_BUNDLE_END_MARK: Final = "_klineflow_bundle_end"


def call_at_bundle_end(runtime_context: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` at the end of every bundle of the keyed Python operator whose
    ``open`` received ``runtime_context``, just before PyFlink commits its keyed state.

    PyFlink gives Python functions no bundle hook, but it ends every bundle of a keyed
    operator with ``StatefulOperation.finish``, which commits that operator's own keyed
    state backend (``runtime_context._keyed_state_backend``), in the thread that ran the
    bundle; so the commit of that one backend instance is wrapped. A bundle ends within
    ``python.fn-execution.bundle.time`` of its first element and always before a
    checkpoint barrier, so a sink can batch a bundle's rows and write them here without a
    timer (a timer round trip through the JVM costs a bundle or two). An exception from
    ``callback`` fails the bundle, as one from ``process_element`` does. Call it in
    ``open``, in the worker, once per function.
    """
    backend = getattr(runtime_context, "_keyed_state_backend", None)
    if backend is None:
        raise TypeError(
            "call_at_bundle_end needs the runtime context of a keyed Python operator "
            f"in PyFlink's process mode (got {type(runtime_context).__name__} without a "
            "keyed state backend)"
        )
    callbacks: list[Callable[[], None]] | None = getattr(backend, _BUNDLE_END_MARK, None)
    if callbacks is None:
        callbacks = []
        setattr(backend, _BUNDLE_END_MARK, callbacks)

        def commit() -> None:
            for call in callbacks:
                call()
            type(backend).commit(backend)  # the class's commit, pipelined or not

        backend.commit = commit
    callbacks.append(callback)
