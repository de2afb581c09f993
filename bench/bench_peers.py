"""Benchmark: klineflow next to its peers on one topic of closed 1m bars; prints JSON.

    make bench-peers                      # installs the `bench` extra, then runs this
    .venv/bin/python bench/bench_peers.py [--bars 1000000] [--series 100] [--partitions 4]
        [--parallelism 2] [--sides floor,flink-sql,quix,bytewax,klineflow-minimal,...]

It starts a Kafka broker on a free loopback port, produces N closed 1m bars (S series x N/S
consecutive minutes, seeded; key ``{exchange}:{symbol}:1m``, record timestamp = open_time) to
one fresh topic, then runs each side on that topic, one after another, each in a fresh
process tree with a consumer group of its own:

- ``floor``: consume + orjson parse only (confluent-kafka, else kafka-python: see ``client``);
- ``flink-sql``: PyFlink SQL, Java operators only, five TUMBLE roll-ups to a blackhole;
- ``quix``: quix-streams, five tumbling-window roll-ups with ``reduce``, no sinks;
- ``bytewax``: bytewax 0.21, five ``reduce_window`` roll-ups, no sinks;
- ``klineflow-minimal|rollups|full|full-unbatched``: ``klineflow job run --bounded`` (see
  peers/klineflow_side);
- ``klineflow-full-baseline``, with ``--baseline REV`` only: ``full`` from the source of git
  revision REV (exported next to the run, using this tree's ``build/`` jars), right after
  ``klineflow-full``, so a change is compared with what it replaces on the same data.

The roll-ups are 5m, 15m, 1h, 4h and 1d, UTC-aligned, with the job's OHLCV conventions.
Per side: ``bars_per_s`` = N / ``run_s`` (from its first bar to its last one processed),
``startup_s`` (process start to first bar) separately, ``total_s``, the peak RSS of its
process tree, and what it verified: every bar consumed and exactly the roll-up rows the bars
make (quix-streams closes a window only on a later bar of its series, so it must emit every
window but the last of each series and timeframe). A side that does not verify is reported as
failed, without a rate; one whose dependencies are missing as unavailable. ``ratios`` divides
every verified side's rate by the rates of quix-streams, Flink SQL and bytewax.
Written to bench/results/bench_peers-<UTC time>.json as well.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from peers.common import ROLLUP_TIMEFRAMES, SideReport, SideSpec  # noqa: E402

if TYPE_CHECKING:
    from peers.process import Finished

log = logging.getLogger("bench_peers")

SIDES: Final[tuple[str, ...]] = (
    "floor",
    "flink-sql",
    "quix",
    "bytewax",
    "klineflow-minimal",
    "klineflow-rollups",
    "klineflow-full",
    "klineflow-full-unbatched",
    "klineflow-full-baseline",
)
# The sides that run inside ``--side``: their module and the modules they need.
PEERS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "floor": ("peers.floor_side", ("orjson",)),
    "flink-sql": ("peers.flink_sql_side", ("pyflink",)),
    "quix": ("peers.quix_side", ("quixstreams",)),
    "bytewax": ("peers.bytewax_side", ("bytewax", "confluent_kafka")),
}
REFERENCES: Final[dict[str, str]] = {
    "quix": "vs_quix",
    "flink-sql": "vs_flink_sql",
    "bytewax": "vs_bytewax",
}
METHOD: Final[dict[str, str]] = {
    "bars_per_s": "bars / run_s; run_s = from the side's first bar to its last one processed",
    "startup_s": "from the side's process start to its first bar",
    "first_bar": "python peers: in the consumer; flink-sql: first offset commit of its group "
    "(auto-commit every 100 ms); klineflow: first key in its Redis",
    "last_bar": "floor, quix: the last bar counted; flink-sql: the job finished; bytewax: the "
    "dataflow ended; klineflow: the job's process exited",
    "peak_rss_mb": "the side's whole process tree, sampled every 0.2 s",
    "peak_pss_mb": "the same tree's proportional set size (pages shared between its "
    "processes counted once), sampled every 1 s",
    "cpu": "the tree sampled every 2 s. core_s: each process's CPU seconds by kind (jvm; "
    "python-worker:chdb, the store sink's worker; python-worker, the others, one each); "
    "machine_cores, tree_cores: busy cores of the machine and of the tree per interval; "
    "with_workers_idle_core_s: cores the machine left idle while Python workers existed "
    "(time a serial stage, not the work, set the pace)",
}
JARS_DIR: Final[Path] = PROJECT_ROOT / "build" / "flink-jars"


def parse_sides(text: str) -> list[str]:
    """``--sides``: a comma-separated subset of SIDES (``all``: every side), in SIDES order."""
    wanted = set(SIDES) if text.strip() == "all" else {s.strip() for s in text.split(",") if s}
    unknown = wanted - set(SIDES)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown side(s) {', '.join(sorted(unknown))}; choose from {', '.join(SIDES)}"
        )
    return [side for side in SIDES if side in wanted]


def export_revision(revision: str, into: Path) -> Path:
    """The source tree of git ``revision`` of this project, exported to ``into``; its
    ``build/`` is this tree's (the connector jars, the Kafka libs) except the job's own
    operators jar, compiled from the revision's ``jvm/`` (its batch format may differ)."""
    from jobs.job import OPERATORS_JAR

    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    build = into / "build"
    build.mkdir()
    for entry in (PROJECT_ROOT / "build").iterdir():
        if entry.name not in ("flink-jars", "jvm-classes"):
            (build / entry.name).symlink_to(entry)
    jars = build / "flink-jars"
    jars.mkdir()
    for jar in JARS_DIR.iterdir():
        if jar.name != OPERATORS_JAR:
            (jars / jar.name).symlink_to(jar)
    compile_operators(into / "jvm", jars / OPERATORS_JAR, build / "jvm-classes")
    return into


def compile_operators(sources: Path, jar: Path, classes: Path) -> None:
    """Compile the job's Java operators under ``sources`` into ``jar`` (as the Makefile does)."""
    import pyflink

    home = Path(pyflink.__file__).parent
    java_files = sorted(str(path) for path in sources.rglob("*.java"))
    classes.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["javac", "--release", "11", "-nowarn", "-d", str(classes),
         "-cp", f"{home}/lib/*:{home}/opt/*", *java_files],
        check=True,
    )  # fmt: skip
    subprocess.run(["jar", "cf", str(jar), "-C", str(classes), "."], check=True)


def unavailable(side: str) -> str | None:
    """Why ``side`` cannot run here (a missing module or jar), or None."""
    needed = PEERS[side][1] if side in PEERS else ()
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return f"unavailable: {', '.join(missing)} not installed (make bench-peers installs them)"
    if side == "flink-sql" and not list(JARS_DIR.glob("flink-sql-connector-kafka-*.jar")):
        return f"unavailable: no Kafka SQL connector jar in {JARS_DIR} (make setup fetches it)"
    return None


def expected_outputs(side: str, windows: dict[str, int], series: int) -> dict[str, int]:
    """The roll-up rows per timeframe ``side`` must produce from bars making ``windows``."""
    from peers.klineflow_side import expected_rollups

    if side == "floor":
        return {}
    if side == "quix":
        return {timeframe: count - series for timeframe, count in windows.items()}
    if side.startswith("klineflow-"):
        return expected_rollups(side.removeprefix("klineflow-"), windows)
    return dict(windows)


def expected_tables(side: str, windows: dict[str, int], bars: int) -> dict[str, int] | None:
    """The chdb rows per table a klineflow variant must leave (None: not a klineflow side)."""
    from peers.klineflow_side import expected_tables

    if not side.startswith("klineflow-"):
        return None
    return expected_tables(side.removeprefix("klineflow-"), bars, windows)


def run_peer(side: str, spec: SideSpec, timeout_s: float) -> tuple[SideReport | None, Finished]:
    """A peer in ``bench_peers.py --side``: its report (None if it failed) and its end."""
    from peers.process import run_tree

    finished = run_tree(
        [sys.executable, str(Path(__file__).resolve()), "--side", spec.to_json()],
        logs=Path(spec.work) / "side",
        timeout_s=timeout_s,
    )
    if not finished.ok:
        return None, finished
    return SideReport.from_json(finished.stdout.strip().splitlines()[-1]), finished


def run_side(
    side: str, spec: SideSpec, timeout_s: float, baseline: Path | None = None
) -> tuple[SideReport | None, Finished]:
    """Run one side (a peer or a klineflow variant) to its end; ``baseline``: the source
    tree of ``klineflow-full-baseline``."""
    if side.startswith("klineflow-"):
        from peers import klineflow_side

        variant = side.removeprefix("klineflow-")
        tree = baseline if variant == "full-baseline" else None
        report, finished = klineflow_side.run(variant, spec, timeout_s, source_tree=tree)
        return (report if finished.ok else None), finished
    return run_peer(side, spec, timeout_s)


def summarize(
    report: SideReport | None,
    finished: Finished,
    bars: int,
    expected: dict[str, int],
    tables: dict[str, int] | None,
) -> dict[str, Any]:
    """One side's entry in the JSON: status, rates, times, counts against expectations."""
    result: dict[str, Any] = {
        "total_s": round(finished.exited_at - finished.spawned_at, 2),
        "peak_rss_mb": round(finished.peak_rss_bytes / 2**20),
        "peak_pss_mb": round(finished.peak_pss_bytes / 2**20),
        "expected": {"bars": bars, "rollup_rows": expected},
        "cpu": finished.cpu,
    }
    if tables is not None:
        result["expected"]["clickhouse_rows"] = tables
    if report is None:
        return {"status": f"failed: {finished.failure()}", **result}
    problems = []
    if report.consumed != bars:
        problems.append(f"consumed {report.consumed} of {bars} bars")
    if report.outputs != expected:
        problems.append(f"roll-up rows {report.outputs} != expected {expected}")
    if tables is not None and report.details.get("clickhouse_rows") != tables:
        problems.append(f"chdb rows {report.details.get('clickhouse_rows')} != expected {tables}")
    if report.first_bar_at is None:
        problems.append("never saw its first bar")
    rows = {tf: report.outputs[tf] for tf in ROLLUP_TIMEFRAMES if tf in report.outputs}
    rows.update(report.outputs)  # anything unexpected stays visible, after the known ones
    result.update(consumed=report.consumed, rollup_rows=rows, **report.details)
    if report.first_bar_at is not None:
        run_s = report.done_at - report.first_bar_at
        result.update(
            startup_s=round(report.first_bar_at - finished.spawned_at, 2),
            run_s=round(run_s, 2),
            bars_per_s=round(bars / run_s) if run_s > 0 and not problems else None,
            bars_per_s_incl_startup=(
                round(bars / (report.done_at - finished.spawned_at)) if not problems else None
            ),
        )
    return {"status": "failed: " + "; ".join(problems) if problems else "ok", **result}


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Every verified side's bars/s over that of each verified reference side."""
    rates = {side: r["bars_per_s"] for side, r in results.items() if r.get("bars_per_s")}
    return {
        name: {side: round(rate / rates[ref], 3) for side, rate in rates.items()}
        for ref, name in REFERENCES.items()
        if ref in rates
    }


def default_timeout_s(bars: int) -> float:
    """The time limit of one side: generous (the slowest side ran at ~500 bars/s)."""
    return 600.0 + bars / 200


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the broker, produce the bars, run every selected side, return the JSON."""
    from bench_pipeline import free_port
    from peers.data import create_topic, produce_bars

    from jobs.stack import KafkaBroker, StackConfig

    work = Path(tempfile.mkdtemp(prefix="klineflow-bench-peers-"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    broker = KafkaBroker(
        StackConfig(
            home=work / "stack",
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            redis_port=free_port(),
            kafka_libs=PROJECT_ROOT / "build" / "kafka" / "libs",
            kafka_heap="1g",
            stop_with_parent=True,
        )
    )
    broker.start()
    try:
        topic = f"bench-peers-{stamp}"
        create_topic(broker.bootstrap, topic, args.partitions)
        log.info("producing %d bars over %d series to %s", args.bars, args.series, topic)
        produced = produce_bars(broker.bootstrap, topic, args.bars, args.series)
        if produced.failed or produced.bars != args.bars or not produced.consecutive():
            raise RuntimeError(f"producing failed: {produced.bars} acknowledged, {produced.failed}")
        windows = produced.expected_windows()
        baseline = export_revision(args.baseline, work / "baseline") if args.baseline else None
        results: dict[str, dict[str, Any]] = {}
        for side in args.sides:
            if side == "klineflow-full-baseline" and baseline is None:
                continue
            reason = unavailable(side)
            if reason is not None:
                results[side] = {"status": reason}
                continue
            spec = SideSpec(
                side=side,
                bootstrap=broker.bootstrap,
                topic=topic,
                partitions=args.partitions,
                parallelism=args.parallelism,
                bars=produced.bars,
                group=f"{topic}-{side}",
                work=str(work / side),
                jars=tuple(str(jar) for jar in sorted(JARS_DIR.glob("*.jar"))),
                ports=tuple(free_port() for _ in range(args.parallelism)),
            )
            log.info("side %s ...", side)
            report, finished = run_side(side, spec, args.timeout_s, baseline)
            expected = expected_outputs(side, windows, len(produced.series))
            tables = expected_tables(side, windows, produced.bars)
            results[side] = summarize(report, finished, produced.bars, expected, tables)
            log.info("side %s: %s", side, json.dumps(results[side]))
        return {
            "benchmark": "peers",
            "bars": produced.bars,
            "series": len(produced.series),
            "partitions": args.partitions,
            "parallelism": args.parallelism,
            "cpus": os.cpu_count(),
            "produce": {
                "client": "kafka-python (connectors.kafka_producer)",
                "s": round(produced.seconds, 2),
                "bars_per_s": round(produced.bars / produced.seconds),
            },
            "rollup_windows": windows,
            "method": METHOD,
            "baseline": args.baseline,
            "sides": results,
            "ratios": ratios(results),
        }
    finally:
        broker.stop()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


def run_side_here(spec_json: str) -> None:
    """``--side``: run one peer in this process and print its report as the last line."""
    spec = SideSpec.from_json(spec_json)
    Path(spec.work).mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(PEERS[spec.side][0])
    report: SideReport = module.run(spec)
    print(report.to_json(), flush=True)


def main() -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bars", type=int, default=1_000_000, help="closed 1m bars to produce")
    parser.add_argument("--series", type=int, default=100, help="series the bars spread over")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topic")
    parser.add_argument("--parallelism", type=int, default=2, help="parallelism of every side")
    parser.add_argument(
        "--sides", type=parse_sides, default=list(SIDES), help=f"any of {','.join(SIDES)}"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run klineflow-full from git revision REV (e.g. HEAD, main~3), after "
        "klineflow-full",
    )
    parser.add_argument("--timeout-s", type=float, default=None, help="time limit per side")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary directory")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: one peer, in a subprocess
    parser.add_argument("--count-chdb", help=argparse.SUPPRESS)  # internal: klines in a chdb dir
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its event-loop timing warnings
    if args.side:
        run_side_here(args.side)
        return
    if args.count_chdb:
        from peers.klineflow_side import chdb_counts

        print(json.dumps(chdb_counts(args.count_chdb)))
        return
    if args.baseline and "klineflow-full-baseline" not in args.sides:
        args.sides = parse_sides(",".join([*args.sides, "klineflow-full-baseline"]))
    if args.timeout_s is None:
        args.timeout_s = default_timeout_s(args.bars)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (args.out / f"bench_peers-{stamp}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
