"""The benchmarks' CPU timeline (bench/cpu_timeline.py) counts what really ran."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from cpu_timeline import CpuTimeline, machine_cpu_s, process_cpu_s, process_kind

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")

_SPIN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def test_a_busy_child_shows_as_core_seconds_and_tree_cores() -> None:
    timeline = CpuTimeline(interval_s=0.5)
    child = subprocess.Popen([sys.executable, "-c", _SPIN.format(s=1.0)])
    try:
        pids = [os.getpid(), child.pid]
        timeline.sample(pids)
        while child.poll() is None:
            time.sleep(0.2)  # sampling pace, as the bench's sampler thread; not a sync
            timeline.sample(pids)
    finally:
        child.wait()
    report = timeline.report()
    assert report["core_s"]["other"] >= 0.9  # this process and the spinning child
    assert max(report["tree_cores"]) > 0.5
    assert len(report["machine_cores"]) == len(report["tree_cores"]) >= 2
    assert all(0 <= busy <= report["cores"] + 0.5 for busy in report["machine_cores"])
    # No Python worker in the tree: nothing counts as idle "while workers ran".
    assert report["with_workers_s"] == 0
    assert report["with_workers_mean_machine_cores"] is None


def test_kinds_and_gone_processes() -> None:
    assert process_kind(os.getpid()) == "other"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_cpu_s(child.pid) is None
    assert process_kind(child.pid) == "other"
    busy, total = machine_cpu_s()
    assert 0 < busy <= total
