"""The ClickHouse writer on chdb with the real schema (sql/), a fresh data directory per test.

chdb holds one data directory per process, so every test closes its writer before the next
test opens another directory.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.clickhouse import (
    DEFAULT_SQL_DIR,
    KLINE_COLUMNS,
    ChdbWriter,
    ClickHouseQueryError,
    ClickHouseUnavailable,
    ClickHouseWriter,
    SchemaVersionError,
    bar_to_row,
    migrate,
    open_writer,
)
from jobs.cli import main as klineflow_main
from udfs.record import Kline, VersionedBar, now_ms

START = 1_741_910_400_000  # 2025-03-14T00:00:00Z
MINUTE = 60_000
HOSTILE_STRINGS = [
    "BTC-USDT' OR '1'='1",
    "x'); DROP TABLE crypto_kline.klines; --",
    "\\'; SELECT 1; --",
    "tab\there\nnewline\r\0nul",
    "{symbol:String}",
    "\\N",
    "é😀 ' \" ` \\\\",
]


def make_bar(minute: int = 0, version: int = 1, **changes: Any) -> VersionedBar:
    open_time = START + minute * MINUTE
    kline = Kline(
        exchange="binance",
        symbol="BTC-USDT",
        raw_symbol="BTCUSDT",
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + MINUTE - 1,
        open=83_000.1,
        high=83_100.25,
        low=82_950.5,
        close=83_050.75,
        volume=12.345678901234567,
        quote_volume=1_025_000.123456789,
        trades=1234,
        taker_buy_volume=6.1,
        taker_buy_quote_volume=506_000.5,
        is_closed=True,
        event_time=open_time + MINUTE,
        ingest_time=open_time + MINUTE + 5,
    )
    counts = {k: changes.pop(k) for k in ("bars_present", "bars_expected") if k in changes}
    return VersionedBar(replace(kline, **changes), version, **counts)


@pytest.fixture
def chdb_url(tmp_path: Path) -> str:
    """A fresh chdb data directory for this test."""
    return f"chdb://{tmp_path / 'chdb'}"


@pytest.fixture
def writer(chdb_url: str) -> Iterator[ClickHouseWriter]:
    """A migrated writer on the fresh directory, closed after the test."""
    opened = open_writer(chdb_url)
    try:
        yield opened
    finally:
        opened.close()


def _expected_row(bar: VersionedBar) -> dict[str, Any]:
    row = bar_to_row(bar, 0)
    del row["updated_at"]
    return row


def _without_updated_at(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "updated_at"} for row in rows]


# -- migrations ----------------------------------------------------------------------------


def test_migrating_twice_is_harmless_and_records_the_version(chdb_url: str) -> None:
    before = now_ms()
    assert migrate(chdb_url) == [
        "001_schema.sql",
        "002_profile_nullables.sql",
        "003_markets.sql",
    ]
    assert migrate(chdb_url) == []
    with open_writer(chdb_url) as writer:  # migrate_schema=True a third time
        assert writer.schema_version() == 3
        recorded = writer.query(
            "SELECT version, name, checksum, applied_at FROM crypto_kline.schema_migrations "
            "ORDER BY version"
        )
        assert len(recorded) == 3
        row = recorded[0]
        assert (row["version"], row["name"]) == (1, "001_schema.sql")
        data = (DEFAULT_SQL_DIR / "001_schema.sql").read_bytes()
        assert row["checksum"] == hashlib.sha256(data).hexdigest()
        applied_ms = int(row["applied_at"].timestamp() * 1000)
        assert before <= applied_ms <= now_ms()
        assert row["applied_at"].utcoffset().total_seconds() == 0

        tables = writer.query(
            "SELECT name, engine, sorting_key, partition_key FROM system.tables "
            "WHERE database = 'crypto_kline' ORDER BY name"
        )
        by_name = {t["name"]: t for t in tables}
        assert set(by_name) == {
            "klines",
            "volume_profile",
            "indicators",
            "signals",
            "schema_migrations",
        }
        assert by_name["klines"]["engine"] == "ReplacingMergeTree"
        assert by_name["klines"]["sorting_key"] == "exchange, symbol, timeframe, open_time"
        assert by_name["klines"]["partition_key"] == "toYYYYMM(open_time)"
        assert by_name["signals"]["sorting_key"].endswith("open_time, source")

        columns = writer.query(
            "SELECT name, type FROM system.columns "
            "WHERE database = 'crypto_kline' AND table = 'klines' ORDER BY position"
        )
        types = {c["name"]: c["type"] for c in columns}
        assert tuple(types) == KLINE_COLUMNS
        assert types["open_time"] == "DateTime64(3, 'UTC')"
        assert types["open"] == "Float64"
        assert types["quote_volume"] == "Nullable(Float64)"
        assert types["trades"] == "Nullable(UInt64)"
        assert types["timeframe"] == "LowCardinality(String)"
        assert types["version"] == "UInt64"
        assert types["market"] == types["provenance"] == "LowCardinality(String)"
        assert types["base_multiplier"] == "UInt32"


def test_new_migration_files_are_applied_once_in_order(chdb_url: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "001_schema.sql").write_bytes((DEFAULT_SQL_DIR / "001_schema.sql").read_bytes())
    assert migrate(chdb_url, sql_dir=sql_dir) == ["001_schema.sql"]
    (sql_dir / "003_notes.sql").write_text(
        "-- notes; per bar\nCREATE TABLE IF NOT EXISTS crypto_kline.notes (id UInt64, text "
        "String DEFAULT 'a;b') ENGINE = MergeTree ORDER BY id;\n"
        "INSERT INTO crypto_kline.notes (id) VALUES (1);\n"
    )
    (sql_dir / "002_more.sql").write_text(
        "ALTER TABLE crypto_kline.notes ADD COLUMN IF NOT EXISTS extra UInt8 DEFAULT 7"
    )
    # 002 runs before 003 and fails because 003 has not created the table yet: order matters.
    with pytest.raises(ClickHouseQueryError):
        migrate(chdb_url, sql_dir=sql_dir)
    (sql_dir / "002_more.sql").write_text("SELECT 1")
    assert migrate(chdb_url, sql_dir=sql_dir) == ["002_more.sql", "003_notes.sql"]
    assert migrate(chdb_url, sql_dir=sql_dir) == []
    with open_writer(chdb_url, migrate_schema=False) as writer:
        assert writer.schema_version() == 3
        assert writer.query("SELECT id, text FROM crypto_kline.notes") == [{"id": 1, "text": "a;b"}]


def test_refuses_a_database_with_a_newer_schema(chdb_url: str, tmp_path: Path) -> None:
    migrate(chdb_url)
    with open_writer(chdb_url, migrate_schema=False) as writer:
        writer.insert_rows(
            "schema_migrations",
            [{"version": 99, "name": "099_future.sql", "checksum": "f" * 64, "applied_at": 0}],
        )
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "001_schema.sql").write_bytes((DEFAULT_SQL_DIR / "001_schema.sql").read_bytes())
    (sql_dir / "002_new.sql").write_text(
        "CREATE TABLE crypto_kline.must_not_exist (x UInt8) ENGINE = Memory"
    )
    with pytest.raises(SchemaVersionError, match=r"schema version 99, newer than .* \(2\)"):
        migrate(chdb_url, sql_dir=sql_dir)
    with pytest.raises(SchemaVersionError):
        open_writer(chdb_url)  # migrate_schema=True refuses too, and closes what it opened
    with open_writer(chdb_url, migrate_schema=False) as writer:
        exists = writer.query(
            "SELECT count() AS n FROM system.tables WHERE database = 'crypto_kline' "
            "AND name = 'must_not_exist'"
        )
        assert exists == [{"n": 0}]


def test_cli_db_migrate_and_status(chdb_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert klineflow_main(["db", "migrate", "--clickhouse-url", chdb_url]) == 0
    assert "applied 001_schema.sql" in capsys.readouterr().out
    assert klineflow_main(["db", "migrate", "--clickhouse-url", chdb_url]) == 0
    assert "up to date; schema version 3" in capsys.readouterr().out
    assert klineflow_main(["db", "status", "--clickhouse-url", chdb_url]) == 0
    out = capsys.readouterr().out
    assert "schema version 3" in out
    assert "klines" in out and "signals" in out
    assert klineflow_main(["db", "migrate", "--clickhouse-url", "chdb://"]) == 1
    assert "needs a data directory" in capsys.readouterr().err


def test_the_markets_migration_keeps_old_rows_as_spot_with_unknown_provenance(
    chdb_url: str, tmp_path: Path
) -> None:
    """A store written before issue 13 (schema 2) holds bars; 003 keeps every one of them."""
    old_sql = tmp_path / "sql-v2"
    old_sql.mkdir()
    for name in ("001_schema.sql", "002_profile_nullables.sql"):
        (old_sql / name).write_bytes((DEFAULT_SQL_DIR / name).read_bytes())
    assert migrate(chdb_url, sql_dir=old_sql) == ["001_schema.sql", "002_profile_nullables.sql"]
    old_columns = [c for c in KLINE_COLUMNS if c not in ("market", "base_multiplier", "provenance")]
    old_rows = [
        {name: row[name] for name in old_columns}
        for row in (bar_to_row(make_bar(minute), 0) for minute in range(3))
    ]
    indicator = {
        "exchange": "binance", "symbol": "BTC-USDT", "timeframe": "1m", "open_time": START,
        "rsi_14": 55.0, "macd": None, "macd_signal": None, "macd_hist": None,
        "bb_middle": None, "bb_upper": None, "bb_lower": None, "version": 1,
    }  # fmt: skip
    with open_writer(chdb_url, migrate_schema=False, sql_dir=old_sql) as writer:
        assert writer.insert_rows("klines", old_rows) == 3
        assert writer.insert_rows("indicators", [indicator]) == 1
    assert migrate(chdb_url) == ["003_markets.sql"]
    with open_writer(chdb_url) as writer:
        stored = writer.fetch_klines("binance", "BTC-USDT", "1m")
        assert len(stored) == 3
        assert {(r["market"], r["base_multiplier"], r["provenance"]) for r in stored} == {
            ("spot", 1, "unknown")
        }
        assert [r["volume"] for r in stored] == [row["volume"] for row in old_rows]
        assert writer.query("SELECT market FROM crypto_kline.indicators") == [{"market": "spot"}]
        # New rows keep their own market; a perp of the same pair is a series of its own.
        perp = make_bar(0, symbol="BTC-USDT-PERP", market="perp", provenance="ws")
        writer.insert_bars([perp])
        (stored_perp,) = writer.fetch_klines("binance", "BTC-USDT-PERP", "1m")
        assert (stored_perp["market"], stored_perp["provenance"]) == ("perp", "ws")
        assert len(writer.fetch_klines("binance", "BTC-USDT", "1m")) == 3


# -- writing and reading -------------------------------------------------------------------


def test_bars_round_trip_exactly_including_nulls(writer: ClickHouseWriter) -> None:
    bars = [
        make_bar(0),
        make_bar(1, quote_volume=None, trades=None, taker_buy_volume=None,
                 taker_buy_quote_volume=None, is_closed=False),
        make_bar(2, volume=1e300, quote_volume=5e-324, trades=2**64 - 1, version=2**64 - 1),
        make_bar(3, open=0.1 + 0.2, high=0.30000000000000004, low=1e-8, close=1e-8 * 3,
                 bars_present=7, bars_expected=15),
    ]  # fmt: skip
    before = now_ms()
    assert writer.insert_bars(bars) == 4
    after = now_ms()
    rows = writer.fetch_klines("binance", "BTC-USDT", "1m")
    assert _without_updated_at(rows) == [_expected_row(bar) for bar in bars]
    for row in rows:
        assert before <= row["updated_at"] <= after
        assert type(row["is_closed"]) is bool
        assert type(row["open_time"]) is int
    assert rows[1]["quote_volume"] is None and rows[1]["trades"] is None
    assert rows[2]["trades"] == 2**64 - 1
    # DateTime64(3) holds the exact millisecond, also as ClickHouse sees it.
    seen = writer.query(
        "SELECT toUnixTimestamp64Milli(close_time) AS ms, close_time FROM crypto_kline.klines "
        "ORDER BY open_time LIMIT 1"
    )
    assert seen[0]["ms"] == START + MINUTE - 1
    assert seen[0]["close_time"] == datetime.fromtimestamp((START + MINUTE - 1) / 1000, UTC)
    assert writer.insert_bars([]) == 0


def test_a_higher_version_replaces_a_bar_and_a_lower_one_does_not(
    writer: ClickHouseWriter,
) -> None:
    writer.insert_bars([make_bar(0, version=5, close=100.0, is_closed=False)])
    writer.insert_bars([make_bar(0, version=3, close=90.0)])  # stale: must lose
    assert [r["close"] for r in writer.fetch_klines("binance", "BTC-USDT", "1m")] == [100.0]

    writer.insert_bars([make_bar(0, version=9, close=110.0, is_closed=True)])
    writer.insert_bars([make_bar(0, version=7, close=95.0)])  # stale again
    rows = writer.fetch_klines("binance", "BTC-USDT", "1m")
    assert [(r["version"], r["close"], r["is_closed"]) for r in rows] == [(9, 110.0, True)]

    # The same version written again (a replay) stays one row under FINAL.
    writer.insert_bars([make_bar(0, version=9, close=110.0, is_closed=True)])
    assert writer.table_counts()["klines"] == 1
    raw = writer.query("SELECT count() AS n FROM crypto_kline.klines")
    assert raw[0]["n"] >= 1
    # Merging keeps the newest version physically too.
    writer.query("OPTIMIZE TABLE crypto_kline.klines FINAL")
    merged = writer.query("SELECT version, close FROM crypto_kline.klines")
    assert merged == [{"version": 9, "close": 110.0}]


def test_fetch_klines_filters_by_series_time_and_limit(writer: ClickHouseWriter) -> None:
    ours = [make_bar(m, version=m + 1) for m in range(10)]
    others = [
        make_bar(0, symbol="ETH-USDT", raw_symbol="ETHUSDT"),
        make_bar(0, exchange="okx", raw_symbol="BTC-USDT"),
        make_bar(0, timeframe="5m", close_time=START + 5 * MINUTE - 1),
    ]
    writer.insert_bars(list(reversed(ours)) + others)  # inserted newest first
    fetch = writer.fetch_klines
    assert [r["open_time"] for r in fetch("binance", "BTC-USDT", "1m")] == [
        START + m * MINUTE for m in range(10)
    ]
    window = fetch(
        "binance", "BTC-USDT", "1m", start_ms=START + 2 * MINUTE, end_ms=START + 5 * MINUTE
    )
    assert [r["open_time"] for r in window] == [START + m * MINUTE for m in (2, 3, 4)]
    limited = fetch("binance", "BTC-USDT", "1m", start_ms=START + 7 * MINUTE, limit=2)
    assert [r["version"] for r in limited] == [8, 9]
    assert fetch("binance", "BTC-USDT", "1m", limit=0) == []
    assert [r["timeframe"] for r in fetch("binance", "BTC-USDT", "5m")] == ["5m"]
    assert len(fetch("okx", "BTC-USDT", "1m")) == 1
    assert fetch("bybit", "BTC-USDT", "1m") == []
    with pytest.raises(ValueError, match="limit"):
        fetch("binance", "BTC-USDT", "1m", limit=-1)


def test_insert_rows_into_the_other_tables_and_table_counts(writer: ClickHouseWriter) -> None:
    assert writer.table_counts() == {
        "klines": 0,
        "volume_profile": 0,
        "indicators": 0,
        "signals": 0,
    }
    writer.insert_bars([make_bar(0), make_bar(1), make_bar(1, version=2)])
    profile = {
        "exchange": "binance", "symbol": "BTC-USDT", "timeframe": "1h",
        "window_start": START, "window_end": START + 3_600_000 - 1, "row_size": 2.5,
        "row_low": [100.0, 102.5], "volume": [1.5, 0.0], "buy_volume": [0.5, 0.0],
        "poc": 101.25, "value_area_low": 100.0, "value_area_high": 102.5,
        "vwap": None, "total_volume": 1.5, "version": 1,
    }  # fmt: skip
    indicator = {
        "exchange": "binance", "symbol": "BTC-USDT", "timeframe": "1m", "open_time": START,
        "rsi_14": None, "macd": 1.25, "macd_signal": None, "macd_hist": None,
        "bb_middle": 100.0, "bb_upper": 102.0, "bb_lower": 98.0, "version": 3,
    }  # fmt: skip
    signal = {
        "exchange": "binance", "symbol": "BTC-USDT", "timeframe": "1m", "open_time": START,
        "source": "rules", "pattern": "hammer", "recommendation": "buy", "confidence": 0.75,
        "key_levels": [82_000.0, 84_000.5], "latency_ms": None, "tokens": None,
        "cached": False, "degraded": False, "version": 1,
    }  # fmt: skip
    assert writer.insert_rows("volume_profile", [profile, {**profile, "version": 2}]) == 2
    assert writer.insert_rows("indicators", [indicator]) == 1
    model_signal = {**signal, "source": "gpt-x", "latency_ms": 850, "tokens": 321, "cached": True}
    assert writer.insert_rows("signals", [signal, model_signal]) == 2
    assert writer.table_counts() == {
        "klines": 2,
        "volume_profile": 1,
        "indicators": 1,
        "signals": 2,
    }

    stored = writer.query(
        "SELECT * EXCEPT (window_start, window_end), toUnixTimestamp64Milli(window_start) AS ws "
        "FROM crypto_kline.volume_profile FINAL"
    )
    assert stored == [
        {**{k: v for k, v in profile.items() if not k.startswith("window_")}, "version": 2,
         "market": "spot", "ws": START}
    ]  # fmt: skip
    signals = writer.query(
        "SELECT source, key_levels, latency_ms, tokens, cached FROM crypto_kline.signals FINAL "
        "ORDER BY source"
    )
    assert signals == [
        {"source": "gpt-x", "key_levels": [82_000.0, 84_000.5], "latency_ms": 850,
         "tokens": 321, "cached": True},
        {"source": "rules", "key_levels": [82_000.0, 84_000.5], "latency_ms": None,
         "tokens": None, "cached": False},
    ]  # fmt: skip


def test_insert_rows_refuses_unknown_or_missing_columns(writer: ClickHouseWriter) -> None:
    row = bar_to_row(make_bar(0), now_ms())
    with pytest.raises(ValueError, match="no column"):
        writer.insert_rows("klines", [{**row, "colour": "red"}])
    with pytest.raises(ValueError, match="lack column"):
        writer.insert_rows("klines", [{k: v for k, v in row.items() if k != "version"}])
    with pytest.raises(ClickHouseQueryError, match="does not exist"):
        writer.insert_rows("no_such_table", [row])
    with pytest.raises(ValueError, match="not a plain identifier"):
        writer.insert_rows("klines`; DROP TABLE x; --", [row])
    assert writer.insert_rows("klines", []) == 0
    assert writer.insert_rows("klines", [row]) == 1
    assert writer.table_counts()["klines"] == 1


def test_hostile_parameter_values_match_nothing_and_break_nothing(
    writer: ClickHouseWriter,
) -> None:
    writer.insert_bars([make_bar(m) for m in range(3)])
    for hostile in HOSTILE_STRINGS:
        # The value arrives intact as data...
        assert writer.query("SELECT {v:String} AS v", {"v": hostile}) == [{"v": hostile}]
        # ...and as a filter matches nothing.
        found = writer.query(
            "SELECT count() AS n FROM crypto_kline.klines WHERE symbol = {s:String}",
            {"s": hostile},
        )
        assert found == [{"n": 0}]
        assert writer.fetch_klines("binance", hostile, "1m") == []
        assert writer.fetch_klines(hostile, "BTC-USDT", hostile) == []
    assert writer.query("SELECT {v:Array(String)} AS v", {"v": HOSTILE_STRINGS}) == [
        {"v": HOSTILE_STRINGS}
    ]
    assert writer.query("SELECT {v:Nullable(String)} AS v", {"v": None}) == [{"v": None}]
    assert writer.table_counts()["klines"] == 3
    # A hostile value can be stored and read back exactly too.
    writer.insert_bars([make_bar(5, symbol="X-Y", raw_symbol=HOSTILE_STRINGS[1])])
    assert len(writer.fetch_klines("binance", "X-Y", "1m")) == 1


# -- the one-process-per-directory rule ---------------------------------------------------


def test_a_second_process_is_told_the_directory_is_in_use(chdb_url: str) -> None:
    probe = (
        "import sys\n"
        "from connectors.clickhouse import ClickHouseUnavailable, open_writer\n"
        "try:\n"
        f"    open_writer({chdb_url!r}).close()\n"
        "except ClickHouseUnavailable as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )

    def run_probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
        )

    with open_writer(chdb_url) as writer:
        assert isinstance(writer, ChdbWriter)
        busy = run_probe()
        assert busy.returncode == 3, busy.stderr
        assert "in use by another process" in busy.stdout
    free = run_probe()
    assert free.returncode == 0, free.stdout + free.stderr


def test_one_process_can_move_between_directories(tmp_path: Path) -> None:
    first = open_writer(f"chdb://{tmp_path / 'a'}")
    with pytest.raises(ClickHouseUnavailable, match="another chdb directory open"):
        open_writer(f"chdb://{tmp_path / 'b'}")
    first.insert_bars([make_bar(0)])
    first.close()
    first.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        first.table_counts()
    with open_writer(f"chdb://{tmp_path / 'b'}") as second:
        assert second.table_counts()["klines"] == 0
    with open_writer(f"chdb://{tmp_path / 'a'}", migrate_schema=False) as again:
        assert again.table_counts()["klines"] == 1
