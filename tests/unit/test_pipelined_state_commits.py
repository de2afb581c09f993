"""``connectors.flink_topology.pipeline_keyed_state_commits``: what it does to PyFlink's
keyed-state commit, checked on PyFlink's own state backend (no JVM).

The JVM end of the state stream is played by a stub of the gRPC stub that records every
request and answers in order. With writes gated (no answer until every write of the commit
has arrived), PyFlink's own commit cannot finish, since it waits for each write's answer
before it sends the next, and the pipelined one must; ungated, both must send the same
requests in the same order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.worker.sdk_worker import GlobalCachingStateHandler, GrpcStateHandler
from apache_beam.runners.worker.statecache import StateCache
from pyflink.common import Types
from pyflink.datastream.state import MapStateDescriptor
from pyflink.fn_execution.coders import from_type_info
from pyflink.fn_execution.state_impl import RemoteKeyedStateBackend

from connectors.flink_topology import pipeline_keyed_state_commits

KEYS = [f"binance:S{index}-USDT" for index in range(8)]


class StateStub:
    """Plays the JVM's state service: answers requests in order, once ``gate`` allows."""

    def __init__(self, answer_after: int = 0) -> None:
        self.answer_after = answer_after  # hold every answer until this many requests came
        self.requests: list[beam_fn_api_pb2.StateRequest] = []
        self._arrived: queue.Queue[beam_fn_api_pb2.StateRequest | None] = queue.Queue()

    def State(self, requests: Iterator[Any]) -> Iterator[beam_fn_api_pb2.StateResponse]:
        def pump() -> None:
            for request in requests:
                self._arrived.put(request)
            self._arrived.put(None)

        threading.Thread(target=pump, daemon=True).start()
        return self._answers()

    def _answers(self) -> Iterator[beam_fn_api_pb2.StateResponse]:
        held: list[beam_fn_api_pb2.StateRequest] = []
        while True:
            request = self._arrived.get()
            if request is None:
                return
            self.requests.append(request)
            held.append(request)
            if len(self.requests) < self.answer_after:
                continue
            for waiting in held:
                yield self._answer(waiting)
            held.clear()

    @staticmethod
    def _answer(request: beam_fn_api_pb2.StateRequest) -> beam_fn_api_pb2.StateResponse:
        response = beam_fn_api_pb2.StateResponse(id=request.id)
        if request.HasField("get"):
            response.get.CopyFrom(beam_fn_api_pb2.StateGetResponse(data=b""))
        elif request.HasField("append"):
            response.append.CopyFrom(beam_fn_api_pb2.StateAppendResponse())
        else:
            response.clear.CopyFrom(beam_fn_api_pb2.StateClearResponse())
        return response


def _backend(stub: StateStub) -> tuple[RemoteKeyedStateBackend, GlobalCachingStateHandler]:
    caching = GlobalCachingStateHandler(StateCache(1000), GrpcStateHandler(stub))
    backend = RemoteKeyedStateBackend(
        caching, from_type_info(Types.STRING()), None, 1000, 1000, 1000
    )
    return backend, caching


def _bundle(stub: StateStub, commit: Any) -> None:
    """One bundle as the worker runs it: touch the keys, then commit (in one thread: the
    handlers keep the bundle in thread-local context)."""
    backend, handler = _backend(stub)
    with handler.process_instruction_id("bundle-1", []):
        _touch_keys(backend)
        commit(backend)


def _touch_keys(backend: RemoteKeyedStateBackend) -> None:
    """What a bundle does: for each key, a map put, a map remove and a value update."""
    pickled = Types.PICKLED_BYTE_ARRAY()
    map_descriptor = MapStateDescriptor("bars", Types.LONG(), pickled)
    map_coder = from_type_info(map_descriptor.type_info)
    for index, key in enumerate(KEYS):
        backend.set_current_key(key)
        bars = backend.get_map_state("bars", map_coder._key_coder, map_coder._value_coder)
        meta = backend.get_value_state("meta", from_type_info(pickled))
        bars.put(index, {"close": float(index)})
        bars.remove(index + 1000)
        meta.update({"clock": index})


def _writes(stub: StateStub) -> list[tuple[str, bytes]]:
    """The write requests (kind, encoded state key + data) in the order they arrived."""
    return [
        (request.WhichOneof("request"), request.state_key.SerializeToString()
         + (request.append.data if request.HasField("append") else b""))
        for request in stub.requests
    ]  # fmt: skip


def _run_commit(stub: StateStub, commit: Any, timeout_s: float) -> bool:
    """Whether a bundle committed with ``commit`` finished within ``timeout_s``."""
    thread = threading.Thread(target=_bundle, args=(stub, commit), daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


def test_the_pipelined_commit_sends_the_same_writes_in_the_same_order() -> None:
    pipeline_keyed_state_commits()
    pipelined = RemoteKeyedStateBackend.commit
    one_by_one = pipelined.__wrapped__
    reference, ours = StateStub(), StateStub()
    assert _run_commit(reference, one_by_one, 10.0)
    assert _run_commit(ours, pipelined, 10.0)
    assert _writes(ours) == _writes(reference)
    # Per key: one map append (the put and the remove), and a clear and an append for the
    # value.
    assert [kind for kind, _ in _writes(ours)] == ["append", "clear", "append"] * len(KEYS)


def test_the_pipelined_commit_does_not_wait_between_writes() -> None:
    pipeline_keyed_state_commits()
    writes = 3 * len(KEYS)
    gated = StateStub(answer_after=writes)
    assert _run_commit(gated, RemoteKeyedStateBackend.commit, 10.0)
    assert len(gated.requests) == writes
    # PyFlink's own commit waits for the first answer, which never comes before all writes.
    blocked = StateStub(answer_after=writes)
    assert not _run_commit(blocked, RemoteKeyedStateBackend.commit.__wrapped__, 1.0)
    assert len(blocked.requests) == 1


def test_a_refused_write_fails_the_commit() -> None:
    pipeline_keyed_state_commits()

    class RefusingStub(StateStub):
        @staticmethod
        def _answer(request: beam_fn_api_pb2.StateRequest) -> beam_fn_api_pb2.StateResponse:
            return beam_fn_api_pb2.StateResponse(id=request.id, error="no such state")

    with pytest.raises(RuntimeError, match="refused a keyed-state write: no such state"):
        _bundle(RefusingStub(), RemoteKeyedStateBackend.commit)


def test_applying_it_twice_wraps_once() -> None:
    pipeline_keyed_state_commits()
    first = RemoteKeyedStateBackend.commit
    pipeline_keyed_state_commits()
    assert RemoteKeyedStateBackend.commit is first
    assert not hasattr(first.__wrapped__, "__wrapped__")


@pytest.fixture
def unpipelined() -> Iterator[None]:
    """PyFlink's own commit for the test; whatever was there before afterwards."""
    before = RemoteKeyedStateBackend.commit
    RemoteKeyedStateBackend.commit = getattr(before, "__wrapped__", before)
    yield
    RemoteKeyedStateBackend.commit = before


def _pipelined() -> bool:
    return hasattr(RemoteKeyedStateBackend.commit, "__wrapped__")


def test_the_series_worker_pipelines_its_commits() -> None:
    from jobs.config import PipelineConfig
    from jobs.pipeline import series_function

    assert series_function(PipelineConfig()).worker_setup is pipeline_keyed_state_commits
    assert series_function(PipelineConfig(), pipelined_commits=False).worker_setup is None


@pytest.mark.usefixtures("unpipelined")
def test_a_sink_worker_pipelines_its_commits_when_it_opens_unless_told_not_to() -> None:
    from collections.abc import Sequence

    from connectors.flink_sinks import BatchingSinkFunction

    class NullSink(BatchingSinkFunction):
        def connect(self) -> None:
            pass

        def write_batch(self, batch: Sequence[Any]) -> int:
            return len(batch)

        def disconnect(self) -> None:
            pass

    class RuntimeContext:  # what ``open`` asks of PyFlink's
        def get_list_state(self, _descriptor: Any) -> list[Any]:
            return []

        def get_metrics_group(self) -> Any:
            class Group:
                def counter(self, _name: str) -> None:
                    return None

            return Group()

    assert not _pipelined()
    NullSink(10, 100, pipelined_commits=False).open(RuntimeContext())  # type: ignore[arg-type]
    assert not _pipelined()
    NullSink(10, 100).open(RuntimeContext())  # type: ignore[arg-type]
    assert _pipelined()


def test_only_a_live_job_pipelines_its_commits() -> None:
    from jobs.config import JobSettings
    from jobs.job import uses_pipelined_commits

    assert uses_pipelined_commits(JobSettings(bounded=False))
    assert not uses_pipelined_commits(JobSettings(bounded=True))
