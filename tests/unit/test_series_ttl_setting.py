"""The series TTL setting: a dataclass default, a flag with an env fallback, validated."""

from __future__ import annotations

import argparse

import pytest

from jobs.config import JobSettings, PipelineConfig, add_job_arguments, settings_from_args
from udfs.flink.series_function import SeriesFunction
from udfs.series import SeriesSettings


def parsed(argv: list[str]) -> JobSettings:
    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    return settings_from_args(parser.parse_args(argv))


def test_the_default_is_a_day_and_the_flag_and_its_variable_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KLINEFLOW_SERIES_TTL_MS", raising=False)
    assert PipelineConfig().series_ttl_ms == 86_400_000
    assert parsed([]).pipeline.series_ttl_ms == 86_400_000
    assert parsed(["--series-ttl-ms", "5000"]).pipeline.series_ttl_ms == 5000
    monkeypatch.setenv("KLINEFLOW_SERIES_TTL_MS", "7000")
    assert parsed([]).pipeline.series_ttl_ms == 7000
    assert parsed(["--series-ttl-ms", "0"]).pipeline.series_ttl_ms == 0  # the flag wins


def test_a_negative_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="series_ttl_ms"):
        PipelineConfig(series_ttl_ms=-1)
    with pytest.raises(ValueError, match="ttl_ms"):
        SeriesFunction(SeriesSettings(), ttl_ms=-1)
    assert SeriesFunction(SeriesSettings(), ttl_ms=0).ttl_ms == 0
