"""Redis and a ClickHouse server stopped for two minutes under the running job (issue 12).

The whole job (bounded, the golden input, room for a few restarts) runs against a Redis of
this test only, or writes its history to a ClickHouse server of this test only; once the
first bars are in Redis the store is stopped for :data:`OUTAGE_S` (120 s) and started again
on the same port and data. Afterwards:

- every ClickHouse table (FINAL) and every Redis key equals the golden snapshot of a clean
  run (``tests/golden/job_contract_snapshot.json``), and so do the dead letters;
- the job restarted at most :data:`MAX_RESTARTS` times (the REST API's exception history);
- the job's log (the Flink log, which the Python workers' logging is forwarded to) names
  the cause in one line: "<store> at <url> is unreachable (<error>); writes wait ...", and
  says when the store was reachable again. No line of it carries a password.

The ClickHouse server is Debian's ``clickhouse-server`` 18.16 (the only one installable
here). The job's own schema (``sql/``) needs ClickHouse >= 23.8: 18.16 has no
``DateTime64``, no ``Bool``, no query parameters, and its ``LowCardinality`` is
experimental, so ``migrate`` fails on it at the first ``CREATE TABLE``. The case therefore
creates :data:`REDUCED_SCHEMA` (the same four tables and columns with the types 18.16 has:
times as epoch-ms ``Int64``, flags as ``UInt8``, ``String`` for ``LowCardinality``) and
records every migration of ``sql/`` as applied, so the real job (its ``prepare_services``
and its sink's ``migrate``) finds nothing to do and writes through the native writer as it
would to a modern server. Reading back converts the flags to booleans; everything else
compares as stored.

``pytest -m chaos -s tests/chaos/test_long_outages.py`` prints one ``chaos: {...}`` line per
case (``bench/bench_chaos.py`` collects them).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from connectors.clickhouse import load_migrations, open_writer
from connectors.clickhouse_server import ClickHouseServerError, LocalClickHouseServer
from connectors.kafka_admin import DEAD_LETTER_TOPIC, ensure_topics
from connectors.redaction import redact_url
from jobs.stack import RedisServer
from tests.chaos.chaos_support import (
    ChaosFigures,
    assert_golden_outputs,
    finish_counting_restarts,
    wait_until,
)
from tests.integration.conftest import free_ports
from tests.integration.job_contract_support import (
    cancel_job,
    clickhouse_snapshot,
    contract_settings,
    golden_input,
    keep_forever,
    produce,
    start_job,
)
from tests.integration.test_job_contract import STARTUP_S
from tests.integration.test_redis_resilience import own_redis  # noqa: F401 - a fixture

pytestmark = pytest.mark.chaos
OUTAGE_S = 120.0
# How long a sink write waits for a store that is down before the task fails (the default).
STORE_RETRY_S = 60.0
# A 120 s outage with a 60 s wait: the sink gives up once, the restarted sink's open waits
# for the store; one restart expected, two allowed (a restart that lands just before the
# store is back), the restart strategy has room for more so that an excess shows as a count.
MAX_RESTARTS = 2
RESTART_ATTEMPTS = 8
SLOW_BUNDLES = (("python.fn-execution.bundle.size", "20"),)
# What the sink logs once at the start of an outage and once at its end (connectors/retry.py).
OUTAGE_LINE = re.compile(r"(?P<store>\S+) at (?P<url>\S+) is unreachable \((?P<cause>[^)]+)\)")
RECOVERY_LINE = re.compile(r"(?P<store>\S+) at (?P<url>\S+) is reachable again after")
LOG_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
# What was logged once per retry before issue 12: the Redis writer's and the ClickHouse
# retries' lines, and clickhouse-driver's warning with a traceback on each failed connect.
PER_RETRY_NOISE = ("calls unconfirmed", " failed (attempt ", "Failed to connect to")

# The job's four tables in the types ClickHouse 18.16 has (see the module docstring).
REDUCED_SCHEMA = """
CREATE DATABASE IF NOT EXISTS crypto_kline;
CREATE TABLE IF NOT EXISTS crypto_kline.schema_migrations
(version UInt32, name String, checksum String, applied_at Int64)
ENGINE = ReplacingMergeTree(applied_at) ORDER BY version;
CREATE TABLE IF NOT EXISTS crypto_kline.klines
(exchange String, symbol String, market String DEFAULT 'spot', base_multiplier UInt32 DEFAULT 1,
 timeframe String, open_time Int64, close_time Int64, open Float64, high Float64, low Float64,
 close Float64, volume Float64, quote_volume Nullable(Float64), trades Nullable(UInt64),
 taker_buy_volume Nullable(Float64), taker_buy_quote_volume Nullable(Float64), is_closed UInt8,
 provenance String DEFAULT 'unknown', bars_present UInt32, bars_expected UInt32,
 version UInt64, updated_at Int64)
ENGINE = ReplacingMergeTree(version) PARTITION BY intDiv(open_time, 2592000000)
ORDER BY (exchange, symbol, timeframe, open_time);
CREATE TABLE IF NOT EXISTS crypto_kline.volume_profile
(exchange String, symbol String, market String DEFAULT 'spot', timeframe String,
 window_start Int64, window_end Int64, row_size Float64, row_low Array(Float64),
 volume Array(Float64), buy_volume Array(Float64), poc Nullable(Float64),
 value_area_low Nullable(Float64), value_area_high Nullable(Float64), vwap Nullable(Float64),
 total_volume Float64, version UInt64)
ENGINE = ReplacingMergeTree(version) PARTITION BY intDiv(window_start, 2592000000)
ORDER BY (exchange, symbol, timeframe, window_start);
CREATE TABLE IF NOT EXISTS crypto_kline.indicators
(exchange String, symbol String, market String DEFAULT 'spot', timeframe String,
 open_time Int64, rsi_14 Nullable(Float64), macd Nullable(Float64),
 macd_signal Nullable(Float64), macd_hist Nullable(Float64), bb_middle Nullable(Float64),
 bb_upper Nullable(Float64), bb_lower Nullable(Float64), version UInt64)
ENGINE = ReplacingMergeTree(version) PARTITION BY intDiv(open_time, 2592000000)
ORDER BY (exchange, symbol, timeframe, open_time);
CREATE TABLE IF NOT EXISTS crypto_kline.signals
(exchange String, symbol String, market String DEFAULT 'spot', timeframe String,
 open_time Int64, source String, pattern String, recommendation String,
 confidence Nullable(Float64), key_levels Array(Float64), latency_ms Nullable(UInt64),
 tokens Nullable(UInt64), cached UInt8, degraded UInt8, version UInt64)
ENGINE = ReplacingMergeTree(version) PARTITION BY intDiv(open_time, 2592000000)
ORDER BY (exchange, symbol, timeframe, open_time, source);
"""
# Columns stored as UInt8 on 18.16 that the golden snapshot holds as booleans.
FLAG_COLUMNS = frozenset({"is_closed", "cached", "degraded"})


# --- the job's log -------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def private_flink_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point the Flink log of this process at a directory of its own when the JVM is not
    running yet (the default file under the PyFlink package is shared by every test process
    on the machine and truncated by each)."""
    from pyflink import java_gateway

    saved = os.environ.get("FLINK_LOG_DIR")
    if java_gateway._gateway is None:
        os.environ["FLINK_LOG_DIR"] = str(tmp_path_factory.mktemp("flink-log"))
    yield
    if saved is None:
        os.environ.pop("FLINK_LOG_DIR", None)
    else:
        os.environ["FLINK_LOG_DIR"] = saved


def flink_log_file() -> Path:
    """The log file of this process's Flink JVM (the mini-cluster and its Python workers)."""
    from pyflink.java_gateway import get_gateway

    return Path(str(get_gateway().jvm.System.getProperty("log.file")))


def read_log_from(path: Path, offset: int) -> list[str]:
    """The lines of ``path`` after byte ``offset`` (all of it if it was truncated since)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(offset if handle.tell() >= offset else 0)
        return handle.read().decode(errors="replace").splitlines()


def assert_cause_logged(lines: list[str], *, store: str, url: str, restarts: int) -> None:
    """The outage is named in one line per wait (not one per retry), with the store, its URL
    (redacted) and the error; no traceback follows the line; its end is logged too."""
    shown = redact_url(url)
    at = [i for i, line in enumerate(lines)
          if (m := OUTAGE_LINE.search(line)) and m["store"] == store]  # fmt: skip
    outages = [lines[i] for i in at]
    assert outages, f"no '{store} at ... is unreachable (...)' line in the job's log"
    for index in at:
        match = OUTAGE_LINE.search(lines[index])
        assert match is not None and match["url"] == shown, lines[index]
        assert "Error" in match["cause"] or "refused" in match["cause"], lines[index]
        # The warning is one record of one line: the next line is the next record.
        following = lines[index + 1] if index + 1 < len(lines) else "2000-01-01 end"
        assert LOG_RECORD_START.match(following), f"{lines[index]}\nfollowed by: {following}"
    # No line per retry: neither the writers' own (now at debug level) nor the driver's.
    noise = [line for line in lines if any(text in line for text in PER_RETRY_NOISE)]
    assert not noise, "\n".join(noise[:5])
    # One line when a wait starts, not one per retry: one per attempt of the sink (first run
    # and each restart), and once more where the store flapped as it came back.
    assert len(outages) <= 2 * (restarts + 1), "\n".join(outages)
    recoveries = [line for line in lines if (m := RECOVERY_LINE.search(line)) and
                  m["store"] == store]  # fmt: skip
    assert recoveries, f"no '{store} at ... is reachable again' line in:\n" + "\n".join(
        line for line in lines if store in line
    )
    print("chaos log:", outages[0].split(" - ", 1)[-1])
    print("chaos log:", recoveries[-1].split(" - ", 1)[-1])


# --- the ClickHouse server -----------------------------------------------------------------


@pytest.fixture
def clickhouse_server(tmp_path: Path) -> Iterator[LocalClickHouseServer]:
    """A clickhouse-server of this test only (it gets stopped), with :data:`REDUCED_SCHEMA`
    and every migration of ``sql/`` recorded as applied."""
    server = LocalClickHouseServer(tmp_path / "clickhouse")
    try:
        server.start()
    except ClickHouseServerError as exc:
        pytest.fail(f"{exc} (make setup installs clickhouse-server)")
    try:
        with open_writer(server.url(), migrate_schema=False) as writer:
            for statement in REDUCED_SCHEMA.split(";"):
                if statement.strip():
                    writer._execute(statement)  # DDL: the writers have no public call for it
            writer.insert_rows(
                "schema_migrations",
                [
                    {"version": m.version, "name": m.name, "checksum": m.checksum,
                     "applied_at": int(time.time() * 1000)}
                    for m in load_migrations()
                ],
            )  # fmt: skip
        yield server
    finally:
        server.stop()


def server_snapshot(url: str) -> dict[str, dict[str, Any]]:
    """:func:`clickhouse_snapshot` of the server, its UInt8 flags read as booleans."""
    snapshot = clickhouse_snapshot(url)
    for content in snapshot.values():
        flags = [i for i, name in enumerate(content["columns"]) if name in FLAG_COLUMNS]
        for row in content["rows"]:
            for i in flags:
                row[i] = bool(row[i])
    return snapshot


def evalsha_calls(client: redis.Redis) -> int:
    """EVALSHA calls Redis served since it started (the sink's writes; 0 if it is down)."""
    try:
        stats = client.info("commandstats")
    except redis.RedisError:
        return 0
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def klines_stored(url: str) -> int:
    """Rows of ``klines`` on the server (before FINAL; -1 if it does not answer)."""
    from connectors.clickhouse import ClickHouseError

    try:
        with open_writer(url, migrate_schema=False) as writer:
            return int(writer.query("SELECT count() AS n FROM crypto_kline.klines")[0]["n"])
    except ClickHouseError:
        return -1


# --- the run -------------------------------------------------------------------------------


def run_with_long_outage(
    tmp_path: Path,
    *,
    bootstrap: str,
    redis_url: str,
    case: str,
    store: str,
    store_url: str,
    stop: Callable[[], None],
    start: Callable[[], None],
    progress: Callable[[], int],
    clickhouse_url: str | None = None,
) -> None:
    """The golden input through the job; the store is stopped for :data:`OUTAGE_S` once the
    first bars are in Redis. ``progress()`` grows when the sink writes to the store: the
    recovery time is from the store's start until it grows."""
    raw, dlq = f"raw-{case}", f"dlq-{case}"
    ensure_topics(bootstrap, [raw], partitions=4)
    ensure_topics(bootstrap, [dlq], partitions=1, configs=DEAD_LETTER_TOPIC)
    keep_forever(bootstrap, raw, dlq)
    produce(bootstrap, raw, golden_input().messages)
    (rest_port,) = free_ports(1)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=bootstrap,
        raw_topic=raw,
        dlq_topic=dlq,
        redis_url=redis_url,
        name=f"chaos-{case}",
        sinks={"clickhouse_retry_s": STORE_RETRY_S},
        flink_overrides=(
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", str(RESTART_ATTEMPTS)),
            ("restart-strategy.fixed-delay.delay", "2s"),
            *SLOW_BUNDLES,
            ("execution.checkpointing.interval", "1s"),
            ("rest.bind-port", str(rest_port)),
        ),
    )
    if clickhouse_url is not None:  # the server instead of the test's chdb directory
        settings = replace(settings, sinks=replace(settings.sinks, clickhouse_url=clickhouse_url))
    client = start_job(settings)
    log_file = flink_log_file()
    log_offset = log_file.stat().st_size if log_file.exists() else 0
    watcher = redis.Redis.from_url(redis_url)
    figures = ChaosFigures(case=case, faults=1, outage_s=OUTAGE_S)
    try:
        wait_until(lambda: next(iter(watcher.scan_iter("kline:*")), None),
                   timeout_s=STARTUP_S, what="the first bars in Redis")  # fmt: skip
        assert not client.get_job_execution_result().done(), "the job ended before the outage"
        stop()
        time.sleep(OUTAGE_S)  # the outage itself: the store stays down this long
        start()
        back = time.monotonic()
        before = progress()
        wait_until(
            lambda: progress() > before or client.get_job_execution_result().done(),
            timeout_s=600,
            what=f"the job writing to {store} again",
            interval_s=0.5,
        )
        figures.recovery_s = round(time.monotonic() - back, 1)
        figures.restarts = finish_counting_restarts(
            client, rest_port, str(client.get_job_id()), timeout_s=900
        )
    except BaseException:
        cancel_job(client)
        raise
    lines = read_log_from(log_file, log_offset)
    try:
        kwargs: dict[str, Any] = {}
        if clickhouse_url is not None:
            kwargs["snapshot_clickhouse"] = server_snapshot
        assert_golden_outputs(
            tmp_path=tmp_path,
            chdb_url=settings.sinks.clickhouse_url,
            redis_client=watcher,
            kafka_bootstrap=bootstrap,
            dlq_topic=dlq,
            figures=figures,
            **kwargs,
        )
    finally:
        watcher.close()
    assert figures.restarts <= MAX_RESTARTS, f"{figures.restarts} restarts"
    assert_cause_logged(lines, store=store, url=store_url, restarts=figures.restarts)


def test_redis_stopped_for_two_minutes_loses_nothing(
    tmp_path: Path,
    kafka_bootstrap: str,
    own_redis: RedisServer,  # noqa: F811 - the fixture imported above
) -> None:
    probe = redis.Redis.from_url(own_redis.url, socket_connect_timeout=2, socket_timeout=5)
    try:
        run_with_long_outage(
            tmp_path,
            bootstrap=kafka_bootstrap,
            redis_url=own_redis.url,
            case="redis-120s",
            store="Redis",
            store_url=own_redis.url,
            stop=own_redis.stop,
            start=lambda: own_redis.start(timeout_s=60),
            progress=lambda: evalsha_calls(probe),
        )
    finally:
        probe.close()


def test_a_clickhouse_server_stopped_for_two_minutes_loses_nothing(
    tmp_path: Path,
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    clickhouse_server: LocalClickHouseServer,
) -> None:
    url = clickhouse_server.url()
    run_with_long_outage(
        tmp_path,
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        case="clickhouse-server-120s",
        store="ClickHouse",
        store_url=url,
        stop=clickhouse_server.stop,
        start=clickhouse_server.start,
        progress=lambda: klines_stored(url),
        clickhouse_url=url,
    )
