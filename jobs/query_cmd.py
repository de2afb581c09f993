"""``klineflow query klines|profile|indicators|signals``: read one series back from ClickHouse.

Every value from the command line travels as a ClickHouse query parameter; the SQL text
is built only from the fixed table specs below. Rows are deduplicated with ``FINAL``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from connectors.clickhouse import DEFAULT_URL, KLINE_COLUMNS
from jobs.cliutil import env_flag


@dataclass(frozen=True, slots=True)
class TableSpec:
    """How to read one table: its time column (for --start/--end) and its columns."""

    table: str
    time_column: str
    columns: tuple[str, ...]
    time_columns: tuple[str, ...]


SPECS: Final[Mapping[str, TableSpec]] = {
    "klines": TableSpec(
        "klines",
        "open_time",
        # Every klines column but the series columns (they are the query's filter; market
        # follows from the symbol), updated_at (bookkeeping) and provenance (--provenance).
        tuple(
            column
            for column in KLINE_COLUMNS
            if column
            not in ("exchange", "symbol", "market", "timeframe", "updated_at", "provenance")
        ),
        ("open_time", "close_time"),
    ),
    "profile": TableSpec(
        "volume_profile",
        "window_start",
        (
            "window_start",
            "window_end",
            "row_size",
            "row_low",
            "volume",
            "buy_volume",
            "poc",
            "value_area_low",
            "value_area_high",
            "vwap",
            "total_volume",
            "version",
        ),
        ("window_start", "window_end"),
    ),
    "indicators": TableSpec(
        "indicators",
        "open_time",
        (
            "open_time",
            "rsi_14",
            "macd",
            "macd_signal",
            "macd_hist",
            "bb_middle",
            "bb_upper",
            "bb_lower",
            "version",
        ),
        ("open_time",),
    ),
    "signals": TableSpec(
        "signals",
        "open_time",
        (
            "open_time",
            "source",
            "pattern",
            "recommendation",
            "confidence",
            "key_levels",
            "latency_ms",
            "tokens",
            "cached",
            "degraded",
            "version",
        ),
        ("open_time",),
    ),
}
FORMATS: Final = ("table", "json", "csv")
# ClickHouse takes LIMIT as a UInt64; anything above int64 is refused before it is sent.
MAX_LIMIT: Final = 2**63 - 1


def build_query(
    spec: TableSpec, *, start_ms: int | None, end_ms: int | None, limit: int | None
) -> tuple[str, dict[str, Any]]:
    """The SQL (fixed text, ``{name:Type}`` placeholders) and the parameters of a query.

    Filters on exchange, symbol, timeframe and ``start_ms <= time < end_ms``; times come back
    as epoch ms; the newest ``limit`` rows when limited, always oldest first.
    """
    selected = ", ".join(
        f"toUnixTimestamp64Milli(t.{name}) AS {name}"
        if name in spec.time_columns
        else f"t.{name} AS {name}"
        for name in spec.columns
    )
    conditions = [
        "t.exchange = {exchange:String}",
        "t.symbol = {symbol:String}",
        "t.timeframe = {timeframe:String}",
    ]
    params: dict[str, Any] = {}
    if start_ms is not None:
        conditions.append(f"t.{spec.time_column} >= fromUnixTimestamp64Milli({{start_ms:Int64}})")
        params["start_ms"] = start_ms
    if end_ms is not None:
        conditions.append(f"t.{spec.time_column} < fromUnixTimestamp64Milli({{end_ms:Int64}})")
        params["end_ms"] = end_ms
    sql = (
        f"SELECT {selected} FROM crypto_kline.{spec.table} AS t FINAL "
        f"WHERE {' AND '.join(conditions)} ORDER BY t.{spec.time_column}"
    )
    if limit is not None:
        sql = f"SELECT * FROM ({sql} DESC LIMIT {{limit:UInt64}}) ORDER BY {spec.time_column}"
        params["limit"] = limit
    return sql, params


def parse_time(text: str) -> int:
    """Epoch ms from ISO-8601 (``2025-01-01``, ``2025-01-01T12:00Z``) or epoch s/ms/us.

    Anything else (a 400-digit number, Unicode digits) raises ArgumentTypeError with the
    reason, which argparse prints as one error line.
    """
    from udfs.record import InvalidKline, parse_timestamp_ms

    try:
        return parse_timestamp_ms(text, "time")
    except InvalidKline as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_cell(item) for item in value) + "]"
    return str(value)


def format_rows(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    time_columns: Sequence[str],
    output: str,
) -> str:
    """Rows as ``table`` (aligned text, times ISO-8601 UTC), ``json`` (one array, times in
    epoch ms) or ``csv`` (header row, times ISO-8601 UTC)."""
    if output == "json":
        return orjson.dumps(list(rows), option=orjson.OPT_INDENT_2).decode() + "\n"

    def shown(row: Mapping[str, Any], name: str) -> str:
        value = row.get(name)
        return _iso(int(value)) if name in time_columns and value is not None else _cell(value)

    table = [[shown(row, name) for name in columns] for row in rows]
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(table)
        return buffer.getvalue()
    widths = [max([len(name)] + [len(line[i]) for line in table]) for i, name in enumerate(columns)]
    lines = ["  ".join(name.ljust(width) for name, width in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += [
        "  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in table
    ]
    return "\n".join(lines) + "\n"


def add_series_arguments(parser: argparse.ArgumentParser) -> None:
    """--clickhouse-url, --exchange, --symbol, --timeframe, --start, --end, --limit."""
    env_flag(
        parser,
        "--clickhouse-url",
        env="CLICKHOUSE_URL",
        default=DEFAULT_URL,
        help="chdb:///path (embedded) or clickhouse://user:pass@host:9000/crypto_kline",
        secret=True,
    )
    parser.add_argument("--exchange", required=True, help="binance, okx or bybit")
    parser.add_argument("--symbol", required=True, help="canonical symbol, e.g. BTC-USDT")
    parser.add_argument("--timeframe", default="1m", help="1m 5m 15m 1h 4h 1d (default: 1m)")
    parser.add_argument(
        "--start",
        type=parse_time,
        default=None,
        help="first time included: ISO-8601 UTC or epoch s/ms",
    )
    parser.add_argument(
        "--end",
        type=parse_time,
        default=None,
        help="first time excluded: ISO-8601 UTC or epoch s/ms",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many (newest) rows")


def register(subparsers: Any) -> None:
    """Add the ``query`` command."""
    parser = subparsers.add_parser(
        "query",
        help="read klines, volume profiles, indicators or signals back from ClickHouse",
        description="Read one series back from ClickHouse (deduplicated with FINAL).",
    )
    parser.add_argument("what", choices=sorted(SPECS), help="what to read")
    add_series_arguments(parser)
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument(
        "--provenance",
        action="store_true",
        help="klines: also show where each bar came from (ws, rest, archive; a roll-up is ws "
        "only when every minute was live, else mixed; unknown for bars stored before it was "
        "recorded)",
    )
    parser.set_defaults(func=run_query)


def with_provenance(spec: TableSpec) -> TableSpec:
    """The klines spec with the ``provenance`` column after ``is_closed``."""
    at = spec.columns.index("is_closed") + 1
    columns = (*spec.columns[:at], "provenance", *spec.columns[at:])
    return TableSpec(spec.table, spec.time_column, columns, spec.time_columns)


def run_query(args: argparse.Namespace) -> int:
    """Print the rows of one series; 1 with a message on a ClickHouse or argument error."""
    from connectors.clickhouse import ClickHouseError, open_writer

    spec = SPECS[args.what]
    if getattr(args, "provenance", False):
        if args.what != "klines":
            print("klineflow query: --provenance applies to klines only", file=sys.stderr)
            return 2
        spec = with_provenance(spec)
    if args.limit is not None and not 0 <= args.limit <= MAX_LIMIT:
        print(f"klineflow query: --limit must be from 0 to {MAX_LIMIT}", file=sys.stderr)
        return 2
    sql, params = build_query(spec, start_ms=args.start, end_ms=args.end, limit=args.limit)
    params.update(exchange=args.exchange, symbol=args.symbol, timeframe=args.timeframe)
    try:
        with open_writer(args.clickhouse_url, migrate_schema=False) as writer:
            rows = writer.query(sql, params)
    except (ClickHouseError, ValueError) as exc:
        print(f"klineflow query: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(format_rows(rows, spec.columns, spec.time_columns, args.format))
    return 0
