"""Pure parts of connectors/clickhouse/: rows, Arrow typing, parameters, SQL, URLs, retries."""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from connectors.clickhouse import (
    DEFAULT_SQL_DIR,
    KLINE_COLUMNS,
    PROJECT_ROOT,
    BackendUnavailable,
    ClickHouseError,
    ClickHouseUnavailable,
    MigrationError,
    RetryPolicy,
    arrow_type,
    bar_to_row,
    bars_to_columns,
    call_with_retries,
    chdb_param_text,
    columns_to_arrow,
    datetime_to_ms,
    load_migrations,
    native_error_is_transient,
    open_writer,
    parse_clickhouse_url,
    rows_to_columns,
    split_sql_statements,
)
from udfs.record import Kline, VersionedBar

OPEN_MS = 1_741_910_460_123 - 123  # 2025-03-14T00:01:00Z
UPDATED_MS = 1_741_910_999_987


def make_bar(**changes: Any) -> VersionedBar:
    kline = Kline(
        exchange="okx",
        symbol="ETH-USDT",
        raw_symbol="ETH-USDT",
        timeframe="1m",
        open_time=OPEN_MS,
        close_time=OPEN_MS + 59_999,
        open=2000.5,
        high=2001.25,
        low=1999.0,
        close=2000.75,
        volume=12.5,
        quote_volume=None,
        trades=None,
        taker_buy_volume=None,
        taker_buy_quote_volume=None,
        is_closed=True,
        event_time=OPEN_MS + 60_001,
        ingest_time=OPEN_MS + 60_002,
    )
    version = changes.pop("version", 7)
    bars_present = changes.pop("bars_present", 1)
    bars_expected = changes.pop("bars_expected", 1)
    return VersionedBar(replace(kline, **changes), version, bars_present, bars_expected)


# -- rows ----------------------------------------------------------------------------------


def test_bar_to_row_has_exactly_the_klines_columns_with_nulls_and_bools_kept() -> None:
    row = bar_to_row(make_bar(version=42, bars_present=3, bars_expected=5), UPDATED_MS)
    assert tuple(row) == KLINE_COLUMNS
    assert row["quote_volume"] is None
    assert row["trades"] is None
    assert row["taker_buy_volume"] is None
    assert row["taker_buy_quote_volume"] is None
    assert row["is_closed"] is True
    assert row["open_time"] == OPEN_MS
    assert row["close_time"] == OPEN_MS + 59_999
    assert (row["bars_present"], row["bars_expected"], row["version"]) == (3, 5, 42)
    assert row["updated_at"] == UPDATED_MS
    assert "raw_symbol" not in row and "event_time" not in row


def test_bars_to_columns_matches_the_rows_column_by_column() -> None:
    bars = [
        make_bar(),
        make_bar(open_time=OPEN_MS + 60_000, close_time=OPEN_MS + 119_999, is_closed=False,
                 quote_volume=25_000.5, trades=2**63 + 5, taker_buy_volume=1e-300,
                 taker_buy_quote_volume=0.0, version=8),
    ]  # fmt: skip
    columns = bars_to_columns(bars, UPDATED_MS)
    assert tuple(columns) == KLINE_COLUMNS
    assert columns == rows_to_columns([bar_to_row(bar, UPDATED_MS) for bar in bars])
    assert columns["is_closed"] == [True, False]
    assert columns["trades"] == [None, 2**63 + 5]
    assert columns["updated_at"] == [UPDATED_MS, UPDATED_MS]


def test_rows_to_columns_rejects_rows_with_other_keys() -> None:
    assert rows_to_columns([]) == {}
    with pytest.raises(ValueError, match=r"row 1 .*missing: b; extra: c"):
        rows_to_columns([{"a": 1, "b": 2}, {"a": 1, "c": 3}])


def test_datetime_to_ms_is_exact_and_takes_naive_as_utc() -> None:
    moment = datetime(2025, 3, 14, 0, 1, 0, 123_999, tzinfo=UTC)
    assert datetime_to_ms(moment) == OPEN_MS + 123
    assert datetime_to_ms(moment.replace(tzinfo=None)) == OPEN_MS + 123
    plus_two = moment.astimezone(timezone(timedelta(hours=2)))
    assert datetime_to_ms(plus_two) == OPEN_MS + 123


# -- Arrow typing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clickhouse_type", "expected"),
    [
        ("LowCardinality(String)", pa.string()),
        ("Nullable(Float64)", pa.float64()),
        ("Nullable(UInt64)", pa.uint64()),
        ("UInt32", pa.uint32()),
        ("Bool", pa.bool_()),
        ("DateTime64(3, 'UTC')", pa.timestamp("ms", tz="UTC")),
        ("DateTime64(6)", pa.timestamp("us", tz="UTC")),
        ("DateTime('UTC')", pa.timestamp("s", tz="UTC")),
        ("Array(Float64)", pa.list_(pa.float64())),
        ("Array(Nullable(String))", pa.list_(pa.string())),
    ],
)
def test_arrow_type_maps_the_schema_types(clickhouse_type: str, expected: pa.DataType) -> None:
    assert arrow_type(clickhouse_type) == expected


@pytest.mark.parametrize("clickhouse_type", ["Decimal(18, 8)", "DateTime64(2)", "Map(String, X)"])
def test_arrow_type_refuses_types_it_cannot_carry_exactly(clickhouse_type: str) -> None:
    with pytest.raises(ClickHouseError, match="no Arrow mapping"):
        arrow_type(clickhouse_type)


def test_columns_to_arrow_keeps_ms_nulls_bools_and_big_integers_exactly() -> None:
    table = columns_to_arrow(
        {
            "open_time": [OPEN_MS + 1, OPEN_MS + 999],
            "trades": [None, 2**64 - 1],
            "is_closed": [True, False],
            "levels": [[1.5, 2.5], []],
            "quote_volume": [None, 5e-324],
        },
        {
            "open_time": "DateTime64(3, 'UTC')",
            "trades": "Nullable(UInt64)",
            "is_closed": "Bool",
            "levels": "Array(Float64)",
            "quote_volume": "Nullable(Float64)",
        },
    )
    assert table.column("open_time").cast(pa.int64()).to_pylist() == [OPEN_MS + 1, OPEN_MS + 999]
    assert table.column("trades").to_pylist() == [None, 2**64 - 1]
    assert table.column("is_closed").to_pylist() == [True, False]
    assert table.column("levels").to_pylist() == [[1.5, 2.5], []]
    assert table.column("quote_volume").to_pylist() == [None, 5e-324]


def test_columns_to_arrow_names_the_column_of_a_bad_value() -> None:
    with pytest.raises(ValueError, match=r"column version \(UInt64\)"):
        columns_to_arrow({"version": [1, -1]}, {"version": "UInt64"})


# -- query parameters ----------------------------------------------------------------------


def test_chdb_param_text_escapes_strings_for_the_escaped_format() -> None:
    hostile = "x'); DROP TABLE t; --\\\t\n\r\0"
    assert chdb_param_text(hostile) == "x\\'); DROP TABLE t; --\\\\\\t\\n\\r\\0"
    assert chdb_param_text("\\N") == "\\\\N"  # the string, not NULL
    assert chdb_param_text("") == ""


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "\\N"),
        (True, "true"),
        (False, "false"),
        (2**64 - 1, "18446744073709551615"),
        (-5, "-5"),
        (0.1, "0.1"),
        (float("-inf"), "-inf"),
        (datetime(2025, 3, 14, 2, 0, 0, 123_000, tzinfo=timezone(timedelta(hours=2))),
         "2025-03-14 00:00:00.123000"),
        (date(2025, 3, 14), "2025-03-14"),
        (["a'b", "c\\d", None], "['a\\'b','c\\\\d',NULL]"),
        ([[1.5], []], "[[1.5],[]]"),
        ((1, 2), "[1,2]"),
    ],
)  # fmt: skip
def test_chdb_param_text_of_other_values(value: Any, text: str) -> None:
    assert chdb_param_text(value) == text


def test_chdb_param_text_refuses_unknown_types() -> None:
    with pytest.raises(TypeError, match="bytes"):
        chdb_param_text(b"raw")


# -- SQL files -----------------------------------------------------------------------------


def test_split_sql_statements_ignores_semicolons_in_comments_and_quotes() -> None:
    text = """
    -- a comment; with a semicolon
    CREATE TABLE a (x String DEFAULT 'it''s; -- not a comment');
    /* block; comment */ SELECT "we;ird", `b;c`, 'esc\\'; still string' ;
    ;  -- empty statement
    SELECT 2
    """
    assert split_sql_statements(text) == [
        "CREATE TABLE a (x String DEFAULT 'it''s; -- not a comment')",
        """SELECT "we;ird", `b;c`, 'esc\\'; still string'""",
        "SELECT 2",
    ]


def test_split_sql_statements_reports_unterminated_tokens() -> None:
    with pytest.raises(MigrationError, match="unterminated"):
        split_sql_statements("SELECT 'open")
    with pytest.raises(MigrationError, match="unterminated"):
        split_sql_statements("SELECT 1 /* open")


def test_the_shipped_schema_creates_the_database_and_five_tables() -> None:
    migrations = load_migrations()
    assert migrations[0].version == 1
    assert migrations[0].name == "001_schema.sql"
    data = (DEFAULT_SQL_DIR / "001_schema.sql").read_bytes()
    assert migrations[0].checksum == hashlib.sha256(data).hexdigest()
    statements = migrations[0].statements
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS crypto_kline"
    created = [s.split()[5] for s in statements[1:]]
    assert created == [
        "crypto_kline.schema_migrations",
        "crypto_kline.klines",
        "crypto_kline.volume_profile",
        "crypto_kline.indicators",
        "crypto_kline.signals",
    ]
    assert all(s.startswith("CREATE TABLE IF NOT EXISTS") for s in statements[1:])


def test_load_migrations_orders_by_version_and_refuses_bad_files(tmp_path: Path) -> None:
    (tmp_path / "010_later.sql").write_text("SELECT 10")
    (tmp_path / "002_next.sql").write_text("SELECT 2")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [m.version for m in load_migrations(tmp_path)] == [2, 10]

    (tmp_path / "10_duplicate.sql").write_text("SELECT 10")
    with pytest.raises(MigrationError, match="version 10 appears twice"):
        load_migrations(tmp_path)
    (tmp_path / "10_duplicate.sql").unlink()

    (tmp_path / "add-table.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match=r"not named NNN_description\.sql"):
        load_migrations(tmp_path)

    with pytest.raises(MigrationError, match="does not exist"):
        load_migrations(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MigrationError, match="no migration files"):
        load_migrations(tmp_path / "empty")


# -- URLs ----------------------------------------------------------------------------------


def test_chdb_urls_absolute_and_relative_to_the_project_root(tmp_path: Path) -> None:
    absolute = parse_clickhouse_url("chdb:///var/lib/klineflow/chdb")
    assert (absolute.backend, absolute.path) == ("chdb", "/var/lib/klineflow/chdb")
    assert absolute.url == "chdb:///var/lib/klineflow/chdb"

    relative = parse_clickhouse_url("chdb://.klineflow/chdb")
    assert relative.path == str(PROJECT_ROOT / ".klineflow" / "chdb")
    assert parse_clickhouse_url("chdb://data/x", base_dir=tmp_path).path == str(tmp_path / "data/x")
    # A parsed target round-trips through its URL (what a worker process receives).
    assert parse_clickhouse_url(relative.url) == relative


@pytest.mark.parametrize(
    "url", ["chdb://", "chdb:///", "chdb:///x?mode=ro", "postgres://h/db", "clickhouse-host:9000"]
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"ClickHouse URL|chdb URL"):
        parse_clickhouse_url(url)


def test_native_url_with_password_never_shows_it() -> None:
    target = parse_clickhouse_url("clickhouse://writer:s3cr%40t:pw@db.internal:9001/crypto_kline")
    assert target.backend == "native"
    assert (target.host, target.port, target.user) == ("db.internal", 9001, "writer")
    assert target.password == "s3cr@t:pw"
    assert target.database == "crypto_kline"
    assert not target.secure
    for shown in (repr(target), str(target), target.redacted_url, f"{target}"):
        assert "s3cr" not in shown
    assert str(target) == "clickhouse://writer:***@db.internal:9001/crypto_kline"
    # The full URL (for handing to a worker) keeps the password and parses back equal.
    assert parse_clickhouse_url(target.url) == target


def test_native_url_defaults_and_options() -> None:
    plain = parse_clickhouse_url("clickhouse+native://localhost")
    assert (plain.port, plain.user, plain.password, plain.database) == (
        9000,
        "default",
        "",
        "crypto_kline",
    )
    secure = parse_clickhouse_url("clickhouse://u:p@[::1]/?secure=1&connect_timeout=2.5")
    assert (secure.host, secure.port, secure.secure, secure.connect_timeout_s) == (
        "::1",
        9440,
        True,
        2.5,
    )
    assert parse_clickhouse_url(secure.url) == secure


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("clickhouse://u:hunter2@h:9000/otherdb", "database must be 'crypto_kline'"),
        ("clickhouse://u:hunter2@h:99999/crypto_kline", "port"),
        ("clickhouse://u:hunter2@h/crypto_kline?compression=lz4", "unknown option"),
        ("clickhouse://u:hunter2@h/crypto_kline?connect_timeout=soon", "timeouts"),
        ("clickhouse://u:hunter2@/crypto_kline", "missing host"),
    ],
)
def test_native_url_errors_never_contain_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_clickhouse_url(url)
    assert "hunter2" not in str(info.value)


# -- retries -------------------------------------------------------------------------------


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


def _flaky(failures: list[BaseException], result: str = "ok") -> tuple[list[int], Any]:
    calls: list[int] = []

    def operation() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return result

    return calls, operation


def test_retries_transient_errors_with_growing_bounded_delays() -> None:
    sleeps: list[float] = []
    calls, operation = _flaky([Transient("drop"), Transient("drop"), Transient("drop")])
    policy = RetryPolicy(attempts=5, base_delay_s=0.1, max_delay_s=0.25)
    result = call_with_retries(
        operation,
        retry_on=(Transient, Permanent),
        is_transient=lambda exc: isinstance(exc, Transient),
        policy=policy,
        describe="insert",
        sleep=sleeps.append,
    )
    assert result == "ok"
    assert len(calls) == 4
    assert len(sleeps) == 3
    assert 0.05 <= sleeps[0] <= 0.1
    assert 0.1 <= sleeps[1] <= 0.2
    assert 0.125 <= sleeps[2] <= 0.25  # capped at max_delay_s


def test_gives_up_after_the_last_attempt() -> None:
    sleeps: list[float] = []
    calls, operation = _flaky([Transient(f"drop {i}") for i in range(10)])
    with pytest.raises(ClickHouseUnavailable, match=r"insert failed 3 times.*drop 2") as info:
        call_with_retries(
            operation,
            retry_on=(Transient,),
            is_transient=lambda exc: True,
            policy=RetryPolicy(attempts=3, base_delay_s=0.01),
            describe="insert",
            sleep=sleeps.append,
        )
    assert len(calls) == 3
    assert len(sleeps) == 2
    assert isinstance(info.value.__cause__, Transient)


def test_permanent_errors_are_not_retried() -> None:
    sleeps: list[float] = []
    calls, operation = _flaky([Permanent("syntax error")])
    with pytest.raises(Permanent):
        call_with_retries(
            operation,
            retry_on=(Transient, Permanent),
            is_transient=lambda exc: isinstance(exc, Transient),
            policy=RetryPolicy(),
            describe="query",
            sleep=sleeps.append,
        )
    assert len(calls) == 1
    assert sleeps == []
    # Errors outside retry_on are not even classified.
    calls, operation = _flaky([KeyError("x")])
    with pytest.raises(KeyError):
        call_with_retries(
            operation,
            retry_on=(Transient,),
            is_transient=lambda exc: True,
            policy=RetryPolicy(),
            describe="query",
            sleep=sleeps.append,
        )
    assert sleeps == []


# -- native backend without a server -------------------------------------------------------


def test_native_error_classification() -> None:
    from clickhouse_driver import errors

    assert native_error_is_transient(errors.ServerException("too many parts", code=252))
    assert native_error_is_transient(errors.NetworkError("reset"))
    assert native_error_is_transient(errors.SocketTimeoutError("slow"))
    assert native_error_is_transient(EOFError("Unexpected EOF while reading bytes"))
    assert native_error_is_transient(ConnectionResetError())
    assert not native_error_is_transient(errors.ServerException("syntax error", code=62))
    assert not native_error_is_transient(errors.ServerException("unknown table", code=60))
    assert not native_error_is_transient(errors.TypeMismatchError("bad value"))


@pytest.fixture
def dropping_server() -> Iterator[tuple[int, list[int]]]:
    """A loopback socket that accepts connections and closes them at once (a dropped link)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_native_writer_retries_dropped_connections_then_gives_up(
    dropping_server: tuple[int, list[int]],
) -> None:
    port, accepted = dropping_server
    url = f"clickhouse://writer:hunter2@127.0.0.1:{port}/crypto_kline?connect_timeout=2"
    with pytest.raises(ClickHouseUnavailable, match="failed 3 times") as info:
        open_writer(url, retry=RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.02))
    assert len(accepted) == 3  # one connection per attempt, each dropped by the "server"
    assert "hunter2" not in str(info.value)
    assert "writer:***@127.0.0.1" in str(info.value)


def test_missing_backend_packages_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "chdb", None)
    with pytest.raises(BackendUnavailable, match="pip install chdb"):
        open_writer("chdb:///tmp/klineflow-never-created")
    monkeypatch.setitem(sys.modules, "clickhouse_driver", None)
    with pytest.raises(BackendUnavailable, match="pip install clickhouse-driver"):
        open_writer("clickhouse://u:p@127.0.0.1:9/crypto_kline")
