"""The cluster's settings: flags default to ``ClusterSettings()``, each names its variable,
and the slots per TaskManager fit the whole job on the TaskManagers left after one dies."""

from __future__ import annotations

import argparse

import pytest

from jobs.cluster_settings import ClusterSettings, add_cluster_arguments, cluster_settings_from_args
from tests.unit.test_cli_defaults import ENV_NAME, _options, clean_parser


def test_no_cluster_flags_give_the_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = clean_parser(monkeypatch, add_cluster_arguments)
    assert cluster_settings_from_args(parser.parse_args([])) == ClusterSettings()


def test_every_cluster_flag_names_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = _options(clean_parser(monkeypatch, add_cluster_arguments))
    names = [ENV_NAME.findall(action.help or "") for action in options]
    assert all(len(found) == 1 for found in names), names
    assert "KLINEFLOW_TASKMANAGERS" in {found[0] for found in names}


def test_the_taskmanagers_flag_falls_back_to_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLINEFLOW_TASKMANAGERS", "3")
    parser = argparse.ArgumentParser()
    add_cluster_arguments(parser)
    assert cluster_settings_from_args(parser.parse_args([])).taskmanagers == 3
    assert cluster_settings_from_args(parser.parse_args(["--taskmanagers", "2"])).taskmanagers == 2


@pytest.mark.parametrize(
    ("taskmanagers", "job_slots", "per_taskmanager"),
    [(1, 7, 7), (2, 7, 7), (3, 7, 4), (4, 8, 3), (5, 5, 2)],
)
def test_the_job_fits_on_the_taskmanagers_left_after_one_dies(
    taskmanagers: int, job_slots: int, per_taskmanager: int
) -> None:
    cluster = ClusterSettings(taskmanagers=taskmanagers, job_slots=job_slots)
    assert cluster.slots_per_taskmanager == per_taskmanager
    survivors = max(taskmanagers - 1, 1)
    assert survivors * cluster.slots_per_taskmanager >= job_slots
    assert survivors * (cluster.slots_per_taskmanager - 1) < job_slots  # and no more than that


def test_nonsense_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="taskmanagers"):
        ClusterSettings(taskmanagers=0)
    with pytest.raises(ValueError, match="job_slots"):
        ClusterSettings(job_slots=0)


def test_a_submitted_job_gets_every_setting_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every flag of the job, set to a value other than its default, survives ``job_arguments``
    (the URLs, which travel in the environment, apart); and no flag is forgotten."""
    from dataclasses import replace
    from pathlib import Path

    from connectors.inference import InferenceSettings
    from jobs.cluster import ENVIRONMENT_ONLY_FLAGS, job_arguments
    from jobs.config import (
        AnalyticsConfig,
        JobSettings,
        PipelineConfig,
        SinkConfig,
        add_job_arguments,
        settings_from_args,
    )
    from jobs.signals import SignalConfig

    settings = JobSettings(
        kafka_bootstrap="10.0.0.1:9093", klines_topic="t.raw", dlq_topic="t.dlq",
        consumer_group="g", bounded=True, parallelism=3,
        flink_conf_dir=Path("/tmp/conf").resolve(), checkpoint_dir=Path("/tmp/ck").resolve(),
        flink_overrides=(("python.fn-execution.bundle.size", "5"), ("a.b", "x=y")),
        local_heap="768m",
        pipeline=PipelineConfig(
            max_out_of_orderness_ms=1, idleness_ms=2, allowed_lateness_ms=3,
            rollup_timeframes=("15m",), rollup_emit_in_progress=True, rollup_idle_close_ms=4,
            rollup_live_horizon_ms=-1, series_ttl_ms=5, source_batch_records=6,
            source_batch_bytes=7, source_batch_ms=8,
        ),
        sinks=SinkConfig(
            clickhouse_batch_rows=9, clickhouse_flush_ms=10, clickhouse_retry_s=1.5,
            redis_batch_rows=11, redis_flush_ms=12, redis_recent_bars=13, redis_ttl_s=14,
            redis_publish=False,
        ),
        analytics=AnalyticsConfig(
            profile_timeframes=(), profile_rows=15, profile_row_size=0.25, profile_max_rows=16,
            indicators=False,
        ),
        signals=SignalConfig(
            enabled=False, timeframes=("4h",), capacity=17, timeout_ms=1800,
            inference=InferenceSettings(
                model="m", api_key_file="/tmp/key", requests_per_s=0.5, tokens_per_min=19.0,
                price_per_million_tokens=0.75,
            ),
        ),
    )  # fmt: skip
    parser = clean_parser(monkeypatch, add_job_arguments)
    arguments = job_arguments(settings)
    parsed = settings_from_args(parser.parse_args(arguments))
    # What travels in the environment comes back as the parser's defaults here.
    expected = replace(
        settings,
        sinks=replace(settings.sinks, clickhouse_url=parsed.sinks.clickhouse_url,
                      redis_url=parsed.sinks.redis_url),
        signals=replace(settings.signals, inference=replace(
            settings.signals.inference, url=parsed.signals.inference.url,
            l2_redis_url=parsed.signals.inference.l2_redis_url)),
    )  # fmt: skip
    assert parsed == expected
    every_flag = {action.option_strings[0] for action in parser._actions if action.option_strings}
    passed = {argument for argument in arguments if argument.startswith("--")}
    # A switch at its default is left out; every other flag must be passed.
    assert every_flag - passed - {"-h"} <= ENVIRONMENT_ONLY_FLAGS
