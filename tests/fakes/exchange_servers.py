"""Local WebSocket + REST servers that speak Binance spot, OKX v5 and Bybit v5 kline protocols.

Each fake serves one deterministic market (:class:`Tape`) on one port: the exchange's real
WebSocket paths, envelopes, pings and acknowledgements, and its REST kline endpoint with the
real parameters, ordering and page limits. Faults are scripted by the test: server-initiated
disconnects (graceful or abrupt), shutdown notices, silence (a link that stays open but sends
nothing), garbage frames, a skipped final update (a gap that must be repaired over REST) and
rate-limit answers (429/418 with ``Retry-After``, OKX/Bybit error codes).

Time is virtual: tick ``t`` is update ``t % steps_per_bar`` of bar ``first_bar + t //
steps_per_bar``, so a test sees many one-minute bars in seconds. Every update a fake sends is
logged in :attr:`FakeExchange.sent`, which is what the integration tests check Kafka against.

:class:`ThreadedFake` runs a fake on its own event loop in a thread, for tests that drive a
bridge subprocess from synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import WSMsgType, web

MINUTE_MS = 60_000
BASE_OPEN_TIME = 1_717_200_000_000  # 2024-06-01T00:00:00Z
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# The market
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TapeUpdate:
    """One kline update of the fake market, in exchange-neutral form."""

    symbol_index: int
    raw_symbol: str
    bar: int
    step: int
    closed: bool
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float  # base asset
    quote_volume: float
    trades: int
    taker_buy_volume: float
    taker_buy_quote_volume: float
    event_time: int


class Tape:
    """A deterministic market: each bar has ``updates_per_bar`` in-progress updates, then
    its final one. Volume grows with every update of a bar, so ``(open_time, volume)``
    identifies an update."""

    def __init__(
        self,
        raw_symbols: list[str],
        *,
        updates_per_bar: int = 4,
        first_bar: int = 10,
        base_open_time: int = BASE_OPEN_TIME,
    ) -> None:
        self.raw_symbols = raw_symbols
        self.steps_per_bar = updates_per_bar + 1
        self.first_bar = first_bar
        self.base_open_time = base_open_time

    def position(self, tick: int) -> tuple[int, int]:
        """(bar, step) of ``tick``."""
        return self.first_bar + tick // self.steps_per_bar, tick % self.steps_per_bar

    def open_time(self, bar: int) -> int:
        """Open time of ``bar``."""
        return self.base_open_time + bar * MINUTE_MS

    def bar_of(self, open_time: int) -> int:
        """The bar index of ``open_time``."""
        return (open_time - self.base_open_time) // MINUTE_MS

    def update(self, symbol_index: int, bar: int, step: int) -> TapeUpdate:
        """The update ``step`` of ``bar`` of symbol ``symbol_index``."""
        base_price = 100.0 * (symbol_index + 1) + (bar % 50) * 0.5
        close = base_price + ((step % 3) - 1) * 0.1
        volume = 1.0 + step * 0.25
        steps = self.steps_per_bar
        open_time = self.open_time(bar)
        closed = step == steps - 1
        event_time = (
            open_time + MINUTE_MS + 5
            if closed
            else open_time + (step + 1) * (MINUTE_MS // (steps + 1))
        )
        return TapeUpdate(
            symbol_index=symbol_index,
            raw_symbol=self.raw_symbols[symbol_index],
            bar=bar,
            step=step,
            closed=closed,
            open_time=open_time,
            open=base_price,
            high=max(base_price, close) + 0.2,
            low=min(base_price, close) - 0.2,
            close=close,
            volume=volume,
            quote_volume=round(volume * close, 6),
            trades=10 + step,
            taker_buy_volume=round(volume * 0.4, 6),
            taker_buy_quote_volume=round(volume * 0.4 * close, 6),
            event_time=event_time,
        )

    def final(self, symbol_index: int, bar: int) -> TapeUpdate:
        """The closed bar."""
        return self.update(symbol_index, bar, self.steps_per_bar - 1)


def num(value: float) -> str:
    """A decimal string as exchanges send them."""
    return repr(float(value))


# --------------------------------------------------------------------------------------------
# Fake server base
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class FakeConnection:
    """One client connection as the fake sees it."""

    conn_id: int
    ws: web.WebSocketResponse
    path: str
    opened_at: float
    symbols: set[int] = field(default_factory=set)
    silenced: bool = False
    last_sent_at: float = 0.0
    last_client_message_at: float = 0.0
    pong_waiters: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)
    client_pings: int = 0
    transport: asyncio.Transport | None = None


@dataclass(slots=True)
class RestLimitPlan:
    """The next ``count`` REST requests get ``status`` with ``Retry-After: retry_after``."""

    count: int = 0
    status: int = 429
    retry_after: str | None = "1"


class FakeExchange:
    """Common machinery: tape ticker, connections, fault scripts, REST throttling."""

    name = "fake"

    def __init__(
        self,
        raw_symbols: list[str],
        *,
        market: str = "spot",
        updates_per_bar: int = 4,
        first_bar: int = 10,
        tick_interval_s: float = 0.02,
        ws_ping_interval_s: float | None = None,
        client_idle_timeout_s: float | None = None,
        max_connection_age_s: float | None = None,
        shutdown_grace_s: float = 1.0,
        realtime: bool = False,
    ) -> None:
        self.tape = Tape(raw_symbols, updates_per_bar=updates_per_bar, first_bar=first_bar)
        self.market = market
        self.tick_interval_s = tick_interval_s
        self.ws_ping_interval_s = ws_ping_interval_s
        self.client_idle_timeout_s = client_idle_timeout_s
        self.max_connection_age_s = max_connection_age_s
        self.shutdown_grace_s = shutdown_grace_s
        self.realtime = realtime
        self.tick = 0
        self.paused = asyncio.Event()
        self.sent: list[tuple[int, int, int, int]] = []  # (conn_id, symbol, bar, step)
        self.skipped: set[tuple[int, int, int]] = set()  # (symbol, bar, step) never sent
        self.connections: dict[int, FakeConnection] = {}
        self.closed_connections: list[int] = []
        self.rest_requests: list[tuple[str, dict[str, str], int]] = []
        self.rest_limit = RestLimitPlan()
        self.control_frames_sent: list[tuple[int, str]] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def ws_base(self) -> str:
        """``ws://127.0.0.1:PORT`` (the bridge appends the market's path)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def rest_base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def routes(self) -> list[web.RouteDef]:
        """The exchange's WebSocket and REST routes."""
        raise NotImplementedError

    async def start(self, *, ticking: bool = True) -> None:
        """Listen on a free loopback port and start the ticker."""
        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        if not ticking:
            self.paused.set()
        self._tasks.append(asyncio.create_task(self._ticker()))
        self._tasks.append(asyncio.create_task(self._housekeeping()))

    async def stop(self) -> None:
        """Stop ticking, close every connection and the listener."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for connection in list(self.connections.values()):
            await connection.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- the market ------------------------------------------------------------------------

    def current_bar(self) -> int:
        """The bar the tape is in (its next tick's bar)."""
        return self.tape.position(self.tick)[0]

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval_s)
            if self.paused.is_set():
                continue
            await self.advance()

    async def advance(self) -> None:
        """Send the next tick's update of every symbol to its subscribers."""
        bar, step = self.tape.position(self.tick)
        self.tick += 1
        frames: dict[int, str] = {}
        for index in range(len(self.tape.raw_symbols)):
            if (index, bar, step) in self.skipped:
                continue
            frames[index] = self.update_frame(self.tape.update(index, bar, step))
        for connection in list(self.connections.values()):
            if connection.silenced or connection.ws.closed:
                continue
            for index, frame in frames.items():
                if index in connection.symbols and await self._send(connection, frame):
                    self.sent.append((connection.conn_id, index, bar, step))

    async def _send(self, connection: FakeConnection, text: str) -> bool:
        try:
            await connection.ws.send_str(text)
        except (ConnectionResetError, RuntimeError):
            return False
        connection.last_sent_at = time.monotonic()
        return True

    async def _housekeeping(self) -> None:
        """Server pings, idle and age limits."""
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for connection in list(self.connections.values()):
                if connection.ws.closed:
                    continue
                if (
                    self.max_connection_age_s is not None
                    and now - connection.opened_at > self.max_connection_age_s
                ):
                    await connection.ws.close(code=1000, message=b"connection too old")
                    continue
                if (
                    self.client_idle_timeout_s is not None
                    and now - max(connection.last_sent_at, connection.last_client_message_at)
                    > self.client_idle_timeout_s
                    and self.idle_counts_both_ways()
                ) or (
                    self.client_idle_timeout_s is not None
                    and not self.idle_counts_both_ways()
                    and now - connection.last_client_message_at > self.client_idle_timeout_s
                ):
                    await connection.ws.close(code=1000, message=b"idle")

    def idle_counts_both_ways(self) -> bool:
        """OKX drops a link on which nothing was pushed; Bybit one the client never pinged."""
        return True

    # --- per-exchange protocol -------------------------------------------------------------

    def update_frame(self, update: TapeUpdate) -> str:
        """The WebSocket push of one update."""
        raise NotImplementedError

    def garbage_frames(self) -> list[str]:
        """Frames a bridge must count and survive: not JSON, unknown shapes, an invalid bar."""
        raise NotImplementedError

    def shutdown_frame(self) -> str | None:
        """The exchange's maintenance notice, if it has one."""
        return None

    async def handle_client_text(self, connection: FakeConnection, text: str) -> None:
        """Subscriptions and application pings."""
        raise NotImplementedError

    # --- WebSocket plumbing ----------------------------------------------------------------

    async def serve_ws(
        self, request: web.Request, symbols: set[int] | None = None
    ) -> web.WebSocketResponse:
        """Accept a WebSocket, register it and read the client's messages."""
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 22)
        await ws.prepare(request)
        now = time.monotonic()
        connection = FakeConnection(
            conn_id=next(self._ids),
            ws=ws,
            path=request.path,
            opened_at=now,
            symbols=symbols or set(),
            last_sent_at=now,
            last_client_message_at=now,
            transport=request.transport,
        )
        self.connections[connection.conn_id] = connection
        pinger = None
        if self.ws_ping_interval_s is not None:
            pinger = asyncio.create_task(self._server_pings(connection))
        try:
            async for message in ws:
                connection.last_client_message_at = time.monotonic()
                if message.type is WSMsgType.TEXT:
                    await self.handle_client_text(connection, message.data)
                elif message.type is WSMsgType.PING:
                    await ws.pong(message.data)
                elif message.type is WSMsgType.PONG:
                    waiter = connection.pong_waiters.pop(bytes(message.data), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
        finally:
            if pinger is not None:
                pinger.cancel()
            self.connections.pop(connection.conn_id, None)
            self.closed_connections.append(connection.conn_id)
        return ws

    async def _server_pings(self, connection: FakeConnection) -> None:
        """Ping every interval; drop a client that has not answered within three intervals."""
        assert self.ws_ping_interval_s is not None
        while not connection.ws.closed:
            await asyncio.sleep(self.ws_ping_interval_s)
            try:
                await self.barrier(connection, timeout_s=3 * self.ws_ping_interval_s)
            except TimeoutError:
                await connection.ws.close(code=1008, message=b"pong timeout")
                return

    async def barrier(self, connection: FakeConnection, timeout_s: float = 5.0) -> None:
        """Ping and wait for the pong: the client has read everything sent before."""
        payload = f"b{time.monotonic_ns()}".encode()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        connection.pong_waiters[payload] = waiter
        try:
            await connection.ws.ping(payload)
        except (ConnectionResetError, RuntimeError):
            connection.pong_waiters.pop(payload, None)
            raise TimeoutError("connection gone") from None
        await asyncio.wait_for(waiter, timeout_s)

    # --- faults ----------------------------------------------------------------------------

    async def pause(self) -> None:
        """Stop the tape, then make sure every open client has read what was sent."""
        self.paused.set()
        for connection in list(self.connections.values()):
            if not connection.ws.closed and not connection.silenced:
                with contextlib.suppress(TimeoutError):
                    await self.barrier(connection)

    async def resume(self) -> None:
        """Restart the tape."""
        self.paused.clear()

    async def drop_all(self, *, abort: bool) -> list[int]:
        """Disconnect every client: a close frame, or a TCP abort after a read barrier."""
        dropped = []
        was_paused = self.paused.is_set()
        await self.pause()
        for connection in list(self.connections.values()):
            dropped.append(connection.conn_id)
            if abort:
                if connection.transport is not None:
                    connection.transport.abort()
            else:
                await connection.ws.close(code=1001, message=b"going away")
        if not was_paused:
            await self.resume()
        return dropped

    async def silence_all(self) -> list[int]:
        """Keep every current link open but send nothing on it any more."""
        silenced = []
        for connection in self.connections.values():
            connection.silenced = True
            silenced.append(connection.conn_id)
        return silenced

    async def send_garbage(self) -> int:
        """Send the garbage frames to every client; returns how many frames each got."""
        frames = self.garbage_frames()
        for connection in list(self.connections.values()):
            if connection.silenced:
                continue
            for frame in frames:
                await self._send(connection, frame)
                self.control_frames_sent.append((connection.conn_id, frame[:40]))
        return len(frames)

    async def send_shutdown_notice(self) -> list[int]:
        """Send the maintenance notice to every client and close them after the grace time."""
        frame = self.shutdown_frame()
        if frame is None:
            raise RuntimeError(f"{self.name} has no shutdown notice")
        noticed = []
        for connection in list(self.connections.values()):
            await self._send(connection, frame)
            noticed.append(connection.conn_id)
            asyncio.get_running_loop().call_later(
                self.shutdown_grace_s, self._close_later, connection.ws
            )
        return noticed

    @staticmethod
    def _close_later(ws: web.WebSocketResponse) -> None:
        asyncio.ensure_future(ws.close(code=1001))  # noqa: RUF006  (the fake does not await it)

    def skip_final(self, symbol_index: int, bar: int) -> None:
        """Never send the final update of ``bar`` (the next bar reveals the gap)."""
        self.skipped.add((symbol_index, bar, self.tape.steps_per_bar - 1))

    def limit_rest(self, count: int, status: int = 429, retry_after: str | None = "1") -> None:
        """Answer the next ``count`` REST requests with a rate-limit error."""
        self.rest_limit = RestLimitPlan(count, status, retry_after)

    # --- REST helpers ----------------------------------------------------------------------

    def take_rest_limit(self) -> RestLimitPlan | None:
        """The rate-limit answer for this request, if one is scripted."""
        if self.rest_limit.count > 0:
            self.rest_limit.count -= 1
            return RestLimitPlan(1, self.rest_limit.status, self.rest_limit.retry_after)
        return None

    def rest_bars(self, symbol_index: int, start_ms: int, end_ms: int) -> list[TapeUpdate]:
        """Bars with ``start_ms <= open_time <= end_ms`` the market has, oldest first; the
        bar in progress is its latest update (not final)."""
        current_bar, current_step = self.tape.position(self.tick)
        first = max(0, self.tape.bar_of(start_ms + MINUTE_MS - 1))
        last = min(self.tape.bar_of(end_ms), current_bar)
        bars = []
        for bar in range(first, last + 1):
            if bar < current_bar:
                bars.append(self.tape.final(symbol_index, bar))
            elif current_step > 0:
                bars.append(self.tape.update(symbol_index, bar, current_step - 1))
        return bars

    def symbol_index(self, raw_symbol: str) -> int | None:
        """Index of a raw symbol on the tape."""
        try:
            return self.tape.raw_symbols.index(raw_symbol)
        except ValueError:
            return None

    def log_rest(self, request: web.Request, status: int) -> None:
        """Remember one REST request (tests assert on them)."""
        self.rest_requests.append((request.path, dict(request.query), status))


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers=headers,
    )


# --------------------------------------------------------------------------------------------
# Binance spot
# --------------------------------------------------------------------------------------------


class BinanceFake(FakeExchange):
    """``/stream?streams=...`` combined streams, server pings, serverShutdown, /api/v3/klines.

    Markets: ``spot``, ``linear`` (USDT-M, ``/fapi/v1/klines``) and ``inverse`` (COIN-M,
    ``/dapi/v1/klines``). COIN-M counts contracts as Binance does: ``v``/``V`` are contracts
    of 100 USD (BTC) or 10 USD (others), ``q``/``Q`` the base-asset volumes.
    """

    name = "binance"

    def _volumes(self, raw_symbol: str, bar: Any) -> tuple[str, str, str, str]:
        """``(v, q, V, Q)`` of one bar or update in this market's units."""
        if self.market == "inverse":
            size = 100.0 if raw_symbol.startswith("BTCUSD_") else 10.0
            return (num(bar.quote_volume / size), num(bar.volume),
                    num(bar.taker_buy_quote_volume / size), num(bar.taker_buy_volume))  # fmt: skip
        return (num(bar.volume), num(bar.quote_volume), num(bar.taker_buy_volume),
                num(bar.taker_buy_quote_volume))  # fmt: skip

    def __init__(self, raw_symbols: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("ws_ping_interval_s", 1.0)
        super().__init__(raw_symbols, **kwargs)

    def routes(self) -> list[web.RouteDef]:
        """WebSocket ``/stream`` and REST ``/api/v3/klines`` (``/fapi/v1``, ``/dapi/v1``)."""
        return [
            web.get("/stream", self._ws),
            web.get("/api/v3/klines", self._klines),
            web.get("/fapi/v1/klines", self._klines),
            web.get("/dapi/v1/klines", self._klines),
        ]

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        names = [name for name in request.query.get("streams", "").split("/") if name]
        if len(names) > 1024:
            return web.Response(status=400, text="too many streams")
        symbols: set[int] = set()
        for name in names:
            symbol, _, channel = name.partition("@")
            index = self.symbol_index(symbol.upper())
            if channel != "kline_1m" or index is None or symbol != symbol.lower():
                return _json({"code": -1100, "msg": f"Invalid stream {name}"}, status=400)
            symbols.add(index)
        return await self.serve_ws(request, symbols)

    async def handle_client_text(self, connection: FakeConnection, text: str) -> None:
        """``{"method":"SUBSCRIBE","params":[...],"id":N}``."""
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            await self._send(connection, '{"error":{"code":2,"msg":"Invalid request"}}')
            return
        if request.get("method") == "SUBSCRIBE":
            for name in request.get("params", []):
                index = self.symbol_index(name.partition("@")[0].upper())
                if index is not None:
                    connection.symbols.add(index)
            await self._send(
                connection, orjson.dumps({"result": None, "id": request.get("id")}).decode()
            )

    def update_frame(self, update: TapeUpdate) -> str:
        """The combined-stream kline event."""
        symbol = update.raw_symbol
        volume, quote_volume, taker, taker_quote = self._volumes(symbol, update)
        return orjson.dumps(
            {
                "stream": f"{symbol.lower()}@kline_1m",
                "data": {
                    "e": "kline",
                    "E": update.event_time,
                    "s": symbol,
                    "k": {
                        "t": update.open_time,
                        "T": update.open_time + MINUTE_MS - 1,
                        "s": symbol,
                        "i": "1m",
                        "f": 1000 * update.bar,
                        "L": 1000 * update.bar + update.trades - 1,
                        "o": num(update.open),
                        "c": num(update.close),
                        "h": num(update.high),
                        "l": num(update.low),
                        "v": volume,
                        "n": update.trades,
                        "x": update.closed,
                        "q": quote_volume,
                        "V": taker,
                        "Q": taker_quote,
                        "B": "0",
                    },
                },
            }
        ).decode()

    def garbage_frames(self) -> list[str]:
        """Not JSON, an unknown event, an array, and a kline whose high is below its low."""
        bad = orjson.loads(self.update_frame(self.tape.update(0, self.current_bar(), 0)))
        bad["data"]["k"]["h"] = "1.0"
        return [
            "{not json",
            '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1}}',
            "[1,2,3]",
            orjson.dumps(bad).decode(),
        ]

    def shutdown_frame(self) -> str | None:
        """``serverShutdown``."""
        return orjson.dumps({"e": "serverShutdown", "E": int(time.time() * 1000)}).decode()

    async def _klines(self, request: web.Request) -> web.Response:
        limit_plan = self.take_rest_limit()
        if limit_plan is not None:
            self.log_rest(request, limit_plan.status)
            headers = {"Retry-After": limit_plan.retry_after} if limit_plan.retry_after else {}
            message = "Way too many requests; IP banned" if limit_plan.status == 418 else "Too many"
            return _json({"code": -1003, "msg": message}, limit_plan.status, headers)
        query = request.query
        index = self.symbol_index(query.get("symbol", ""))
        expected_path = {"spot": "/api/v3/klines", "linear": "/fapi/v1/klines",
                         "inverse": "/dapi/v1/klines"}[self.market]  # fmt: skip
        if index is None or query.get("interval") != "1m" or request.path != expected_path:
            self.log_rest(request, 400)
            return _json({"code": -1121, "msg": "Invalid symbol."}, status=400)
        limit = min(1000, int(query.get("limit", "500")))
        start = int(query.get("startTime", "0"))
        end = int(query.get("endTime", str(2**62)))
        raw_symbol = query.get("symbol", "")
        rows = []
        for bar in self.rest_bars(index, start, end)[:limit]:
            volume, quote_volume, taker, taker_quote = self._volumes(raw_symbol, bar)
            rows.append(
                [bar.open_time, num(bar.open), num(bar.high), num(bar.low), num(bar.close),
                 volume, bar.open_time + MINUTE_MS - 1, quote_volume, bar.trades, taker,
                 taker_quote, "0"]
            )  # fmt: skip
        self.log_rest(request, 200)
        return _json(rows, headers={"X-MBX-USED-WEIGHT-1M": str(2 * len(self.rest_requests))})


# --------------------------------------------------------------------------------------------
# OKX
# --------------------------------------------------------------------------------------------


class OkxFake(FakeExchange):
    """``/ws/v5/business`` candles, text ping/pong, notice 64008, history-candles.

    ``contract_value`` is the SWAP ctVal: ``vol`` is then ``volume / contract_value``
    contracts, ``volCcy`` the base volume.
    """

    name = "okx"

    def __init__(
        self, raw_symbols: list[str], *, contract_value: float = 0.01, **kwargs: Any
    ) -> None:
        kwargs.setdefault("client_idle_timeout_s", 30.0)
        super().__init__(raw_symbols, **kwargs)
        self.contract_value = contract_value
        self.pings = 0

    def routes(self) -> list[web.RouteDef]:
        """Business and public WebSockets, history-candles."""
        return [
            web.get("/ws/v5/business", self._ws),
            web.get("/ws/v5/public", self._ws),
            web.get("/api/v5/market/history-candles", self._history),
        ]

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        return await self.serve_ws(request)

    def idle_counts_both_ways(self) -> bool:
        """The server drops a link it has pushed nothing on (a pong counts)."""
        return True

    async def handle_client_text(self, connection: FakeConnection, text: str) -> None:
        """``ping`` and ``{"op":"subscribe","args":[...]}``."""
        if text == "ping":
            self.pings += 1
            connection.client_pings += 1
            await self._send(connection, "pong")
            return
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            await self._send(connection, '{"event":"error","code":"60012","msg":"Invalid request"}')
            return
        if request.get("op") != "subscribe":
            await self._send(connection, '{"event":"error","code":"60012","msg":"Invalid request"}')
            return
        for arg in request.get("args", []):
            index = self.symbol_index(arg.get("instId", ""))
            channel = arg.get("channel")
            if connection.path != "/ws/v5/business" or channel != "candle1m" or index is None:
                await self._send(
                    connection,
                    orjson.dumps(
                        {
                            "event": "error",
                            "code": "60018",
                            "msg": f"Wrong URL or channel:{channel},instId:{arg.get('instId')} "
                            "doesn't exist.",
                            "connId": f"c{connection.conn_id}",
                        }
                    ).decode(),
                )
                continue
            connection.symbols.add(index)
            await self._send(
                connection,
                orjson.dumps(
                    {"event": "subscribe", "arg": arg, "connId": f"c{connection.conn_id}"}
                ).decode(),
            )

    def _row(self, update: TapeUpdate) -> list[str]:
        swap = update.raw_symbol.endswith("-SWAP")
        vol = update.volume / self.contract_value if swap else update.volume
        vol_ccy = update.volume if swap else update.quote_volume
        return [
            str(update.open_time),
            num(update.open),
            num(update.high),
            num(update.low),
            num(update.close),
            num(round(vol, 8)),
            num(vol_ccy),
            num(update.quote_volume),
            "1" if update.closed else "0",
        ]

    def update_frame(self, update: TapeUpdate) -> str:
        """``{"arg":{"channel":"candle1m","instId":..},"data":[[...]]}``."""
        return orjson.dumps(
            {
                "arg": {"channel": "candle1m", "instId": update.raw_symbol},
                "data": [self._row(update)],
            }
        ).decode()

    def garbage_frames(self) -> list[str]:
        """Not JSON, an unknown event, a bare string, and a candle with high < low."""
        row = self._row(self.tape.update(0, self.current_bar(), 0))
        row[2] = "0.5"
        bad = {"arg": {"channel": "candle1m", "instId": self.tape.raw_symbols[0]}, "data": [row]}
        return ['{"arg":', '{"event":"mystery"}', '"hello"', orjson.dumps(bad).decode()]

    def shutdown_frame(self) -> str | None:
        """Notice 64008."""
        return (
            '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a '
            'service upgrade. Please reconnect.","connId":"a4d3ae55"}'
        )

    async def _history(self, request: web.Request) -> web.Response:
        limit_plan = self.take_rest_limit()
        if limit_plan is not None:
            self.log_rest(request, limit_plan.status)
            headers = {"Retry-After": limit_plan.retry_after} if limit_plan.retry_after else {}
            return _json({"code": "50011", "msg": "Too Many Requests", "data": []},
                         limit_plan.status, headers)  # fmt: skip
        query = request.query
        index = self.symbol_index(query.get("instId", ""))
        if index is None or query.get("bar") != "1m":
            self.log_rest(request, 200)
            return _json({"code": "51001", "msg": "Instrument ID does not exist", "data": []})
        limit = min(100, int(query.get("limit", "100")))
        after = int(query.get("after", str(2**62)))  # records earlier than this ts
        before = int(query.get("before", "0"))  # records newer than this ts
        bars = [
            bar
            for bar in self.rest_bars(index, before + 1, after - 1)
            if before < bar.open_time < after
        ]
        bars.reverse()  # newest first
        self.log_rest(request, 200)
        return _json({"code": "0", "msg": "", "data": [self._row(bar) for bar in bars[:limit]]})


# --------------------------------------------------------------------------------------------
# Bybit v5
# --------------------------------------------------------------------------------------------


class BybitFake(FakeExchange):
    """``/v5/public/{spot,linear,inverse}``, ``{"op":"ping"}``, ``/v5/market/kline`` (retCode
    10006). Inverse counts 1-USD contracts as Bybit does: ``volume`` is the USD value,
    ``turnover`` the base coin."""

    name = "bybit"

    def __init__(self, raw_symbols: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("client_idle_timeout_s", 60.0)
        super().__init__(raw_symbols, **kwargs)
        self.pings = 0

    def routes(self) -> list[web.RouteDef]:
        """Public spot/linear WebSockets and the kline endpoint."""
        return [
            web.get("/v5/public/spot", self._ws),
            web.get("/v5/public/linear", self._ws),
            web.get("/v5/public/inverse", self._ws),
            web.get("/v5/market/kline", self._klines),
        ]

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if request.path != f"/v5/public/{self.market}":
            return web.Response(status=404, text="wrong market")
        return await self.serve_ws(request)

    def idle_counts_both_ways(self) -> bool:
        """Bybit drops a client that stopped pinging, however much it pushes."""
        return False

    async def handle_client_text(self, connection: FakeConnection, text: str) -> None:
        """``{"op":"ping"}`` and ``{"op":"subscribe","args":["kline.1.X", ...]}``."""
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            await self._send(connection, '{"success":false,"ret_msg":"Invalid request"}')
            return
        op = request.get("op")
        conn_id = f"c{connection.conn_id}"
        if op == "ping":
            self.pings += 1
            connection.client_pings += 1
            if self.market == "spot":
                pong = {"success": True, "ret_msg": "pong", "conn_id": conn_id,
                        "req_id": request.get("req_id", ""), "op": "ping"}  # fmt: skip
            else:
                pong = {"req_id": request.get("req_id", ""), "op": "pong",
                        "args": [str(int(time.time() * 1000))], "conn_id": conn_id}  # fmt: skip
            await self._send(connection, orjson.dumps(pong).decode())
            return
        if op == "subscribe":
            args = request.get("args", [])
            if self.market == "spot" and len(args) > 10:
                await self._send(connection, orjson.dumps(
                    {"success": False, "ret_msg": "args size >10", "conn_id": conn_id,
                     "req_id": request.get("req_id", ""), "op": "subscribe"}).decode())  # fmt: skip
                return
            for topic in args:
                parts = topic.split(".")
                index = self.symbol_index(parts[2]) if len(parts) == 3 else None
                if parts[:2] == ["kline", "1"] and index is not None:
                    connection.symbols.add(index)
            await self._send(connection, orjson.dumps(
                {"success": True, "ret_msg": "", "conn_id": conn_id,
                 "req_id": request.get("req_id", ""), "op": "subscribe"}).decode())  # fmt: skip

    def _volume_turnover(self, bar: Any) -> tuple[str, str]:
        if self.market == "inverse":
            return num(bar.quote_volume), num(bar.volume)
        return num(bar.volume), num(bar.quote_volume)

    def _item(self, update: TapeUpdate) -> dict[str, Any]:
        volume, turnover = self._volume_turnover(update)
        return {
            "start": update.open_time,
            "end": update.open_time + MINUTE_MS - 1,
            "interval": "1",
            "open": num(update.open),
            "close": num(update.close),
            "high": num(update.high),
            "low": num(update.low),
            "volume": volume,
            "turnover": turnover,
            "confirm": update.closed,
            "timestamp": update.event_time,
        }

    def update_frame(self, update: TapeUpdate) -> str:
        """``{"topic":"kline.1.X","data":[{...}],"ts":..,"type":"snapshot"}``."""
        return orjson.dumps(
            {
                "topic": f"kline.1.{update.raw_symbol}",
                "data": [self._item(update)],
                "ts": update.event_time,
                "type": "snapshot",
            }
        ).decode()

    def garbage_frames(self) -> list[str]:
        """Not JSON, an unknown op, a number, and a kline with high < low."""
        item = self._item(self.tape.update(0, self.current_bar(), 0))
        item["high"] = "0.5"
        bad = {"topic": f"kline.1.{self.tape.raw_symbols[0]}", "data": [item], "ts": 1717200000001,
               "type": "snapshot"}  # fmt: skip
        return ["}{", '{"op":"mystery"}', "42", orjson.dumps(bad).decode()]

    async def _klines(self, request: web.Request) -> web.Response:
        limit_plan = self.take_rest_limit()
        if limit_plan is not None:
            if limit_plan.status == 200:
                self.log_rest(request, 10006)  # logged as the retCode: the limit is in the body
                return _json({"retCode": 10006, "retMsg": "Too many visits!", "result": {}})
            self.log_rest(request, limit_plan.status)
            headers = {"Retry-After": limit_plan.retry_after} if limit_plan.retry_after else {}
            return web.Response(status=limit_plan.status, text="access too frequent",
                                headers=headers)  # fmt: skip
        query = request.query
        index = self.symbol_index(query.get("symbol", ""))
        if index is None or query.get("category") != self.market or query.get("interval") != "1":
            self.log_rest(request, 200)
            return _json({"retCode": 10001, "retMsg": "params error", "result": {}})
        limit = min(1000, int(query.get("limit", "200")))
        start = int(query.get("start", "0"))
        end = int(query.get("end", str(2**62)))
        bars = self.rest_bars(index, start, end)
        bars.reverse()  # newest first
        rows = [
            [str(bar.open_time), num(bar.open), num(bar.high), num(bar.low), num(bar.close),
             *self._volume_turnover(bar)]
            for bar in bars[:limit]
        ]  # fmt: skip
        self.log_rest(request, 200)
        return _json(
            {
                "retCode": 0,
                "retMsg": "OK",
                "result": {"category": self.market, "symbol": query["symbol"], "list": rows},
                "retExtInfo": {},
                "time": int(time.time() * 1000),
            }
        )


FAKES: dict[str, type[FakeExchange]] = {"binance": BinanceFake, "okx": OkxFake, "bybit": BybitFake}


# --------------------------------------------------------------------------------------------
# Running a fake from synchronous test code
# --------------------------------------------------------------------------------------------


class ThreadedFake:
    """A fake on its own event loop in a daemon thread; :meth:`call` runs a coroutine there."""

    def __init__(self, fake: FakeExchange) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fake")

    def __enter__(self) -> ThreadedFake:
        self._thread.start()
        self.call(self.fake.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.fake.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    def call(self, function: Callable[[], Coroutine[Any, Any, T]], timeout_s: float = 30.0) -> T:
        """Run ``function()`` on the fake's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(function(), self.loop).result(timeout_s)

    def wait_until(
        self, condition: Callable[[FakeExchange], bool], timeout_s: float = 20.0, what: str = ""
    ) -> None:
        """Poll ``condition(fake)`` until true; AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self.fake):
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
