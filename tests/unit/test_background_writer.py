"""``connectors.background_writer.BackgroundWriter``: one write at a time, off the caller's
thread, its outcome taken back in the caller's thread."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from connectors.background_writer import BackgroundWriter


class GatedWrite:
    """A write that blocks until the test opens its gate, and records its thread."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.threads: list[str] = []

    def __call__(self, batch: Sequence[Any]) -> int:
        self.threads.append(threading.current_thread().name)
        if not self.gate.wait(10):
            raise TimeoutError("the test never opened the gate")
        if "bad" in batch:
            raise ValueError("a row the store refuses")
        return len(batch)


def test_a_write_runs_in_its_own_thread_while_the_caller_goes_on() -> None:
    write = GatedWrite()
    writer = BackgroundWriter(write, "sink-writer")
    try:
        writer.submit([1, 2, 3])
        assert writer.busy
        assert writer.landed(wait=False) is None  # still running: the caller is not held
        write.gate.set()
        assert writer.landed(wait=True) == 3
        assert not writer.busy and writer.landed(wait=True) is None
        assert write.threads[0].startswith("sink-writer")
        assert write.threads[0] != threading.current_thread().name
    finally:
        writer.close()


def test_only_one_write_is_in_flight() -> None:
    write = GatedWrite()
    writer = BackgroundWriter(write, "sink-writer")
    try:
        writer.submit([1])
        with pytest.raises(RuntimeError, match="still in flight"):
            writer.submit([2])
        write.gate.set()
        assert writer.landed(wait=True) == 1
        writer.submit([2])
        assert writer.landed(wait=True) == 1
    finally:
        writer.close()


def test_the_writes_error_comes_back_to_the_caller() -> None:
    write = GatedWrite()
    write.gate.set()
    writer = BackgroundWriter(write, "sink-writer")
    try:
        writer.submit(["bad"])
        with pytest.raises(ValueError, match="refuses"):
            writer.landed(wait=True)
        assert not writer.busy  # the failed write is taken: the caller decides what next
    finally:
        writer.close()


def test_close_waits_for_the_write_in_flight() -> None:
    write = GatedWrite()
    writer = BackgroundWriter(write, "sink-writer")
    writer.submit([1])
    closer = threading.Thread(target=writer.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # held by the running write
    write.gate.set()
    closer.join(10)
    assert not closer.is_alive()
