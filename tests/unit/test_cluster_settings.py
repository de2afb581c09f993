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


def test_a_submitted_job_gets_its_source_batching(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cluster submit`` passes the job's settings as flags of ``jobs/job.py``."""
    from dataclasses import replace

    from jobs.cluster import job_arguments
    from jobs.config import JobSettings, PipelineConfig, add_job_arguments, settings_from_args

    settings = JobSettings(
        pipeline=replace(
            PipelineConfig(), source_batch_records=7, source_batch_bytes=4096, source_batch_ms=3
        )
    )
    parser = clean_parser(monkeypatch, add_job_arguments)
    parsed = settings_from_args(parser.parse_args(job_arguments(settings)))
    batching = ("source_batch_records", "source_batch_bytes", "source_batch_ms")
    assert [getattr(parsed.pipeline, name) for name in batching] == [7, 4096, 3]
