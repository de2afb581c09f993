"""Binance spot, USDT-M and COIN-M futures: combined kline streams and REST klines for repair."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from connectors.exchanges.base import (
    MINUTE_MS,
    ExchangeAdapter,
    FrameKind,
    ParsedFrame,
    RejectedBar,
    RestError,
    RestPage,
    RestRequest,
    dumps,
    text_of,
    to_float,
    to_int,
)
from connectors.symbols import SymbolInfo
from udfs.record import InvalidKline, Kline, quote


class BinanceSpot(ExchangeAdapter):
    """Binance spot klines.

    Streams are named in the URL of a combined-stream connection
    (``/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m``), so a reconnect resubscribes
    everything by itself and the bridge never sends a subscribe request (Binance allows at
    most 5 incoming messages per second per connection). A connection carries at most 1024
    streams; the bridge uses 200 per connection to keep the URL short. The server pings every
    20 s and drops a client that does not pong within a minute (the WebSocket library answers
    pings); it cuts every connection after 24 h, so the bridge opens a replacement after
    ``max_connection_age_s`` and overlaps the two. Before maintenance it sends a
    ``serverShutdown`` event, handled the same way.

    A real combined-stream push (``E`` is the event time, ``x`` marks the final update)::

        {"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1717171260012,"s":"BTCUSDT",
         "k":{"t":1717171200000,"T":1717171259999,"s":"BTCUSDT","i":"1m","f":3621834971,
              "L":3621836270,"o":"67512.01000000","c":"67530.00000000",
              "h":"67544.00000000","l":"67508.00000000","v":"18.86934000","n":1300,
              "x":true,"q":"1274220.82587470","V":"10.08735000","Q":"681240.26637080",
              "B":"0"}}}

    The shutdown notice::

        {"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1717171260000}}

    ``/api/v3/klines`` answers arrays ``[openTime, open, high, low, close, volume, closeTime,
    quoteVolume, trades, takerBuyBase, takerBuyQuote, ignore]``, weight 2 of 6000 per minute;
    429 carries ``Retry-After`` and repeated abuse earns a 418 ban with ``Retry-After``. The
    answer includes the still-open bar when the range reaches the present: a row whose
    ``closeTime`` is not yet past (by the ingest clock) is listed as unconfirmed, never stored
    as closed.

    Markets (``linear`` = USDT-M on ``fstream``/``fapi``, ``inverse`` = COIN-M on
    ``dstream``/``dapi``) use the same push and row layouts. USDT-M ``v`` is base volume
    (``BTCUSDT`` -> ``BTC-USDT-PERP``, ``BTCUSDT_250627`` -> ``BTC-USDT-250627``). COIN-M counts
    contracts (100 USD for BTC, 10 USD for other coins): ``v``/``V`` are contracts and
    ``q``/``Q`` the base-asset volumes, so the record takes ``q``/``Q`` as volume and
    contracts x size as the USD quote volume. A real COIN-M push::

        {"stream":"btcusd_perp@kline_1m","data":{"e":"kline","E":1591261542539,
         "s":"BTCUSD_PERP","k":{"t":1591261500000,"T":1591261559999,"s":"BTCUSD_PERP",
         "i":"1m","f":606400,"L":606430,"o":"9638.9","c":"9639.8","h":"9639.8",
         "l":"9638.6","v":"156","n":30,"x":false,"q":"1.61836886","V":"73",
         "Q":"0.75731156","B":"0"}}}
    """

    name: ClassVar[str] = "binance"
    markets: ClassVar[tuple[str, ...]] = ("spot", "linear", "inverse")
    default_ws_base: ClassVar[str] = "wss://stream.binance.com:9443"
    ws_paths: ClassVar[dict[str, str]] = {
        "spot": "/stream",
        "linear": "/stream",
        "inverse": "/stream",
    }
    default_rest_url: ClassVar[str] = "https://api.binance.com"
    # Per market: WebSocket base, REST base, REST kline path.
    market_endpoints: ClassVar[dict[str, tuple[str, str, str]]] = {
        "spot": ("wss://stream.binance.com:9443", "https://api.binance.com", "/api/v3/klines"),
        "linear": ("wss://fstream.binance.com", "https://fapi.binance.com", "/fapi/v1/klines"),
        "inverse": ("wss://dstream.binance.com", "https://dapi.binance.com", "/dapi/v1/klines"),
    }
    max_streams_per_connection: ClassVar[int] = 200
    subscribe_batch: ClassVar[int] = 200
    subscribe_rate_per_s: ClassVar[float] = 4.0
    connect_rate_per_s: ClassVar[float] = 1.0  # 300 connection attempts per 5 min per IP
    max_connection_age_s: ClassVar[float | None] = 23.5 * 3600
    rest_rate_per_s: ClassVar[float] = 10.0
    rest_burst: ClassVar[float] = 10.0
    rest_page_limit: ClassVar[int] = 1000

    def default_ws_url(self) -> str:
        """``stream.binance.com``, ``fstream`` (USDT-M) or ``dstream`` (COIN-M)."""
        return self.market_endpoints[self.market][0]

    def default_rest_base(self) -> str:
        """``api``, ``fapi`` (USDT-M) or ``dapi`` (COIN-M) ``.binance.com``."""
        return self.market_endpoints[self.market][1]

    def _volumes(
        self, info: SymbolInfo, volume: float, quote: float, taker: float, taker_quote: float
    ) -> dict[str, float]:
        """The record's four volumes from the exchange's, in base and quote units."""
        if info.margin == "inverse":
            size = info.contract_size
            return {
                "volume": quote,
                "quote_volume": volume * size,
                "taker_buy_volume": taker_quote,
                "taker_buy_quote_volume": taker * size,
            }
        return {
            "volume": volume,
            "quote_volume": quote,
            "taker_buy_volume": taker,
            "taker_buy_quote_volume": taker_quote,
        }

    def ws_url(self, base_url: str, symbols: Sequence[SymbolInfo]) -> str:
        """``{base}/stream?streams=a@kline_1m/b@kline_1m`` (the combined-stream endpoint)."""
        streams = "/".join(f"{info.raw_symbol.lower()}@kline_1m" for info in symbols)
        return f"{self.ws_endpoint(base_url)}?streams={streams}"

    def subscribe_messages(self, symbols: Sequence[SymbolInfo]) -> list[str]:
        """None: the streams are in the connection URL."""
        del symbols
        return []

    def parse_frame(self, text: str, ingest_time: int) -> ParsedFrame:
        """Dispatch on the combined-stream envelope and the event type ``e``."""
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return ParsedFrame(FrameKind.MALFORMED, detail=f"not JSON: {exc}")
        if not isinstance(message, dict):
            return ParsedFrame(FrameKind.MALFORMED, detail="not a JSON object")
        data = message.get("data", message) if "stream" in message else message
        if isinstance(data, dict):
            event = data.get("e")
            if event == "kline":
                return self._parse_kline_event(data, ingest_time)
            if event == "serverShutdown":
                return ParsedFrame(FrameKind.SHUTDOWN, detail="serverShutdown")
        if "result" in message and "id" in message:
            return ParsedFrame(FrameKind.ACK)
        if "error" in message:
            return ParsedFrame(FrameKind.ERROR, detail=text_of(message["error"], 300))
        return ParsedFrame(FrameKind.MALFORMED, detail="unknown message type")

    def _parse_kline_event(self, data: dict[str, Any], ingest_time: int) -> ParsedFrame:
        k = data.get("k")
        if not isinstance(k, dict):
            return ParsedFrame(FrameKind.MALFORMED, detail="kline event without a 'k' object")
        raw_symbol = k.get("s", data.get("s"))
        info = self.symbols.get(raw_symbol) if isinstance(raw_symbol, str) else None
        if info is None:
            return ParsedFrame(
                FrameKind.MALFORMED, detail=f"kline of unsubscribed {quote(raw_symbol)}"
            )
        try:
            if k.get("i") != "1m":
                raise InvalidKline(f"interval: expected 1m, got {quote(k.get('i'))}")
            kline = self.build(
                info,
                {
                    "open_time": to_int(k.get("t"), "t"),
                    "close_time": to_int(k.get("T"), "T"),
                    "open": to_float(k.get("o"), "o"),
                    "high": to_float(k.get("h"), "h"),
                    "low": to_float(k.get("l"), "l"),
                    "close": to_float(k.get("c"), "c"),
                    **self._volumes(
                        info,
                        to_float(k.get("v"), "v"),
                        to_float(k.get("q"), "q"),
                        to_float(k.get("V"), "V"),
                        to_float(k.get("Q"), "Q"),
                    ),
                    "trades": to_int(k.get("n"), "n"),
                    "is_closed": k.get("x"),
                    "event_time": to_int(data.get("E"), "E"),
                    "ingest_time": ingest_time,
                },
            )
        except InvalidKline as exc:
            rejected = RejectedBar(exc.reason, dumps(data), self.series_key_of(info))
            return ParsedFrame(FrameKind.KLINES, rejected=[rejected])
        return ParsedFrame(FrameKind.KLINES, klines=[kline])

    def rest_request(self, info: SymbolInfo, start_ms: int, end_ms: int) -> RestRequest:
        """``GET /api/v3/klines`` (``/fapi/v1``, ``/dapi/v1``) for ``[start_ms, end_ms)``."""
        return RestRequest(
            self.market_endpoints[self.market][2],
            {
                "symbol": info.raw_symbol,
                "interval": "1m",
                "startTime": str(start_ms),
                "endTime": str(end_ms - 1),
                "limit": str(self.rest_page_limit),
            },
        )

    def parse_rest(
        self, info: SymbolInfo, payload: Any, start_ms: int, end_ms: int, ingest_time: int
    ) -> RestPage:
        """Closed bars of a klines answer; pages forward while the page is full.

        A row whose close time is not before ``ingest_time`` is the still-open bar: it goes to
        ``unconfirmed`` (fetched again later), never into ``klines`` as closed.
        """
        if isinstance(payload, dict):
            raise RestError(
                f"binance error {text_of(payload.get('code'))}: {text_of(payload.get('msg'), 200)}"
            )
        if not isinstance(payload, list):
            raise RestError(f"binance klines: unexpected body {quote(payload, 200)}")
        klines: list[Kline] = []
        rejected: list[RejectedBar] = []
        unconfirmed: list[int] = []
        last_open: int | None = None
        for row in payload:
            try:
                if not isinstance(row, list) or len(row) < 11:
                    raise InvalidKline("REST row: expected an array of at least 11 fields")
                open_time = to_int(row[0], "openTime")
                last_open = open_time if last_open is None else max(last_open, open_time)
                if not start_ms <= open_time < end_ms:
                    continue
                close_time = to_int(row[6], "closeTime")
                if close_time >= ingest_time:
                    unconfirmed.append(open_time)
                    continue
                klines.append(
                    self.build(
                        info,
                        {
                            "open_time": open_time,
                            "close_time": close_time,
                            "open": to_float(row[1], "open"),
                            "high": to_float(row[2], "high"),
                            "low": to_float(row[3], "low"),
                            "close": to_float(row[4], "close"),
                            **self._volumes(
                                info,
                                to_float(row[5], "volume"),
                                to_float(row[7], "quoteVolume"),
                                to_float(row[9], "takerBuyBase"),
                                to_float(row[10], "takerBuyQuote"),
                            ),
                            "trades": to_int(row[8], "trades"),
                            "is_closed": True,
                            "event_time": self.rest_event_time(open_time),
                            "ingest_time": ingest_time,
                        },
                        provenance="rest",
                    )
                )
            except InvalidKline as exc:
                rejected.append(RejectedBar(exc.reason, dumps(row), self.series_key_of(info)))
        klines.sort(key=lambda kline: kline.open_time)
        next_start = None
        full_page = len(payload) >= self.rest_page_limit
        if full_page and last_open is not None and last_open + MINUTE_MS < end_ms:
            next_start = last_open + MINUTE_MS
        return RestPage(klines, rejected, next_start_ms=next_start, unconfirmed=unconfirmed)
