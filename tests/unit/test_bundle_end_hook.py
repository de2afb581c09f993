"""``connectors.flink_topology.call_at_bundle_end`` on PyFlink's own keyed state backend (no
JVM): the callback runs at the commit that ends each bundle, before its writes go out.
``tests/integration/test_topology.py`` checks that a real worker calls it per bundle."""

from __future__ import annotations

import pytest
from pyflink.fn_execution.datastream.process.runtime_context import StreamingRuntimeContext

from connectors.flink_topology import call_at_bundle_end
from tests.unit.test_pipelined_state_commits import StateStub, _backend, _touch_keys


def _runtime_context(backend: object) -> StreamingRuntimeContext:
    return StreamingRuntimeContext("sink", "sink (1/1)", 1, 128, 0, 0, {}, None, backend, False)


def test_the_callbacks_run_in_order_before_the_bundles_writes_are_sent() -> None:
    stub = StateStub()
    backend, handler = _backend(stub)
    context = _runtime_context(backend)
    calls: list[tuple[str, int]] = []
    call_at_bundle_end(context, lambda: calls.append(("first", len(stub.requests))))
    call_at_bundle_end(context, lambda: calls.append(("second", len(stub.requests))))
    for bundle in ("bundle-1", "bundle-2"):
        with handler.process_instruction_id(bundle, []):
            _touch_keys(backend)
            backend.commit()
    assert calls == [("first", 0), ("second", 0), ("first", 24), ("second", 24)]
    assert len(stub.requests) == 48  # the commit itself still sent every write


def test_a_failing_callback_fails_the_commit_before_anything_is_sent() -> None:
    stub = StateStub()
    backend, handler = _backend(stub)

    def refuse() -> None:
        raise ConnectionError("redis is down")

    call_at_bundle_end(_runtime_context(backend), refuse)
    with handler.process_instruction_id("bundle-1", []):
        _touch_keys(backend)
        with pytest.raises(ConnectionError, match="redis is down"):
            backend.commit()
    assert stub.requests == []


def test_only_the_backend_of_that_operator_is_hooked() -> None:
    hooked, _ = _backend(StateStub())
    other_stub = StateStub()
    other, handler = _backend(other_stub)
    calls: list[int] = []
    call_at_bundle_end(_runtime_context(hooked), lambda: calls.append(1))
    with handler.process_instruction_id("bundle-1", []):
        _touch_keys(other)
        other.commit()
    assert calls == [] and len(other_stub.requests) == 24


def test_a_context_without_keyed_state_is_refused() -> None:
    with pytest.raises(TypeError, match="keyed Python operator"):
        call_at_bundle_end(_runtime_context(None), lambda: None)
