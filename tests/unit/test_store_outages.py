"""A store that is down is told in one log line when it starts and one when it ends (no server).

:class:`connectors.retry.Outage`, the ClickHouse retries that use it
(:func:`connectors.retry.call_with_retries` with ``outage``) and the Redis writer's waits
(for a write and at the start) against a fake clock.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import Any

import pytest
import redis

from connectors.clickhouse import ClickHouseUnavailable
from connectors.redis_store import RedisBarWriter, RedisUnavailable
from connectors.retry import Backoff, Outage, RetryPolicy, call_with_retries


class FakeClock:
    """Monotonic seconds that only move when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_outage_is_one_line_at_its_start_and_one_at_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    outage = Outage("Redis", "redis://:***@10.0.0.1:6379/0", clock=clock)
    caplog.set_level(logging.DEBUG)
    assert not outage.down
    for _ in range(50):
        outage.failed(ConnectionError("Error 111 connecting.\nstack"), budget_s=60)
        clock.now += 1
    assert outage.down and outage.down_for() == 50
    outage.recovered()
    outage.recovered()  # nothing was down: nothing to say
    assert outage_lines(caplog) == [
        "Redis at redis://:***@10.0.0.1:6379/0 is unreachable (ConnectionError: Error 111 "
        "connecting.); calls wait and are retried for up to 60 s",
        "Redis at redis://:***@10.0.0.1:6379/0 is reachable again after 50.0 s "
        "(50 failed attempts)",
    ]
    assert not outage.down


def test_giving_up_is_one_line_and_the_next_failure_is_a_new_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    outage = Outage("ClickHouse", "clickhouse://u:***@h:9000/crypto_kline", clock=clock)
    outage.failed(OSError("refused"), budget_s=None)
    clock.now += 61
    message = outage.give_up(OSError("refused\nat frame 1\nat frame 2"))
    assert message == (
        "ClickHouse at clickhouse://u:***@h:9000/crypto_kline has been unreachable for 61 s "
        "(failed 1 times; last error: OSError: refused); giving up"
    )
    assert not outage.down
    outage.failed(OSError("refused"), budget_s=None)
    assert [line.endswith("retried without a time limit") for line in outage_lines(caplog)] == [
        True,
        True,
    ]


def test_retries_with_an_outage_log_its_start_and_end_not_every_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    outage = Outage("ClickHouse", "clickhouse://h:9000/crypto_kline", clock=clock)
    failures = iter(range(40))

    def insert() -> int:
        if next(failures) < 39:
            raise OSError("Connection refused")
        return 7

    policy = RetryPolicy(attempts=1_000_000, base_delay_s=0.2, max_delay_s=5.0, deadline_s=600)
    assert call_with_retries(insert, retry_on=(OSError,), is_transient=lambda exc: True,
                             policy=policy, describe="insert into klines", sleep=clock.sleep,
                             clock=clock, outage=outage) == 7  # fmt: skip
    lines = outage_lines(caplog)
    assert len(clock.slept) == 39
    assert len(lines) == 2, lines
    assert lines[0].startswith("ClickHouse at clickhouse://h:9000/crypto_kline is unreachable "
                               "(OSError: Connection refused); calls wait")  # fmt: skip
    assert "reachable again" in lines[1]


def test_retries_with_an_outage_give_up_in_one_line_after_the_deadline() -> None:
    clock = FakeClock()
    outage = Outage("ClickHouse", "clickhouse://h:9000/crypto_kline", clock=clock)

    def insert() -> int:
        raise OSError("Connection refused\ntraceback")

    policy = RetryPolicy(attempts=1_000_000, base_delay_s=0.2, max_delay_s=5.0, deadline_s=60)
    with pytest.raises(ClickHouseUnavailable) as caught:
        call_with_retries(insert, retry_on=(OSError,), is_transient=lambda exc: True,
                          policy=policy, describe="insert", sleep=clock.sleep, clock=clock,
                          outage=outage, exhausted=ClickHouseUnavailable)  # fmt: skip
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("ClickHouse at clickhouse://h:9000/crypto_kline has been "
                              "unreachable for")  # fmt: skip
    assert re.search(r"\(failed \d+ times; last error: OSError: Connection refused\); "
                     r"giving up$", message), message  # fmt: skip
    assert 55 <= sum(clock.slept) <= 60


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_redis_writer_waits_for_a_server_at_the_start_then_fails_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    url = f"redis://:s3cret-pw@127.0.0.1:{closed_port()}/0"
    with pytest.raises(RedisUnavailable) as caught:
        RedisBarWriter(url, reconnect_retries=0, connect_wait_s=30, sleep=clock.sleep,
                       clock=clock)  # fmt: skip
    message = str(caught.value)
    assert "s3cret-pw" not in message and "\n" not in message
    assert message.startswith("Redis at redis://:***@127.0.0.1:")
    assert "has been unreachable for 30 s (failed " in message
    assert sum(clock.slept) == pytest.approx(30)
    lines = outage_lines(caplog)
    assert len(lines) == 1 and "is unreachable (ConnectionError: " in lines[0], lines
    assert not any("s3cret-pw" in record.getMessage() for record in caplog.records)


def test_without_a_wait_the_redis_writer_fails_at_once() -> None:
    clock = FakeClock()
    with pytest.raises(redis.ConnectionError, match="is not usable: ConnectionError"):
        RedisBarWriter(f"redis://127.0.0.1:{closed_port()}/0", reconnect_retries=0,
                       sleep=clock.sleep, clock=clock)  # fmt: skip
    assert clock.slept == []


class DownPipeline:
    """A pipeline of a Redis that refuses every connection."""

    def execute_command(self, *args: Any, **kwargs: Any) -> None:
        pass

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")


class DownClient:
    def pipeline(self, transaction: bool = False) -> DownPipeline:
        return DownPipeline()

    def close(self) -> None:
        pass


def test_a_redis_write_waits_retry_s_then_raises_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    # A writer whose server went away after it connected (constructed without connecting).
    writer = RedisBarWriter.__new__(RedisBarWriter)
    writer.redacted_url = "redis://127.0.0.1:6390/0"
    writer.retry_s = 60.0
    writer.replica_acks = 0
    writer.publish = False
    writer._backoff = Backoff(base_s=0.05, cap_s=2.0)
    writer._sleep = clock.sleep
    writer._clock = clock
    writer._outage = Outage("Redis", writer.redacted_url, clock=clock)
    writer._client = DownClient()  # type: ignore[assignment]
    writer._sha = "0" * 40
    with pytest.raises(RedisUnavailable) as caught:
        writer._run([(["kline:{binance:BTC-USDT:1m}"], [1])])
    assert isinstance(caught.value, redis.ConnectionError)
    # It gives up at the first retry past retry_s: the last backoff sleep (jittered, at most
    # cap_s = 2 s) may take the outage to 61 or 62 s.
    assert re.match(
        r"Redis at redis://127\.0\.0\.1:6390/0 has been unreachable for 6[012] s \(",
        str(caught.value),
    ), str(caught.value)
    assert "\n" not in str(caught.value)
    lines = outage_lines(caplog)
    assert len(lines) == 1 and "is unreachable (ConnectionError: Error 111" in lines[0], lines


def test_the_native_writer_replaces_the_drivers_per_attempt_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from connectors.clickhouse import open_writer

    url = f"clickhouse://127.0.0.1:{closed_port()}/crypto_kline?connect_timeout=1"
    policy = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.02)
    with pytest.raises(ClickHouseUnavailable, match=r"unreachable for \d+ s \(failed 4 times"):
        open_writer(url, migrate_schema=False, retry=policy)
    lines = outage_lines(caplog)
    assert len(lines) == 1 and " is unreachable (" in lines[0], lines
    assert not any(record.exc_info for record in caplog.records)
