"""State TTL of silent series: dropped after the TTL, active series' results unchanged.

The golden input through the whole job with ``--series-ttl-ms 1000``: the one-bar series
``bybit:XRP-USDT`` (a single 1h bar, nothing to roll up) goes silent at once and is dropped
by the wall clock a second later (the series operator's ``series_dropped`` counter, read
from the Flink REST API while the job runs), while the three active series keep getting
input and are never touched: every table, Redis key and dead letter is still exactly the
golden snapshot.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import redis

from jobs.config import AnalyticsConfig, PipelineConfig
from tests.chaos.chaos_support import ChaosFigures, assert_golden_outputs
from tests.integration.conftest import TopicNames, free_ports
from tests.integration.job_contract_support import (
    GOLDEN_START,
    Series,
    cancel_job,
    closed_bars,
    contract_settings,
    golden_input,
    kline_message,
    operator_metric,
    produce,
    start_job,
    wait_for,
)
from tests.integration.test_job_contract import (
    STARTUP_S,
    topics,  # noqa: F401 - a fixture
)


def series_metric(rest_port: int, job_id: str, name: str) -> int:
    """The sum over subtasks of one metric of the ``series`` operator (0 if not shown yet)."""
    return sum(operator_metric(rest_port, job_id, name, vertex="series"))


def test_a_silent_series_is_dropped_and_active_series_keep_their_results(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,  # noqa: F811 - the fixture imported above
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    produce(kafka_bootstrap, topics.raw, golden_input().messages)
    (rest_port,) = free_ports(1)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=redis_url,
        name="series-ttl",
        # One message an element and small bundles stretch the run to well past the TTL
        # (results do not change).
        pipeline=replace(PipelineConfig(), series_ttl_ms=1_000, source_batch_records=1),
        flink_overrides=(
            ("python.fn-execution.bundle.size", "20"),
            ("rest.bind-port", str(rest_port)),
            ("metrics.fetcher.update-interval", "500"),  # REST metrics fresh within 0.5 s
        ),
    )
    client = start_job(settings)
    job_id = str(client.get_job_id())
    result = client.get_job_execution_result()
    dropped = 0
    deadline = time.monotonic() + 900
    try:
        while not result.done():
            dropped = max(dropped, series_metric(rest_port, job_id, "series_dropped"))
            assert time.monotonic() < deadline, "the job is still running"
            time.sleep(0.2)
        result.result()
    except BaseException:
        cancel_job(client)
        raise
    assert dropped >= 1, "the silent series was never dropped"
    assert_golden_outputs(
        tmp_path=tmp_path,
        chdb_url=settings.sinks.clickhouse_url,
        redis_client=redis_client,
        kafka_bootstrap=kafka_bootstrap,
        dlq_topic=topics.dlq,
        figures=ChaosFigures(case="series-ttl"),
    )


def test_many_short_lived_series_leave_no_state_behind(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,  # noqa: F811 - the fixture imported above
    redis_url: str,
) -> None:
    """Two waves of 150 series that each live for three bars, through the live (unbounded)
    job with a 5 s TTL and no windows (roll-ups and profiles off, so nothing keeps a series
    waiting for a watermark): after each wave the series operator holds no series again
    (its ``series_held`` gauge), so memory stays flat however many series come and go."""
    waves, per_wave = 2, 150
    (rest_port,) = free_ports(1)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=redis_url,
        name="series-ttl-churn",
        bounded=False,
        pipeline=replace(PipelineConfig(), series_ttl_ms=5_000, rollup_timeframes=()),
        analytics=AnalyticsConfig(profile_timeframes=()),
        flink_overrides=(
            ("rest.bind-port", str(rest_port)),
            ("metrics.fetcher.update-interval", "500"),  # REST metrics fresh within 0.5 s
        ),
    )
    client = start_job(settings)
    job_id = str(client.get_job_id())
    try:
        for wave in range(waves):
            bars = [
                kline_message(kline)
                for number in range(per_wave)
                for kline in closed_bars(
                    Series("binance", f"W{wave}N{number}-USDT", f"W{wave}N{number}USDT",
                           10.0 + number, 0.25),
                    GOLDEN_START, 3, seed=number,
                )
            ]  # fmt: skip
            produce(kafka_bootstrap, topics.raw, bars)
            held = wait_for(
                lambda: series_metric(rest_port, job_id, "series_held") >= per_wave // 2,
                timeout_s=STARTUP_S, what=f"wave {wave}'s series in the operator", client=client,
            )  # fmt: skip
            assert held
            wait_for(
                lambda: series_metric(rest_port, job_id, "series_held") == 0,
                timeout_s=120, what=f"wave {wave}'s series to be dropped", client=client,
            )  # fmt: skip
        dropped = series_metric(rest_port, job_id, "series_dropped")
        assert dropped == waves * per_wave
    finally:
        cancel_job(client)
