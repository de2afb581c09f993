"""The kline record of DESIGN.md: type, validation, timestamp normalisation and orjson codec.

One bar per message on ``klines.raw``; the Kafka key is ``"{exchange}:{symbol}:{timeframe}"``.
Everything here is plain Python so that the bridge, ``replay``, the Flink job and the tests
share one definition of what a valid bar is.
"""

from __future__ import annotations

import math
import re
import reprlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Final

import orjson

TIMEFRAME_MS: Final[dict[str, int]] = {
    "1m": 60_000,
    "5m": 5 * 60_000,
    "15m": 15 * 60_000,
    "1h": 60 * 60_000,
    "4h": 4 * 60 * 60_000,
    "1d": 24 * 60 * 60_000,
}
EXCHANGES: Final[frozenset[str]] = frozenset({"binance", "okx", "bybit"})

# Plausible epoch-ms range: a value outside it in every unit is rejected, never guessed.
MIN_EPOCH_MS: Final[int] = 1_230_768_000_000  # 2009-01-01T00:00:00Z
MAX_EPOCH_MS: Final[int] = 4_102_444_800_000  # 2100-01-01T00:00:00Z

# --- Validation bounds (README.md, "Validation bounds", gives each one with its reason) ------
# A canonical symbol names the instrument: BASE-QUOTE (spot), BASE-QUOTE-PERP (perpetual) or
# BASE-QUOTE-YYMMDD (dated future), base and quote 1..20 upper-case ASCII letters or digits,
# matched whole (re.fullmatch: a trailing newline is not "the end"); so at most 48 characters.
MAX_SYMBOL_CHARS: Final[int] = 48
_SYMBOL_RE: Final = re.compile(
    r"[A-Z0-9]{1,20}-[A-Z0-9]{1,20}(?:-PERP|-[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01]))?"
)
# The market of an instrument (DESIGN.md); it always agrees with the symbol's suffix.
MARKETS: Final[tuple[str, ...]] = ("spot", "perp", "future")
# What delivered a bar. ``unknown`` is the default of records made before the field existed;
# ``mixed`` marks a roll-up whose minutes did not all come from the live stream.
PROVENANCES: Final[tuple[str, ...]] = ("ws", "rest", "archive", "unknown", "mixed")
DEFAULT_PROVENANCE: Final[str] = "unknown"
# base_multiplier: units of the base asset per unit named in the symbol (1000 for 1000PEPE).
# Real ones are powers of ten (1000PEPE, 1000000MOG, 1MBABYDOGE); at most 10**9.
MAX_BASE_MULTIPLIER: Final[int] = 10**9
_BASE_MULTIPLIERS: Final = frozenset(10**power for power in range(10))
# How far the implied price quote_volume / volume may lie outside [low, high], relative: a bar
# priced in contracts or in the wrong asset is off by a factor of 100 and more, while exchanges'
# rounding of small volumes moves it by far less than this.
VWAP_TOLERANCE: Final[float] = 0.1
# The exchange's own spelling (BTCUSDT, BTC-USDT-SWAP, BTCUSD_PERP): ASCII, at most 64.
MAX_RAW_SYMBOL_CHARS: Final[int] = 64
_RAW_SYMBOL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
# A wire record is about 500 bytes; anything this long is not one (and is not parsed).
MAX_MESSAGE_BYTES: Final[int] = 16 * 1024
# Timestamp strings: an ISO-8601 time or epoch digits fit easily.
MAX_TIMESTAMP_CHARS: Final[int] = 64
# Prices: no instrument is quoted near 1e15 (BTC in Indonesian rupiah is ~1.6e9).
MAX_PRICE: Final[float] = 1e15
# Base and quote volumes of one bar. A 1d roll-up sums 1440 bars and the VWAP sums
# price x volume over them: 1440 * 1e15 * 1e24 ~ 1.4e42, far below float64's 1.8e308.
MAX_VOLUME: Final[float] = 1e24
# Trades of one bar: 2**52, so that a sum of 2048 bars (> the 1440 of a 1d roll-up) stays
# within 2**63 - 1 (ClickHouse UInt64, Python/JSON int64) and one bar's count is exact even
# where JSON numbers are read as doubles.
MAX_TRADES: Final[int] = 2**52
# How far a bar may lie in the future: open_time and event_time at most this far ahead of
# ingest_time, and ingest_time at most this far ahead of the validating clock. A bar from the
# far future would otherwise become its series' newest bar and freeze it (every later real bar
# "late"), or pin its version above every later correction.
MAX_AHEAD_MS: Final[int] = 60 * 60_000  # 1 hour
# Reasons quote offending values; a quote is cut to this many characters.
_QUOTE_CHARS: Final[int] = 40
_NUMERIC_TEXT_RE: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")

FIELDS: Final[tuple[str, ...]] = (
    "exchange",
    "symbol",
    "raw_symbol",
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
    "event_time",
    "ingest_time",
    "market",
    "base_multiplier",
    "provenance",
)
# The fields a record may omit (DESIGN.md: older recordings and producers lack them) and the
# value each then takes; ``market`` follows from the symbol.
OPTIONAL_FIELDS: Final[tuple[str, ...]] = ("market", "base_multiplier", "provenance")
REQUIRED_FIELDS: Final[tuple[str, ...]] = tuple(n for n in FIELDS if n not in OPTIONAL_FIELDS)
# The fields that hold strings (a store that writes other values as JSON literals, such as
# the Redis hash, decodes these as they are).
STRING_FIELDS: Final[frozenset[str]] = frozenset(
    {"exchange", "symbol", "raw_symbol", "timeframe", "market", "provenance"}
)
_FIELD_SET: Final = frozenset(FIELDS)
# A Kline's values in field order (FIELDS is also the dataclass's field order).
_KLINE_VALUES: Final = attrgetter(*FIELDS)
_REQUIRED_SET: Final = frozenset(REQUIRED_FIELDS)
# isinstance() with a tuple: ``int | float`` would build a union object on every call.
_NUMBER_TYPES: Final = (int, float)
_WIRE_TYPES: Final = (bytes, bytearray, memoryview, str)
# Relative slack for "taker buy volume <= volume": exchanges round each side separately.
_SUM_TOLERANCE: Final = 1e-9


class InvalidKline(ValueError):
    """A record that breaks the contract. ``reason`` is short, stable and human readable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Kline:
    """One OHLCV bar, exactly the fields of the wire record (DESIGN.md).

    ``market``, ``base_multiplier`` and ``provenance`` come last with their defaults, so code
    written before they existed still builds spot bars; a perpetual or future must say its
    market (:func:`validate_kline` checks that it agrees with the symbol).
    """

    exchange: str
    symbol: str
    raw_symbol: str
    timeframe: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float | None
    trades: int | None
    taker_buy_volume: float | None
    taker_buy_quote_volume: float | None
    is_closed: bool
    event_time: int
    ingest_time: int
    market: str = "spot"
    base_multiplier: int = 1
    provenance: str = DEFAULT_PROVENANCE

    def __reduce__(self) -> tuple[type[Kline], tuple[Any, ...]]:
        # Pickle as constructor arguments: every hop between Flink operators pickles bars,
        # and dataclasses' default slot state (a fields() walk per object) is twice as slow.
        return (Kline, _KLINE_VALUES(self))

    @property
    def series_key(self) -> str:
        """The Kafka key and Flink key of this bar's series."""
        return series_key(self.exchange, self.symbol, self.timeframe)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict in contract field order."""
        return dict(zip(FIELDS, _KLINE_VALUES(self), strict=True))

    def values_fingerprint(self) -> tuple[Any, ...]:
        """The market values of the bar: two updates with equal fingerprints carry the same data."""
        return (
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.quote_volume,
            self.trades,
            self.taker_buy_volume,
            self.taker_buy_quote_volume,
        )


def series_key(exchange: str, symbol: str, timeframe: str) -> str:
    """``"{exchange}:{symbol}:{timeframe}"``, the per-series key used on Kafka and in Flink."""
    return f"{exchange}:{symbol}:{timeframe}"


def market_of_symbol(symbol: str) -> str:
    """The market a canonical symbol names: ``perp`` (``-PERP``), ``future`` (``-YYMMDD``), else
    ``spot``. Does not validate the symbol."""
    if symbol.endswith("-PERP"):
        return "perp"
    if symbol.count("-") == 2:
        return "future"
    return "spot"


def timeframe_ms(timeframe: str) -> int:
    """Length of a timeframe in milliseconds; raises InvalidKline for an unknown one."""
    length = TIMEFRAME_MS.get(timeframe) if isinstance(timeframe, str) else None
    if length is None:
        raise InvalidKline(
            f"unknown timeframe {quote(timeframe)} (expected one of {', '.join(TIMEFRAME_MS)})"
        )
    return length


def align_open_time(ts_ms: int, timeframe: str) -> int:
    """The open time of the UTC-epoch-aligned bar of ``timeframe`` that contains ``ts_ms``."""
    length = timeframe_ms(timeframe)
    return ts_ms - ts_ms % length


def parse_timestamp_ms(value: Any, field: str = "timestamp") -> int:
    """Normalise a timestamp to epoch milliseconds UTC.

    Accepts integers or floats (or strings of ASCII digits) in seconds, milliseconds or
    microseconds, told apart by magnitude within 2009..2100, and ISO-8601 strings (a string
    without an offset is taken as UTC). Anything else raises InvalidKline with the reason:
    booleans, other types, non-finite numbers, numbers of any size outside the range, Unicode
    digits (``int('٣')`` would accept them), strings longer than 64 characters.
    """
    if type(value) is int and MIN_EPOCH_MS <= value < MAX_EPOCH_MS:
        return value  # milliseconds, what every producer of the job sends (the fast path)
    if isinstance(value, bool):
        raise InvalidKline(f"{field}: expected a timestamp, got a boolean")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidKline(f"{field}: empty timestamp")
        if len(text) > MAX_TIMESTAMP_CHARS:
            raise InvalidKline(
                f"{field}: a timestamp string of {len(text)} characters "
                f"(at most {MAX_TIMESTAMP_CHARS})"
            )
        if not text.isascii():
            raise InvalidKline(f"{field}: {quote(text)} has non-ASCII characters")
        if _NUMERIC_TEXT_RE.fullmatch(text):
            number: float = float(text) if "." in text else int(text)
            return _number_to_ms(number, field, value)
        return _iso_to_ms(text, field)
    if isinstance(value, _NUMBER_TYPES):
        return _number_to_ms(value, field, value)
    raise InvalidKline(f"{field}: expected a timestamp, got {type(value).__name__}")


def _make_quoter() -> reprlib.Repr:
    quoter = reprlib.Repr()
    quoter.maxlevel = 3
    quoter.maxstring = quoter.maxlong = quoter.maxother = 300
    quoter.maxlist = quoter.maxtuple = quoter.maxdict = quoter.maxset = 6
    return quoter


_QUOTER: Final = _make_quoter()


def quote(value: Any, limit: int = _QUOTE_CHARS) -> str:
    """A short ``repr`` of any value, for a rejection reason or a log line.

    Never fails and never does much work, whatever ``value`` is: deep nesting (a plain
    ``repr`` raises RecursionError), huge strings, integers too long for ``str()``.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        text = f"<integer of about {int(value.bit_length() * 0.30103)} digits>"
    else:
        text = _QUOTER.repr(value)
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def _number_to_ms(number: float, field: str, original: Any) -> int:
    if isinstance(number, int):
        # Integer arithmetic only: a huge int would overflow a float conversion.
        if MIN_EPOCH_MS <= number * 1000 < MAX_EPOCH_MS:  # seconds
            return number * 1000
        if MIN_EPOCH_MS <= number < MAX_EPOCH_MS:  # milliseconds
            return number
        if MIN_EPOCH_MS * 1000 <= number < MAX_EPOCH_MS * 1000:  # microseconds
            return number // 1000
    else:
        if not math.isfinite(number):
            raise InvalidKline(f"{field}: timestamp is not finite")
        for scale in (1000.0, 1.0, 0.001):  # seconds, milliseconds, microseconds
            ms = number * scale
            if MIN_EPOCH_MS <= ms < MAX_EPOCH_MS:
                return math.floor(ms + 1e-6)
    raise InvalidKline(
        f"{field}: {quote(original)} is not a timestamp in seconds, milliseconds or "
        "microseconds between 2009 and 2100"
    )


def _iso_to_ms(text: str, field: str) -> int:
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidKline(
            f"{field}: {quote(text)} is neither a number nor an ISO-8601 time"
        ) from None
    ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if not MIN_EPOCH_MS <= ms < MAX_EPOCH_MS:
        raise InvalidKline(f"{field}: {quote(text)} is outside 2009..2100")
    return ms


def _require_str(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value:
        raise InvalidKline(f"{name}: expected a non-empty string, got {_describe(value)}")
    return value


def _require_float(data: dict[str, Any], name: str, ceiling: float) -> float:
    value = data[name]
    # The fast path: a float, finite (NaN fails both comparisons) and not above the ceiling.
    if type(value) is float and -math.inf < value <= ceiling:
        return value
    if isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES):
        raise InvalidKline(f"{name}: expected a number, got {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidKline(f"{name}: {quote(value)} is too large for a float") from None
    if not math.isfinite(number):
        raise InvalidKline(f"{name}: {value} is not a finite number")
    if number > ceiling:
        raise InvalidKline(f"{name}: {number} is above the ceiling {ceiling:g}")
    return number


def _optional_float(data: dict[str, Any], name: str, ceiling: float) -> float | None:
    if data[name] is None:
        return None
    number = _require_float(data, name, ceiling)
    if number < 0:
        raise InvalidKline(f"{name}: {number} is negative")
    return number


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {quote(value)}"


def _field_name(name: Any) -> str:
    if isinstance(name, str) and name.isidentifier() and len(name) <= _QUOTE_CHARS:
        return name
    return quote(name)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kline_from_dict(data: Any, *, clock: Callable[[], int] | None = None) -> Kline:
    """Validate a decoded record and build a Kline, normalising its timestamps to ms.

    Raises InvalidKline with a precise reason for the first rule the record breaks, including
    the documented bounds (README.md, "Validation bounds"). ``clock`` (epoch ms; default the
    wall clock) is what ``ingest_time`` may not lie more than :data:`MAX_AHEAD_MS` ahead of.
    """
    if not isinstance(data, dict):
        raise InvalidKline(f"expected a JSON object, got {type(data).__name__}")
    if not data.keys() >= _REQUIRED_SET:
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        raise InvalidKline(f"missing field(s): {', '.join(missing)}")
    if not _FIELD_SET.issuperset(data):
        extra = sorted(_field_name(name) for name in data if name not in _FIELD_SET)
        if extra:
            shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
            raise InvalidKline(f"unknown field(s): {shown}")

    exchange = _require_str(data, "exchange")
    if exchange not in EXCHANGES:
        raise InvalidKline(
            f"exchange: unknown exchange {quote(exchange)} "
            f"(expected {', '.join(sorted(EXCHANGES))})"
        )
    symbol = _require_str(data, "symbol")
    if len(symbol) > MAX_SYMBOL_CHARS:
        raise InvalidKline(
            f"symbol: {len(symbol)} characters (a canonical symbol has at most {MAX_SYMBOL_CHARS})"
        )
    if not _SYMBOL_RE.fullmatch(symbol):
        raise InvalidKline(
            f"symbol: {quote(symbol)} is not canonical upper case BASE-QUOTE, "
            "BASE-QUOTE-PERP or BASE-QUOTE-YYMMDD"
        )
    market = _market(data, symbol)
    base_multiplier = _base_multiplier(data)
    provenance = data.get("provenance", DEFAULT_PROVENANCE)
    if provenance not in PROVENANCES:
        raise InvalidKline(
            f"provenance: {_describe(provenance)} is not one of {', '.join(PROVENANCES)}"
        )
    raw_symbol = _require_str(data, "raw_symbol")
    if len(raw_symbol) > MAX_RAW_SYMBOL_CHARS or not _RAW_SYMBOL_RE.fullmatch(raw_symbol):
        raise InvalidKline(
            f"raw_symbol: {quote(raw_symbol)} is not an exchange symbol (ASCII letters, digits "
            f"and ._/-, at most {MAX_RAW_SYMBOL_CHARS} characters)"
        )
    timeframe = _require_str(data, "timeframe")
    length = timeframe_ms(timeframe)

    open_time = parse_timestamp_ms(data["open_time"], "open_time")
    close_time = parse_timestamp_ms(data["close_time"], "close_time")
    event_time = parse_timestamp_ms(data["event_time"], "event_time")
    ingest_time = parse_timestamp_ms(data["ingest_time"], "ingest_time")
    now = (clock or _wall_clock_ms)()
    if ingest_time > now + MAX_AHEAD_MS:
        raise InvalidKline(
            f"ingest_time: {_iso_ms(ingest_time)} is more than {MAX_AHEAD_MS // 60_000} min "
            f"ahead of the clock ({_iso_ms(now)})"
        )
    for name, value in (("open_time", open_time), ("event_time", event_time)):
        if value > ingest_time + MAX_AHEAD_MS:
            raise InvalidKline(
                f"{name}: {_iso_ms(value)} is more than {MAX_AHEAD_MS // 60_000} min ahead of "
                f"ingest_time ({_iso_ms(ingest_time)})"
            )
    if open_time % length:
        raise InvalidKline(
            f"open_time: {open_time} is not aligned to {timeframe} "
            f"(expected {open_time - open_time % length})"
        )
    if close_time != open_time + length - 1:
        raise InvalidKline(
            f"close_time: {close_time} != open_time + {timeframe} - 1 ({open_time + length - 1})"
        )

    open_ = _require_float(data, "open", MAX_PRICE)
    high = _require_float(data, "high", MAX_PRICE)
    low = _require_float(data, "low", MAX_PRICE)
    close = _require_float(data, "close", MAX_PRICE)
    volume = _require_float(data, "volume", MAX_VOLUME)
    if low < 0:
        raise InvalidKline(f"low: {low} is negative")
    if high < max(open_, close):
        raise InvalidKline(f"high: {high} is below max(open, close) = {max(open_, close)}")
    if low > min(open_, close):
        raise InvalidKline(f"low: {low} is above min(open, close) = {min(open_, close)}")
    if volume < 0:
        raise InvalidKline(f"volume: {volume} is negative")

    quote_volume = _optional_float(data, "quote_volume", MAX_VOLUME)
    taker_buy_volume = _optional_float(data, "taker_buy_volume", MAX_VOLUME)
    taker_buy_quote_volume = _optional_float(data, "taker_buy_quote_volume", MAX_VOLUME)
    if taker_buy_volume is not None and taker_buy_volume > volume * (1 + _SUM_TOLERANCE):
        raise InvalidKline(f"taker_buy_volume: {taker_buy_volume} exceeds volume {volume}")
    if (
        taker_buy_quote_volume is not None
        and quote_volume is not None
        and taker_buy_quote_volume > quote_volume * (1 + _SUM_TOLERANCE)
    ):
        raise InvalidKline(
            f"taker_buy_quote_volume: {taker_buy_quote_volume} exceeds quote_volume {quote_volume}"
        )

    if quote_volume is not None and volume > 0:
        implied = quote_volume / volume
        if not low * (1 - VWAP_TOLERANCE) <= implied <= high * (1 + VWAP_TOLERANCE):
            raise InvalidKline(
                f"quote_volume: quote_volume / volume = {implied:.6g} lies far outside "
                f"[low, high] = [{low:g}, {high:g}] (volume not in the base asset, or "
                "quote_volume not in the quote asset?)"
            )

    trades = data["trades"]
    if trades is not None:
        if isinstance(trades, bool) or not isinstance(trades, int):
            raise InvalidKline(f"trades: expected an integer or null, got {_describe(trades)}")
        if trades < 0:
            raise InvalidKline(f"trades: {quote(trades)} is negative")
        if trades > MAX_TRADES:
            raise InvalidKline(f"trades: {quote(trades)} is above the ceiling 2**52")

    is_closed = data["is_closed"]
    if not isinstance(is_closed, bool):
        raise InvalidKline(f"is_closed: expected true or false, got {_describe(is_closed)}")

    return Kline(
        exchange=exchange,
        symbol=symbol,
        raw_symbol=raw_symbol,
        timeframe=timeframe,
        open_time=open_time,
        close_time=close_time,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        quote_volume=quote_volume,
        trades=trades,
        taker_buy_volume=taker_buy_volume,
        taker_buy_quote_volume=taker_buy_quote_volume,
        is_closed=is_closed,
        event_time=event_time,
        ingest_time=ingest_time,
        market=market,
        base_multiplier=base_multiplier,
        provenance=provenance,
    )


def _market(data: dict[str, Any], symbol: str) -> str:
    implied = market_of_symbol(symbol)
    if "market" not in data:
        return implied
    market = data["market"]
    if market not in MARKETS:
        raise InvalidKline(f"market: {_describe(market)} is not one of {', '.join(MARKETS)}")
    if market != implied:
        raise InvalidKline(f"market: {market} disagrees with symbol {symbol} (a {implied} symbol)")
    return str(market)


def _base_multiplier(data: dict[str, Any]) -> int:
    value = data.get("base_multiplier", 1)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidKline(f"base_multiplier: expected an integer, got {_describe(value)}")
    if value not in _BASE_MULTIPLIERS:
        raise InvalidKline(
            f"base_multiplier: {quote(value)} is not a power of ten from 1 to "
            f"{MAX_BASE_MULTIPLIER:,}"
        )
    return value


def decode_kline(raw: bytes | str) -> Kline:
    """Parse and validate one wire message. Raises InvalidKline with the reason.

    Nothing else escapes, whatever ``raw`` holds: the job's parse operator catches only
    InvalidKline (and dead-letters the message), so any other exception would restart the job
    on the same message for ever. Every known kind of bad input is rejected explicitly; a last
    guard turns anything unforeseen into ``InvalidKline("internal: <type>: <message>")``.
    """
    if not isinstance(raw, _WIRE_TYPES):
        raise InvalidKline(f"expected bytes or str, got {type(raw).__name__}")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidKline(
            f"message of {len(raw)} bytes (a record has at most {MAX_MESSAGE_BYTES})"
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidKline(f"not JSON: {str(exc)[:120]}") from None
    try:
        return kline_from_dict(data)
    except InvalidKline:
        raise
    except Exception as exc:
        raise InvalidKline(f"internal: {type(exc).__name__}: {str(exc)[:160]}") from exc


def encode_kline(kline: Kline) -> bytes:
    """The wire form of a bar (orjson, contract field order)."""
    return orjson.dumps(kline.to_dict())


def validate_kline(kline: Kline) -> Kline:
    """Re-validate a Kline built in code (e.g. by an exchange adapter); returns it unchanged."""
    return kline_from_dict(kline.to_dict())


def now_ms() -> int:
    """The current wall-clock time in epoch milliseconds."""
    return _wall_clock_ms()


@dataclass(frozen=True, slots=True)
class VersionedBar:
    """A bar as the job emits it to the sinks.

    ``version`` grows strictly with every emitted update of the same bar (exchange, symbol,
    timeframe, open_time), so ClickHouse (ReplacingMergeTree) and Redis (compare-and-set) keep
    the newest. ``bars_present``/``bars_expected`` count the 1m bars behind a roll-up (1/1 for 1m).
    """

    kline: Kline
    version: int
    bars_present: int = 1
    bars_expected: int = 1

    def __reduce__(self) -> tuple[type[VersionedBar], tuple[Any, ...]]:
        return (VersionedBar, (self.kline, self.version, self.bars_present, self.bars_expected))
