"""What the sides of ``bench_peers.py`` share: spec, report, roll-up maths, worker processes.

The Python peers (quix-streams, bytewax) fold the same roll-up as the job (DESIGN.md,
"Conventions"): open of the earliest 1m bar, close of the latest, high max, low min, sums of
volume, quote volume, trades and taker volumes, and the count of bars. ``initial`` turns one
bar into a roll-up of one bar and ``merge`` combines two roll-ups without changing either
(bytewax hands one value to five window branches, so nothing may be mutated in place).

Times are ``time.monotonic()`` readings: on Linux that clock is system-wide, so a reading taken
in a worker process compares with one taken in the orchestrator.
"""

from __future__ import annotations

import importlib.metadata
import json
import multiprocessing
import queue
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from udfs.record import TIMEFRAME_MS

ROLLUP_TIMEFRAMES: Final[tuple[str, ...]] = ("5m", "15m", "1h", "4h", "1d")
# How long a side may go without consuming a bar before it gives up (its report then shows
# fewer bars than produced, and the side is reported as failed).
STALL_TIMEOUT_S: Final[float] = 120.0
_WORKER_POLL_S: Final[float] = 1.0

Rollup = dict[str, Any]


@dataclass(frozen=True)
class SideSpec:
    """Everything a side needs to know about the run; passed to ``--side`` as JSON."""

    side: str
    bootstrap: str
    topic: str
    partitions: int
    parallelism: int
    bars: int
    group: str
    work: str
    jars: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()

    def to_json(self) -> str:
        """The spec as one JSON string."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SideSpec:
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        data["jars"] = tuple(data.get("jars", ()))
        data["ports"] = tuple(data.get("ports", ()))
        return cls(**data)


@dataclass
class SideReport:
    """What one side (or one of its worker processes) did.

    ``consumed`` counts the 1m bars it read, ``outputs`` the roll-up rows per timeframe it
    produced, ``first_bar_at`` is when it got its first bar (None: it got none) and
    ``done_at`` when it had processed its last one (both ``time.monotonic()``).
    """

    consumed: int = 0
    outputs: dict[str, int] = field(default_factory=dict)
    first_bar_at: float | None = None
    done_at: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The report as one JSON line (the last line a ``--side`` process prints)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SideReport:
        """The inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


def combine(reports: Iterable[SideReport]) -> SideReport:
    """The reports of a side's worker processes as one: sums, earliest start, latest end."""
    total = SideReport()
    firsts: list[float] = []
    for report in reports:
        total.consumed += report.consumed
        for timeframe, count in report.outputs.items():
            total.outputs[timeframe] = total.outputs.get(timeframe, 0) + count
        if report.first_bar_at is not None:
            firsts.append(report.first_bar_at)
        total.done_at = max(total.done_at, report.done_at)
        total.details.update(report.details)
    total.first_bar_at = min(firsts) if firsts else None
    return total


def _sum(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def initial(bar: Mapping[str, Any]) -> Rollup:
    """A roll-up of one 1m bar (a parsed wire record)."""
    return {
        "first": bar["open_time"],
        "last": bar["open_time"],
        "open": bar["open"],
        "high": bar["high"],
        "low": bar["low"],
        "close": bar["close"],
        "volume": bar["volume"],
        "quote_volume": bar.get("quote_volume"),
        "trades": bar.get("trades"),
        "taker_buy_volume": bar.get("taker_buy_volume"),
        "taker_buy_quote_volume": bar.get("taker_buy_quote_volume"),
        "bars": 1,
    }


def merge(a: Rollup, b: Rollup) -> Rollup:
    """Two roll-ups of one window as one (a new dict; ``a`` and ``b`` stay as they were)."""
    earlier = a if a["first"] <= b["first"] else b
    later = b if b["last"] >= a["last"] else a
    return {
        "first": earlier["first"],
        "last": later["last"],
        "open": earlier["open"],
        "high": max(a["high"], b["high"]),
        "low": min(a["low"], b["low"]),
        "close": later["close"],
        "volume": a["volume"] + b["volume"],
        "quote_volume": _sum(a["quote_volume"], b["quote_volume"]),
        "trades": _sum(a["trades"], b["trades"]),
        "taker_buy_volume": _sum(a["taker_buy_volume"], b["taker_buy_volume"]),
        "taker_buy_quote_volume": _sum(a["taker_buy_quote_volume"], b["taker_buy_quote_volume"]),
        "bars": a["bars"] + b["bars"],
    }


def timeframe_ms(timeframe: str) -> int:
    """The length of a roll-up timeframe in ms."""
    return TIMEFRAME_MS[timeframe]


def partitions_of(spec: SideSpec, index: int) -> list[int]:
    """The topic partitions worker ``index`` of ``spec.parallelism`` reads (round robin)."""
    return list(range(index, spec.partitions, spec.parallelism))


WorkerTarget = Callable[[SideSpec, int, Any], SideReport]


def _worker_main(target: WorkerTarget, spec: SideSpec, index: int, progress: Any, out: Any) -> None:
    out.put((index, target(spec, index, progress).to_json()))


def run_workers(target: WorkerTarget, spec: SideSpec) -> SideReport:
    """``target(spec, index, progress)`` in ``spec.parallelism`` fresh processes, combined.

    ``progress`` is a shared array of one signed 64-bit slot per worker, for sides whose
    workers must decide together when everything is consumed. A worker that dies without a
    report raises ``RuntimeError`` here (its traceback is on stderr).
    """
    context = multiprocessing.get_context("spawn")
    progress = context.Array("q", spec.parallelism)
    out = context.Queue()
    workers = [
        context.Process(
            target=_worker_main, args=(target, spec, index, progress, out), name=f"worker-{index}"
        )
        for index in range(spec.parallelism)
    ]
    for worker in workers:
        worker.start()
    reports: dict[int, SideReport] = {}
    try:
        while len(reports) < len(workers):
            try:
                index, text = out.get(timeout=_WORKER_POLL_S)
            except queue.Empty:
                dead = [w for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"{spec.side}: {dead[0].name} exited with code {dead[0].exitcode}"
                    ) from None
                continue
            reports[index] = SideReport.from_json(text)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
    total = combine(reports[index] for index in sorted(reports))
    total.details["bars_per_worker"] = [reports[index].consumed for index in sorted(reports)]
    return total


def client_label(package: str) -> str:
    """``package`` and its installed version, e.g. ``quixstreams 3.28.1``."""
    return f"{package} {importlib.metadata.version(package)}"


def now() -> float:
    """The clock every side reports in (``time.monotonic()``, system-wide on Linux)."""
    return time.monotonic()
