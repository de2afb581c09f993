"""``klineflow job run`` with a service down: one clear line on stderr, exit 1, no Flink.

Each case runs the real command line in a subprocess, so what is checked is what an
operator sees: every line the process writes (logging, kafka-python's and chdb's own
output included), its exit code, and that no password shows.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.integration.conftest import REPO_ROOT, TopicNames, free_ports

PASSWORD = "s3cret-pw-4711"


def run_job_command(tmp_path: Path, *flags: str, timeout_s: float = 120) -> tuple[int, list[str]]:
    """``klineflow job run --bounded FLAGS``: exit code and the non-empty lines it printed."""
    started = time.monotonic()
    command = [sys.executable, "-m", "jobs.cli", "job", "run", "--bounded",
               "--redis-url", f"redis://:{PASSWORD}@127.0.0.1:1/0", *flags]  # fmt: skip
    result = subprocess.run(
        command,
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert time.monotonic() - started < timeout_s
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return result.returncode, lines


def test_kafka_down_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    code, lines = run_job_command(
        tmp_path,
        "--bootstrap-servers", f"127.0.0.1:{port}",
        "--clickhouse-url", f"chdb://{tmp_path / 'chdb'}",
    )  # fmt: skip
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"klineflow job run: Kafka at 127.0.0.1:{port} is not reachable")
    assert not (tmp_path / "chdb").exists()  # it stopped before touching ClickHouse


def test_clickhouse_down_is_one_line_without_the_password(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    (port,) = free_ports(1)
    code, lines = run_job_command(
        tmp_path,
        "--bootstrap-servers", kafka_bootstrap,
        "--topic", kafka_topics.raw,
        "--dlq-topic", kafka_topics.dlq,
        "--clickhouse-url", f"clickhouse://app:{PASSWORD}@127.0.0.1:{port}/crypto_kline",
    )  # fmt: skip
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"klineflow job run: ClickHouse at clickhouse://app:***@127.0.0.1:{port}/crypto_kline "
        "is not usable:"
    )
    assert "Connection refused" in lines[0]
    assert PASSWORD not in lines[0]


def test_a_chdb_directory_held_by_another_process_is_one_line(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    chdb_dir = tmp_path / "chdb"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from connectors.clickhouse import open_writer; "
         f"w = open_writer('chdb://{chdb_dir}'); print('open', flush=True); sys.stdin.read()"],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        code, lines = run_job_command(
            tmp_path,
            "--bootstrap-servers", kafka_bootstrap,
            "--topic", kafka_topics.raw,
            "--dlq-topic", kafka_topics.dlq,
            "--clickhouse-url", f"chdb://{chdb_dir}",
        )  # fmt: skip
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0] == (
        f"klineflow job run: ClickHouse at chdb://{chdb_dir} is not usable: chdb data "
        f"directory {chdb_dir} is in use by another process (chdb allows one process per "
        "directory)"
    )


# prepare_services as `job run` calls it, then what the process has loaded, then the schema.
_PREPARE_SCRIPT = """
import sys
from pathlib import Path
from jobs.config import JobSettings, SinkConfig
from jobs.job import prepare_services
bootstrap, raw, dlq, url, checkpoints = sys.argv[1:]
prepare_services(JobSettings(kafka_bootstrap=bootstrap, klines_topic=raw, dlq_topic=dlq,
                             sinks=SinkConfig(clickhouse_url=url),
                             checkpoint_dir=Path(checkpoints)))
print("chdb loaded:", "chdb" in sys.modules)
from connectors.clickhouse import open_writer
with open_writer(url, migrate_schema=False) as writer:
    print("tables:", ",".join(sorted(writer.table_counts())))
"""


def test_the_chdb_schema_is_applied_without_loading_chdb_into_the_jobs_process(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    url = f"chdb://{tmp_path / 'chdb'}"
    result = subprocess.run(
        [sys.executable, "-c", _PREPARE_SCRIPT, kafka_bootstrap, kafka_topics.raw,
         kafka_topics.dlq, url, str(tmp_path / "checkpoints")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert "chdb loaded: False" in lines, result.stdout + result.stderr
    tables = next(line for line in lines if line.startswith("tables:"))
    assert {"klines", "indicators", "volume_profile", "signals"} <= set(
        tables.removeprefix("tables: ").split(",")
    )
