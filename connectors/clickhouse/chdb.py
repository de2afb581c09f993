"""The embedded backend: chdb, ClickHouse inside this process (``chdb://``)."""

from __future__ import annotations

import fcntl
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from connectors.clickhouse.errors import (
    BackendUnavailable,
    ClickHouseError,
    ClickHouseQueryError,
    ClickHouseUnavailable,
)
from connectors.clickhouse.rows import (
    _import_pyarrow,
    _qualified,
    _quote_identifier,
    chdb_param_text,
    columns_to_arrow,
)
from connectors.clickhouse.url import ClickHouseTarget
from connectors.clickhouse.writer import ClickHouseWriter


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
