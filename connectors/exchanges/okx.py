"""OKX v5: ``candle1m`` on the business WebSocket and ``history-candles`` for repair."""

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
    RestRateLimited,
    RestRequest,
    dumps,
    text_of,
    to_float,
    to_int,
)
from connectors.symbols import SymbolInfo
from udfs.record import InvalidKline, Kline, quote

# Error codes of a 200 answer that mean "slow down" rather than "wrong request".
_RATE_LIMIT_CODES = frozenset({"50011", "50061"})
_SERVICE_UPGRADE_NOTICE = "64008"


class Okx(ExchangeAdapter):
    """OKX spot (``BTC-USDT``), perpetual swaps (``BTC-USDT-SWAP`` linear, ``BTC-USD-SWAP``
    inverse) and dated futures (``BTC-USDT-250627``).

    Candle channels live on ``/ws/v5/business`` (``/ws/v5/public`` rejects them). The client
    keeps the link alive by sending the text ``ping`` after a quiet spell (answer: ``pong``);
    the server drops a link silent for 30 s, so the bridge pings after 20 s of silence.
    Subscribe requests are rate limited (480 per hour per connection, 3 connection requests
    per second per IP), so the bridge batches 20 channels per request.

    A real push; every value is a string, ``confirm`` is ``"1"`` on the final update::

        {"arg":{"channel":"candle1m","instId":"BTC-USDT"},
         "data":[["1717171200000","67512.1","67544","67508","67530","18.86934",
                  "1274220.82587470","1274220.82587470","0"]]}

    Fields: ``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]``. On spot ``vol`` is in
    base currency and ``volCcyQuote`` in quote currency. On a SWAP or future ``vol`` counts
    contracts of ``ctVal`` each (``connectors.symbols.OKX_CONTRACT_VALUES``, an unknown one is
    refused at start-up): linear volume = ``volCcy`` (OKX's contracts x ctVal; the legacy
    row: vol x ctVal), quote = ``volCcyQuote``; inverse
    (ctVal in USD) volume = ``volCcy`` (base), quote = vol x ctVal (USD). Canonical symbols:
    ``BTC-USDT-SWAP`` -> ``BTC-USDT-PERP``, ``BTC-USD-SWAP`` -> ``BTC-USD-PERP``.

    Recordings from 2021-22 hold the older 7-field rows ``[ts, o, h, l, c, vol, volCcy]``
    (no ``volCcyQuote``, no ``confirm``; on spot ``volCcy`` is the quote volume)::

        ["1635739200000","61312.1","61350","61300.2","61340.5","12.3361","756441.8"]

    With no confirm flag such a row is closed only when its minute had ended by the time it
    was received (close_time < ingest_time); the 7-field linear row has no quote volume.
    OKX gives no trade count, no taker volumes and no event time: those are null, and the
    event time is the bridge's ingest time (made non-decreasing per series by the bridge).

    Before a service upgrade the server sends
    ``{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service
    upgrade. Please reconnect.","connId":"a4d3ae55"}``.

    ``GET /api/v5/market/history-candles?instId=BTC-USDT&bar=1m&after=..&before=..&limit=100``
    answers ``{"code":"0","msg":"","data":[[...same 9 fields...], ...]}`` newest first,
    20 requests per 2 s; over the limit: HTTP 429 and/or code ``50011``.
    """

    name: ClassVar[str] = "okx"
    markets: ClassVar[tuple[str, ...]] = ("spot", "linear", "inverse")
    default_ws_base: ClassVar[str] = "wss://ws.okx.com:8443"
    ws_paths: ClassVar[dict[str, str]] = {
        "spot": "/ws/v5/business",
        "linear": "/ws/v5/business",
        "inverse": "/ws/v5/business",
    }
    default_rest_url: ClassVar[str] = "https://www.okx.com"
    max_streams_per_connection: ClassVar[int] = 200
    subscribe_batch: ClassVar[int] = 20
    subscribe_rate_per_s: ClassVar[float] = 2.0
    connect_rate_per_s: ClassVar[float] = 2.0
    ping_idle_s: ClassVar[float | None] = 20.0
    event_time_is_ingest_time: ClassVar[bool] = True
    rest_rate_per_s: ClassVar[float] = 8.0
    rest_burst: ClassVar[float] = 10.0
    rest_page_limit: ClassVar[int] = 100

    def subscribe_messages(self, symbols: Sequence[SymbolInfo]) -> list[str]:
        """``{"op":"subscribe","args":[{"channel":"candle1m","instId":...}, ...]}`` batches."""
        messages = []
        for offset in range(0, len(symbols), self.subscribe_batch):
            args = [
                {"channel": "candle1m", "instId": info.raw_symbol}
                for info in symbols[offset : offset + self.subscribe_batch]
            ]
            messages.append(orjson.dumps({"op": "subscribe", "args": args}).decode())
        return messages

    def ping_message(self) -> str | None:
        """The literal text ``ping``."""
        return "ping"

    def parse_frame(self, text: str, ingest_time: int) -> ParsedFrame:
        """Dispatch on ``pong``, ``event`` (subscribe, error, notice) and candle pushes."""
        if text == "pong":
            return ParsedFrame(FrameKind.PONG)
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return ParsedFrame(FrameKind.MALFORMED, detail=f"not JSON: {exc}")
        if not isinstance(message, dict):
            return ParsedFrame(FrameKind.MALFORMED, detail="not a JSON object")
        event = message.get("event")
        if event is not None:
            if event in ("subscribe", "unsubscribe", "channel-conn-count"):
                return ParsedFrame(FrameKind.ACK)
            if event == "notice" and message.get("code") in (
                _SERVICE_UPGRADE_NOTICE,
                int(_SERVICE_UPGRADE_NOTICE),
            ):
                return ParsedFrame(FrameKind.SHUTDOWN, detail=text_of(message.get("msg"), 200))
            if event in ("error", "notice", "channel-conn-count-error"):
                return ParsedFrame(
                    FrameKind.ERROR,
                    detail=f"{text_of(message.get('code'))}: {text_of(message.get('msg'), 250)}",
                )
            return ParsedFrame(FrameKind.MALFORMED, detail=f"unknown event {quote(event)}"[:100])
        arg = message.get("arg")
        data = message.get("data")
        if isinstance(arg, dict) and isinstance(data, list):
            if arg.get("channel") != "candle1m":
                return ParsedFrame(
                    FrameKind.MALFORMED, detail=f"unexpected channel {quote(arg.get('channel'))}"
                )
            inst_id = arg.get("instId")
            info = self.symbols.get(inst_id) if isinstance(inst_id, str) else None
            if info is None:
                return ParsedFrame(
                    FrameKind.MALFORMED, detail=f"candle of unsubscribed {quote(inst_id)}"
                )
            parsed = ParsedFrame(FrameKind.KLINES)
            for row in data:
                try:
                    parsed.klines.append(self._row_to_kline(info, row, ingest_time, ingest_time))
                except InvalidKline as exc:
                    parsed.rejected.append(
                        RejectedBar(exc.reason, dumps(row), self.series_key_of(info))
                    )
            return parsed
        return ParsedFrame(FrameKind.MALFORMED, detail="unknown message type")

    def _row_to_kline(
        self,
        info: SymbolInfo,
        row: Any,
        event_time: int,
        ingest_time: int,
        provenance: str = "ws",
    ) -> Kline:
        if not isinstance(row, list) or len(row) not in (7, 9):
            raise InvalidKline(
                "candle: expected [ts,o,h,l,c,vol,volCcy,volCcyQuote,confirm] "
                "or the legacy [ts,o,h,l,c,vol,volCcy]"
            )
        open_time = to_int(row[0], "ts")
        close_time = open_time + MINUTE_MS - 1
        legacy = len(row) == 7
        if legacy:
            is_closed = close_time < ingest_time
        else:
            confirm = row[8]
            if confirm not in ("0", "1"):
                raise InvalidKline(f"confirm: expected '0' or '1', got {quote(confirm)}"[:100])
            is_closed = confirm == "1"
        vol = to_float(row[5], "vol")
        vol_ccy = to_float(row[6], "volCcy")
        vol_ccy_quote = None if legacy else to_float(row[7], "volCcyQuote")
        if info.margin == "linear":
            # volCcy is OKX's own contracts x ctVal; the 7-field row is converted with ctVal.
            volume = vol * info.contract_size if legacy else vol_ccy
            quote_volume = vol_ccy_quote
        elif info.margin == "inverse":
            volume, quote_volume = vol_ccy, vol * info.contract_size
        else:
            volume, quote_volume = vol, vol_ccy if legacy else vol_ccy_quote
        return self.build(
            info,
            {
                "open_time": open_time,
                "close_time": close_time,
                "open": to_float(row[1], "o"),
                "high": to_float(row[2], "h"),
                "low": to_float(row[3], "l"),
                "close": to_float(row[4], "c"),
                "volume": volume,
                "quote_volume": quote_volume,
                "trades": None,
                "taker_buy_volume": None,
                "taker_buy_quote_volume": None,
                "is_closed": is_closed,
                "event_time": event_time,
                "ingest_time": ingest_time,
            },
            provenance,
        )

    def rest_request(self, info: SymbolInfo, start_ms: int, end_ms: int) -> RestRequest:
        """``history-candles`` newer than ``start_ms - 1`` and older than ``end_ms``."""
        return RestRequest(
            "/api/v5/market/history-candles",
            {
                "instId": info.raw_symbol,
                "bar": "1m",
                "after": str(end_ms),
                "before": str(start_ms - 1),
                "limit": str(self.rest_page_limit),
            },
        )

    def parse_rest(
        self, info: SymbolInfo, payload: Any, start_ms: int, end_ms: int, ingest_time: int
    ) -> RestPage:
        """Confirmed candles of one answer, oldest first; pages backwards while full."""
        if not isinstance(payload, dict):
            raise RestError(f"okx history-candles: unexpected body {quote(payload, 200)}")
        raw_code = payload.get("code")
        if isinstance(raw_code, int) and not isinstance(raw_code, bool):
            raw_code = str(raw_code)
        if not isinstance(raw_code, str):
            raise RestError(f"okx history-candles: code {quote(raw_code)} is not a string")
        code = raw_code
        if code in _RATE_LIMIT_CODES:
            raise RestRateLimited(f"okx {text_of(code)}: {text_of(payload.get('msg'), 200)}")
        if code != "0":
            raise RestError(f"okx error {text_of(code)}: {text_of(payload.get('msg'), 200)}")
        rows = payload.get("data")
        if not isinstance(rows, list):
            raise RestError("okx history-candles: 'data' is not a list")
        page = RestPage([], [])
        oldest: int | None = None
        for row in rows:
            try:
                kline = self._row_to_kline(
                    info, row, self.rest_event_time(to_int(row[0], "ts")), ingest_time, "rest"
                )
            except (InvalidKline, TypeError, IndexError, KeyError) as exc:
                reason = exc.reason if isinstance(exc, InvalidKline) else "candle: bad row shape"
                page.rejected.append(RejectedBar(reason, dumps(row), self.series_key_of(info)))
                continue
            oldest = kline.open_time if oldest is None else min(oldest, kline.open_time)
            if start_ms <= kline.open_time < end_ms:
                if kline.is_closed:
                    page.klines.append(kline)
                else:
                    page.unconfirmed.append(kline.open_time)
        page.klines.sort(key=lambda kline: kline.open_time)
        if len(rows) >= self.rest_page_limit and oldest is not None and oldest > start_ms:
            page.next_end_ms = oldest
        return page
