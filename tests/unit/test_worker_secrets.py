"""Secrets reach the Flink workers in private files, never through the job graph or the
environment the workers inherit (Beam writes that environment to the Flink log)."""

from __future__ import annotations

import stat
from pathlib import Path

import cloudpickle
import pytest

from connectors.flink_inference import InferenceAsyncFunction, InferenceSecrets, inference_function
from connectors.inference import InferenceSettings, load_api_key
from jobs.config import JobSettings
from jobs.signals import SignalConfig
from jobs.worker_secrets import (
    api_key_path,
    remove_secret_variables,
    secret_variables,
    with_api_key_in_file,
)

INFERENCE_URL = "https://svc:inf-pw-3391@llm.internal/v1"
L2_URL = "redis://:l2-pw-5520@cache.internal:6379/0"
API_KEY = "sk-unit-key-7781"


def test_the_pickled_inference_function_holds_no_password_and_the_worker_reads_them(
    tmp_path: Path,
) -> None:
    settings = InferenceSettings(url=INFERENCE_URL, l2_redis_url=L2_URL)
    path = tmp_path / "secrets" / "job-inference.json"
    pickled = cloudpickle.dumps(inference_function(settings, path))
    for secret in (b"inf-pw-3391", b"l2-pw-5520"):
        assert secret not in pickled
    assert b"llm.internal" in pickled and b"cache.internal" in pickled
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    on_worker: InferenceAsyncFunction = cloudpickle.loads(pickled)
    assert on_worker.settings.url == "https://svc:***@llm.internal/v1"
    assert on_worker.worker_settings() == settings


def test_inference_urls_without_a_password_need_no_file(tmp_path: Path) -> None:
    settings = InferenceSettings(url="http://127.0.0.1:8000/v1", l2_redis_url="redis://h:6379/0")
    function = inference_function(settings, tmp_path / "unused.json")
    assert function.secrets_file is None and function.worker_settings() == settings
    assert not (tmp_path / "unused.json").exists()
    with pytest.raises(ValueError, match="secrets_path"):
        inference_function(InferenceSettings(url=INFERENCE_URL))


def test_a_secrets_file_for_other_urls_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inference.json"
    function = inference_function(InferenceSettings(url=INFERENCE_URL), path)
    InferenceSecrets(INFERENCE_URL.replace("llm.internal", "elsewhere"), None).write(path)
    with pytest.raises(ValueError, match="other URLs"):
        function.worker_settings()
    assert "inf-pw-3391" not in repr(InferenceSecrets(INFERENCE_URL, L2_URL))


def test_an_api_key_from_the_environment_moves_to_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCE_API_KEY", API_KEY)
    settings = JobSettings(
        job_name="keyed", signals=SignalConfig(inference=InferenceSettings(url="http://llm/v1"))
    )
    moved = with_api_key_in_file(settings, tmp_path)
    key_file = moved.signals.inference.api_key_file
    assert key_file == str(api_key_path(tmp_path, "keyed").resolve())
    assert stat.S_IMODE(Path(key_file).stat().st_mode) == 0o600
    monkeypatch.delenv("INFERENCE_API_KEY")  # what the workers will see
    key = load_api_key(moved.signals.inference.api_key_env, key_file)
    assert key is not None and key.reveal() == API_KEY
    assert API_KEY.encode() not in cloudpickle.dumps(moved.signals.inference)
    # A key file given already, or no key at all: nothing to move.
    given = settings.with_overrides(
        signals=SignalConfig(
            inference=InferenceSettings(url="http://llm/v1", api_key_file="/run/key")
        )
    )
    assert with_api_key_in_file(given, tmp_path) == given
    assert with_api_key_in_file(settings, tmp_path) == settings  # no key in the environment
    no_inference = JobSettings(job_name="plain")
    assert with_api_key_in_file(no_inference, tmp_path) == no_inference
    assert not api_key_path(tmp_path, "plain").exists()


def test_the_variables_holding_secrets_are_removed_and_only_those() -> None:
    environ = {
        "INFERENCE_API_KEY": API_KEY,
        "MY_COPY_OF_THE_KEY": f"Bearer {API_KEY}",
        "REDIS_URL": "redis://:pw@cache:6379/0",
        "CLICKHOUSE_URL": "clickhouse://app:pw@db:9000/crypto_kline",
        "OTHER_DSN": "postgres://u:pw@pg/db",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "PATH": "/usr/bin:/bin",
        "PLAIN_REDIS": "redis://cache:6379/0",
    }
    holding = ["CLICKHOUSE_URL", "INFERENCE_API_KEY", "MY_COPY_OF_THE_KEY", "OTHER_DSN",
               "REDIS_URL"]  # fmt: skip
    assert secret_variables(JobSettings(), environ) == holding
    assert remove_secret_variables(JobSettings(), environ) == holding
    assert environ == {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "PATH": "/usr/bin:/bin",
        "PLAIN_REDIS": "redis://cache:6379/0",
    }
