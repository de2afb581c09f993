"""Every default is written once: parsing no flags gives exactly the settings' defaults.

Each flag also names the environment variable it falls back to in its --help.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import replace

import pytest

from jobs.config import JobSettings, add_job_arguments, resolve_clickhouse_url, settings_from_args

ENV_NAME = re.compile(r"\(env ([A-Z][A-Z0-9_]*)")


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if action.option_strings and action.dest != "help"]


def clean_parser(
    monkeypatch: pytest.MonkeyPatch, add: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """A parser built with none of the variables its flags name set in the environment."""
    first = argparse.ArgumentParser()
    add(first)
    for action in _options(first):
        for name in ENV_NAME.findall(action.help or ""):
            monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    add(parser)
    return parser


def test_no_job_flags_give_the_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = settings_from_args(clean_parser(monkeypatch, add_job_arguments).parse_args([]))
    defaults = JobSettings()
    # The two values settings_from_args derives: the chdb path made absolute, and the L2
    # cache of the inference engine on the job's Redis.
    expected = replace(
        defaults,
        sinks=replace(
            defaults.sinks, clickhouse_url=resolve_clickhouse_url(defaults.sinks.clickhouse_url)
        ),
        signals=replace(
            defaults.signals,
            inference=replace(defaults.signals.inference, l2_redis_url=defaults.sinks.redis_url),
        ),
    )
    assert parsed == expected


def test_every_job_flag_names_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = clean_parser(monkeypatch, add_job_arguments)
    options = _options(parser)
    assert len(options) > 30
    missing = [
        action.option_strings[0] for action in options if not ENV_NAME.search(action.help or "")
    ]
    assert missing == []
    names = [ENV_NAME.findall(action.help or "")[0] for action in options]
    assert len(set(names)) == len(names)  # one variable per flag
