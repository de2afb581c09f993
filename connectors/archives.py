"""Reading kline archives: Binance public-data CSV/ZIP files and JSONL recordings.

Pure parsing, no Kafka: every row becomes a validated :class:`~udfs.record.Kline` or a
:class:`Rejection` that says where (``file:line``) and why.

Binance public data (data.binance.vision) publishes ``SYMBOL-INTERVAL-YYYY-MM-DD.zip`` (daily)
and ``SYMBOL-INTERVAL-YYYY-MM.zip`` (monthly), each holding one CSV of the same name with the
12 columns of :data:`BINANCE_COLUMNS`. Older files have no header row, newer ones start with
one; spot files from 2025-01-01 on carry microsecond timestamps instead of milliseconds.
All of these are read here, as plain ``.csv`` or inside a ``.zip`` (one or more CSVs).

Archive rows are final bars: ``is_closed`` is true and ``event_time`` is the bar's
``close_time``, because an archive has no exchange event time and the bar was final the moment
it closed, so its close is the earliest time an exchange could have reported it as final (and
event-time windows downstream see it exactly at the end of its own minute). ``ingest_time`` is
the wall clock when the row is read. Each row is validated by building it through
:func:`~udfs.record.kline_from_dict`, the same rules the bridge and the job apply.

JSONL (``.jsonl``, or gzip-compressed ``.jsonl.gz``) holds one wire record (DESIGN.md) per
line, validated with :func:`~udfs.record.decode_kline`; such records name their own exchange,
symbol and timeframe, so the overrides below do not apply to them.

**Markets** (issue 13). data.binance.vision publishes spot (``data/spot/...``), USDT-M
(``data/futures/um/...``) and COIN-M (``data/futures/cm/...``) klines with the same 12
columns, and a USDT-M file is named exactly like the spot file of its pair. The market of a
CSV is told, first match wins, by: the ``market`` override (``--market spot|perp|future``);
the path (a ``spot``, ``futures/um`` or ``futures/cm`` directory); the symbol
(``BTCUSD_PERP``, ``BTCUSDT_250627``); the layout of the file's first line: a COIN-M header
(``base_asset_volume``) means COIN-M, microsecond times mean spot (only spot archives moved
to µs, in 2025), no header with millisecond times is the historic spot layout. A header row
with millisecond times is how futures archives look, so such a file outside a ``futures/``
path is refused unless ``--market`` says what it is: never guessed.

USDT-M volumes are in the base asset already. COIN-M rows count contracts (100 USD for BTC,
10 USD for other coins): the ``volume``/``taker_buy_volume`` columns are contracts and the
next ones (``base_asset_volume``, ``taker_buy_base_asset_volume``) the base volumes, so a bar
takes the latter as volume and contracts x size as the USD quote volume. Archive bars carry
``provenance`` ``archive``.
"""

from __future__ import annotations

import codecs
import gzip
import lzma
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Final, Literal

from connectors.exchanges.base import to_float, to_int
from connectors.symbols import SymbolInfo, UnknownSymbol, parse_symbol
from udfs.record import (
    EXCHANGES,
    InvalidKline,
    Kline,
    decode_kline,
    kline_from_dict,
    now_ms,
    parse_timestamp_ms,
    series_key,
    timeframe_ms,
)

BINANCE_COLUMNS: Final[tuple[str, ...]] = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
"""Column names of the header row of newer Binance kline CSVs (older files have none)."""
COIN_M_HEADER_COLUMNS: Final[tuple[str, ...]] = (
    "base_asset_volume",
    "taker_buy_base_asset_volume",
)
"""Header columns only COIN-M archives have (their volumes count contracts)."""
REPLAY_MARKETS: Final[tuple[str, ...]] = ("spot", "perp", "future")
_MICROSECOND_DIGITS: Final = 16

SourceKind = Literal["csv", "zip", "jsonl"]

# SYMBOL-INTERVAL[-anything], e.g. BTCUSDT-1m-2024-01-01, BTCUSDT-1m-2024-01, ETHBTC-1h-2025-03,
# BTCUSD_PERP-1m-2024-01-01 (COIN-M), BTCUSDT_240329-1m-2024-01-01 (a dated future).
_ARCHIVE_NAME_RE: Final = re.compile(
    r"^(?P<symbol>[A-Za-z0-9]{2,40}(?:_[A-Za-z0-9]{4,6})?)-(?P<interval>[0-9]{1,3}(?:mo|s|m|h|d|w|M))(?:-|$)"
)
_SUFFIXES: Final[dict[str, SourceKind]] = {
    ".csv": "csv",
    ".zip": "zip",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
}
_KNOWN_SUFFIXES: Final = ", ".join(_SUFFIXES)
_NON_FINITE_WORDS: Final = frozenset({"nan", "inf", "infinity"})
_ROW_ERRORS: Final = (InvalidKline, UnicodeDecodeError)
# What a damaged or unreadable file raises while it is opened or read (zipfile raises
# RuntimeError for an encrypted member and NotImplementedError for an unknown compression).
_READ_ERRORS: Final = (
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    RuntimeError,
)


class ArchiveError(Exception):
    """A file that cannot be read at all (missing, not a file, corrupt zip or gzip)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ReplayConfigError(ValueError):
    """Files whose series cannot be determined; raised before anything is read or produced."""


@dataclass(frozen=True, slots=True)
class Series:
    """The series every row of one archive CSV belongs to."""

    exchange: str
    symbol: str
    raw_symbol: str
    timeframe: str
    market: str = "spot"
    margin: str = "spot"
    base_multiplier: int = 1
    contract_size: float = 1.0

    @property
    def key(self) -> str:
        """The series key (Kafka key) of its bars."""
        return series_key(self.exchange, self.symbol, self.timeframe)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row that is not a valid bar: where it is, why, and its raw bytes."""

    location: str
    reason: str
    raw: bytes
    key: str | None = None

    def describe(self) -> str:
        """``"file:line: reason"``."""
        return f"{self.location}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ArchiveSource:
    """One input file and how to read it.

    ``series`` is set for a plain CSV; ``members`` lists a zip's CSVs with their series (empty
    when the zip could not be opened while planning: reading it then reports the error).
    JSONL files need neither.
    """

    path: Path
    kind: SourceKind
    series: Series | None = None
    members: tuple[tuple[str, Series], ...] = ()


def source_kind(path: PurePath) -> SourceKind | None:
    """``csv``, ``zip`` or ``jsonl`` from the file name's suffix, else None."""
    name = path.name.lower()
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return kind
    return None


def parse_archive_name(name: str) -> tuple[str, str] | None:
    """``(raw_symbol, interval)`` from a Binance archive name such as ``BTCUSDT-1m-2024-01-01.zip``.

    Directories and the suffix are ignored; returns None when the name has another shape.
    """
    stem = PurePath(name).name.split(".", 1)[0]
    match = _ARCHIVE_NAME_RE.match(stem)
    if match is None:
        return None
    return match["symbol"].upper(), match["interval"]


def resolve_series(
    name: str,
    *,
    exchange: str | None = None,
    symbol: str | None = None,
    timeframe: str | None = None,
    label: str | None = None,
    market: str | None = None,
    head: Sequence[bytes] | None = None,
) -> Series:
    """The series of an archive CSV: the flags win, else the file name says it.

    ``exchange`` defaults to ``binance``; ``symbol`` is the exchange's raw spelling (normalised
    through connectors/symbols.py). ``market`` (spot, perp, future) overrides what the path
    (``name``), the symbol and ``head`` (the file's first lines, when known) tell
    (module docstring). Raises ReplayConfigError when the symbol, timeframe or market is
    unknown or cannot be told; its message starts with ``label`` (default: the name).
    """
    label = label or name
    parsed = parse_archive_name(name)
    exchange = (exchange or "binance").strip().lower()
    if exchange not in EXCHANGES:
        known = ", ".join(sorted(EXCHANGES))
        raise ReplayConfigError(f"{label}: unknown exchange {exchange!r} (expected one of {known})")
    raw_symbol = symbol or (parsed[0] if parsed else None)
    interval = timeframe or (parsed[1] if parsed else None)
    if raw_symbol is None or interval is None:
        raise ReplayConfigError(
            f"{label}: cannot tell the symbol and timeframe from the file name (expected "
            "SYMBOL-INTERVAL-DATE.csv/.zip like BTCUSDT-1m-2024-01-01.zip); "
            "pass --symbol and --timeframe"
        )
    try:
        timeframe_ms(interval)
    except InvalidKline as exc:
        raise ReplayConfigError(f"{label}: {exc.reason}") from None
    margin = _archive_margin(name, raw_symbol, market, head, label)
    try:
        info = parse_symbol(exchange, raw_symbol, margin)
    except UnknownSymbol as exc:
        hint = "--symbol BASE-QUOTE" if margin == "spot" else "--symbol and --market"
        raise ReplayConfigError(
            f"{label}: cannot normalise the {exchange} symbol: {exc} (use {hint})"
        ) from None
    if market is not None and info.market != market:
        raise ReplayConfigError(
            f"{label}: {info.raw_symbol} is a {info.market} instrument ({info.symbol}), "
            f"not {market}"
        )
    return series_of(info, interval)


def series_of(info: SymbolInfo, timeframe: str) -> Series:
    """The archive series of a normalised symbol."""
    return Series(
        info.exchange,
        info.symbol,
        info.raw_symbol,
        timeframe,
        info.market,
        info.margin,
        info.base_multiplier,
        info.contract_size,
    )


def _archive_margin(
    name: str, raw_symbol: str, market: str | None, head: Sequence[bytes] | None, label: str
) -> str:
    """spot, linear (USDT-M) or inverse (COIN-M) of one archive CSV (module docstring)."""
    upper = raw_symbol.strip().upper()
    pair, underscore, _ = upper.partition("_")
    coin_margined = pair.endswith("USD")
    if market is not None:
        if market not in REPLAY_MARKETS:
            raise ReplayConfigError(
                f"{label}: --market {market!r} (expected {', '.join(REPLAY_MARKETS)})"
            )
        if market == "spot":
            return "spot"
        return "inverse" if coin_margined and underscore else "linear"
    parts = [part.lower() for part in PurePath(name).parts[:-1]]
    for index, part in enumerate(parts[:-1]):
        if part == "futures" and parts[index + 1] in ("um", "cm"):
            return "linear" if parts[index + 1] == "um" else "inverse"
    if "spot" in parts:
        return "spot"
    if underscore:
        return "inverse" if coin_margined else "linear"
    layout = file_layout(head or [])
    if layout == "coin-m":
        return "inverse"
    if layout == "futures-like":
        raise ReplayConfigError(
            f"{label}: cannot tell the market: a header row with millisecond times is the "
            "layout of futures archives (data/futures/um|cm/...), but the path does not say "
            "which; pass --market spot, perp or future"
        )
    return "spot"


def file_layout(head: Sequence[bytes]) -> str:
    """What the first lines of a Binance kline CSV look like: ``coin-m`` (a COIN-M header),
    ``futures-like`` (a header, then millisecond times) or ``spot`` (microsecond times, or no
    header at all: the historic spot layout)."""
    lines = [line.lstrip(codecs.BOM_UTF8).strip() for line in head if line.strip()]
    if not lines:
        return "spot"
    fields = [f.strip().strip('"').lower() for f in lines[0].decode("utf-8", "replace").split(",")]
    if fields[0].lstrip("\ufeff") != BINANCE_COLUMNS[0]:
        return "spot"
    if any(column in fields for column in COIN_M_HEADER_COLUMNS):
        return "coin-m"
    if len(lines) > 1:
        first_time = lines[1].split(b",", 1)[0].strip().lstrip(b"+-")
        if len(first_time) >= _MICROSECOND_DIGITS:
            return "spot"
    return "futures-like"


def read_head(path: Path, member: str | None = None, count: int = 2) -> list[bytes]:
    """The first ``count`` lines of a CSV (or of a zip's member); empty when unreadable
    (reading the file later reports why)."""
    try:
        if member is None:
            with open(path, "rb") as handle:
                return [line for _, line in zip(range(count), handle, strict=False)]
        with zipfile.ZipFile(path) as archive, archive.open(member) as handle:
            return [line for _, line in zip(range(count), handle, strict=False)]
    except _READ_ERRORS:
        return []


def discover_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Expand the command line's paths into input files, in replay order.

    A directory is walked recursively for ``*.csv``, ``*.zip``, ``*.jsonl`` and ``*.jsonl.gz``
    (hidden entries skipped), sorted by path so that daily files of a series come in date
    order. Explicit paths are kept in the order given, even when missing (reading them then
    reports the error). Returns the files and a list of problems (explicit files of an
    unsupported type).
    """
    files: list[Path] = []
    problems: list[str] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = [
                candidate
                for candidate in path.rglob("*")
                if candidate.is_file()
                and source_kind(candidate) is not None
                and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
            ]
            files.extend(sorted(found))
        elif path.exists() and source_kind(path) is None:
            problems.append(f"{path}: unsupported file type (expected {_KNOWN_SUFFIXES})")
        else:
            files.append(path)
    return files, problems


def plan_sources(
    paths: Iterable[str | Path],
    *,
    exchange: str | None = None,
    symbol: str | None = None,
    timeframe: str | None = None,
    market: str | None = None,
) -> list[ArchiveSource]:
    """Every input file with its series, checked before anything is read.

    Raises ReplayConfigError listing every file whose type, symbol, timeframe or market is
    refused. A zip's CSVs take their series from their own names (falling back to the zip's
    name); the market from ``market``, else the path, the symbol or the first lines.
    """
    files, problems = discover_files(paths)
    sources: list[ArchiveSource] = []
    for path in files:
        kind = source_kind(path)
        try:
            if kind == "jsonl":
                sources.append(ArchiveSource(path, "jsonl"))
            elif kind == "zip":
                members = _plan_zip_members(
                    path, exchange=exchange, symbol=symbol, timeframe=timeframe, market=market
                )
                sources.append(ArchiveSource(path, "zip", members=members))
            else:
                # A missing file of no known type is planned as CSV; reading it reports it.
                series = resolve_series(
                    str(path),
                    exchange=exchange,
                    symbol=symbol,
                    timeframe=timeframe,
                    label=str(path),
                    market=market,
                    head=read_head(path),
                )
                sources.append(ArchiveSource(path, "csv", series=series))
        except ReplayConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ReplayConfigError("\n".join(problems))
    return sources


def _plan_zip_members(
    path: Path,
    *,
    exchange: str | None,
    symbol: str | None,
    timeframe: str | None,
    market: str | None,
) -> tuple[tuple[str, Series], ...]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [
                info.filename
                for info in archive.infolist()
                if not info.is_dir() and info.filename.lower().endswith(".csv")
            ]
    except _READ_ERRORS:
        return ()  # unreadable: iter_source reports it when its turn comes
    members: list[tuple[str, Series]] = []
    for name in names:
        # The member's own name, in the zip's directory (which may say the market).
        named_by = (
            str(path.with_name(PurePath(name).name)) if parse_archive_name(name) else str(path)
        )
        series = resolve_series(
            named_by,
            exchange=exchange,
            symbol=symbol,
            timeframe=timeframe,
            label=f"{path}!{name}",
            market=market,
            head=read_head(path, name),
        )
        members.append((name, series))
    return tuple(members)


def csv_row_to_kline(fields: Sequence[str], series: Series, ingest_time: int) -> Kline:
    """Build and validate one bar from the 12 columns of a Binance kline CSV row.

    Raises InvalidKline with the reason (column count, a number that does not parse, or any
    rule of :func:`~udfs.record.kline_from_dict`).
    """
    if len(fields) != len(BINANCE_COLUMNS):
        raise InvalidKline(f"expected {len(BINANCE_COLUMNS)} columns, got {len(fields)}")
    open_time = parse_timestamp_ms(fields[0], "open_time")
    close_time = parse_timestamp_ms(fields[6], "close_time")
    volume = _number(fields[5], "volume")
    quote_volume = _number(fields[7], "quote_volume")
    taker_buy_volume = _number(fields[9], "taker_buy_volume")
    taker_buy_quote_volume = _number(fields[10], "taker_buy_quote_volume")
    if series.margin == "inverse":
        # COIN-M: volume columns count contracts, the next ones are base-asset volumes.
        volume, quote_volume = quote_volume, volume * series.contract_size
        taker_buy_volume, taker_buy_quote_volume = (
            taker_buy_quote_volume,
            taker_buy_volume * series.contract_size,
        )
    return kline_from_dict(
        {
            "exchange": series.exchange,
            "symbol": series.symbol,
            "raw_symbol": series.raw_symbol,
            "timeframe": series.timeframe,
            "open_time": open_time,
            "close_time": close_time,
            "open": _number(fields[1], "open"),
            "high": _number(fields[2], "high"),
            "low": _number(fields[3], "low"),
            "close": _number(fields[4], "close"),
            "volume": volume,
            "quote_volume": quote_volume,
            "trades": _integer(fields[8], "trades"),
            "taker_buy_volume": taker_buy_volume,
            "taker_buy_quote_volume": taker_buy_quote_volume,
            "is_closed": True,
            "event_time": close_time,
            "ingest_time": ingest_time,
            "market": series.market,
            "base_multiplier": series.base_multiplier,
            "provenance": "archive",
        }
    )


def _number(text: str, name: str) -> float:
    # ASCII decimals only: float() alone would take '٣' and '1_000'. 'nan' and 'inf' are
    # passed on as floats so that the record rejects them as "not a finite number".
    if text.strip().lower().lstrip("+-") in _NON_FINITE_WORDS:
        return float(text)
    return to_float(text, name)


def _integer(text: str, name: str) -> int:
    # ASCII digits only: int() alone would take '٣' and raise on 5000 digits.
    return to_int(text, name)


def _is_header(first_field: str) -> bool:
    return first_field.strip().lstrip("\ufeff").strip().strip('"').lower() == BINANCE_COLUMNS[0]


def _without_bom(number: int, raw: bytes) -> bytes:
    """The first line of a file without its UTF-8 byte-order mark (spreadsheet exports)."""
    return raw[len(codecs.BOM_UTF8) :] if number == 1 and raw.startswith(codecs.BOM_UTF8) else raw


def iter_csv_rows(
    lines: Iterable[bytes],
    *,
    location: str,
    series: Series,
    clock: Callable[[], int] = now_ms,
) -> Iterator[Kline | Rejection]:
    """Bars (or rejections) from the lines of one Binance kline CSV, in file order.

    A header row (first column ``open_time``, after a UTF-8 byte-order mark if any) and blank
    lines are skipped; rejections are located as ``location:line`` (1-based, counting every
    line).
    """
    for number, line in enumerate(lines, start=1):
        raw = _without_bom(number, line.rstrip(b"\r\n"))
        if not raw.strip():
            continue
        try:
            fields = raw.decode("utf-8").split(",")
            if _is_header(fields[0]):
                continue
            yield csv_row_to_kline(fields, series, clock())
        except _ROW_ERRORS as exc:
            yield Rejection(f"{location}:{number}", _reason(exc), raw, series.key)


def iter_jsonl_rows(lines: Iterable[bytes], *, location: str) -> Iterator[Kline | Rejection]:
    """Bars (or rejections) from JSONL lines, one wire record each; blank lines are skipped."""
    for number, line in enumerate(lines, start=1):
        raw = _without_bom(number, line.rstrip(b"\r\n"))
        if not raw.strip():
            continue
        try:
            yield decode_kline(raw)
        except InvalidKline as exc:
            yield Rejection(f"{location}:{number}", exc.reason, raw)


def _reason(exc: Exception) -> str:
    if isinstance(exc, InvalidKline):
        return exc.reason
    return "not UTF-8 text"


def iter_source(
    source: ArchiveSource, *, clock: Callable[[], int] = now_ms
) -> Iterator[Kline | Rejection]:
    """Every row of one input file, in file order (zip members in archive order).

    Raises ArchiveError when the file cannot be read; that can happen after some rows were
    yielded (a zip's CRC is only checked at the end of each member).
    """
    path = str(source.path)
    try:
        if source.kind == "jsonl":
            opener = gzip.open if source.path.name.lower().endswith(".gz") else open
            with opener(source.path, "rb") as handle:
                yield from iter_jsonl_rows(handle, location=path)
        elif source.kind == "zip":
            yield from _iter_zip(source, clock)
        else:
            if source.series is None:
                raise ArchiveError(path, "no series planned for this CSV")
            with open(source.path, "rb") as handle:
                yield from iter_csv_rows(handle, location=path, series=source.series, clock=clock)
    except _READ_ERRORS as exc:
        raise ArchiveError(path, _describe_read_error(exc)) from exc


def _iter_zip(source: ArchiveSource, clock: Callable[[], int]) -> Iterator[Kline | Rejection]:
    path = str(source.path)
    with zipfile.ZipFile(source.path) as archive:
        planned = dict(source.members)
        names = [
            info.filename
            for info in archive.infolist()
            if not info.is_dir() and info.filename.lower().endswith(".csv")
        ]
        if not names:
            raise ArchiveError(path, "the zip holds no .csv file")
        for name in names:
            series = planned.get(name)
            if series is None:
                raise ArchiveError(path, f"{name}: no series planned for this member")
            with archive.open(name) as member:
                yield from iter_csv_rows(
                    member,
                    location=f"{path}!{name}",
                    series=series,
                    clock=clock,
                )


def _describe_read_error(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, zipfile.BadZipFile):
        return f"corrupt zip: {exc}"
    if isinstance(exc, gzip.BadGzipFile | EOFError | zlib.error):
        return f"corrupt compressed data: {exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
