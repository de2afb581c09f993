"""Flink SQL with Java operators only: the five roll-ups as TUMBLE windows to a blackhole.

PyFlink's Table API only submits the statements; no Python runs per record. The Kafka table
reads the topic as JSON from the earliest offset up to the latest (``scan.bounded.mode``), with
an event-time ``WATERMARK`` on open_time (1 minute out of order, as the job allows) made per
partition in the source. Each timeframe is a TUMBLE window aggregation (UTC-aligned: the
session time zone is UTC) into a blackhole table. To check the output without a real sink,
the same window rows are also counted per timeframe in one window over all time, whose five
rows go to a small Kafka topic that is read back at the end (the planner computes the roll-ups
once for both uses: sub-plan reuse is on by default).

``open``/``close`` are ``FIRST_VALUE``/``LAST_VALUE`` in arrival order, which is open_time
order here: every series is in order in its partition. Start-up is told by offsets: the source
commits them (Kafka auto-commit every 100 ms, no checkpoints), and the first commit of the
side's consumer group marks the first bar read.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson

from peers.common import ROLLUP_TIMEFRAMES, SideReport, SideSpec, client_label, now

_INTERVALS = {
    "5m": "INTERVAL '5' MINUTE",
    "15m": "INTERVAL '15' MINUTE",
    "1h": "INTERVAL '1' HOUR",
    "4h": "INTERVAL '4' HOUR",
    "1d": "INTERVAL '1' DAY",
}
_POLL_S = 0.05


def source_ddl(spec: SideSpec) -> str:
    """The Kafka table over the bars topic, with its watermark."""
    return f"""
CREATE TABLE bars (
    exchange STRING,
    symbol STRING,
    open_time BIGINT,
    `open` DOUBLE,
    high DOUBLE,
    low DOUBLE,
    `close` DOUBLE,
    volume DOUBLE,
    quote_volume DOUBLE,
    trades BIGINT,
    taker_buy_volume DOUBLE,
    taker_buy_quote_volume DOUBLE,
    rowtime AS TO_TIMESTAMP_LTZ(open_time, 3),
    WATERMARK FOR rowtime AS rowtime - INTERVAL '1' MINUTE
) WITH (
    'connector' = 'kafka',
    'topic' = '{spec.topic}',
    'properties.bootstrap.servers' = '{spec.bootstrap}',
    'properties.group.id' = '{spec.group}',
    'properties.enable.auto.commit' = 'true',
    'properties.auto.commit.interval.ms' = '100',
    'scan.startup.mode' = 'earliest-offset',
    'scan.bounded.mode' = 'latest-offset',
    'format' = 'json',
    'json.fail-on-missing-field' = 'false',
    'json.ignore-parse-errors' = 'false'
)"""


ROLLUP_COLUMNS = """
    exchange STRING, symbol STRING, window_start TIMESTAMP(3), window_end TIMESTAMP(3),
    `open` DOUBLE, high DOUBLE, low DOUBLE, `close` DOUBLE, volume DOUBLE, quote_volume DOUBLE,
    trades BIGINT, taker_buy_volume DOUBLE, taker_buy_quote_volume DOUBLE, bars_present BIGINT
"""


def rollup_query(timeframe: str) -> str:
    """One timeframe's roll-up: a TUMBLE window aggregation keyed by series."""
    return f"""
SELECT exchange, symbol, window_start, window_end, window_time,
    FIRST_VALUE(`open`) AS `open`, MAX(high) AS high, MIN(low) AS low,
    LAST_VALUE(`close`) AS `close`, SUM(volume) AS volume, SUM(quote_volume) AS quote_volume,
    SUM(trades) AS trades, SUM(taker_buy_volume) AS taker_buy_volume,
    SUM(taker_buy_quote_volume) AS taker_buy_quote_volume, COUNT(*) AS bars_present
FROM TABLE(TUMBLE(TABLE bars, DESCRIPTOR(rowtime), {_INTERVALS[timeframe]}))
GROUP BY exchange, symbol, window_start, window_end, window_time"""


def union_query() -> str:
    """The rows of all five roll-ups, labelled with their timeframe."""
    return "\nUNION ALL\n".join(
        f"SELECT '{tf}' AS timeframe, bars_present, window_time FROM {_view(tf)}"
        for tf in ROLLUP_TIMEFRAMES
    )


def counts_query() -> str:
    """Rows and the 1m bars in them per timeframe, in one window over all time."""
    return """
SELECT timeframe, COUNT(*) AS n, SUM(bars_present) AS bars
FROM TABLE(TUMBLE(TABLE all_rollups, DESCRIPTOR(window_time), INTERVAL '36500' DAY(5)))
GROUP BY timeframe, window_start, window_end"""


def _view(timeframe: str) -> str:
    return f"rollup_{timeframe.replace('m', 'min')}"


def table_environment(spec: SideSpec) -> Any:
    """A streaming TableEnvironment on a local mini-cluster, loopback only, UTC."""
    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    config = Configuration()
    for key, value in {
        "pipeline.jars": ";".join(Path(jar).resolve().as_uri() for jar in spec.jars),
        "parallelism.default": str(spec.parallelism),
        "table.local-time-zone": "UTC",
        "pipeline.name": "bench-peers-flink-sql",
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.bind-port": "8081-8180",
        "jobmanager.bind-host": "127.0.0.1",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        # As the job's bounded runs: retry a transient failure twice, then fail. A restart
        # reads the bounded topic again from the start (no checkpoints), so counts stay exact.
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "2",
        "restart-strategy.fixed-delay.delay": "2s",
    }.items():
        config.set_string(key, value)
    settings = EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(config)
    return TableEnvironment.create(settings.build())


def _first_commit(spec: SideSpec, stop: threading.Event, report: SideReport) -> None:
    """Set ``report.first_bar_at`` when the source first commits offsets of its group."""
    from kafka.errors import KafkaError

    from connectors.kafka_admin import admin_client

    with admin_client(spec.bootstrap) as admin:
        while not stop.wait(_POLL_S):
            try:
                offsets = admin.list_group_offsets(spec.group).get(spec.group, {})
            except KafkaError as exc:  # the group has no coordinator until its first commit
                if not exc.retriable:
                    raise
                continue
            if any(meta.offset > 0 for meta in offsets.values()):
                report.first_bar_at = now()
                return


def read_counts(spec: SideSpec, topic: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per timeframe, the window rows and the 1m bars in them, as the job wrote to ``topic``."""
    from connectors.kafka_admin import read_topic

    rows: dict[str, int] = {}
    bars: dict[str, int] = {}
    for _key, value in read_topic(spec.bootstrap, topic, min_messages=len(ROLLUP_TIMEFRAMES)):
        record = orjson.loads(value)
        timeframe = record["timeframe"]
        rows[timeframe] = rows.get(timeframe, 0) + int(record["n"])
        bars[timeframe] = bars.get(timeframe, 0) + int(record["bars"])
    return rows, bars


def run(spec: SideSpec) -> SideReport:
    """Submit the statements, wait for the bounded job to finish, read the counts back."""
    counts_topic = f"{spec.topic}.flink-sql-counts"
    t_env = table_environment(spec)
    t_env.execute_sql(source_ddl(spec))
    t_env.execute_sql(f"CREATE TABLE rollups ({ROLLUP_COLUMNS}) WITH ('connector' = 'blackhole')")
    t_env.execute_sql(
        f"""CREATE TABLE window_counts (timeframe STRING, n BIGINT, bars BIGINT) WITH (
            'connector' = 'kafka', 'topic' = '{counts_topic}',
            'properties.bootstrap.servers' = '{spec.bootstrap}', 'format' = 'json')"""
    )
    statements = t_env.create_statement_set()
    for timeframe in ROLLUP_TIMEFRAMES:
        t_env.create_temporary_view(_view(timeframe), t_env.sql_query(rollup_query(timeframe)))
        statements.add_insert_sql(
            f"INSERT INTO rollups SELECT exchange, symbol, window_start, window_end, `open`, "
            f"high, low, `close`, volume, quote_volume, trades, taker_buy_volume, "
            f"taker_buy_quote_volume, bars_present FROM {_view(timeframe)}"
        )
    t_env.create_temporary_view("all_rollups", t_env.sql_query(union_query()))
    statements.add_insert_sql(f"INSERT INTO window_counts {counts_query()}")
    report = SideReport(
        details={
            "client": f"{client_label('apache-flink')}: SQL, Java operators only",
            "config": "no checkpoints; FIRST_VALUE/LAST_VALUE (arrival = open_time order)",
        }
    )
    stop = threading.Event()
    watcher = threading.Thread(target=_first_commit, args=(spec, stop, report), daemon=True)
    watcher.start()
    try:
        statements.execute().wait()
        report.done_at = now()
    finally:
        stop.set()
        watcher.join()
    report.outputs, bars = read_counts(spec, counts_topic)
    # Every bar the source read is in exactly one window of each timeframe: the fewest bars
    # any timeframe's windows hold is what reached all five roll-ups.
    report.consumed = min(bars.values(), default=0)
    report.details["bars_in_windows"] = bars
    return report
