"""A sink worker with chdb open ends at once, with an exit code that tells how it ended."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_worker_like(tmp_path: Path, ending: str) -> subprocess.CompletedProcess[str]:
    """A process that opens chdb as the sink does, installs the exit hook, then ``ending``."""
    code = (
        "from connectors.clickhouse import open_writer\n"
        "from connectors.flink_sinks import skip_native_exit_handlers\n"
        f"writer = open_writer('chdb://{tmp_path / 'chdb'}')\n"
        "skip_native_exit_handlers()\n"
        "skip_native_exit_handlers()\n"  # idempotent
        "print('opened', flush=False)\n"
        f"{ending}\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_uncaught_exception_exits_1_with_its_traceback_and_output(tmp_path: Path) -> None:
    result = run_worker_like(tmp_path, "raise RuntimeError('control channel lost')")
    assert result.returncode == 1
    assert result.stdout == "opened\n"  # flushed before os._exit
    assert "RuntimeError: control channel lost" in result.stderr


def test_a_normal_end_exits_0_and_releases_the_directory(tmp_path: Path) -> None:
    result = run_worker_like(tmp_path, "pass")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "opened\n"
    again = run_worker_like(tmp_path, "pass")  # the lock went with the process
    assert again.returncode == 0, again.stderr
