"""The klineflow job in its variants, driven only through ``klineflow job run --bounded``.

Each variant runs in a fresh process with a fresh consumer group, DLQ topic, chdb directory
and a Redis server of its own (started and stopped here):

- ``minimal``: parse + upsert + sinks (no roll-ups, no profiles or indicators, no signals);
- ``rollups``: + the five roll-ups;
- ``full``: roll-ups, volume profiles, indicators, rules signals (no ``--inference-url``),
  with the profile and signal timeframes pinned to today's defaults;
- ``full-unbatched``: ``full`` with ``--source-batch-records 1`` (what batching gives);
- ``full-baseline``: ``full`` run from another revision's source tree (``bench_peers.py
  --baseline REV``), so a change is measured against what it replaces in the same run.

Start-up ends at the first write to Redis (``bench_pipeline.first_redis_write``); the run ends
when the job's process exits. The klines in chdb are counted afterwards, in another process
(chdb allows one process per directory): 1m bars and roll-up rows per timeframe, ``FINAL``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Final

import redis
from bench_pipeline import first_redis_write, free_port

from jobs.stack import RedisServer, StackConfig
from peers.common import SideReport, SideSpec
from peers.process import Finished, run_tree

# Pinned here (they are the job's defaults today) so that the expected rows follow from flags.
PROFILE_TIMEFRAMES: Final[tuple[str, ...]] = ("15m", "1h", "4h", "1d")
SIGNAL_TIMEFRAMES: Final[tuple[str, ...]] = ("15m", "1h")
VARIANTS: Final[dict[str, tuple[str, ...]]] = {
    "minimal": (
        "--rollup-timeframes",
        "none",
        "--profile-timeframes",
        "none",
        "--no-indicators",
        "--no-signals",
    ),
    "rollups": ("--profile-timeframes", "none", "--no-indicators", "--no-signals"),
    "full": (
        "--profile-timeframes",
        ",".join(PROFILE_TIMEFRAMES),
        "--signal-timeframes",
        ",".join(SIGNAL_TIMEFRAMES),
    ),
}
# ``full`` with one Kafka message per element into the first Python step (no batching), to
# measure what batching gives in the same run.
VARIANTS["full-unbatched"] = (*VARIANTS["full"], "--source-batch-records", "1")
VARIANTS["full-baseline"] = VARIANTS["full"]
# What runs ``klineflow`` from a source tree put first on PYTHONPATH (a baseline revision).
_CLI_FROM_PATH: Final = "import sys; from jobs.cli import main; sys.exit(main())"
# Env vars the job's flags fall back to: dropped, so the caller's shell cannot change a variant.
_JOB_ENV_PREFIXES: Final[tuple[str, ...]] = ("KLINEFLOW_", "INFERENCE_")
_JOB_ENV_NAMES: Final[frozenset[str]] = frozenset(
    {"KAFKA_BOOTSTRAP_SERVERS", "KLINES_TOPIC", "KLINES_DLQ_TOPIC", "CLICKHOUSE_URL", "REDIS_URL"}
)


def klineflow_executable() -> Path:
    """The ``klineflow`` entry point of the venv this script runs in."""
    return Path(sys.executable).parent / "klineflow"


def job_command(
    variant: str,
    spec: SideSpec,
    clickhouse_url: str,
    redis_url: str,
    *,
    source_tree: Path | None = None,
) -> list[str]:
    """``klineflow job run --bounded`` with the variant's flags and this run's endpoints
    (``source_tree``: the CLI of that tree, which must come first on PYTHONPATH)."""
    cli = (
        [str(klineflow_executable())]
        if source_tree is None
        else [sys.executable, "-c", _CLI_FROM_PATH]
    )
    return [
        *cli,
        "job",
        "run",
        "--bounded",
        "--bootstrap-servers",
        spec.bootstrap,
        "--topic",
        spec.topic,
        "--dlq-topic",
        f"{spec.topic}.dlq-{variant}",
        "--group-id",
        spec.group,
        "--clickhouse-url",
        clickhouse_url,
        "--redis-url",
        redis_url,
        "--parallelism",
        str(spec.parallelism),
        *VARIANTS[variant],
    ]


def job_env(source_tree: Path | None = None) -> dict[str, str]:
    """This process's environment without anything the job's flags fall back to; with
    ``source_tree`` first on PYTHONPATH (its packages shadow the installed project's, in the
    job and in its Python workers, which inherit the environment)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _JOB_ENV_NAMES and not name.startswith(_JOB_ENV_PREFIXES)
    }
    if source_tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(source_tree), env.get("PYTHONPATH", "")) if part
        )
    return env


def expected_rollups(variant: str, windows: dict[str, int]) -> dict[str, int]:
    """The roll-up rows a variant must write: every window, or none for ``minimal``."""
    return {} if variant == "minimal" else dict(windows)


def expected_tables(variant: str, bars: int, windows: dict[str, int]) -> dict[str, int]:
    """The rows of every chdb table a variant must leave (``FINAL``).

    klines: every 1m bar and roll-up window; ``full`` adds one volume profile per window of
    PROFILE_TIMEFRAMES, indicators on every bar of every timeframe, one rules signal per
    closed bar of SIGNAL_TIMEFRAMES (a bounded replay makes one version of each bar).
    """
    rollups = expected_rollups(variant, windows)
    klines = bars + sum(rollups.values())
    full = variant.startswith("full")
    return {
        "klines": klines,
        "volume_profile": sum(windows[tf] for tf in PROFILE_TIMEFRAMES) if full else 0,
        "indicators": klines if full else 0,
        "signals": sum(windows[tf] for tf in SIGNAL_TIMEFRAMES) if full else 0,
    }


def chdb_counts(url: str) -> dict[str, Any]:
    """Rows of klines per timeframe and of every data table, ``FINAL`` (``--count-chdb``)."""
    from connectors.clickhouse import open_writer

    with open_writer(url, migrate_schema=False) as writer:
        klines = writer.query(
            "SELECT timeframe, count() AS n FROM crypto_kline.klines FINAL GROUP BY timeframe"
        )
        return {
            "klines": {row["timeframe"]: int(row["n"]) for row in klines},
            "tables": writer.table_counts(),
        }


def _count_in_subprocess(url: str, logs: Path) -> dict[str, Any]:
    script = Path(__file__).resolve().parent.parent / "bench_peers.py"
    finished = run_tree(
        [sys.executable, str(script), "--count-chdb", url], logs=logs, timeout_s=300
    )
    if not finished.ok:
        raise RuntimeError(f"counting {url}: {finished.failure()}")
    return dict(json.loads(finished.stdout.strip().splitlines()[-1]))


def run(
    variant: str, spec: SideSpec, timeout_s: float, *, source_tree: Path | None = None
) -> tuple[SideReport, Finished]:
    """Run one variant to its end; the report's outputs are its roll-up rows in chdb.

    ``source_tree``: run the job from that tree (a baseline revision) instead of this one.
    """
    work = Path(spec.work)
    redis_server = RedisServer(
        StackConfig(home=work / "redis", redis_port=free_port(), stop_with_parent=True)
    )
    redis_server.start()
    try:
        clickhouse_url = f"chdb://{work / 'chdb'}"
        client = redis.Redis.from_url(redis_server.url)
        stop, seen = threading.Event(), list[float]()
        watcher = threading.Thread(target=first_redis_write, args=(client, stop, seen))
        watcher.start()
        try:
            finished = run_tree(
                job_command(
                    variant, spec, clickhouse_url, redis_server.url, source_tree=source_tree
                ),
                logs=work / "job",
                timeout_s=timeout_s,
                env=job_env(source_tree),
                cwd=source_tree,
            )
        finally:
            stop.set()
            watcher.join()
        report = SideReport(first_bar_at=seen[0] if seen else None, done_at=finished.exited_at)
        report.details["redis_keys"] = int(client.dbsize())  # type: ignore[arg-type]
        client.close()
    finally:
        redis_server.stop()
    if finished.ok:
        counts = _count_in_subprocess(clickhouse_url, work / "count")
        klines: dict[str, int] = counts["klines"]
        report.consumed = klines.pop("1m", 0)
        report.outputs = klines
        report.details["clickhouse_rows"] = counts["tables"]
    return report, finished
