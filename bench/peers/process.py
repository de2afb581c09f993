"""Run one side as a process tree: its own session, logs to files, peak RSS, a time limit.

The peak resident memory of the tree (the process, its JVM, its Python workers) is sampled
with ``bench_pipeline.sampling``. A side that outlives its time limit is killed with its
whole process group (the group of the process started here, nothing else).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench_pipeline import sampling

from peers.common import now

_TAIL_CHARS = 3000


@dataclass(frozen=True)
class Finished:
    """How a side's process ended."""

    returncode: int
    stdout: str
    stderr_tail: str
    spawned_at: float
    exited_at: float
    peak_rss_bytes: int
    timed_out: bool

    @property
    def ok(self) -> bool:
        """It exited by itself with status 0."""
        return self.returncode == 0 and not self.timed_out

    def failure(self) -> str:
        """Why it is not ok, for the report."""
        if self.timed_out:
            return "timed out (killed)"
        return f"exit status {self.returncode}: {self.stderr_tail[-600:].strip()}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


def run_tree(
    command: list[str], *, logs: Path, timeout_s: float, env: dict[str, str] | None = None
) -> Finished:
    """Run ``command`` to its end (or ``timeout_s``); stdout/stderr go to ``logs``.*."""
    logs.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    timed_out = False
    with out_path.open("wb") as out, err_path.open("wb") as err:
        spawned_at = now()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
        with sampling(process.pid, frozenset()) as sampler:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(process.pid)
                process.wait()
        exited_at = now()
        _kill_group(process.pid)  # whatever of the side outlived it (nothing, normally)
    return Finished(
        returncode=process.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr_tail=err_path.read_text(errors="replace")[-_TAIL_CHARS:],
        spawned_at=spawned_at,
        exited_at=exited_at,
        peak_rss_bytes=sampler.peak,
        timed_out=timed_out,
    )
