"""Run one side as a process tree: its own session, logs to files, peak RSS, a time limit.

The peak resident memory (RSS, and PSS: shared pages split between the processes that map
them) and the CPU (``bench/cpu_timeline.py``) of the tree (the process, its JVM, its Python
workers) are sampled with ``bench_pipeline.sampling``. A side that outlives its time limit
is killed with its whole process group (the group of the process started here, nothing
else).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_pipeline import sampling

from peers.common import now

_CAUSE_CHARS = 400
_EXCEPTION_LINE = re.compile(r"(Exception|Error)\b.*:")


def root_cause(stderr: str) -> str:
    """The line of a log that best says why a process failed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    caused = [line for line in lines if line.startswith("Caused by:")]
    raised = [line for line in lines if _EXCEPTION_LINE.search(line)]
    best = (caused or raised or lines or [""])[-1]
    return best[:_CAUSE_CHARS]


@dataclass(frozen=True)
class Finished:
    """How a side's process ended."""

    returncode: int
    stdout: str
    cause: str  # the last "Caused by" (else exception) line of stderr, or its last line
    spawned_at: float
    exited_at: float
    peak_rss_bytes: int
    peak_pss_bytes: int
    timed_out: bool
    cpu: dict[str, Any]  # the tree's CPU over the run (``cpu_timeline.CpuTimeline.report``)

    @property
    def ok(self) -> bool:
        """It exited by itself with status 0."""
        return self.returncode == 0 and not self.timed_out

    def failure(self) -> str:
        """Why it is not ok, for the report: the exit and the root cause it logged."""
        if self.timed_out:
            return "timed out (killed)"
        return f"exit status {self.returncode}: {self.cause}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


def run_tree(
    command: list[str],
    *,
    logs: Path,
    timeout_s: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Finished:
    """Run ``command`` (in ``cwd``) to its end (or ``timeout_s``); stdout/stderr go to
    ``logs``.*."""
    logs.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    timed_out = False
    with out_path.open("wb") as out, err_path.open("wb") as err:
        spawned_at = now()
        process = subprocess.Popen(
            command, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )
        with sampling(process.pid, frozenset()) as sampler:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Whatever of the side is still alive (after a time-out, an interrupt, or a
                # straggler of a clean exit): its whole process group, then reap it.
                _kill_group(process.pid)
                process.wait()
                exited_at = now()
    return Finished(
        returncode=process.returncode,
        stdout=out_path.read_text(errors="replace"),
        cause=root_cause(err_path.read_text(errors="replace")),
        spawned_at=spawned_at,
        exited_at=exited_at,
        peak_rss_bytes=sampler.peak,
        peak_pss_bytes=sampler.peak_pss,
        timed_out=timed_out,
        cpu=sampler.cpu.report(),
    )
