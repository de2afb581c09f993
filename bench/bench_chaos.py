"""The chaos cases' figures as one JSON summary.

Runs ``pytest -m chaos -s`` on the chosen chaos test files, one file after another (each
starts its own mini-cluster and servers; the machine has 2 cores), and collects the
``chaos: {...}`` line every case prints (``tests/chaos/chaos_support.ChaosFigures``):
faults injected, bars (rows) expected / stored / lost / wrong / extra, job restarts and
recovery time. Or, with ``--from-log``, reads those lines from the saved output of an
earlier run instead of running anything.

    .venv/bin/python bench/bench_chaos.py                      # the long store outages
    .venv/bin/python bench/bench_chaos.py tests/chaos/test_service_restarts.py
    .venv/bin/python bench/bench_chaos.py -k redis             # pytest's -k
    .venv/bin/python bench/bench_chaos.py --from-log run.txt   # parse a saved run

Prints ``{"cases": [...], "passed": N, "failed": N, "runs": [...]}`` and writes the same to
``bench/results/bench_chaos-<UTC time>.json``. The exit code is pytest's worst.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT / "bench" / "results"
DEFAULT_FILES = ("tests/chaos/test_long_outages.py",)
FIGURES_LINE = re.compile(r"chaos: (\{.*\})\s*$")
LOG_LINE = re.compile(r"chaos log: (.*)$")
SUMMARY_LINE = re.compile(r"=+ (.*) in [0-9.]+s")
RUN_KEYS = ("file", "exit_code", "seconds", "counts", "log_lines")
COUNT = re.compile(r"(\d+) (passed|failed|error|errors|skipped|xfailed|xpassed)")


def parse_output(text: str) -> dict[str, Any]:
    """The ``chaos: {...}`` figures, the ``chaos log:`` lines and pytest's counts in one
    run's output."""
    cases: list[dict[str, Any]] = []
    logs: list[str] = []
    counts: dict[str, int] = {}
    for line in text.splitlines():
        figures = FIGURES_LINE.search(line)
        if figures:
            cases.append(json.loads(figures.group(1)))
            continue
        logged = LOG_LINE.search(line)
        if logged:
            logs.append(logged.group(1))
            continue
        summary = SUMMARY_LINE.search(line)
        if summary:
            for number, kind in COUNT.findall(summary.group(1)):
                counts[kind.rstrip("s") if kind == "errors" else kind] = int(number)
    return {"cases": cases, "log_lines": logs, "counts": counts}


def run_file(path: str, keyword: str | None, timeout_s: float) -> tuple[int, str, float]:
    """``pytest -m chaos -s path``: its exit code, its output and how long it took."""
    command = [sys.executable, "-m", "pytest", "-m", "chaos", "-s", "-p", "no:cacheprovider",
               path]  # fmt: skip
    if keyword:
        command += ["-k", keyword]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True,
                              timeout=timeout_s, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else ""
        return 124, output + f"\n(timed out after {timeout_s:.0f} s)", time.monotonic() - started
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def summarise(runs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One JSON object over the runs: every case's figures, pass/fail counts, each run."""
    runs = list(runs)
    cases = [case for run in runs for case in run["cases"]]
    return {
        "cases": cases,
        "passed": sum(run["counts"].get("passed", 0) for run in runs),
        "failed": sum(
            run["counts"].get("failed", 0) + run["counts"].get("error", 0) for run in runs
        ),
        "runs": [{key: run[key] for key in RUN_KEYS if key in run} for run in runs],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or read) the chaos cases and print the summary; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "files",
        nargs="*",
        default=list(DEFAULT_FILES),
        help="chaos test files to run (default: the long store outages)",
    )
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument(
        "--from-log",
        type=Path,
        action="append",
        help="parse the saved output of a run instead of running (repeatable)",
    )
    parser.add_argument("--timeout-s", type=float, default=3600.0,
                        help="give up on one file's run after this long")  # fmt: skip
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    worst = 0
    if args.from_log:
        for path in args.from_log:
            runs.append({"file": str(path), **parse_output(path.read_text(errors="replace"))})
    else:
        for path in args.files:
            code, output, seconds = run_file(path, args.keyword, args.timeout_s)
            worst = max(worst, code)
            runs.append({"file": path, "exit_code": code, "seconds": round(seconds, 1),
                         **parse_output(output)})  # fmt: skip
            if code not in (0, 5):  # 5: nothing collected: show why it failed
                RESULTS.mkdir(parents=True, exist_ok=True)
                saved = RESULTS / f"bench_chaos-{Path(path).stem}-{time.time():.0f}.log"
                saved.write_text(output)
                failures = [line for line in output.splitlines() if line.startswith("E ")]
                sys.stderr.write("\n".join(failures[:40]) + f"\n(full output: {saved})\n")
    summary = summarise(runs)
    text = json.dumps(summary, indent=2, sort_keys=True)
    print(text)
    if not args.from_log:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        (RESULTS / f"bench_chaos-{stamp}.json").write_text(text + "\n")
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
