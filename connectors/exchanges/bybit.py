"""Bybit v5: ``kline.1.{symbol}`` on the public spot/linear WebSockets, ``/v5/market/kline``."""

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
from udfs.record import InvalidKline, quote

_RATE_LIMIT_CODES = frozenset({10006, 10018})
# How far ahead of Bybit's clock ours may run at the turn of a minute and the newest row of a
# REST answer still be taken for the minute in progress (see Bybit.parse_rest).
OPEN_BAR_CLOCK_AHEAD_MS = 60_000


class Bybit(ExchangeAdapter):
    """Bybit v5 spot (``/v5/public/spot``) and linear (``/v5/public/linear``) klines.

    Subscribe with ``{"req_id":"..","op":"subscribe","args":["kline.1.BTCUSDT",...]}`` (spot
    accepts at most 10 args per request, so the bridge always sends 10); the client sends
    ``{"op":"ping"}`` every 20 s. Spot answers the ping with
    ``{"success":true,"ret_msg":"pong","conn_id":"..","req_id":"..","op":"ping"}``, linear with
    ``{"req_id":"..","op":"pong","args":["1717171260012"],"conn_id":".."}``.

    A real push (``confirm`` is a JSON boolean, prices are strings)::

        {"topic":"kline.1.BTCUSDT","type":"snapshot","ts":1717171260012,
         "data":[{"start":1717171200000,"end":1717171259999,"interval":"1",
                  "open":"67512.01","close":"67530","high":"67544","low":"67508",
                  "volume":"18.869342","turnover":"1274220.8258747","confirm":true,
                  "timestamp":1717171260012}]}

    Units: ``volume`` is in base coin on spot; on linear it counts contracts, and a Bybit
    USDT/USDC linear contract is one unit of the base coin (orders and positions on linear are
    sized in base coin; for ``1000PEPEUSDT`` the base is ``1000PEPE``, which the canonical
    symbol ``1000PEPE-USDT-PERP`` keeps, with base_multiplier 1000), so it is the base volume.
    ``turnover`` is the quote volume. On inverse (``/v5/public/inverse``, ``BTCUSD`` ->
    ``BTC-USD-PERP``) ``volume`` counts 1-USD contracts and ``turnover`` is in the base coin:
    the record takes turnover as volume and contracts x 1 USD as quote volume. No trade count
    or taker volumes: null. Symbols: spot ``BTCUSDT`` -> ``BTC-USDT``, linear ``BTCUSDT`` ->
    ``BTC-USDT-PERP``, ``BTCPERP`` -> ``BTC-USDC-PERP``. Event time: the push's ``ts`` (when
    Bybit generated it), else the bar's ``timestamp``.

    ``GET /v5/market/kline?category=spot&symbol=BTCUSDT&interval=1&start=..&end=..&limit=1000``
    answers ``{"retCode":0,"retMsg":"OK","result":{"category":"spot","symbol":"BTCUSDT",
    "list":[["1717171200000","67512.01","67544","67508","67530","18.869342",
    "1274220.8258747"], ...]}}`` newest first; 600 requests per 5 s per IP; over it: HTTP 403
    or 429, or ``retCode`` 10006. The answer has no confirm flag and includes the still-open
    bar: a row whose minute has not ended by the ingest clock is listed as unconfirmed, never
    stored as closed; so is the newest row of an answer whose range goes on past its minute
    (Bybit lists a minute as soon as it begins, so nothing newer means it is the one in
    progress) while our clock says it ended less than ``OPEN_BAR_CLOCK_AHEAD_MS`` ago: a
    clock running ahead of Bybit's would otherwise store the open bar as closed.
    """

    name: ClassVar[str] = "bybit"
    markets: ClassVar[tuple[str, ...]] = ("spot", "linear", "inverse")
    default_ws_base: ClassVar[str] = "wss://stream.bybit.com"
    ws_paths: ClassVar[dict[str, str]] = {
        "spot": "/v5/public/spot",
        "linear": "/v5/public/linear",
        "inverse": "/v5/public/inverse",
    }
    default_rest_url: ClassVar[str] = "https://api.bybit.com"
    max_streams_per_connection: ClassVar[int] = 200
    subscribe_batch: ClassVar[int] = 10
    subscribe_rate_per_s: ClassVar[float] = 4.0
    connect_rate_per_s: ClassVar[float] = 1.0  # 500 connections per 5 min per IP
    ping_interval_s: ClassVar[float | None] = 20.0
    rest_rate_per_s: ClassVar[float] = 10.0
    rest_burst: ClassVar[float] = 10.0
    rest_page_limit: ClassVar[int] = 1000

    @staticmethod
    def _volumes(info: SymbolInfo, volume: float, turnover: float) -> dict[str, float]:
        """Base and quote volume: inverse contracts are quote (USD) value, turnover is base."""
        if info.margin == "inverse":
            return {"volume": turnover, "quote_volume": volume * info.contract_size}
        return {"volume": volume * info.contract_size, "quote_volume": turnover}

    def subscribe_messages(self, symbols: Sequence[SymbolInfo]) -> list[str]:
        """Subscribe requests of 10 ``kline.1.{symbol}`` topics each."""
        messages = []
        for number, offset in enumerate(range(0, len(symbols), self.subscribe_batch)):
            topics = [
                f"kline.1.{info.raw_symbol}"
                for info in symbols[offset : offset + self.subscribe_batch]
            ]
            messages.append(
                orjson.dumps(
                    {"req_id": f"sub-{number}", "op": "subscribe", "args": topics}
                ).decode()
            )
        return messages

    def ping_message(self) -> str | None:
        """``{"req_id":"ping","op":"ping"}``."""
        return '{"req_id":"ping","op":"ping"}'

    def parse_frame(self, text: str, ingest_time: int) -> ParsedFrame:
        """Dispatch on ``op`` (ping/pong, subscribe) and ``topic`` (kline pushes)."""
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return ParsedFrame(FrameKind.MALFORMED, detail=f"not JSON: {exc}")
        if not isinstance(message, dict):
            return ParsedFrame(FrameKind.MALFORMED, detail="not a JSON object")
        topic = message.get("topic")
        if isinstance(topic, str):
            return self._parse_kline_push(topic, message, ingest_time)
        op = message.get("op")
        if op == "pong" or (op == "ping" and message.get("ret_msg") == "pong"):
            return ParsedFrame(FrameKind.PONG)
        if op is not None and "success" in message:
            if message.get("success") is True:
                return ParsedFrame(FrameKind.ACK)
            return ParsedFrame(FrameKind.ERROR, detail=f"{op}: {message.get('ret_msg')}"[:300])
        return ParsedFrame(FrameKind.MALFORMED, detail="unknown message type")

    def _parse_kline_push(
        self, topic: str, message: dict[str, Any], ingest_time: int
    ) -> ParsedFrame:
        parts = topic.split(".")
        if len(parts) != 3 or parts[0] != "kline":
            return ParsedFrame(FrameKind.MALFORMED, detail=f"unexpected topic {quote(topic)}"[:100])
        info = self.symbols.get(parts[2])
        if info is None:
            return ParsedFrame(
                FrameKind.MALFORMED, detail=f"kline of unsubscribed {quote(parts[2])}"
            )
        data = message.get("data")
        if not isinstance(data, list):
            return ParsedFrame(FrameKind.MALFORMED, detail="kline push without a 'data' list")
        parsed = ParsedFrame(FrameKind.KLINES)
        for item in data:
            try:
                if not isinstance(item, dict):
                    raise InvalidKline("kline: expected an object")
                if str(item.get("interval")) != "1" or parts[1] != "1":
                    raise InvalidKline(f"interval: expected 1, got {quote(item.get('interval'))}")
                confirm = item.get("confirm")
                if not isinstance(confirm, bool):
                    raise InvalidKline(
                        f"confirm: expected true or false, got {quote(confirm)}"[:100]
                    )
                event_time = message.get("ts", item.get("timestamp"))
                parsed.klines.append(
                    self.build(
                        info,
                        {
                            "open_time": to_int(item.get("start"), "start"),
                            "close_time": to_int(item.get("end"), "end"),
                            "open": to_float(item.get("open"), "open"),
                            "high": to_float(item.get("high"), "high"),
                            "low": to_float(item.get("low"), "low"),
                            "close": to_float(item.get("close"), "close"),
                            **self._volumes(
                                info,
                                to_float(item.get("volume"), "volume"),
                                to_float(item.get("turnover"), "turnover"),
                            ),
                            "trades": None,
                            "taker_buy_volume": None,
                            "taker_buy_quote_volume": None,
                            "is_closed": confirm,
                            "event_time": to_int(event_time, "ts"),
                            "ingest_time": ingest_time,
                        },
                    )
                )
            except InvalidKline as exc:
                parsed.rejected.append(
                    RejectedBar(exc.reason, dumps(item), self.series_key_of(info))
                )
        return parsed

    def rest_request(self, info: SymbolInfo, start_ms: int, end_ms: int) -> RestRequest:
        """``GET /v5/market/kline`` with inclusive ``start``/``end``."""
        return RestRequest(
            "/v5/market/kline",
            {
                "category": self.market,
                "symbol": info.raw_symbol,
                "interval": "1",
                "start": str(start_ms),
                "end": str(end_ms - 1),
                "limit": str(self.rest_page_limit),
            },
        )

    def parse_rest(
        self, info: SymbolInfo, payload: Any, start_ms: int, end_ms: int, ingest_time: int
    ) -> RestPage:
        """Closed bars of one answer, oldest first; pages backwards while the page is full.

        The minute still open at ``ingest_time`` goes to ``unconfirmed``, never into ``klines``;
        so does the newest row when the range goes on past its minute and ``ingest_time``
        (possibly ahead of Bybit's clock) puts its end less than ``OPEN_BAR_CLOCK_AHEAD_MS`` ago.
        """
        if not isinstance(payload, dict):
            raise RestError(f"bybit kline: unexpected body {quote(payload, 200)}")
        code = payload.get("retCode")
        if isinstance(code, str):
            try:
                code = to_int(code, "retCode")
            except InvalidKline:
                raise RestError(f"bybit kline: retCode {quote(code)} is not an integer") from None
        if isinstance(code, bool) or not isinstance(code, int):
            raise RestError(f"bybit kline: retCode {quote(code)} is not an integer")
        if code in _RATE_LIMIT_CODES:
            raise RestRateLimited(f"bybit {code}: {text_of(payload.get('retMsg'), 200)}")
        if code != 0:
            raise RestError(f"bybit error {code}: {text_of(payload.get('retMsg'), 200)}")
        result = payload.get("result")
        rows = result.get("list") if isinstance(result, dict) else None
        if not isinstance(rows, list):
            raise RestError("bybit kline: 'result.list' is not a list")
        page = RestPage([], [])
        oldest: int | None = None
        starts = [start for start in map(_start_of, rows) if start is not None]
        newest = max(starts, default=None)
        # The minute in progress is Bybit's newest row: nothing newer was listed although the
        # range goes on past it. Our clock tells it from a last bar long closed (a delisted
        # symbol), not from the open one when it runs a little ahead of Bybit's.
        open_newest = (
            newest
            if newest is not None
            and newest + MINUTE_MS < end_ms
            and ingest_time - (newest + MINUTE_MS) < OPEN_BAR_CLOCK_AHEAD_MS
            else None
        )
        for row in rows:
            try:
                if not isinstance(row, list) or len(row) < 7:
                    raise InvalidKline("kline row: expected [start,o,h,l,c,volume,turnover]")
                open_time = to_int(row[0], "startTime")
                oldest = open_time if oldest is None else min(oldest, open_time)
                if not start_ms <= open_time < end_ms:
                    continue
                if open_time + MINUTE_MS > ingest_time or open_time == open_newest:
                    page.unconfirmed.append(open_time)
                    continue
                page.klines.append(
                    self.build(
                        info,
                        {
                            "open_time": open_time,
                            "close_time": open_time + MINUTE_MS - 1,
                            "open": to_float(row[1], "open"),
                            "high": to_float(row[2], "high"),
                            "low": to_float(row[3], "low"),
                            "close": to_float(row[4], "close"),
                            **self._volumes(
                                info, to_float(row[5], "volume"), to_float(row[6], "turnover")
                            ),
                            "trades": None,
                            "taker_buy_volume": None,
                            "taker_buy_quote_volume": None,
                            "is_closed": True,
                            "event_time": self.rest_event_time(open_time),
                            "ingest_time": ingest_time,
                        },
                        provenance="rest",
                    )
                )
            except InvalidKline as exc:
                page.rejected.append(RejectedBar(exc.reason, dumps(row), self.series_key_of(info)))
        page.klines.sort(key=lambda kline: kline.open_time)
        if len(rows) >= self.rest_page_limit and oldest is not None and oldest > start_ms:
            page.next_end_ms = oldest
        return page


def _start_of(row: Any) -> int | None:
    """The start time of a kline row, or None when the row has none (it is rejected later)."""
    if not isinstance(row, list) or len(row) < 7:
        return None
    try:
        return to_int(row[0], "startTime")
    except InvalidKline:
        return None
