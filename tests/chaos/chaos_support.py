"""Helpers of the chaos suite: finding and killing the job's Python workers, reading the
Flink REST API, and comparing a run's outputs with the golden snapshot of a clean run.

The golden snapshot (``tests/golden/job_contract_snapshot.json``, pinned by
``test_job_contract.test_golden_snapshot``) is the independent reference: every ClickHouse
table under FINAL with versions, every Redis key and every dead letter of the golden input.
A run with faults injected must end in exactly it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tests.integration.job_contract_support import (
    clickhouse_snapshot,
    dead_letters,
    differences,
    dump_golden,
    rest_json,
)
from tests.integration.test_job_contract import GOLDEN_PATH, distinct

# The module every PyFlink Python worker runs (process mode).
WORKER_MODULE = "pyflink.fn_execution.beam.beam_boot"


@dataclass(frozen=True)
class Worker:
    """A Python worker process of this test's mini-cluster, with the CPU time it used."""

    pid: int
    holds_chdb: bool
    cpu_ticks: int = 0


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, started by any of its threads (the JVM starts the
    workers from many threads, and ``/proc`` lists children per thread)."""
    children: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as handle:
                children.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return children


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _holds_chdb(pid: int) -> bool:
    """Whether the process has a file of a chdb data directory open (the sink's worker)."""
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
        except OSError:
            continue
        if "/chdb/" in target:
            return True
    return False


def _cpu_ticks(pid: int) -> int:
    """User + system CPU time of the process, in clock ticks (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def python_workers() -> list[Worker]:
    """The Python workers below this process (the mini-cluster's JVM is its child)."""
    found: list[Worker] = []
    pending = _children(os.getpid())
    while pending:
        pid = pending.pop()
        pending.extend(_children(pid))
        if WORKER_MODULE in _cmdline(pid):
            found.append(Worker(pid, _holds_chdb(pid), _cpu_ticks(pid)))
    return sorted(found, key=lambda worker: worker.pid)


def kill(worker: Worker) -> None:
    """SIGKILL one worker, as the OOM killer or a native crash would end it."""
    os.kill(worker.pid, signal.SIGKILL)


def completed_checkpoints(rest_port: int, job_id: str) -> int:
    """How many checkpoints of the job have completed (0 if unknown)."""
    body = rest_json(rest_port, f"/jobs/{job_id}/checkpoints") or {}
    return int(body.get("counts", {}).get("completed", 0))


def checkpoint_in_progress(rest_port: int, job_id: str) -> bool:
    """Whether a checkpoint of the job is running right now."""
    body = rest_json(rest_port, f"/jobs/{job_id}/checkpoints") or {}
    return int(body.get("counts", {}).get("in_progress", 0)) > 0


def restarts(rest_port: int, job_id: str) -> int:
    """How many times the job failed and was restarted: its exception history's length."""
    body = rest_json(rest_port, f"/jobs/{job_id}/exceptions") or {}
    return len(body.get("exceptionHistory", {}).get("entries", []))


@dataclass
class ChaosFigures:
    """What one chaos run did and what came of it (printed as one JSON line)."""

    case: str
    faults: int = 0
    restarts: int = 0
    expected_rows: int = 0
    stored_rows: int = 0
    lost: int = 0
    wrong: int = 0
    extra: int = 0
    recovery_s: float = 0.0
    # How long the injected outage lasted (0: a kill without an outage of its own).
    outage_s: float = 0.0
    # TaskManagers the job runner's supervisor started (jobs.job.supervise).
    task_managers_started: int = 0

    def report(self) -> None:
        """Print the figures (``pytest -s`` or ``make chaos`` shows them)."""
        print("chaos:", json.dumps(self.__dict__, sort_keys=True))


def _row_keys(snapshot: dict[str, Any]) -> dict[tuple[str, str], str]:
    """``(table, key)`` -> the row as JSON, for every row of every ClickHouse table."""
    rows: dict[tuple[str, str], str] = {}
    for table, content in snapshot["clickhouse"].items():
        columns = content["columns"]
        for row in content["rows"]:
            item = dict(zip(columns, row, strict=True))
            key = json.dumps([item.get(name) for name in
                              ("exchange", "symbol", "timeframe", "open_time", "window_start",
                               "source")])  # fmt: skip
            rows[(table, key)] = json.dumps(item, sort_keys=True)
    return rows


def assert_golden_outputs(
    *,
    tmp_path: Path,
    chdb_url: str,
    redis_client: redis.Redis,
    kafka_bootstrap: str,
    dlq_topic: str,
    figures: ChaosFigures,
    letters: bool = True,
    snapshot_clickhouse: Callable[[str], dict[str, Any]] = clickhouse_snapshot,
) -> None:
    """The run's ClickHouse tables (FINAL), Redis keys and (with ``letters``) dead letters
    equal the golden snapshot exactly; fills in the row figures (lost / wrong / extra) and
    reports them. ``snapshot_clickhouse(url)`` reads the tables (a ClickHouse server with
    another schema converts its values to the golden ones)."""
    from tests.integration.job_contract_support import redis_snapshot

    golden = json.loads(GOLDEN_PATH.read_text())
    snapshot = {
        "clickhouse": snapshot_clickhouse(chdb_url),
        "redis": redis_snapshot(redis_client),
        "dlq": (
            {"letters": distinct(dead_letters(kafka_bootstrap, dlq_topic))}
            if letters
            else golden["dlq"]
        ),
    }
    text = dump_golden(snapshot)
    (tmp_path / "snapshot.json").write_text(text)
    actual = json.loads(text)
    want, got = _row_keys(golden), _row_keys(actual)
    figures.expected_rows = len(want)
    figures.stored_rows = len(got)
    figures.lost = len(want.keys() - got.keys())
    figures.extra = len(got.keys() - want.keys())
    figures.wrong = sum(1 for key in want.keys() & got.keys() if want[key] != got[key])
    figures.report()
    found = differences(golden, actual)
    assert not found, (
        f"the run's output differs from {GOLDEN_PATH.name} "
        f"(actual: {tmp_path / 'snapshot.json'}):\n" + "\n".join(found)
    )


def wait_until(condition: Any, *, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(interval_s)


def finish_counting_restarts(client: Any, rest_port: int, job_id: str, *, timeout_s: float) -> int:
    """Wait until a bounded job has finished (its mini-cluster goes with it) and return how
    many restarts the REST API showed while it ran; fail if it failed or is too slow."""
    from tests.integration.job_contract_support import cancel_job

    result = client.get_job_execution_result()
    deadline = time.monotonic() + timeout_s
    seen = 0
    while not result.done():
        seen = max(seen, restarts(rest_port, job_id))
        if time.monotonic() >= deadline:
            cancel_job(client)
            raise AssertionError(f"the job is still running after {timeout_s:.0f}s")
        time.sleep(0.2)
    result.result()  # raises if the job failed
    return seen


class Supervisor:
    """``jobs.job.supervise`` on a background thread, as ``klineflow job run`` runs it
    (tests start jobs with ``start_job``, which does not)."""

    def __init__(self, client: Any) -> None:
        import threading

        self.started = 0
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(client,), daemon=True)
        self._thread.start()

    def _run(self, client: Any) -> None:
        from jobs.job import supervise

        try:
            self.started = supervise(client)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.errors.append(exc)

    def join(self, timeout_s: float = 60.0) -> int:
        """Wait for the supervisor to end with the job; the TaskManagers it started."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the supervisor did not end with the job"
        if self.errors:
            raise self.errors[0]
        return self.started
