"""What every exchange adapter declares and does, and the shapes it hands to the bridge.

An adapter is declarative in the style of cryptofeed's exchange classes: class attributes name
the endpoints, the protocol's limits and timers; methods turn the exchange's frames into
:class:`~udfs.record.Kline` records (always through :func:`~udfs.record.kline_from_dict`, so
the bridge shares the record's validation with every other producer) and build the REST
requests that repair gaps. Adapters do no I/O: the asyncio runtime in
:mod:`connectors.bridge` owns sockets, timers and Kafka, which keeps every protocol detail
unit-testable with plain strings.
"""

from __future__ import annotations

import enum
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import orjson

from connectors.symbols import SymbolInfo, UnknownSymbol, parse_symbol
from udfs.record import InvalidKline, Kline, kline_from_dict, quote, series_key

TIMEFRAME = "1m"
MINUTE_MS = 60_000


class FrameKind(enum.Enum):
    """What one WebSocket frame turned out to be."""

    KLINES = "klines"  # market data (possibly with some invalid bars)
    PONG = "pong"  # answer to our application-level ping
    ACK = "ack"  # subscription confirmation or other harmless control message
    SHUTDOWN = "shutdown"  # the server announced it will close this connection soon
    ERROR = "error"  # the server reported an error (bad subscription, rate limit...)
    MALFORMED = "malformed"  # not JSON, or JSON of an unknown shape


@dataclass(slots=True)
class RejectedBar:
    """A kline-shaped element that failed validation: goes to the dead-letter topic."""

    reason: str
    original: bytes
    key: str | None


@dataclass(slots=True)
class ParsedFrame:
    """The outcome of parsing one WebSocket frame."""

    kind: FrameKind
    klines: list[Kline] = field(default_factory=list)
    rejected: list[RejectedBar] = field(default_factory=list)
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One GET request of the REST kline endpoint (path relative to the REST base URL)."""

    path: str
    params: Mapping[str, str]


@dataclass(slots=True)
class RestPage:
    """The bars of one REST response, oldest first, and where to continue.

    ``next_end_ms`` is set when older bars inside the requested range may remain (exchanges
    that page backwards); ``next_start_ms`` when newer ones may (exchanges that page forwards).
    ``unconfirmed`` lists open times the exchange returned but has not marked final yet: they
    stay gaps and are fetched again later.
    """

    klines: list[Kline]
    rejected: list[RejectedBar]
    next_start_ms: int | None = None
    next_end_ms: int | None = None
    unconfirmed: list[int] = field(default_factory=list)


class RestRateLimited(Exception):
    """The exchange said "too many requests" inside a 200 response body (OKX, Bybit codes)."""


class RestError(Exception):
    """The exchange answered the REST request with an error that retrying will not fix soon."""


# Numbers as exchanges send them: ASCII decimal text, optionally with an exponent. float()
# and int() alone would also take Unicode digits ('٣'), underscores ('1_000') and 'nan'.
_DECIMAL_TEXT_RE: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_INTEGER_TEXT_RE: Final = re.compile(r"[+-]?[0-9]{1,20}")
# Longest numeric text taken at all (a price with 8 decimals has about 20 characters).
MAX_NUMBER_CHARS: Final[int] = 64


def text_of(value: Any, limit: int = 40) -> str:
    """A value of an exchange's control message for a log line or an error: a string as it
    is (cut to ``limit``), anything else as a short repr (never fails, whatever its shape)."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[: max(0, limit - 3)] + "..."
    return quote(value, limit)


def to_float(value: Any, name: str) -> float:
    """A number from an exchange field (JSON number or decimal string); InvalidKline if not.

    Strings must be ASCII decimals (``"67512.01"``, ``"1e-8"``) of at most 64 characters;
    the result must be finite. Range bounds are the record's (udfs/record.py).
    """
    if isinstance(value, bool) or value is None:
        raise InvalidKline(f"{name}: expected a number, got {quote(value)}")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise InvalidKline(f"{name}: {quote(value)} is too large for a float") from None
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_NUMBER_CHARS or not _DECIMAL_TEXT_RE.fullmatch(text):
            raise InvalidKline(f"{name}: {quote(value)} is not a number")
        number = float(text)
    else:
        raise InvalidKline(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise InvalidKline(f"{name}: {quote(value)} is not finite")
    return number


def to_int(value: Any, name: str) -> int:
    """An integer from an exchange field (JSON integer or a string of up to 20 ASCII digits)."""
    if isinstance(value, bool):
        raise InvalidKline(f"{name}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER_TEXT_RE.fullmatch(text):
            return int(text)
    if isinstance(value, str):
        raise InvalidKline(f"{name}: {quote(value)} is not an integer")
    raise InvalidKline(f"{name}: expected an integer, got {quote(value)}")


def dumps(value: Any) -> bytes:
    """orjson bytes of a decoded element (the original of a dead letter)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return repr(value).encode("utf-8", "replace")


class ExchangeAdapter(ABC):
    """One exchange and market: endpoints, limits, timers, frame parsing and REST repair.

    Subclasses set the class attributes and implement the abstract methods. An instance
    holds the symbols of one bridge process (all of one market).
    """

    name: ClassVar[str]
    markets: ClassVar[tuple[str, ...]] = ("spot",)
    # The public endpoints; a WebSocket base URL without a path gets ws_paths[market].
    default_ws_base: ClassVar[str]
    ws_paths: ClassVar[Mapping[str, str]]
    default_rest_url: ClassVar[str]
    # Streams (symbols) one connection carries; more symbols open more connections.
    max_streams_per_connection: ClassVar[int] = 200
    # Topics per subscribe request and subscribe requests per second per connection.
    subscribe_batch: ClassVar[int] = 10
    subscribe_rate_per_s: ClassVar[float] = 2.0
    # New connections per second per process (exchanges limit connection attempts per IP).
    connect_rate_per_s: ClassVar[float] = 1.0
    # Application-level ping: sent every ping_interval_s, or only after ping_idle_s of silence.
    ping_interval_s: ClassVar[float | None] = None
    ping_idle_s: ClassVar[float | None] = None
    # A connection is recycled (with overlap) before the exchange would cut it.
    max_connection_age_s: ClassVar[float | None] = None
    # True when the exchange's push carries no event time and ingest time stands in.
    event_time_is_ingest_time: ClassVar[bool] = False
    # REST kline endpoint: requests per second we allow ourselves, burst, bars per request.
    rest_rate_per_s: ClassVar[float] = 5.0
    rest_burst: ClassVar[float] = 5.0
    rest_page_limit: ClassVar[int] = 500

    def __init__(
        self,
        market: str,
        raw_symbols: Sequence[str],
        contract_sizes: Mapping[str, float] | None = None,
    ) -> None:
        """Normalise ``raw_symbols`` of venue category ``market`` (spot, linear, inverse).

        ``contract_sizes`` (raw symbol -> size) adds or overrides contract sizes; a
        derivative whose size is unknown raises UnknownSymbol here, at start-up.
        """
        if market not in self.markets:
            raise UnknownSymbol(
                f"{self.name}: market {market!r} is not supported "
                f"(supported: {', '.join(self.markets)})"
            )
        if not raw_symbols:
            raise UnknownSymbol(f"{self.name}: no symbols given")
        self.market = market
        self.contract_sizes: Mapping[str, float] = dict(contract_sizes or {})
        infos: dict[str, SymbolInfo] = {}
        for raw in raw_symbols:
            info = self.symbol_info(raw)
            if info.raw_symbol in infos:
                raise UnknownSymbol(f"{self.name}: symbol {raw!r} given twice")
            infos[info.raw_symbol] = info
        self.symbols: dict[str, SymbolInfo] = infos

    def symbol_info(self, raw_symbol: str) -> SymbolInfo:
        """Normalise one user-given symbol of this exchange and market (UnknownSymbol if not)."""
        return parse_symbol(self.name, raw_symbol, self.market, self.contract_sizes)

    def default_ws_url(self) -> str:
        """The public WebSocket base URL of this adapter's market."""
        return self.default_ws_base

    def default_rest_base(self) -> str:
        """The public REST base URL of this adapter's market."""
        return self.default_rest_url

    def ws_endpoint(self, base_url: str) -> str:
        """``base_url`` plus this market's WebSocket path, unless it already has a path."""
        stripped = base_url.rstrip("/")
        scheme_end = stripped.find("://")
        has_path = "/" in stripped[scheme_end + 3 :] if scheme_end >= 0 else "/" in stripped
        return stripped if has_path else stripped + self.ws_paths[self.market]

    def series_key_of(self, info: SymbolInfo) -> str:
        """The Kafka key of the 1m series of ``info``."""
        return series_key(self.name, info.symbol, TIMEFRAME)

    def build(self, info: SymbolInfo, fields: dict[str, Any], provenance: str = "ws") -> Kline:
        """Validate one bar through the shared record contract.

        ``provenance`` is ``ws`` for stream pushes and ``rest`` for REST answers.
        """
        record = {
            "exchange": self.name,
            "symbol": info.symbol,
            "raw_symbol": info.raw_symbol,
            "timeframe": TIMEFRAME,
            **fields,
            "market": info.market,
            "base_multiplier": info.base_multiplier,
            "provenance": provenance,
        }
        return kline_from_dict(record)

    # --- WebSocket -------------------------------------------------------------------------

    def ws_url(self, base_url: str, symbols: Sequence[SymbolInfo]) -> str:
        """The URL one connection opens for ``symbols`` (most exchanges: the endpoint)."""
        del symbols
        return self.ws_endpoint(base_url)

    @abstractmethod
    def subscribe_messages(self, symbols: Sequence[SymbolInfo]) -> list[str]:
        """The text frames that subscribe one connection to the 1m klines of ``symbols``."""

    def ping_message(self) -> str | None:
        """The application-level ping frame, if the protocol has one."""
        return None

    @abstractmethod
    def parse_frame(self, text: str, ingest_time: int) -> ParsedFrame:
        """Turn one text frame into bars and/or a control event. Never raises."""

    # --- REST repair -----------------------------------------------------------------------

    @abstractmethod
    def rest_request(self, info: SymbolInfo, start_ms: int, end_ms: int) -> RestRequest:
        """The request for closed 1m bars with ``start_ms <= open_time < end_ms``."""

    @abstractmethod
    def parse_rest(
        self, info: SymbolInfo, payload: Any, start_ms: int, end_ms: int, ingest_time: int
    ) -> RestPage:
        """Bars of one decoded REST response inside ``[start_ms, end_ms)``, oldest first.

        Raises :class:`RestRateLimited` or :class:`RestError` for an error body.
        """

    @staticmethod
    def rest_event_time(open_time: int) -> int:
        """The event time of a REST-repaired closed bar: the moment it became final.

        Deterministic (a bar repaired twice gets the same one) and never later than the
        exchange's own final WebSocket update of the bar, so a repaired copy does not outrank
        the live one downstream.
        """
        return open_time + MINUTE_MS
