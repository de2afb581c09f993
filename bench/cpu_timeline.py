"""Where a side's CPU goes over its run (Linux ``/proc``): the machine's busy cores, the
process tree's, and each process's core-seconds by kind.

A pipeline of Python workers can be slow without being short of CPU: when one stage
(the single store-sink worker) is the bottleneck, the others wait on backpressure and a
core idles. The peak and mean of the tree's cores say little about that; the timeline
does: intervals where the machine is well below its core count while the job's workers
exist are time lost to a serial stage, not to work. Kinds:

- ``jvm``: a ``java`` process (Flink's TaskManager, or a peer's JVM);
- ``python-worker:chdb``: a PyFlink (Beam) Python worker that maps chdb, i.e. the store
  sink's worker;
- ``python-worker``: the other Python workers (ingest, series), reported one by one;
- ``other``: anything else in the tree (the driver, a peer's own process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# Beam's boot module: what every PyFlink Python worker runs.
_WORKER_MARK = b"beam_boot"
# A shared object of chdb in a process's mappings: the store sink has opened chdb.
_CHDB_MARK = "chdb"


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def machine_cpu_s() -> tuple[float, float]:
    """Busy and total CPU seconds of the machine since boot, summed over its cores
    (``/proc/stat``; idle and iowait are not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values)
    return (total - values[3] - values[4]) / _TICKS_PER_S, total / _TICKS_PER_S


def process_kind(pid: int) -> str:
    """What ``pid`` is, for the report (see the module docstring); ``other`` if gone."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "other"
    if comm == "java":
        return "jvm"
    if _WORKER_MARK not in cmdline:
        return "other"
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "python-worker"
    return "python-worker:chdb" if _CHDB_MARK in maps else "python-worker"


@dataclass
class CpuTimeline:
    """Call :meth:`sample` with the tree's pids about every ``interval_s`` (the report uses
    each interval's measured length); :meth:`report` sums up."""

    interval_s: float
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    machine_cores: list[float] = field(default_factory=list)
    tree_cores: list[float] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)  # each interval's real length
    worker_seen: list[bool] = field(default_factory=list)
    _machine: tuple[float, float] | None = None
    _process_s: dict[int, float] = field(default_factory=dict)
    _kinds: dict[int, str] = field(default_factory=dict)
    _used_s: dict[int, float] = field(default_factory=dict)

    def sample(self, pids: list[int]) -> None:
        """Record one interval: the machine's and the tree's busy cores since the last call."""
        machine = machine_cpu_s()
        tree_s = 0.0
        worker_alive = False
        for pid in pids:
            used = process_cpu_s(pid)
            if used is None:
                continue
            kind = self._kinds.get(pid)
            if kind is None or kind == "python-worker":  # a sink maps chdb only once open
                kind = self._kinds[pid] = process_kind(pid)
            worker_alive = worker_alive or kind.startswith("python-worker")
            tree_s += used - self._process_s.get(pid, used)
            self._process_s[pid] = used
            self._used_s[pid] = used
        if self._machine is not None:
            busy = machine[0] - self._machine[0]
            elapsed = (machine[1] - self._machine[1]) / self.cores
            if elapsed > 0:
                self.machine_cores.append(round(busy / elapsed, 2))
                self.tree_cores.append(round(tree_s / elapsed, 2))
                self.elapsed_s.append(elapsed)
                self.worker_seen.append(worker_alive)
        self._machine = machine

    def report(self) -> dict[str, Any]:
        """Core-seconds by kind, and the busy-cores timeline with its idle while workers ran."""
        by_kind: dict[str, Any] = {"jvm": 0.0, "python-worker:chdb": 0.0, "other": 0.0}
        workers: list[float] = []
        for pid, used in self._used_s.items():
            kind = self._kinds.get(pid, "other")
            if kind == "python-worker":
                workers.append(used)
            else:
                by_kind[kind] += used
        with_workers = [
            (busy, elapsed)
            for busy, elapsed, seen in zip(
                self.machine_cores, self.elapsed_s, self.worker_seen, strict=True
            )
            if seen
        ]
        with_workers_s = sum(elapsed for _, elapsed in with_workers)
        idle_core_s = sum(max(0.0, self.cores - busy) * elapsed for busy, elapsed in with_workers)
        busy_core_s = sum(busy * elapsed for busy, elapsed in with_workers)
        return {
            "cores": self.cores,
            "interval_s": self.interval_s,
            "core_s": {
                **{kind: round(seconds, 1) for kind, seconds in by_kind.items()},
                "python-worker": [round(s, 1) for s in sorted(workers, reverse=True)],
            },
            "with_workers_s": round(with_workers_s, 1),
            "with_workers_idle_core_s": round(idle_core_s, 1),
            "with_workers_mean_machine_cores": (
                round(busy_core_s / with_workers_s, 2) if with_workers_s else None
            ),
            "machine_cores": self.machine_cores,
            "tree_cores": self.tree_cores,
        }
