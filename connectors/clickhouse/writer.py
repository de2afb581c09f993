"""The interface both ClickHouse backends implement (:class:`ClickHouseWriter`)."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from connectors.clickhouse.errors import ClickHouseQueryError, SchemaVersionError
from connectors.clickhouse.migrations import (
    DATA_TABLES,
    MIGRATIONS_TABLE,
    Migration,
    load_migrations,
)
from connectors.clickhouse.rows import (
    _KLINE_TIME_COLUMNS,
    KLINE_COLUMNS,
    _qualified,
    _quote_identifier,
    bars_to_columns,
    rows_to_columns,
)
from connectors.clickhouse.url import DATABASE, ClickHouseTarget
from udfs.record import VersionedBar, now_ms

log = logging.getLogger(__name__)


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
