"""Row conversion for ClickHouse: bars to rows and columns, Arrow types, query parameters,
SQL statement splitting and identifier quoting.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from types import ModuleType
from typing import Any, Final

from connectors.clickhouse.errors import BackendUnavailable, ClickHouseError, MigrationError
from connectors.clickhouse.url import DATABASE
from udfs.record import VersionedBar

# Column order of crypto_kline.klines as the writers send it.
KLINE_COLUMNS: Final[tuple[str, ...]] = (
    "exchange",
    "symbol",
    "market",
    "base_multiplier",
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
    "provenance",
    "bars_present",
    "bars_expected",
    "version",
    "updated_at",
)
# The columns copied from the Kline record (the rest come from the VersionedBar and the sink).
_KLINE_FIELDS: Final = KLINE_COLUMNS[: KLINE_COLUMNS.index("bars_present")]
_KLINE_TIME_COLUMNS: Final = ("open_time", "close_time", "updated_at")

_IDENTIFIER_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


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


def _import_pyarrow() -> ModuleType:
    try:
        return importlib.import_module("pyarrow")
    except ImportError:
        raise BackendUnavailable("the chdb backend needs pyarrow: pip install pyarrow") from None
