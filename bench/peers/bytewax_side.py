"""bytewax 0.21: the five OHLCV roll-ups as tumbling event-time windows (``reduce_window``).

One dataflow: the Kafka source (confluent-kafka underneath, ``tail=False`` so it ends at the
end of every partition) → orjson parse → keyed by the Kafka key (the series) → five
``reduce_window`` branches, epoch-aligned, event time = open_time with no waiting (every
series is in order in its partition, and bytewax keeps a clock per key) → a sink that only
counts rows, the least a dataflow must have. At the end of the input every open window
closes, so all windows come out. ``parallelism`` processes of one worker each form a cluster
on loopback ports.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from peers.common import (
    ROLLUP_TIMEFRAMES,
    SideReport,
    SideSpec,
    client_label,
    initial,
    merge,
    now,
    run_workers,
    timeframe_ms,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _event_time(rollup: dict[str, Any]) -> datetime:
    return _EPOCH + timedelta(milliseconds=rollup["first"])


def build_flow(spec: SideSpec, report: SideReport) -> Any:
    """The dataflow; it counts consumed bars and window rows into ``report``."""
    import bytewax.operators as op  # type: ignore[import-not-found, import-untyped, unused-ignore]
    import bytewax.operators.windowing as win  # type: ignore[import-not-found, import-untyped, unused-ignore]
    from bytewax.connectors.kafka import KafkaSource  # type: ignore[import-not-found, import-untyped, unused-ignore]
    from bytewax.dataflow import Dataflow  # type: ignore[import-not-found, import-untyped, unused-ignore]
    from bytewax.outputs import DynamicSink, StatelessSinkPartition  # type: ignore[import-not-found, import-untyped, unused-ignore]

    class _Count(StatelessSinkPartition[Any]):
        def __init__(self, timeframe: str) -> None:
            self.timeframe = timeframe

        def write_batch(self, items: list[Any]) -> None:
            report.outputs[self.timeframe] += len(items)

    class CountSink(DynamicSink[Any]):
        def __init__(self, timeframe: str) -> None:
            self.timeframe = timeframe

        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
            return _Count(self.timeframe)

    def parse(message: Any) -> tuple[str, dict[str, Any]]:
        if report.first_bar_at is None:
            report.first_bar_at = now()
        report.consumed += 1
        return message.key.decode(), initial(orjson.loads(message.value))

    flow = Dataflow("bench-peers-bytewax")
    messages = op.input(
        "kafka",
        flow,
        KafkaSource(
            [spec.bootstrap], [spec.topic], tail=False, add_config={"group.id": spec.group}
        ),
    )
    bars = op.map("parse", messages, parse)
    clock = win.EventClock(_event_time, wait_for_system_duration=timedelta(0))
    for timeframe in ROLLUP_TIMEFRAMES:
        windower = win.TumblingWindower(
            length=timedelta(milliseconds=timeframe_ms(timeframe)), align_to=_EPOCH
        )
        out = win.reduce_window(f"rollup-{timeframe}", bars, clock, windower, merge)
        op.output(f"count-{timeframe}", out.down, CountSink(timeframe))
        op.output(f"late-{timeframe}", out.late, CountSink(f"late-{timeframe}"))
    return flow


def consume_share(spec: SideSpec, index: int, _progress: Any) -> SideReport:
    """Process ``index`` of the bytewax cluster: run the dataflow until the input ends."""
    from bytewax.run import cli_main  # type: ignore[import-not-found, import-untyped, unused-ignore]

    timeframes = [*ROLLUP_TIMEFRAMES, *(f"late-{tf}" for tf in ROLLUP_TIMEFRAMES)]
    report = SideReport(
        outputs=dict.fromkeys(timeframes, 0), details={"client": client_label("bytewax")}
    )
    flow = build_flow(spec, report)
    if spec.parallelism > 1:
        addresses = [f"127.0.0.1:{port}" for port in spec.ports]
        cli_main(flow, workers_per_process=1, process_id=index, addresses=addresses)
    else:
        cli_main(flow, workers_per_process=1)
    report.done_at = now()
    return report


def run(spec: SideSpec) -> SideReport:
    """bytewax over the topic, ``spec.parallelism`` processes of one worker each."""
    report = run_workers(consume_share, spec)
    late = {tf: report.outputs.pop(f"late-{tf}") for tf in ROLLUP_TIMEFRAMES}
    report.details["late_bars"] = late
    return report
