"""One write at a time in a thread of its own, so the caller goes on meanwhile."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class BackgroundWriter:
    """Runs ``write(batch)`` in one background thread, one batch at a time.

    Meant for writes that spend their time outside the GIL (chdb's inserts run in C++), so
    the thread that submits them (a sink's Python worker) keeps serving its input, and its
    Redis writes, meanwhile. The caller asks :meth:`landed` whether the write finished; its
    result or its exception comes back there, in the caller's thread.
    """

    def __init__(self, write: Callable[[Sequence[Any]], int], name: str) -> None:
        self._write = write
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: Future[int] | None = None

    @property
    def busy(self) -> bool:
        """A write was submitted and its outcome not yet taken by :meth:`landed`."""
        return self._pending is not None

    def submit(self, batch: Sequence[Any]) -> None:
        """Start writing ``batch``; only when not :attr:`busy`."""
        if self._pending is not None:
            raise RuntimeError("a write is still in flight; take its outcome with landed()")
        self._pending = self._executor.submit(self._write, batch)

    def landed(self, *, wait: bool) -> int | None:
        """The rows the in-flight write wrote, once it has finished (then not :attr:`busy`);
        ``None`` when nothing is in flight or, without ``wait``, it is still running.
        Raises what the write raised."""
        pending = self._pending
        if pending is None or (not wait and not pending.done()):
            return None
        self._pending = None
        return pending.result()

    def close(self) -> None:
        """Wait for a write in flight to end (its outcome is dropped) and stop the thread."""
        self._pending = None
        self._executor.shutdown(wait=True)
