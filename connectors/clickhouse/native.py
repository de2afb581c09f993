"""The server backend: the native protocol through clickhouse-driver (``clickhouse://``),
with bounded retries of dropped connections and transient server errors.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, Final, TypeVar

from connectors import retry
from connectors.clickhouse.errors import (
    BackendUnavailable,
    ClickHouseError,
    ClickHouseQueryError,
    ClickHouseUnavailable,
)
from connectors.clickhouse.rows import _qualified, _quote_identifier
from connectors.clickhouse.url import ClickHouseTarget
from connectors.clickhouse.writer import ClickHouseWriter
from connectors.retry import Outage, RetryPolicy, first_line

T = TypeVar("T")


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


class _DriverConnectionWarnings(logging.Filter):
    """Drops clickhouse-driver's warnings about each failed connection attempt ("Failed to
    connect to ...", with a full traceback each, every retry): the writer logs the outage
    once instead (:class:`connectors.retry.Outage`). Errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING


_DRIVER_CONNECTION_LOGGER: Final = "clickhouse_driver.connection"


def _quiet_driver_connection_warnings() -> None:
    """Install :class:`_DriverConnectionWarnings` on the driver's connection logger, once."""
    driver_log = logging.getLogger(_DRIVER_CONNECTION_LOGGER)
    if not any(isinstance(f, _DriverConnectionWarnings) for f in driver_log.filters):
        driver_log.addFilter(_DriverConnectionWarnings())


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
    ``retry`` (inserts are idempotent: ReplacingMergeTree keeps one row per version). A
    server that is down is logged once when calls start failing ("ClickHouse at <url> is
    unreachable (<error>); calls wait ...") and once when it answers again, not per retry;
    when ``retry`` gives up, the error (:class:`ClickHouseUnavailable`) is that one line.
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
        _quiet_driver_connection_warnings()
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._outage = Outage("ClickHouse", target.redacted_url)
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
                outage=self._outage,
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
