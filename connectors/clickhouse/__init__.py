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

Where each part lives: :mod:`.url` (targets), :mod:`.rows` (conversions, parameters, SQL),
:mod:`.migrations`, :mod:`.writer` (the interface), :mod:`.chdb` and :mod:`.native` (the
backends), :mod:`.connect` (:func:`open_writer`, :func:`migrate`), :mod:`.errors`. The
retries are :class:`connectors.retry.RetryPolicy`, re-exported here.
"""

from __future__ import annotations

from connectors.clickhouse.chdb import ChdbWriter
from connectors.clickhouse.connect import migrate, open_writer
from connectors.clickhouse.errors import (
    BackendUnavailable,
    ClickHouseError,
    ClickHouseQueryError,
    ClickHouseUnavailable,
    MigrationError,
    SchemaVersionError,
)
from connectors.clickhouse.migrations import (
    DATA_TABLES,
    DEFAULT_SQL_DIR,
    MIGRATIONS_TABLE,
    Migration,
    load_migrations,
)
from connectors.clickhouse.native import (
    TRANSIENT_SERVER_CODES,
    NativeWriter,
    call_with_retries,
    native_error_is_transient,
)
from connectors.clickhouse.rows import (
    KLINE_COLUMNS,
    arrow_type,
    bar_to_row,
    bars_to_columns,
    chdb_param_text,
    columns_to_arrow,
    datetime_to_ms,
    rows_to_columns,
    split_sql_statements,
)
from connectors.clickhouse.url import (
    DATABASE,
    DEFAULT_URL,
    NATIVE_DEFAULT_PORT,
    NATIVE_DEFAULT_SECURE_PORT,
    PROJECT_ROOT,
    ClickHouseTarget,
    parse_clickhouse_url,
)
from connectors.clickhouse.writer import ClickHouseWriter
from connectors.retry import RetryPolicy

__all__ = [
    "DATABASE",
    "DATA_TABLES",
    "DEFAULT_SQL_DIR",
    "DEFAULT_URL",
    "KLINE_COLUMNS",
    "MIGRATIONS_TABLE",
    "NATIVE_DEFAULT_PORT",
    "NATIVE_DEFAULT_SECURE_PORT",
    "PROJECT_ROOT",
    "TRANSIENT_SERVER_CODES",
    "BackendUnavailable",
    "ChdbWriter",
    "ClickHouseError",
    "ClickHouseQueryError",
    "ClickHouseTarget",
    "ClickHouseUnavailable",
    "ClickHouseWriter",
    "Migration",
    "MigrationError",
    "NativeWriter",
    "RetryPolicy",
    "SchemaVersionError",
    "arrow_type",
    "bar_to_row",
    "bars_to_columns",
    "call_with_retries",
    "chdb_param_text",
    "columns_to_arrow",
    "datetime_to_ms",
    "load_migrations",
    "migrate",
    "native_error_is_transient",
    "open_writer",
    "parse_clickhouse_url",
    "rows_to_columns",
    "split_sql_statements",
]
