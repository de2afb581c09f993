"""quix-streams: the five OHLCV roll-ups as tumbling windows with ``reduce``, no sinks.

``parallelism`` processes share one consumer group (quix-streams runs one consumer loop per
process). Windows use the Kafka record timestamp (= open_time) and close per key when a bar
of a later window arrives (``final()``, no grace), so the window holding the last bar of each
series never closes: a side that saw every bar emits every window but those ``series x 5``.
quix-streams has no "stop at the end of the topic": the workers add up what they consumed in a
shared array and each stops its application once the total reaches the bars produced.
The defaults stay as shipped (RocksDB state with changelog topics, at-least-once).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from peers.common import (
    ROLLUP_TIMEFRAMES,
    STALL_TIMEOUT_S,
    SideReport,
    SideSpec,
    client_label,
    initial,
    merge,
    now,
    run_workers,
    timeframe_ms,
)

_WATCH_S = 0.02


def _reduce(rollup: dict[str, Any], bar: dict[str, Any]) -> dict[str, Any]:
    return merge(rollup, initial(bar))


def _watch(app: Any, report: SideReport, spec: SideSpec, index: int, progress: Any) -> None:
    """Publish this worker's count and stop the app once all workers consumed every bar."""
    last_total, last_change = 0, now()
    while True:
        progress[index] = report.consumed
        total = sum(progress[:])
        if total >= spec.bars:
            break
        if total != last_total:
            last_total, last_change = total, now()
        elif total and now() - last_change > STALL_TIMEOUT_S:
            break  # stalled after its start (a slow start is bounded by the side's time limit)
        time.sleep(_WATCH_S)
    report.done_at = now()
    app.stop()


def consume_share(spec: SideSpec, index: int, progress: Any) -> SideReport:
    """Worker ``index``: one quix-streams application in the shared consumer group."""
    from quixstreams import Application  # type: ignore[import-not-found, import-untyped, unused-ignore]

    report = SideReport(
        outputs=dict.fromkeys(ROLLUP_TIMEFRAMES, 0), details={"client": client_label("quixstreams")}
    )
    app = Application(
        broker_address=spec.bootstrap,
        consumer_group=spec.group,
        auto_offset_reset="earliest",
        state_dir=str(Path(spec.work) / f"quix-state-{index}"),
        loglevel=logging.WARNING,
    )
    topic = app.topic(spec.topic, value_deserializer="json", key_deserializer="str")
    sdf = app.dataframe(topic)

    def count_bar(_bar: Any) -> None:
        if report.first_bar_at is None:
            report.first_bar_at = now()
        report.consumed += 1

    def counter(timeframe: str) -> Any:
        def count_window(_window: Any) -> None:
            report.outputs[timeframe] += 1

        return count_window

    sdf = sdf.update(count_bar)
    for timeframe in ROLLUP_TIMEFRAMES:
        windows = (
            sdf.tumbling_window(duration_ms=timeframe_ms(timeframe), name=f"rollup-{timeframe}")
            .reduce(reducer=_reduce, initializer=initial)
            .final()
        )
        windows.update(counter(timeframe))
    watcher = threading.Thread(
        target=_watch, args=(app, report, spec, index, progress), daemon=True
    )
    watcher.start()
    app.run()
    watcher.join()
    return report


def run(spec: SideSpec) -> SideReport:
    """quix-streams over the topic, ``spec.parallelism`` processes."""
    report = run_workers(consume_share, spec)
    report.details["config"] = "as shipped: RocksDB state with changelog topics, at-least-once"
    report.details["closes"] = "per key on a later bar; the last window of each series stays open"
    return report
