"""Benchmark: N bars replayed through Kafka and the job into chdb and Redis; prints JSON.

    .venv/bin/python bench/bench_pipeline.py [--bars 1000000] [--series 100] [--parallelism 1]

It starts its own Kafka broker and Redis on free loopback ports (like the tests), writes the
bars as a JSONL recording, replays it with ``klineflow replay``'s code path, runs the job
bounded on a local mini-cluster, and reports:

- ``replay_bars_per_s``: parse + validate + produce (acks=all) throughput of ``replay``;
- ``job_bars_per_s``: bars / job wall time (start-up of the mini-cluster included) and
  ``job_bars_per_s_steady`` (start-up excluded: from the first row in Redis to the end);
- ``end_to_end_s``: replay + job;
- ``peak_rss_mb``: the peak resident memory of this process tree (Python, the Flink JVM and
  its Python workers; the broker and Redis are measured separately).

``--rollups compare`` runs the job twice on the same topic in the same run, roll-ups off
then on (fresh consumer group, chdb directory and Redis each time; each job in a Python
process of its own, as PyFlink keeps per-process state between jobs), and reports
``rollups_off``/``rollups_on`` (job_s, job_bars_per_s, job_bars_per_s_steady, rows) and
``rollups_on_vs_off`` (ratios of bars/s). ``--rollups on|off`` runs only one side.

``--analytics compare`` does the same for the analytics branch (volume profiles 15m/1h/4h/1d
and indicators on every timeframe; roll-ups on in both runs): ``analytics_off``,
``analytics_on`` (with the rows written to ``volume_profile`` and ``indicators``) and
``analytics_on_vs_off``. ``--analytics on|off`` runs only one side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from cpu_timeline import CpuTimeline  # noqa: E402
from proctree import pss_bytes, rss_bytes, tree_pids, tree_rss_bytes  # noqa: E402

from connectors.clickhouse import open_writer  # noqa: E402
from connectors.replay import replay_files  # noqa: E402
from jobs.config import AnalyticsConfig, JobSettings, PipelineConfig, SinkConfig  # noqa: E402
from jobs.job import run_job  # noqa: E402
from jobs.sample_data import iter_bench_klines  # noqa: E402
from jobs.stack import KafkaBroker, RedisServer, StackConfig  # noqa: E402
from udfs.record import encode_kline  # noqa: E402

SAMPLE_S = 0.2
# smaps_rollup walks every mapping of a process: read it every fifth RSS sample only.
PSS_EVERY = 5
CPU_EVERY = 10


@dataclass
class PeakSampler:
    """Samples a process tree in a thread: RSS every 0.2 s, PSS every 1 s (peaks kept) and
    CPU every 2 s (``cpu``: see ``bench/cpu_timeline.py``)."""

    root: int
    exclude: frozenset[int]
    peak: int = 0
    peak_pss: int = 0
    cpu: CpuTimeline = field(default_factory=lambda: CpuTimeline(SAMPLE_S * CPU_EVERY))

    def run(self, stop: threading.Event) -> None:
        samples = 0
        while not stop.wait(SAMPLE_S):
            pids = tree_pids(self.root, self.exclude)
            self.peak = max(self.peak, rss_bytes(pids))
            if samples % PSS_EVERY == 0:
                self.peak_pss = max(self.peak_pss, pss_bytes(pids))
            if samples % CPU_EVERY == 0:
                self.cpu.sample(pids)
            samples += 1


@contextmanager
def sampling(root: int, exclude: frozenset[int]) -> Iterator[PeakSampler]:
    sampler = PeakSampler(root, exclude)
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield sampler
    finally:
        stop.set()
        thread.join()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_recording(path: Path, bars: int, series: int) -> int:
    """The bars as a JSONL recording in the wire format; returns how many were written."""
    count = 0
    with path.open("wb") as handle:
        for kline in iter_bench_klines(bars, series):
            handle.write(encode_kline(kline) + b"\n")
            count += 1
    return count


def first_redis_write(client: redis.Redis, stop: threading.Event, seen: list[float]) -> None:
    """Record when the first bar reaches Redis (the job's start-up is over)."""
    while not stop.is_set():
        if int(client.dbsize()) > 0:  # type: ignore[arg-type]
            seen.append(time.monotonic())
            return
        time.sleep(0.05)


def measure_job(settings: JobSettings, redis_url: str) -> dict[str, Any]:
    """Run the bounded job once: wall time, steady rate (from the first Redis write), rows."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    stop = threading.Event()
    seen: list[float] = []
    watcher = threading.Thread(target=first_redis_write, args=(client, stop, seen))
    watcher.start()
    job_started = time.monotonic()
    run_job(settings)
    job_s = time.monotonic() - job_started
    stop.set()
    watcher.join()
    with open_writer(settings.sinks.clickhouse_url, migrate_schema=False) as writer:
        counts = writer.table_counts()
    steady_s = job_s - (seen[0] - job_started) if seen else job_s
    return {
        "job_s": job_s,
        "steady_s": steady_s,
        "counts": counts,
        "redis_keys": client.dbsize(),
    }


_SIDES: dict[str, tuple[bool, ...]] = {"compare": (False, True), "on": (True,), "off": (False,)}


def _variant(
    settings: JobSettings, work: Path, *, rollups: bool, analytics: bool, name: str
) -> JobSettings:
    """The job with roll-ups and analytics on or off, with its own group and outputs."""
    return settings.with_overrides(
        consumer_group=f"bench-{name}",
        pipeline=PipelineConfig() if rollups else PipelineConfig(rollup_timeframes=()),
        analytics=(
            AnalyticsConfig()
            if analytics
            else AnalyticsConfig(profile_timeframes=(), indicators=False)
        ),
        sinks=replace(settings.sinks, clickhouse_url=f"chdb://{work / f'chdb-{name}'}"),
        checkpoint_dir=work / f"checkpoints-{name}",
        job_name=f"bench-pipeline-{name}",
    )


def measure_variant_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """``measure_job`` of one variant in a fresh Python process (see ``--variant``)."""
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--variant", json.dumps(spec)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """The child side of ``measure_variant_in_subprocess``: one job, its measurements."""
    settings = JobSettings(
        kafka_bootstrap=spec["bootstrap"],
        klines_topic=spec["topic"],
        dlq_topic=spec["dlq_topic"],
        consumer_group="bench",
        bounded=True,
        parallelism=spec["parallelism"],
        sinks=SinkConfig(clickhouse_url="chdb://unused", redis_url=spec["redis_url"]),
        checkpoint_dir=Path(spec["work"]) / "checkpoints",
        job_name="bench-pipeline",
    )
    variant = _variant(
        settings,
        Path(spec["work"]),
        name=spec["name"],
        rollups=spec["rollups"],
        analytics=spec["analytics"],
    )
    measured = measure_job(variant, spec["redis_url"])
    measured["redis_keys"] = int(measured["redis_keys"])
    return measured


def compare_feature(
    feature: str, args: argparse.Namespace, settings: JobSettings, work: Path, bars: int
) -> dict[str, Any]:
    """The job with ``feature`` (``rollups`` or ``analytics``) off and/or on, same topic.

    The other feature follows its own flag (``default`` counts as on for roll-ups, off for
    analytics), so ``--rollups off --analytics compare`` really runs without roll-ups.
    """
    others = {
        "rollups": args.rollups != "off",
        "analytics": args.analytics == "on",
    }
    result: dict[str, Any] = {}
    sides = _SIDES[getattr(args, feature)]
    for on in sides:
        name = f"{feature}-{'on' if on else 'off'}"
        switches = {**others, feature: on}
        measured = measure_variant_in_subprocess(
            {
                "bootstrap": settings.kafka_bootstrap,
                "topic": settings.klines_topic,
                "dlq_topic": settings.dlq_topic,
                "redis_url": settings.sinks.redis_url,
                "parallelism": settings.parallelism,
                "work": str(work),
                "name": name,
                **switches,
            }
        )
        result[name.replace("-", "_")] = {
            "rollups": switches["rollups"],
            "analytics": switches["analytics"],
            "job_s": round(measured["job_s"], 2),
            "job_bars_per_s": round(bars / measured["job_s"]),
            "job_startup_s": round(measured["job_s"] - measured["steady_s"], 2),
            "job_bars_per_s_steady": round(bars / measured["steady_s"]),
            "clickhouse_rows": measured["counts"],
            "redis_keys": measured["redis_keys"],
        }
    if len(sides) == 2:
        on_side, off_side = result[f"{feature}_on"], result[f"{feature}_off"]
        result[f"{feature}_on_vs_off"] = {
            "bars_per_s_ratio": round(on_side["job_bars_per_s"] / off_side["job_bars_per_s"], 3),
            "bars_per_s_steady_ratio": round(
                on_side["job_bars_per_s_steady"] / off_side["job_bars_per_s_steady"], 3
            ),
        }
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="klineflow-bench-"))
    stack = StackConfig(
        home=work / "stack",
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        redis_port=free_port(),
        kafka_libs=PROJECT_ROOT / "build" / "kafka" / "libs",
        kafka_heap="1g",
    )
    broker, redis_server = KafkaBroker(stack), RedisServer(stack)
    broker.start()
    redis_server.start()
    try:
        recording = work / "bench.jsonl"
        started = time.monotonic()
        bars = write_recording(recording, args.bars, args.series)
        generate_s = time.monotonic() - started

        service_pids = frozenset(
            pid for pid in (broker.status().pid, redis_server.status().pid) if pid
        )
        settings = JobSettings(
            kafka_bootstrap=broker.bootstrap,
            klines_topic="bench.raw",
            dlq_topic="bench.dlq",
            consumer_group="bench",
            bounded=True,
            parallelism=args.parallelism,
            sinks=SinkConfig(clickhouse_url=f"chdb://{work / 'chdb'}", redis_url=redis_server.url),
            checkpoint_dir=work / "checkpoints",
            job_name="bench-pipeline",
        )
        with sampling(os.getpid(), service_pids) as sampler:
            replay_started = time.monotonic()
            replayed = replay_files(
                [recording],
                bootstrap=broker.bootstrap,
                topic=settings.klines_topic,
                dlq_topic=settings.dlq_topic,
                progress=False,
            )
            replay_s = time.monotonic() - replay_started
            feature = next(
                (name for name in ("analytics", "rollups") if getattr(args, name) != "default"),
                None,
            )
            if feature is not None:
                return {
                    "benchmark": f"pipeline-{feature}",
                    "bars": bars,
                    "series": args.series,
                    "parallelism": args.parallelism,
                    "replay_bars_per_s": round(replayed.produced / replay_s),
                    **compare_feature(feature, args, settings, work, bars),
                    "peak_rss_mb": round(sampler.peak / 2**20),
                    "cpus": os.cpu_count(),
                }

            client = redis.Redis.from_url(redis_server.url)
            stop = threading.Event()
            seen: list[float] = []
            watcher = threading.Thread(target=first_redis_write, args=(client, stop, seen))
            watcher.start()
            job_started = time.monotonic()
            run_job(settings)
            job_s = time.monotonic() - job_started
            stop.set()
            watcher.join()
        with open_writer(settings.sinks.clickhouse_url, migrate_schema=False) as writer:
            rows = writer.table_counts()["klines"]
        steady_s = job_s - (seen[0] - job_started) if seen else job_s
        services_rss = sum(tree_rss_bytes(pid) for pid in service_pids)
        return {
            "benchmark": "pipeline",
            "bars": bars,
            "series": args.series,
            "parallelism": args.parallelism,
            "generate_s": round(generate_s, 2),
            "replay_produced": replayed.produced,
            "replay_s": round(replay_s, 2),
            "replay_bars_per_s": round(replayed.produced / replay_s),
            "job_s": round(job_s, 2),
            "job_bars_per_s": round(bars / job_s),
            "job_startup_s": round(job_s - steady_s, 2),
            "job_bars_per_s_steady": round(bars / steady_s) if steady_s > 0 else None,
            "end_to_end_s": round(replay_s + job_s, 2),
            "clickhouse_rows": rows,
            "redis_keys": client.dbsize(),
            "peak_rss_mb": round(sampler.peak / 2**20),
            "cpu": sampler.cpu.report(),
            "kafka_and_redis_rss_mb": round(services_rss / 2**20),
            "cpus": os.cpu_count(),
        }
    finally:
        broker.stop()
        redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument(
        "--rollups",
        choices=("default", "compare", "on", "off"),
        default="default",
        help="compare: the job with roll-ups off, then on, in the same run",
    )
    parser.add_argument(
        "--analytics",
        choices=("default", "compare", "on", "off"),
        default="default",
        help="compare: the job with profiles and indicators off, then on, in the same run",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one compare side
    args = parser.parse_args()
    if args.variant:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(run_variant(json.loads(args.variant))))
        return
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"pipeline-{int(time.time())}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
