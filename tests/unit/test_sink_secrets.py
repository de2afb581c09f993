"""The store sink pickled into the job graph carries no password; its worker reads them."""

from __future__ import annotations

import stat
from pathlib import Path

import cloudpickle
import pytest

from connectors.flink_sinks import SinkSecrets, StoreSinkFunction
from jobs.config import JobSettings, SinkConfig
from jobs.job import sink_secrets_path, store_sink_arguments

CLICKHOUSE_PASSWORD = "ch-pw-Zq81"
REDIS_PASSWORD = "redis-pw-Kt55"
CLICKHOUSE_URL = f"clickhouse://app:{CLICKHOUSE_PASSWORD}@db.internal:9000/crypto_kline"
REDIS_URL = f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0"


def built_function(tmp_path: Path, **urls: str) -> tuple[StoreSinkFunction, Path]:
    settings = JobSettings(
        sinks=SinkConfig(**urls), checkpoint_dir=tmp_path / "state" / "checkpoints"
    )
    path = sink_secrets_path(settings)
    arguments = store_sink_arguments(settings.sinks, secrets_path=path)
    return StoreSinkFunction(**arguments), path


def test_the_pickled_sink_holds_no_password_and_the_worker_reads_them(tmp_path: Path) -> None:
    function, path = built_function(tmp_path, clickhouse_url=CLICKHOUSE_URL, redis_url=REDIS_URL)
    pickled = cloudpickle.dumps(function)  # what PyFlink puts in the job graph
    for secret in (CLICKHOUSE_PASSWORD, REDIS_PASSWORD):
        assert secret.encode() not in pickled
    assert b"db.internal" in pickled  # the settings themselves did travel

    on_worker = cloudpickle.loads(pickled)
    assert on_worker.clickhouse_url == "clickhouse://app:***@db.internal:9000/crypto_kline"
    assert on_worker.redis_url == "redis://:***@cache.internal:6379/0"
    assert on_worker.urls() == SinkSecrets(CLICKHOUSE_URL, REDIS_URL)
    assert CLICKHOUSE_PASSWORD not in repr(on_worker.urls())
    # The file is the client's alone.
    assert path.parent == tmp_path / "state" / "secrets"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_urls_without_secrets_need_no_file(tmp_path: Path) -> None:
    chdb = f"chdb://{tmp_path / 'chdb'}"
    function, path = built_function(tmp_path, clickhouse_url=chdb, redis_url="redis://h:6379/0")
    assert function.secrets_file is None
    assert not path.exists()
    assert cloudpickle.loads(cloudpickle.dumps(function)).urls() == SinkSecrets(
        chdb, "redis://h:6379/0"
    )


def test_a_secrets_file_of_other_urls_is_refused(tmp_path: Path) -> None:
    function, path = built_function(tmp_path, clickhouse_url=CLICKHOUSE_URL, redis_url=REDIS_URL)
    SinkSecrets(CLICKHOUSE_URL.replace("db.internal", "elsewhere"), REDIS_URL).write(path)
    with pytest.raises(ValueError, match="is for other URLs"):
        function.urls()
    path.unlink()
    with pytest.raises(ValueError, match="cannot read the sink secrets file"):
        function.urls()


def test_a_password_without_a_place_for_it_is_refused() -> None:
    with pytest.raises(ValueError, match="secrets_path"):
        store_sink_arguments(SinkConfig(clickhouse_url=CLICKHOUSE_URL))
