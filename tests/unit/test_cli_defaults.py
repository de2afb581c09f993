"""Every default is written once: parsing no flags gives exactly the settings' defaults.

Each flag also names the environment variable it falls back to in its --help.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from connectors.bridge import BridgeConfig
from connectors.exchanges import create_adapter
from jobs import bridge_cmd, replay_cmd, stack_cmd
from jobs.config import JobSettings, add_job_arguments, resolve_clickhouse_url, settings_from_args
from jobs.stack import StackConfig

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


def _command(name: str, module: Any) -> Callable[[argparse.ArgumentParser], None]:
    """Adds the flags of command ``name`` (registered by ``module``) to a parser."""

    def add(parser: argparse.ArgumentParser) -> None:
        module.register(parser.add_subparsers(dest="command"))

    return add


def test_no_bridge_flags_give_the_default_bridge_config(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = clean_parser(monkeypatch, _command("bridge", bridge_cmd))
    args = parser.parse_args(["bridge", "--exchange", "binance", "--symbols", "BTCUSDT"])
    config = bridge_cmd.bridge_config(args, create_adapter("binance", "spot", ["BTCUSDT"]))
    job = JobSettings()
    assert (config.topic, config.dlq_topic, args.bootstrap_servers) == (
        job.klines_topic, job.dlq_topic, job.kafka_bootstrap
    )  # fmt: skip
    # The command line alone repairs the last hour on start.
    assert config.startup_backfill_minutes == bridge_cmd.STARTUP_BACKFILL_MINUTES
    assert replace(config, startup_backfill_minutes=0) == BridgeConfig(
        config.ws_url, config.rest_url, config.topic, config.dlq_topic
    )


# Flags of the commands that have no environment variable (per-run choices).
WITHOUT_ENV = {
    "bridge": set(),
    "replay": {"--exchange", "--symbol", "--timeframe", "--market", "--rate", "--no-progress"},
}


@pytest.mark.parametrize(("name", "module"), [("bridge", bridge_cmd), ("replay", replay_cmd)])
def test_every_command_flag_names_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, module: Any
) -> None:
    parser = clean_parser(monkeypatch, _command(name, module))
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = _options(subparsers.choices[name])
    without = {a.option_strings[0] for a in options if not ENV_NAME.search(a.help or "")}
    assert without == WITHOUT_ENV[name]
    for action in options:  # with no variable set, each help shows the built-in default
        if action.option_strings[0] not in without:
            assert "default:" in (action.help or ""), action.option_strings


def test_no_stack_flags_give_the_default_stack_config(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = clean_parser(monkeypatch, stack_cmd.add_stack_arguments)
    assert stack_cmd.config_from_args(parser.parse_args([])) == StackConfig()


def test_flink_options_parse_and_refuse_what_is_not_key_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.config import add_job_arguments, parse_flink_options, settings_from_args

    assert parse_flink_options("") == ()
    assert parse_flink_options(" a.b = 1 , c=x=y ,") == (("a.b", "1"), ("c", "x=y"))
    for bad in ("bundle.size", "=5", "a=", "a=1,oops"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not KEY=VALUE"):
            parse_flink_options(bad)
    monkeypatch.setenv("KLINEFLOW_FLINK_OPTIONS", "python.fn-execution.bundle.size=7")
    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    from_env = settings_from_args(parser.parse_args([]))
    assert from_env.flink_overrides == (("python.fn-execution.bundle.size", "7"),)
    given = settings_from_args(parser.parse_args(["--flink-option", "rest.port=0"]))
    assert given.flink_overrides == (("rest.port", "0"),)


def test_local_heap_parses_jvm_sizes_and_falls_back_to_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.config import parse_heap_size

    assert [parse_heap_size(text) for text in ("1g", " 1536M ", "800000k", "0", "")] == [
        "1g",
        "1536m",
        "800000k",
        "",
        "",
    ]
    for bad in ("1.5g", "lots", "-1g", "1gb", "01g"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a JVM heap size"):
            parse_heap_size(bad)
    monkeypatch.setenv("KLINEFLOW_LOCAL_HEAP", "2g")
    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    assert settings_from_args(parser.parse_args([])).local_heap == "2g"
    assert settings_from_args(parser.parse_args(["--local-heap", "0"])).local_heap == ""


def test_flink_options_win_over_the_bounded_run_settings(tmp_path: Path) -> None:
    from jobs.config import JobSettings
    from jobs.job import BOUNDED_RUN_SETTINGS, OPERATORS_JAR, job_configuration

    jars = tmp_path / "jars"  # what `make setup` leaves there, by name
    jars.mkdir()
    for name in ("flink-sql-connector-kafka-4.0.jar", OPERATORS_JAR):
        (jars / name).touch()
    settings = JobSettings(bounded=True, checkpoint_dir=tmp_path / "ck", flink_jars_dir=jars)
    assert (
        job_configuration(settings)["python.fn-execution.bundle.size"]
        == (BOUNDED_RUN_SETTINGS["python.fn-execution.bundle.size"])
    )
    tuned = settings.with_overrides(flink_overrides=(("python.fn-execution.bundle.size", "5"),))
    assert job_configuration(tuned)["python.fn-execution.bundle.size"] == "5"
