"""The kline record of DESIGN.md: type, validation, timestamp normalisation and orjson codec.

One bar per message on ``klines.raw``; the Kafka key is ``"{exchange}:{symbol}:{timeframe}"``.
Everything here is plain Python so that the bridge, ``replay``, the Flink job and the tests
share one definition of what a valid bar is.
"""

from __future__ import annotations

import math
import re
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

_SYMBOL_RE: Final = re.compile(r"^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}$")

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
)
_FIELD_SET: Final = frozenset(FIELDS)
# A Kline's values in field order (FIELDS is also the dataclass's field order).
_KLINE_VALUES: Final = attrgetter(*FIELDS)
_PRICE_FIELDS: Final = ("open", "high", "low", "close", "volume")
_OPTIONAL_FLOAT_FIELDS: Final = ("quote_volume", "taker_buy_volume", "taker_buy_quote_volume")
_TIME_FIELDS: Final = ("open_time", "close_time", "event_time", "ingest_time")
# Relative slack for "taker buy volume <= volume": exchanges round each side separately.
_SUM_TOLERANCE: Final = 1e-9


class InvalidKline(ValueError):
    """A record that breaks the contract. ``reason`` is short, stable and human readable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Kline:
    """One OHLCV bar, exactly the fields of the wire record (DESIGN.md)."""

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
        return {name: getattr(self, name) for name in FIELDS}

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


def timeframe_ms(timeframe: str) -> int:
    """Length of a timeframe in milliseconds; raises InvalidKline for an unknown one."""
    try:
        return TIMEFRAME_MS[timeframe]
    except KeyError:
        raise InvalidKline(
            f"unknown timeframe {timeframe!r} (expected one of {', '.join(TIMEFRAME_MS)})"
        ) from None


def align_open_time(ts_ms: int, timeframe: str) -> int:
    """The open time of the UTC-epoch-aligned bar of ``timeframe`` that contains ``ts_ms``."""
    length = timeframe_ms(timeframe)
    return ts_ms - ts_ms % length


def parse_timestamp_ms(value: Any, field: str = "timestamp") -> int:
    """Normalise a timestamp to epoch milliseconds UTC.

    Accepts integers or floats (or strings of digits) in seconds, milliseconds or
    microseconds, told apart by magnitude within 2009..2100, and ISO-8601 strings (a string
    without an offset is taken as UTC). Anything else raises InvalidKline with the reason.
    """
    if isinstance(value, bool):
        raise InvalidKline(f"{field}: expected a timestamp, got a boolean")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidKline(f"{field}: empty timestamp")
        if _looks_numeric(text):
            try:
                number: float = int(text)
            except ValueError:
                number = float(text)
            return _number_to_ms(number, field, value)
        return _iso_to_ms(text, field)
    if isinstance(value, int | float):
        return _number_to_ms(value, field, value)
    raise InvalidKline(f"{field}: expected a timestamp, got {type(value).__name__}")


def _looks_numeric(text: str) -> bool:
    body = text[1:] if text[0] in "+-" else text
    return body.replace(".", "", 1).isdigit()


def _number_to_ms(number: float, field: str, original: Any) -> int:
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidKline(f"{field}: timestamp is not finite")
    for scale in (1000.0, 1.0, 0.001):  # seconds, milliseconds, microseconds
        ms = number * scale
        if MIN_EPOCH_MS <= ms < MAX_EPOCH_MS:
            if isinstance(number, int) and scale == 1.0:
                return number
            if isinstance(number, int) and scale == 1000.0:
                return number * 1000
            if isinstance(number, int):
                return number // 1000
            return math.floor(ms + 1e-6)
    raise InvalidKline(
        f"{field}: {original!r} is not a timestamp in seconds, milliseconds or microseconds "
        "between 2009 and 2100"
    )


def _iso_to_ms(text: str, field: str) -> int:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidKline(f"{field}: {text!r} is neither a number nor an ISO-8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if not MIN_EPOCH_MS <= ms < MAX_EPOCH_MS:
        raise InvalidKline(f"{field}: {text!r} is outside 2009..2100")
    return ms


def _require_str(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value:
        raise InvalidKline(f"{name}: expected a non-empty string, got {_describe(value)}")
    return value


def _require_float(data: dict[str, Any], name: str) -> float:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidKline(f"{name}: expected a number, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidKline(f"{name}: {value} is not a finite number")
    return number


def _optional_float(data: dict[str, Any], name: str) -> float | None:
    if data[name] is None:
        return None
    number = _require_float(data, name)
    if number < 0:
        raise InvalidKline(f"{name}: {number} is negative")
    return number


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"


def kline_from_dict(data: Any) -> Kline:
    """Validate a decoded record and build a Kline, normalising its timestamps to ms.

    Raises InvalidKline with a precise reason for the first rule the record breaks.
    """
    if not isinstance(data, dict):
        raise InvalidKline(f"expected a JSON object, got {type(data).__name__}")
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise InvalidKline(f"missing field(s): {', '.join(missing)}")
    extra = sorted(set(data) - _FIELD_SET)
    if extra:
        raise InvalidKline(f"unknown field(s): {', '.join(extra)}")

    exchange = _require_str(data, "exchange")
    if exchange not in EXCHANGES:
        raise InvalidKline(
            f"exchange: unknown exchange {exchange!r} (expected {', '.join(sorted(EXCHANGES))})"
        )
    symbol = _require_str(data, "symbol")
    if not _SYMBOL_RE.match(symbol):
        raise InvalidKline(f"symbol: {symbol!r} is not canonical BASE-QUOTE upper case")
    raw_symbol = _require_str(data, "raw_symbol")
    timeframe = _require_str(data, "timeframe")
    length = timeframe_ms(timeframe)

    open_time, close_time, event_time, ingest_time = (
        parse_timestamp_ms(data[name], name) for name in _TIME_FIELDS
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

    open_, high, low, close, volume = (_require_float(data, name) for name in _PRICE_FIELDS)
    if low < 0:
        raise InvalidKline(f"low: {low} is negative")
    if high < max(open_, close):
        raise InvalidKline(f"high: {high} is below max(open, close) = {max(open_, close)}")
    if low > min(open_, close):
        raise InvalidKline(f"low: {low} is above min(open, close) = {min(open_, close)}")
    if volume < 0:
        raise InvalidKline(f"volume: {volume} is negative")

    quote_volume, taker_buy_volume, taker_buy_quote_volume = (
        _optional_float(data, name) for name in _OPTIONAL_FLOAT_FIELDS
    )
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

    trades = data["trades"]
    if trades is not None:
        if isinstance(trades, bool) or not isinstance(trades, int):
            raise InvalidKline(f"trades: expected an integer or null, got {_describe(trades)}")
        if trades < 0:
            raise InvalidKline(f"trades: {trades} is negative")

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
    )


def decode_kline(raw: bytes | str) -> Kline:
    """Parse and validate one wire message. Raises InvalidKline with the reason."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidKline(f"not JSON: {exc}") from None
    return kline_from_dict(data)


def encode_kline(kline: Kline) -> bytes:
    """The wire form of a bar (orjson, contract field order)."""
    return orjson.dumps(kline.to_dict())


def validate_kline(kline: Kline) -> Kline:
    """Re-validate a Kline built in code (e.g. by an exchange adapter); returns it unchanged."""
    return kline_from_dict(kline.to_dict())


def now_ms() -> int:
    """The current wall-clock time in epoch milliseconds."""
    return int(datetime.now(UTC).timestamp() * 1000)


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
