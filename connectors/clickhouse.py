"""ClickHouse storage: URLs, schema migrations and the writers the Flink sinks call.

Two backends behind one interface (:class:`ClickHouseWriter`):

- ``chdb:///abs/path`` or ``chdb://relative/path`` -- chdb, ClickHouse embedded in this
  process. chdb allows one process per data directory, and one process holds one directory
  at a time (close the writer before opening another path).
- ``clickhouse://user:pass@host:9000/crypto_kline`` (also ``clickhouse+native://``) -- a
  ClickHouse server over the native protocol (clickhouse-driver), with bounded retries on
  dropped connections and transient server errors.

Conventions shared by both backends:

- Every table lives in the database ``crypto_kline`` (see ``sql/*.sql``).
- Rows handed to :meth:`ClickHouseWriter.insert_rows` give ``DateTime64(3)`` values as
  integer epoch milliseconds, ``Nullable`` values as ``None``, arrays as lists.
- :meth:`ClickHouseWriter.query` takes ClickHouse query parameters (``{name:Type}`` in the
  SQL, values in ``params``): values travel beside the SQL text, never inside it.
- The password of a server URL never appears in ``repr``/``str``, logs or error messages.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Final, Literal, Self, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from connectors import retry
from connectors.retry import RetryPolicy, first_line
from udfs.record import VersionedBar, now_ms

log = logging.getLogger(__name__)

DATABASE: Final = "crypto_kline"
DEFAULT_URL: Final = "chdb://.klineflow/chdb"
NATIVE_DEFAULT_PORT: Final = 9000
NATIVE_DEFAULT_SECURE_PORT: Final = 9440
# The repository (the package is installed editable): sql/ lives here, and relative chdb
# paths resolve against it, as jobs.config does, so every process names the same directory.
PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_SQL_DIR: Final = PROJECT_ROOT / "sql"
DATA_TABLES: Final[tuple[str, ...]] = ("klines", "volume_profile", "indicators", "signals")
MIGRATIONS_TABLE: Final = "schema_migrations"

# Column order of crypto_kline.klines as the writers send it.
KLINE_COLUMNS: Final[tuple[str, ...]] = (
    "exchange",
    "symbol",
    "timeframe",
    "open_time",
    "close_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trades",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "is_closed",
    "bars_present",
    "bars_expected",
    "version",
    "updated_at",
)
_KLINE_FIELDS: Final = KLINE_COLUMNS[:15]  # the ones copied from the Kline record
_KLINE_TIME_COLUMNS: Final = ("open_time", "close_time", "updated_at")

_IDENTIFIER_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MIGRATION_NAME_RE: Final = re.compile(r"^(\d+)_[A-Za-z0-9_.-]+\.sql$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# Errors


class ClickHouseError(RuntimeError):
    """Base class of every error this module raises about ClickHouse."""


class BackendUnavailable(ClickHouseError):
    """The Python package a backend needs is not installed (the message says what to install)."""


class ClickHouseQueryError(ClickHouseError):
    """ClickHouse rejected a statement (syntax, types, missing table, ...)."""


class ClickHouseUnavailable(ClickHouseError):
    """The server could not be reached or kept failing transiently through every retry."""


class SchemaVersionError(ClickHouseError):
    """The database's recorded schema is newer than the newest migration this code knows."""


class MigrationError(ClickHouseError):
    """The migration files themselves are unusable (bad name, duplicate version)."""


# ---------------------------------------------------------------------------------------
# URLs


@dataclass(frozen=True, slots=True)
class ClickHouseTarget:
    """Where ClickHouse data lives, parsed from a ``CLICKHOUSE_URL``.

    ``backend`` is ``"chdb"`` (``path`` is the absolute data directory) or ``"native"``
    (``host``/``port``/``user``/``password``/``secure``). ``repr`` and ``str`` never show
    the password; :attr:`url` (with the password, for handing to a worker process) does.
    """

    backend: Literal["chdb", "native"]
    path: str | None = None
    host: str | None = None
    port: int = NATIVE_DEFAULT_PORT
    user: str = "default"
    password: str = field(default="", repr=False)
    secure: bool = False
    database: str = DATABASE
    connect_timeout_s: float = 10.0
    send_receive_timeout_s: float = 300.0

    @property
    def url(self) -> str:
        """The canonical URL, password included: pass it to processes, never log it."""
        return self._format(redact=False)

    @property
    def redacted_url(self) -> str:
        """The canonical URL with the password replaced by ``***``: safe to log."""
        return self._format(redact=True)

    def __str__(self) -> str:
        return self.redacted_url

    def _format(self, *, redact: bool) -> str:
        if self.backend == "chdb":
            return f"chdb://{self.path}"
        credentials = quote(self.user, safe="")
        if self.password:
            credentials += ":" + ("***" if redact else quote(self.password, safe=""))
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        query = []
        if self.secure:
            query.append("secure=1")
        if self.connect_timeout_s != 10.0:
            query.append(f"connect_timeout={self.connect_timeout_s:g}")
        if self.send_receive_timeout_s != 300.0:
            query.append(f"send_receive_timeout={self.send_receive_timeout_s:g}")
        suffix = ("?" + "&".join(query)) if query else ""
        return f"clickhouse://{credentials}@{host}:{self.port}/{self.database}{suffix}"


def parse_clickhouse_url(url: str, *, base_dir: Path | None = None) -> ClickHouseTarget:
    """Parse a ``CLICKHOUSE_URL`` into a :class:`ClickHouseTarget`.

    ``chdb://relative/path`` is resolved against ``base_dir`` (default: the project root,
    like ``jobs.config``) at parse time, so the target names the same directory in any
    process, whatever its working directory (Flink's Python workers run elsewhere).
    Server URLs accept ``?secure=1``, ``?connect_timeout=S`` and ``?send_receive_timeout=S``.
    Raises ValueError with a message that never contains the password.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(
            "ClickHouse URL must look like chdb:///path or clickhouse://user:pass@host:9000/"
            f"{DATABASE}"
        )
    if scheme == "chdb":
        return _parse_chdb(rest, base_dir)
    if scheme in ("clickhouse", "clickhouse+native"):
        return _parse_native(url)
    raise ValueError(
        f"unsupported ClickHouse URL scheme {scheme!r} (expected chdb://, clickhouse:// or "
        "clickhouse+native://)"
    )


def _parse_chdb(rest: str, base_dir: Path | None) -> ClickHouseTarget:
    if "?" in rest or "#" in rest:
        raise ValueError("chdb URL: the path must not contain '?' or '#' (no options exist)")
    if not rest or rest == "/":
        raise ValueError("chdb URL needs a data directory: chdb:///abs/path or chdb://rel/path")
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = (base_dir or PROJECT_ROOT) / path
    return ClickHouseTarget(backend="chdb", path=os.path.normpath(path))


def _parse_native(url: str) -> ClickHouseTarget:
    parts = urlsplit(url)
    try:
        port_number = parts.port
    except ValueError:
        raise ValueError("ClickHouse URL: the port is not a number between 0 and 65535") from None
    if not parts.hostname:
        raise ValueError("ClickHouse URL: missing host (clickhouse://user:pass@host:9000/db)")
    database = parts.path.strip("/") or DATABASE
    if database != DATABASE:
        raise ValueError(
            f"ClickHouse URL: database must be {DATABASE!r} (the schema in sql/ creates it), "
            f"got {database!r}"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    known = {"secure", "connect_timeout", "send_receive_timeout"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"ClickHouse URL: unknown option(s) {', '.join(unknown)}")
    secure = options.get("secure", "0").strip().lower() in ("1", "true", "yes", "on")
    try:
        connect_timeout = float(options.get("connect_timeout", "10"))
        send_receive_timeout = float(options.get("send_receive_timeout", "300"))
    except ValueError:
        raise ValueError("ClickHouse URL: timeouts must be numbers of seconds") from None
    default_port = NATIVE_DEFAULT_SECURE_PORT if secure else NATIVE_DEFAULT_PORT
    return ClickHouseTarget(
        backend="native",
        host=parts.hostname,
        port=port_number or default_port,
        user=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
        secure=secure,
        database=database,
        connect_timeout_s=connect_timeout,
        send_receive_timeout_s=send_receive_timeout,
    )


# ---------------------------------------------------------------------------------------
# Pure conversions


def bar_to_row(bar: VersionedBar, updated_at_ms: int) -> dict[str, Any]:
    """The ``klines`` row of a bar: record fields, counts, version, ``updated_at`` (ms)."""
    kline = bar.kline
    row: dict[str, Any] = {name: getattr(kline, name) for name in _KLINE_FIELDS}
    row["bars_present"] = bar.bars_present
    row["bars_expected"] = bar.bars_expected
    row["version"] = bar.version
    row["updated_at"] = updated_at_ms
    return row


def bars_to_columns(bars: Sequence[VersionedBar], updated_at_ms: int) -> dict[str, list[Any]]:
    """The ``klines`` rows of ``bars`` in columnar form (one list per column, same order)."""
    klines = [bar.kline for bar in bars]
    columns: dict[str, list[Any]] = {
        name: [getattr(kline, name) for kline in klines] for name in _KLINE_FIELDS
    }
    columns["bars_present"] = [bar.bars_present for bar in bars]
    columns["bars_expected"] = [bar.bars_expected for bar in bars]
    columns["version"] = [bar.version for bar in bars]
    columns["updated_at"] = [updated_at_ms] * len(bars)
    return columns


def rows_to_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Rows (mappings with the same keys) to one list per column, in the first row's order.

    Raises ValueError when a row's keys differ from the first row's.
    """
    if not rows:
        return {}
    names = list(rows[0])
    expected = set(names)
    for index, row in enumerate(rows):
        if len(row) != len(names) or set(row) != expected:
            missing = sorted(expected - set(row))
            extra = sorted(set(row) - expected)
            raise ValueError(
                f"row {index} has different columns than row 0 "
                f"(missing: {', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'})"
            )
    return {name: [row[name] for row in rows] for name in names}


def datetime_to_ms(value: datetime) -> int:
    """Epoch milliseconds of an aware datetime (naive is taken as UTC), exact to the ms."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(milliseconds=1)


_ESCAPES: Final[dict[str, str]] = {
    "\\": "\\\\",
    "'": "\\'",
    "\t": "\\t",
    "\n": "\\n",
    "\r": "\\r",
    "\0": "\\0",
    "\b": "\\b",
    "\f": "\\f",
    "\v": "\\v",
}
_ESCAPE_TABLE: Final = str.maketrans(_ESCAPES)


def chdb_param_text(value: Any) -> str:
    """The text form in which chdb expects a query parameter value.

    chdb hands each parameter to ClickHouse as text that the server parses with the
    placeholder's type (``{name:Type}``); it never becomes part of the SQL. A top-level
    string is in ClickHouse's escaped form, ``None`` is ``\\N`` (NULL), an array is a
    bracketed list of quoted literals. Datetimes are sent as UTC ``YYYY-MM-DD hh:mm:ss.ffffff``.
    """
    if isinstance(value, str):
        return value.translate(_ESCAPE_TABLE)
    if value is None:
        return "\\N"
    if isinstance(value, list | tuple):
        return _param_literal(value)
    return _param_scalar(value)


def _param_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # nan, inf, -inf and shortest round-trip digits parse in ClickHouse
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"unsupported query parameter type {type(value).__name__}")


def _param_literal(value: Any) -> str:
    """A value inside an array parameter: quoted literals, NULL, nested brackets."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.translate(_ESCAPE_TABLE) + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_param_literal(item) for item in value) + "]"
    if isinstance(value, datetime | date):
        return "'" + _param_scalar(value) + "'"
    return _param_scalar(value)


def split_sql_statements(text: str) -> list[str]:
    """Split a SQL file into statements at top-level ``;``, dropping comments.

    Understands ``-- line`` and ``/* block */`` comments, ``'strings'`` (with ``\\`` and
    ``''`` escapes), ``"identifiers"`` and ```identifiers```. Empty statements are dropped.
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
            current.append(" ")
            continue
        if char == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                raise MigrationError("unterminated /* comment */ in SQL")
            i = end + 2
            current.append(" ")
            continue
        if char in "'\"`":
            end = _quoted_end(text, i)
            current.append(text[i:end])
            i = end
            continue
        if char == ";":
            statement = "".join(current).strip()
            if statement:
                statements.append(statement)
            current = []
            i += 1
            continue
        current.append(char)
        i += 1
    statement = "".join(current).strip()
    if statement:
        statements.append(statement)
    return statements


def _quoted_end(text: str, start: int) -> int:
    """Index just past the quoted token opening at ``start``."""
    quote_char = text[start]
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == quote_char:
            if text.startswith(quote_char * 2, i):
                i += 2
                continue
            return i + 1
        i += 1
    raise MigrationError(f"unterminated {quote_char} quote in SQL")


def arrow_type(clickhouse_type: str) -> Any:
    """The Arrow type that carries values of a ClickHouse column type into chdb.

    Supports the types the schema uses: (LowCardinality/Nullable) String, Float32/64,
    (U)Int8..64, Bool, DateTime, DateTime64(0|3|6|9[, tz]) and Array of those.
    """
    pa = _import_pyarrow()
    text = clickhouse_type.strip()
    for wrapper in ("Nullable(", "LowCardinality("):
        if text.startswith(wrapper) and text.endswith(")"):
            return arrow_type(text[len(wrapper) : -1])
    if text.startswith("Array(") and text.endswith(")"):
        return pa.list_(arrow_type(text[len("Array(") : -1]))
    simple: dict[str, Any] = {
        "String": pa.string(),
        "Float64": pa.float64(),
        "Float32": pa.float32(),
        "UInt8": pa.uint8(),
        "UInt16": pa.uint16(),
        "UInt32": pa.uint32(),
        "UInt64": pa.uint64(),
        "Int8": pa.int8(),
        "Int16": pa.int16(),
        "Int32": pa.int32(),
        "Int64": pa.int64(),
        "Bool": pa.bool_(),
    }
    if text in simple:
        return simple[text]
    match = re.fullmatch(r"DateTime64\((\d)(?:,\s*'([^']*)')?\)", text)
    if match:
        units = {"0": "s", "3": "ms", "6": "us", "9": "ns"}
        unit = units.get(match.group(1))
        if unit is not None:
            return pa.timestamp(unit, tz=match.group(2) or "UTC")
    match = re.fullmatch(r"DateTime(?:\('([^']*)'\))?", text)
    if match:
        return pa.timestamp("s", tz=match.group(1) or "UTC")
    raise ClickHouseError(f"no Arrow mapping for ClickHouse type {clickhouse_type!r}")


def columns_to_arrow(columns: Mapping[str, Sequence[Any]], types: Mapping[str, str]) -> Any:
    """An Arrow table of ``columns`` typed from the ClickHouse ``types`` of those columns.

    Raises ValueError naming the column when a value does not fit its type.
    """
    pa = _import_pyarrow()
    arrays = []
    fields = []
    for name, values in columns.items():
        data_type = arrow_type(types[name])
        try:
            arrays.append(pa.array(values, type=data_type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
            raise ValueError(f"column {name} ({types[name]}): {exc}") from None
        fields.append(pa.field(name, data_type, nullable=True))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _quote_identifier(name: str) -> str:
    if not _IDENTIFIER_RE.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f"`{name}`"


def _qualified(table: str) -> str:
    return f"{_quote_identifier(DATABASE)}.{_quote_identifier(table)}"


# ---------------------------------------------------------------------------------------
# Migrations


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``sql/NNN_name.sql`` file."""

    version: int
    name: str
    checksum: str
    sql: str

    @property
    def statements(self) -> list[str]:
        """The file's statements, comments dropped."""
        return split_sql_statements(self.sql)


def load_migrations(sql_dir: Path | None = None) -> list[Migration]:
    """The migration files of ``sql_dir`` (default: the repository's ``sql/``) by version."""
    directory = Path(sql_dir) if sql_dir is not None else DEFAULT_SQL_DIR
    if not directory.is_dir():
        raise MigrationError(f"migration folder {directory} does not exist")
    migrations: list[Migration] = []
    seen: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME_RE.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name!r} is not named NNN_description.sql")
        version = int(match.group(1))
        if version in seen:
            raise MigrationError(
                f"migration version {version} appears twice: {seen[version]}, {path.name}"
            )
        seen[version] = path.name
        data = path.read_bytes()
        migrations.append(
            Migration(
                version=version,
                name=path.name,
                checksum=hashlib.sha256(data).hexdigest(),
                sql=data.decode("utf-8"),
            )
        )
    if not migrations:
        raise MigrationError(f"no migration files (NNN_name.sql) in {directory}")
    return sorted(migrations, key=lambda migration: migration.version)


# ---------------------------------------------------------------------------------------
# Writers


class ClickHouseWriter(ABC):
    """A connection to ClickHouse that the sinks write through and tools read through.

    Not shareable between processes. Methods are serialised by a lock, so threads of one
    process may share a writer. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, target: ClickHouseTarget) -> None:
        self.target = target
        self._lock = threading.RLock()
        self._column_types: dict[str, dict[str, str]] = {}
        self._required_columns: dict[str, frozenset[str]] = {}

    # -- backend primitives ----------------------------------------------------------

    @abstractmethod
    def _execute(self, sql: str) -> None:
        """Run one statement whose result is not needed (DDL)."""

    @abstractmethod
    def _query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run one parameterised statement and return its rows as dicts."""

    @abstractmethod
    def _insert_columns(
        self, table: str, columns: Mapping[str, Sequence[Any]], types: Mapping[str, str]
    ) -> int:
        """Insert columnar data (names, equally long value lists) into ``table``."""

    @abstractmethod
    def _close(self) -> None:
        """Release the connection."""

    # -- public API ------------------------------------------------------------------

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a query with ClickHouse parameters (``{name:Type}``) and return rows as dicts.

        DateTime64 values come back as aware UTC datetimes, Nullable NULL as None.
        """
        with self._lock:
            return self._query(sql, dict(params or {}))

    def insert_bars(self, bars: Sequence[VersionedBar]) -> int:
        """Insert bars into ``klines`` (``updated_at`` = now); returns the number of rows."""
        if not bars:
            return 0
        return self._insert_table("klines", bars_to_columns(bars, now_ms()), len(bars))

    def insert_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert rows (column name -> value) into ``crypto_kline.{table}``.

        Every row has the same keys; each column without a DEFAULT must be present.
        DateTime64(3) values are epoch ms. Returns the number of rows inserted.
        """
        if not rows:
            return 0
        return self._insert_table(table, rows_to_columns(rows), len(rows))

    def table_counts(self) -> dict[str, int]:
        """Rows per data table after deduplication (``FINAL``)."""
        counts: dict[str, int] = {}
        for table in DATA_TABLES:
            rows = self.query(f"SELECT count() AS n FROM {_qualified(table)} FINAL")
            counts[table] = int(rows[0]["n"])
        return counts

    def fetch_klines(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Bars of one series with ``start_ms <= open_time < end_ms``, oldest first.

        Deduplicated with ``FINAL`` (the highest version of each bar); at most ``limit``
        rows. Times (open_time, close_time, updated_at) are epoch ms like the record.
        """
        conditions = [
            "k.exchange = {exchange:String}",
            "k.symbol = {symbol:String}",
            "k.timeframe = {timeframe:String}",
        ]
        params: dict[str, Any] = {"exchange": exchange, "symbol": symbol, "timeframe": timeframe}
        if start_ms is not None:
            conditions.append("k.open_time >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')")
            params["start_ms"] = int(start_ms)
        if end_ms is not None:
            conditions.append("k.open_time < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')")
            params["end_ms"] = int(end_ms)
        selected = ", ".join(
            f"toUnixTimestamp64Milli(k.{name}) AS {name}"
            if name in _KLINE_TIME_COLUMNS
            else f"k.{name} AS {name}"
            for name in KLINE_COLUMNS
        )
        sql = (
            f"SELECT {selected} FROM {_qualified('klines')} AS k FINAL "
            f"WHERE {' AND '.join(conditions)} ORDER BY k.open_time"
        )
        if limit is not None:
            if limit < 0:
                raise ValueError("limit must be >= 0")
            sql += " LIMIT {limit:UInt64}"
            params["limit"] = int(limit)
        rows = self.query(sql, params)
        for row in rows:
            row["is_closed"] = bool(row["is_closed"])
        return rows

    def migrate(self, sql_dir: Path | None = None) -> list[str]:
        """Apply the migration files not yet recorded; returns the names applied now.

        Raises SchemaVersionError, touching nothing, when the database records a schema
        version newer than the newest file in ``sql_dir``.
        """
        migrations = load_migrations(sql_dir)
        newest_known = migrations[-1].version
        with self._lock:
            recorded = self._recorded_migrations()
            if recorded and max(recorded) > newest_known:
                raise SchemaVersionError(
                    f"{self.target} has schema version {max(recorded)}, newer than the newest "
                    f"migration this klineflow knows ({newest_known}); upgrade klineflow "
                    "before writing to it"
                )
            applied: list[str] = []
            for migration in migrations:
                if migration.version in recorded:
                    if recorded[migration.version] != migration.checksum:
                        log.warning(
                            "migration %s changed since it was applied to %s (checksum "
                            "differs); not re-applied, add a new numbered file instead",
                            migration.name,
                            self.target,
                        )
                    continue
                for statement in migration.statements:
                    self._execute(statement)
                self._record_migration(migration)
                applied.append(migration.name)
                log.info("applied migration %s to %s", migration.name, self.target)
            self._column_types.clear()
            self._required_columns.clear()
            return applied

    def schema_version(self) -> int:
        """The newest migration version recorded in the database (0 when none)."""
        with self._lock:
            return max(self._recorded_migrations(), default=0)

    def close(self) -> None:
        """Close the connection; the writer is unusable afterwards. Idempotent."""
        with self._lock:
            self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target.redacted_url!r})"

    # -- shared helpers --------------------------------------------------------------

    def _insert_table(self, table: str, columns: Mapping[str, Sequence[Any]], rows: int) -> int:
        _quote_identifier(table)  # refuse anything but a plain table name before any query
        with self._lock:
            types = self._table_types(table)
            unknown = sorted(set(columns) - set(types))
            if unknown:
                raise ValueError(f"{table} has no column(s) {', '.join(unknown)}")
            missing = sorted(self._required_columns[table] - set(columns))
            if missing:
                raise ValueError(f"{table}: rows lack column(s) {', '.join(missing)}")
            self._insert_columns(table, columns, types)
        return rows

    def _table_types(self, table: str) -> dict[str, str]:
        cached = self._column_types.get(table)
        if cached is not None:
            return cached
        # DESCRIBE and EXISTS take only our own validated identifiers, so they need no query
        # parameters, which servers before 19.x (and Debian's 18.16) do not have.
        if not self._table_exists(table):
            raise ClickHouseQueryError(f"table {DATABASE}.{table} does not exist (migrate first)")
        described = self._query(f"DESCRIBE TABLE {_qualified(table)}", {})
        types = {str(row["name"]): str(row["type"]) for row in described}
        self._column_types[table] = types
        self._required_columns[table] = frozenset(
            str(row["name"]) for row in described if not row["default_type"]
        )
        return types

    def _table_exists(self, table: str) -> bool:
        rows = self._query(f"EXISTS TABLE {_qualified(table)}", {})
        return bool(int(next(iter(rows[0].values()))))

    def _recorded_migrations(self) -> dict[int, str]:
        if not self._table_exists(MIGRATIONS_TABLE):
            return {}
        rows = self._query(
            f"SELECT version, checksum FROM {_qualified(MIGRATIONS_TABLE)} FINAL", {}
        )
        return {int(row["version"]): str(row["checksum"]) for row in rows}

    def _record_migration(self, migration: Migration) -> None:
        columns: dict[str, list[Any]] = {
            "version": [migration.version],
            "name": [migration.name],
            "checksum": [migration.checksum],
            "applied_at": [now_ms()],
        }
        self._column_types.pop(MIGRATIONS_TABLE, None)
        self._insert_columns(MIGRATIONS_TABLE, columns, self._table_types(MIGRATIONS_TABLE))


# ---------------------------------------------------------------------------------------
# chdb backend


def _import_pyarrow() -> ModuleType:
    try:
        return importlib.import_module("pyarrow")
    except ImportError:
        raise BackendUnavailable("the chdb backend needs pyarrow: pip install pyarrow") from None


def _import_chdb_state() -> ModuleType:
    try:
        from chdb import state
    except ImportError:
        raise BackendUnavailable(
            "the embedded ClickHouse backend (chdb://) needs chdb: pip install chdb"
        ) from None
    return state


def _status_file_locked(data_dir: Path) -> bool:
    """Whether another process holds the lock ClickHouse takes on ``data_dir/status``.

    chdb reports that case only on stderr (the exception says "Error initializing
    EmbeddedServer"), so a failed open probes the lock to explain itself.
    """
    try:
        handle = (data_dir / "status").open("rb")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


class ChdbWriter(ClickHouseWriter):
    """ClickHouse embedded in this process (chdb), data in ``target.path``.

    Inserts go as one Arrow IPC stream per batch through ``send_insert(..., "ArrowStream")``
    (``bench/bench_clickhouse_insert.py`` measured it the fastest of the exact options, ahead
    of Parquet, ``Python(arrow_table)`` and JSONEachRow). Errors are local: never retried.
    """

    def __init__(self, target: ClickHouseTarget) -> None:
        if target.backend != "chdb" or not target.path:
            raise ValueError("ChdbWriter needs a chdb:// target")
        super().__init__(target)
        state = _import_chdb_state()
        self._pa = _import_pyarrow()
        Path(target.path).mkdir(parents=True, exist_ok=True)
        try:
            self._conn: Any = state.connect(target.path)
        except RuntimeError as exc:
            raise self._open_error(exc) from None
        try:
            self._query("SELECT 1 AS ok", {})
        except ClickHouseError:
            self._close()
            raise

    def _open_error(self, exc: RuntimeError) -> ClickHouseError:
        message = str(exc)
        if "Cannot lock file" in message or _status_file_locked(Path(str(self.target.path))):
            return ClickHouseUnavailable(
                f"chdb data directory {self.target.path} is in use by another process "
                "(chdb allows one process per directory)"
            )
        if "different" in message.lower() and "path" in message.lower():
            return ClickHouseUnavailable(
                f"this process already has another chdb directory open; close that writer "
                f"before opening {self.target.path}"
            )
        return ClickHouseUnavailable(f"cannot open chdb at {self.target.path}: {message}")

    def _connection(self) -> Any:
        if self._conn is None:
            raise ClickHouseError(f"writer for {self.target} is closed")
        return self._conn

    def _execute(self, sql: str) -> None:
        try:
            self._connection().query(sql, "CSV")
        except RuntimeError as exc:
            raise ClickHouseQueryError(str(exc)) from None

    def _query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        encoded = {name: chdb_param_text(value) for name, value in params.items()}
        try:
            table = self._connection().query(sql, "arrowtable", params=encoded)
        except RuntimeError as exc:
            raise ClickHouseQueryError(str(exc)) from None
        rows: list[dict[str, Any]] = table.to_pylist()
        return rows

    def _insert_columns(
        self, table: str, columns: Mapping[str, Sequence[Any]], types: Mapping[str, str]
    ) -> int:
        arrow_table = columns_to_arrow(columns, types)
        sink = self._pa.BufferOutputStream()
        with self._pa.ipc.new_stream(sink, arrow_table.schema) as stream:
            stream.write_table(arrow_table)
        names = ", ".join(_quote_identifier(name) for name in columns)
        try:
            with self._connection().send_insert(
                f"INSERT INTO {_qualified(table)} ({names})", "ArrowStream"
            ) as inserter:
                inserter.append(sink.getvalue().to_pybytes())
                result = inserter.finish()
        except RuntimeError as exc:
            raise ClickHouseQueryError(str(exc)) from None
        return int(result.rows_written)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


# ---------------------------------------------------------------------------------------
# Native backend (clickhouse-driver)

# clickhouse-driver's DBMS_MIN_PROTOCOL_VERSION_WITH_PARAMETERS: servers from 19.x on.
_MIN_REVISION_WITH_PARAMETERS: Final = 54459

# Server error codes worth retrying: timeouts, overload, network, replica/keeper hiccups.
TRANSIENT_SERVER_CODES: Final[frozenset[int]] = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY (e.g. replica temporarily read-only)
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)


# connectors.retry.call_with_retries whose exhausted retries raise ClickHouseUnavailable.
call_with_retries = functools.partial(retry.call_with_retries, exhausted=ClickHouseUnavailable)


def _import_clickhouse_driver() -> tuple[ModuleType, ModuleType]:
    try:
        import clickhouse_driver
        from clickhouse_driver import errors
    except ImportError:
        raise BackendUnavailable(
            "the ClickHouse server backend (clickhouse://) needs clickhouse-driver: "
            "pip install clickhouse-driver"
        ) from None
    return clickhouse_driver, errors


def native_error_is_transient(exc: BaseException) -> bool:
    """Whether a clickhouse-driver error is worth retrying: a dropped or refused connection,
    a timeout, or a server error whose code is in ``TRANSIENT_SERVER_CODES``."""
    _driver, errors = _import_clickhouse_driver()
    if isinstance(exc, errors.ServerException):
        return int(getattr(exc, "code", 0) or 0) in TRANSIENT_SERVER_CODES
    return isinstance(
        exc,
        errors.NetworkError
        | errors.SocketTimeoutError
        | errors.UnexpectedPacketFromServerError
        | EOFError
        | OSError,
    )


class NativeWriter(ClickHouseWriter):
    """A ClickHouse server over the native protocol (clickhouse-driver).

    Inserts are columnar (``execute(..., columnar=True)``) with the data passed as
    parameters; queries use server-side parameters. Transient failures are retried per
    ``retry`` (inserts are idempotent: ReplacingMergeTree keeps one row per version).
    """

    def __init__(
        self,
        target: ClickHouseTarget,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if target.backend != "native" or not target.host:
            raise ValueError("NativeWriter needs a clickhouse:// target")
        super().__init__(target)
        driver, self._errors = _import_clickhouse_driver()
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._client: Any = driver.Client(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            secure=target.secure,
            connect_timeout=target.connect_timeout_s,
            send_receive_timeout=target.send_receive_timeout_s,
            client_name="klineflow",
            settings={"server_side_params": True},
        )
        try:
            self._query("SELECT 1 AS ok", {})
        except ClickHouseError:
            self._close()
            raise

    @property
    def server_version(self) -> str:
        """``major.minor.patch`` of the server (known once connected)."""
        info = self._server_info()
        if info is None:
            return "unknown"
        return f"{info.version_major}.{info.version_minor}.{info.version_patch}"

    @property
    def supports_query_parameters(self) -> bool:
        """Whether the server takes query parameters (``{name:Type}``) beside the SQL.

        Servers older than ClickHouse 19.x (protocol revision 54459) do not; klineflow
        then refuses parameterised queries instead of pasting values into the SQL.
        """
        info = self._server_info()
        return info is not None and int(info.used_revision) >= _MIN_REVISION_WITH_PARAMETERS

    def _server_info(self) -> Any:
        client = self._client
        connection = getattr(client, "connection", None) if client is not None else None
        return getattr(connection, "server_info", None)

    def _run(self, describe: str, operation: Callable[[Any], T]) -> T:
        client = self._client
        if client is None:
            raise ClickHouseError(f"writer for {self.target} is closed")
        try:
            return call_with_retries(
                lambda: operation(client),
                retry_on=(self._errors.Error, EOFError, OSError),
                is_transient=native_error_is_transient,
                policy=self._retry,
                describe=f"{describe} on {self.target}",
                sleep=self._sleep,
            )
        except self._errors.Error as exc:
            raise ClickHouseQueryError(f"{type(exc).__name__}: {first_line(exc)}") from None

    def _execute(self, sql: str) -> None:
        self._run("statement", lambda client: client.execute(sql))

    def _query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        if params and self._server_info() is not None and not self.supports_query_parameters:
            raise ClickHouseQueryError(
                f"ClickHouse {self.server_version} at {self.target} does not support query "
                "parameters (ClickHouse 19.x or newer does); klineflow never pastes values "
                "into SQL, so it cannot run this query there"
            )
        values, columns = self._run(
            "query",
            lambda client: client.execute(sql, dict(params), with_column_types=True),
        )
        names = [name for name, _type in columns]
        return [dict(zip(names, row, strict=True)) for row in values]

    def _insert_columns(
        self, table: str, columns: Mapping[str, Sequence[Any]], types: Mapping[str, str]
    ) -> int:
        names = list(columns)
        sql = (
            f"INSERT INTO {_qualified(table)} "
            f"({', '.join(_quote_identifier(name) for name in names)}) VALUES"
        )
        data = [list(columns[name]) for name in names]
        inserted = self._run(
            f"insert into {table}",
            lambda client: client.execute(sql, data, columnar=True),
        )
        return int(inserted or 0)

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()


# ---------------------------------------------------------------------------------------
# Entry points


def _as_target(url: str | ClickHouseTarget) -> ClickHouseTarget:
    return url if isinstance(url, ClickHouseTarget) else parse_clickhouse_url(url)


def open_writer(
    url: str | ClickHouseTarget,
    *,
    migrate_schema: bool = True,
    sql_dir: Path | None = None,
    retry: RetryPolicy | None = None,
) -> ClickHouseWriter:
    """Open a writer for ``url``: connect, health-check (``SELECT 1``), migrate if asked.

    ``retry`` applies to the native backend only (chdb errors are local and not retried).
    """
    target = _as_target(url)
    writer: ClickHouseWriter = (
        ChdbWriter(target) if target.backend == "chdb" else NativeWriter(target, retry=retry)
    )
    log.debug("connected to %s", target)
    if migrate_schema:
        try:
            writer.migrate(sql_dir)
        except BaseException:
            writer.close()
            raise
    return writer


def migrate(url: str | ClickHouseTarget, *, sql_dir: Path | None = None) -> list[str]:
    """Apply pending migrations to ``url``; returns the file names applied now."""
    with open_writer(url, migrate_schema=False) as writer:
        return writer.migrate(sql_dir)
