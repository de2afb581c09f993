"""The native-protocol writer (clickhouse-driver) against a real ClickHouse server process.

Debian's clickhouse-server is 18.16: it cannot take the real schema (DateTime64, Bool) nor
query parameters, so these tests use the reduced schema in ``sql_clickhouse_18/`` (same
names, older types) and exercise the wire: migrations, columnar batch inserts, retries
through a server restart in the middle of a stream, and FINAL deduplication. The server
is started by the fixtures on a free loopback port, one per test module, with a fresh
database per test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from connectors.clickhouse import (
    ClickHouseQueryError,
    ClickHouseUnavailable,
    NativeWriter,
    RetryPolicy,
    migrate,
    open_writer,
    parse_clickhouse_url,
)
from connectors.clickhouse_server import ClickHouseServerError, LocalClickHouseServer
from udfs.record import Kline, VersionedBar

REDUCED_SQL = Path(__file__).resolve().parent / "sql_clickhouse_18"
START = 1_741_910_400_000  # 2025-03-14T00:00:00Z
MINUTE = 60_000
PATIENT = RetryPolicy(attempts=10_000, base_delay_s=0.05, max_delay_s=0.5, deadline_s=90)


def make_bar(symbol: str, minute: int, version: int) -> VersionedBar:
    open_time = START + minute * MINUTE
    kline = Kline(
        exchange="binance",
        symbol=symbol,
        raw_symbol=symbol.replace("-", ""),
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + MINUTE - 1,
        open=100.0 + minute,
        high=101.0 + minute + version,
        low=99.0 + minute,
        close=100.5 + minute + version / 10,
        volume=1.25 * version,
        quote_volume=None if version % 2 else 125.5 * version,
        trades=None if minute % 3 == 0 else minute,
        taker_buy_volume=None,
        taker_buy_quote_volume=0.5,
        is_closed=version == 3,
        event_time=open_time + version,
        ingest_time=open_time + version + 1,
    )
    return VersionedBar(kline, version)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalClickHouseServer]:
    """A clickhouse-server on loopback for this module; skipped if none is installed."""
    local = LocalClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    try:
        local.start()
    except ClickHouseServerError as exc:
        if "no clickhouse-server binary" in str(exc):
            pytest.skip(str(exc))
        raise
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def url(server: LocalClickHouseServer) -> Iterator[str]:
    """The server's URL (password user) with a fresh, migrated crypto_kline database."""
    target = server.url(user="klineflow")
    with open_writer(target, migrate_schema=False) as writer:
        writer.query("DROP DATABASE IF EXISTS crypto_kline")
    migrate(target, sql_dir=REDUCED_SQL)
    yield target


def final_rows(writer: NativeWriter) -> list[dict[str, object]]:
    return writer.query(
        "SELECT symbol, open_time, version, close, quote_volume, trades, is_closed "
        "FROM crypto_kline.klines FINAL ORDER BY symbol, open_time"
    )


def test_migrations_are_recorded_and_idempotent_over_the_wire(url: str) -> None:
    with open_writer(url, migrate_schema=False, retry=PATIENT) as writer:
        assert isinstance(writer, NativeWriter)
        assert writer.server_version.startswith("18.")
        assert writer.schema_version() == 1
        assert writer.migrate(REDUCED_SQL) == []
        assert writer.query("SELECT count() AS n FROM crypto_kline.schema_migrations") == [{"n": 1}]
        # An 18.x server has no query parameters: refused, never pasted into the SQL.
        with pytest.raises(ClickHouseQueryError, match="does not support query parameters"):
            writer.query("SELECT {x:String} AS x", {"x": "' OR 1=1"})
        assert "klineflow:" in writer.target.url
        assert writer.target.password not in repr(writer)
        assert writer.target.password not in str(writer.target)


def test_batches_round_trip_and_versions_collapse_under_final(url: str) -> None:
    bars = [
        make_bar(symbol, minute, version)
        for version in (1, 3, 2)  # a lower version after the highest must not win
        for symbol in ("BTC-USDT", "ETH-USDT")
        for minute in range(500)
    ]
    with open_writer(url, migrate_schema=False, retry=PATIENT) as writer:
        for start in range(0, len(bars), 1000):
            assert writer.insert_bars(bars[start : start + 1000]) == 1000
        raw = writer.query("SELECT count() AS n FROM crypto_kline.klines")
        assert raw == [{"n": len(bars)}]
        rows = final_rows(writer)
    assert len(rows) == 1000
    for row in rows:
        minute = (int(row["open_time"]) - START) // MINUTE  # type: ignore[call-overload]
        want = make_bar(str(row["symbol"]), minute, 3)
        assert row["version"] == 3
        assert row["close"] == want.kline.close
        assert row["quote_volume"] == want.kline.quote_volume
        assert row["trades"] == want.kline.trades
        assert row["is_closed"] == 1


def test_a_server_restart_mid_stream_loses_nothing_and_doubles_nothing(
    url: str, server: LocalClickHouseServer
) -> None:
    batches = [
        [make_bar(symbol, minute, 1) for symbol in ("BTC-USDT", "SOL-USDT")]
        + [make_bar("ETH-USDT", minute, 1)]
        for minute in range(600)
    ]
    inserted = threading.Event()
    restarted = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with open_writer(url, migrate_schema=False, retry=PATIENT) as writer:
                for number, batch in enumerate(batches):
                    writer.insert_bars(batch)
                    if number == 100:
                        inserted.set()  # the restart happens while the rest streams in
                    if number == 300:
                        # Keep writing through the outage, at least until it is over.
                        restarted.wait(timeout=120)
        except (ClickHouseUnavailable, ClickHouseQueryError) as exc:
            errors.append(exc)

    writer_thread = threading.Thread(target=stream)
    writer_thread.start()
    assert inserted.wait(timeout=60)
    server.stop()
    server.start()
    restarted.set()
    writer_thread.join(timeout=180)
    assert not writer_thread.is_alive()
    assert errors == []

    with open_writer(url, migrate_schema=False, retry=PATIENT) as writer:
        rows = final_rows(writer)
        raw = writer.query("SELECT count() AS n FROM crypto_kline.klines")
    expected = sorted((bar.kline.symbol, bar.kline.open_time) for batch in batches for bar in batch)
    assert [(row["symbol"], row["open_time"]) for row in rows] == expected
    # A batch whose insert the server took just before dying may be sent again: raw rows
    # may exceed the count, FINAL never does.
    assert int(raw[0]["n"]) >= len(expected)  # type: ignore[call-overload]


def test_a_server_that_stays_down_fails_after_the_retry_budget(
    url: str, server: LocalClickHouseServer
) -> None:
    short = RetryPolicy(attempts=100, base_delay_s=0.05, max_delay_s=0.2, deadline_s=1.5)
    with open_writer(url, migrate_schema=False, retry=short) as writer:
        server.stop()
        try:
            with pytest.raises(ClickHouseUnavailable) as caught:
                writer.insert_bars([make_bar("BTC-USDT", 0, 1)])
        finally:
            server.start()
        assert server.password not in str(caught.value)
        # Once the server is back the same writer reconnects by itself.
        assert writer.insert_bars([make_bar("BTC-USDT", 0, 1)]) == 1


def test_a_wrong_password_is_refused_without_leaking_it(url: str) -> None:
    wrong = replace(parse_clickhouse_url(url), password="not-the-password")
    with pytest.raises(ClickHouseQueryError) as caught:
        open_writer(wrong, migrate_schema=False, retry=PATIENT)
    assert "not-the-password" not in str(caught.value)
