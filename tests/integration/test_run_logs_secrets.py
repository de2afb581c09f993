"""A whole ``klineflow job run`` with secrets in play writes none of them anywhere it logs.

The real command line runs in a subprocess with debug logging, against a Redis that requires
a password and an inference server that requires an API key, both given the way an operator
gives them (``REDIS_URL``, ``INFERENCE_API_KEY``), with ``FLINK_LOG_DIR`` pointing at a fresh
directory. (Without ``jobs.worker_secrets`` both showed in the Flink log: Beam logs the
environment of every Python worker it closes, and the workers inherited the job's.) The run must
use both secrets (Redis holds the bars, the inference server saw the key on every call), and
then no byte of either may show in its stdout, its stderr or any file the run left in the log
directory (the JVM's log, the Python workers' output forwarded into it, anything else), nor
in its checkpoints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.fakes.chat_server import ChatServer
from tests.integration.conftest import REPO_ROOT, TopicNames, free_ports
from tests.integration.test_job import produce, stamped
from udfs.record import Kline

REDIS_PASSWORD = "redis-pw-run-6203"
API_KEY = "sk-run-key-8841"
START = 1_735_689_600_000  # 2025-01-01T00:00:00Z
MINUTES = 8


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A private redis-server that refuses clients without ``REDIS_PASSWORD``; its URL."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("no redis-server on PATH (make setup installs it)")
    (port,) = free_ports(1)
    data = tmp_path / "redis"
    data.mkdir()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            REDIS_PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)


def closed_bar(minute: int) -> Kline:
    open_time = START + minute * 60_000
    price = 94_000.0 + minute
    return Kline(
        exchange="binance",
        symbol="BTC-USDT",
        raw_symbol="BTCUSDT",
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + 59_999,
        open=price,
        high=price + 2.0,
        low=price - 2.0,
        close=price + 1.0,
        volume=3.0,
        quote_volume=3.0 * price,
        trades=30,
        taker_buy_volume=1.0,
        taker_buy_quote_volume=price,
        is_closed=True,
        event_time=open_time + 59_999,
        ingest_time=open_time + 60_050,
    )


def files_holding(root: Path, needles: tuple[bytes, ...]) -> list[str]:
    """Every file under ``root`` that contains one of ``needles`` (and which one)."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            content = path.read_bytes()
            found += [f"{path}: {needle!r}" for needle in needles if needle in content]
    return found


def test_a_run_with_passwords_and_an_api_key_logs_neither(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    redis_with_password: str,
) -> None:
    produce(kafka_bootstrap, kafka_topics.raw, [stamped(closed_bar(m)) for m in range(MINUTES)])
    logs = tmp_path / "flink-logs"
    checkpoints = tmp_path / "checkpoints"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KLINEFLOW_", "INFERENCE_", "REDIS_", "CLICKHOUSE_"))
    }
    # Both secrets given the way an operator gives them: in the environment.
    env.update(FLINK_LOG_DIR=str(logs), INFERENCE_API_KEY=API_KEY, REDIS_URL=redis_with_password)
    with ChatServer(api_key=API_KEY) as chat:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "jobs.cli",
                "--verbose",
                "job",
                "run",
                "--bounded",
                "--bootstrap-servers",
                kafka_bootstrap,
                "--topic",
                kafka_topics.raw,
                "--dlq-topic",
                kafka_topics.dlq,
                "--group-id",
                f"test-{kafka_topics.raw}",
                "--clickhouse-url",
                f"chdb://{tmp_path / 'chdb'}",
                "--parallelism",
                "1",
                "--rollup-timeframes",
                "5m",
                "--profile-timeframes",
                "none",
                "--signal-timeframes",
                "1m",
                "--inference-url",
                chat.url,
                "--checkpoint-dir",
                str(checkpoints),
            ],
            check=False,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            timeout=300,
        )
        requests = chat.recorded()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output.decode(errors="replace")[-4000:]

    # Both secrets were used: every inference call carried the key, Redis holds the bars.
    assert len(requests) >= MINUTES - 1
    assert all(request.authorized for request in requests)
    client = redis.Redis.from_url(redis_with_password)
    try:
        assert client.exists("kline:{binance:BTC-USDT:1m}", "kline:{binance:BTC-USDT:5m}") == 2
    finally:
        client.close()

    # ... and neither shows anywhere the run wrote to (the search finds what it looks for).
    needles = (REDIS_PASSWORD.encode(), API_KEY.encode())
    assert files_holding(logs, (kafka_bootstrap.encode(),)), "the search finds nothing at all"
    assert [needle for needle in needles if needle in output] == []
    assert list(logs.rglob("*.log")), f"no Flink log in {logs}"
    assert files_holding(logs, needles) == []
    assert files_holding(checkpoints, needles) == []
