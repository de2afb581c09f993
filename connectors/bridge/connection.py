"""The bridge's WebSocket connections: one :class:`Connection` per socket and one
:class:`ShardSupervisor` per logical connection (reconnects, watchdog, planned rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import aiohttp

from connectors.bridge.stats import _YIELD_EVERY, ConnectionStats
from connectors.retry import ReconnectBackoff, TokenBucket
from connectors.symbols import SymbolInfo

if TYPE_CHECKING:
    from connectors.bridge.runtime import Bridge

log = logging.getLogger(__name__)

# On the way out, how long a connection's task may take to end after its socket closed
# before it is cancelled.
_STOP_GRACE_S = 1.0


class Connection:
    """One WebSocket connection of a shard: subscribe, read, ping, watch, report."""

    def __init__(self, bridge: Bridge, shard: ShardSupervisor, connection_id: str) -> None:
        self.bridge = bridge
        self.shard = shard
        self.connection_id = connection_id
        self.live = asyncio.Event()  # first bar received: the subscriptions work
        self.rotate_requested = asyncio.Event()
        self.close_reason = ""
        self.opened_at = 0.0
        self.last_data_at = 0.0
        self.last_frame_at = 0.0
        self.malformed_seen = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closing = False
        self.task: asyncio.Task[str] | None = None

    def start(self) -> None:
        """Run the connection in a task."""
        self.task = asyncio.create_task(self.run(), name=self.connection_id)

    async def close(self, reason: str, *, cancel_after_s: float | None = None) -> None:
        """Close the socket (if open) and wait for the task to end.

        With ``cancel_after_s`` the task is cancelled if it has not ended that long after the
        socket closed: while the sink applies back-pressure (Kafka down) the task waits in
        ``sink.send`` and a closed socket does not wake it. The bridge stopping uses this; a
        planned rotation does not (it must not drop the bar the old link is producing).
        """
        self._closing = True
        if not self.close_reason:
            self.close_reason = reason
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                await asyncio.wait_for(self._ws.close(), timeout=5.0)
        if self.task is None:
            return
        if cancel_after_s is not None:
            await asyncio.wait({self.task}, timeout=cancel_after_s)
            if not self.task.done():
                log.info(
                    "event=connection_cancelled conn=%s reason=%r (blocked on back-pressure)",
                    self.connection_id,
                    reason,
                )
                self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller is being cancelled (the bridge stops), not only the task

    async def run(self) -> str:
        """Connect and read until the link ends; returns why it ended."""
        bridge = self.bridge
        adapter = bridge.adapter
        url = adapter.ws_url(bridge.config.ws_url, self.shard.symbols)
        await bridge.wait_connect_slot()
        try:
            async with asyncio.timeout(bridge.config.connect_timeout_s):
                self._ws = await bridge.session.ws_connect(
                    url, autoping=True, heartbeat=None, max_msg_size=16 * 1024 * 1024
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.close_reason = f"connect failed: {exc!r}"[:300]
            return self.close_reason
        now = time.monotonic()
        self.opened_at = self.last_data_at = self.last_frame_at = now
        self.shard.backoff.on_connected(now)
        log.info(
            "event=connected exchange=%s conn=%s symbols=%d",
            adapter.name,
            self.connection_id,
            len(self.shard.symbols),
        )
        timers = asyncio.create_task(self._timers(), name=f"{self.connection_id}-timers")
        subscriber = asyncio.create_task(self._subscribe(), name=f"{self.connection_id}-sub")
        try:
            await self._read()
        finally:
            for task in (timers, subscriber):
                task.cancel()
            for task in (timers, subscriber):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not self._ws.closed:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    await asyncio.wait_for(self._ws.close(), timeout=5.0)
        if not self.close_reason:
            code = self._ws.close_code
            self.close_reason = f"closed by server (code {code})"
        return self.close_reason

    async def _subscribe(self) -> None:
        assert self._ws is not None
        adapter = self.bridge.adapter
        bucket = TokenBucket(adapter.subscribe_rate_per_s, 1.0)
        for message in adapter.subscribe_messages(self.shard.symbols):
            await bucket.acquire()
            await self._ws.send_str(message)

    async def _read(self) -> None:
        assert self._ws is not None
        ws = self._ws
        handle = self.bridge.handle_frame
        received = 0
        while True:
            message = await ws.receive()
            received += 1
            if received % _YIELD_EVERY == 0:
                # receive() does not suspend while frames are buffered: let the timers, the
                # other connections and the repairer run on a busy link.
                await asyncio.sleep(0)
            kind = message.type
            if kind is aiohttp.WSMsgType.TEXT:
                self.last_frame_at = time.monotonic()
                await handle(self, message.data)
            elif kind is aiohttp.WSMsgType.BINARY:
                self.last_frame_at = time.monotonic()
                try:
                    text = message.data.decode("utf-8")
                except UnicodeDecodeError:
                    self.bridge.on_malformed(self, repr(message.data[:100]), "binary, not UTF-8")
                    continue
                await handle(self, text)
            elif kind is aiohttp.WSMsgType.ERROR:
                if not self.close_reason:
                    self.close_reason = f"websocket error: {ws.exception()!r}"[:300]
                return
            elif kind in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                return

    async def _timers(self) -> None:
        """Watchdog, pings and the planned reconnect of this connection."""
        assert self._ws is not None
        config = self.bridge.config
        adapter = self.bridge.adapter
        ping_interval = config.ping_interval_s or adapter.ping_interval_s
        ping_idle = config.ping_interval_s or adapter.ping_idle_s
        ping_text = adapter.ping_message()
        max_age = config.max_connection_age_s or adapter.max_connection_age_s
        periods = [config.no_data_timeout_s, ping_interval or 1.0, ping_idle or 1.0]
        tick = max(0.02, min(1.0, min(periods) / 4))
        last_ping = time.monotonic()
        stats = self.shard.stats
        while not self._ws.closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - self.last_data_at > config.no_data_timeout_s:
                stats.watchdog_timeouts += 1
                self.close_reason = f"watchdog: no data for {now - self.last_data_at:.1f} s"
                log.warning(
                    "event=watchdog exchange=%s conn=%s silent_s=%.1f",
                    adapter.name,
                    self.connection_id,
                    now - self.last_data_at,
                )
                await self._ws.close()
                return
            if ping_text is not None:
                due = (ping_interval is not None and now - last_ping >= ping_interval) or (
                    ping_interval is None
                    and ping_idle is not None
                    and now - self.last_frame_at >= ping_idle
                    and now - last_ping >= ping_idle
                )
                if due:
                    last_ping = now
                    stats.pings_sent += 1
                    with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
                        await self._ws.send_str(ping_text)
            too_old = max_age is not None and now - self.opened_at >= max_age
            if too_old and not self.rotate_requested.is_set():
                log.info(
                    "event=planned_reconnect exchange=%s conn=%s age_s=%.0f",
                    adapter.name,
                    self.connection_id,
                    now - self.opened_at,
                )
                self.rotate_requested.set()


class ShardSupervisor:
    """Keeps one logical connection for ``symbols`` alive, with overlapping replacements."""

    def __init__(self, bridge: Bridge, index: int, symbols: list[SymbolInfo]) -> None:
        self.bridge = bridge
        self.index = index
        self.symbols = symbols
        self.name = f"{bridge.name}-{index}"
        self.stats = ConnectionStats()
        self.backoff = ReconnectBackoff(
            base_s=bridge.config.backoff_base_s,
            cap_s=bridge.config.backoff_cap_s,
            stable_after_s=bridge.config.backoff_stable_s,
        )
        self._generation = 0
        self.current: Connection | None = None

    def _new_connection(self) -> Connection:
        self._generation += 1
        connection = Connection(self.bridge, self, f"{self.name}.{self._generation}")
        self.stats.connection_id = connection.connection_id
        connection.start()
        return connection

    async def run(self) -> None:
        """Connect, watch, reconnect and rotate until cancelled."""
        adapter = self.bridge.adapter
        try:
            while True:
                if self.current is None:
                    self.current = self._new_connection()
                current = self.current
                assert current.task is not None
                rotate = asyncio.create_task(current.rotate_requested.wait())
                await asyncio.wait({current.task, rotate}, return_when=asyncio.FIRST_COMPLETED)
                rotate.cancel()
                if current.task.done():
                    reason = current.task.result()
                    self.current = None
                    self.stats.reconnects += 1
                    self.backoff.on_disconnected(time.monotonic())
                    delay = self.backoff.next_delay()
                    log.warning(
                        "event=disconnected exchange=%s conn=%s reason=%r reconnect_in_s=%.2f",
                        adapter.name,
                        current.connection_id,
                        reason,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                await self._rotate(current)
        finally:
            if self.current is not None:
                await self.current.close("bridge stopping", cancel_after_s=_STOP_GRACE_S)

    async def _rotate(self, old: Connection) -> None:
        """Open a replacement, wait until it delivers data, then close ``old``."""
        adapter = self.bridge.adapter
        successor = self._new_connection()
        assert successor.task is not None and old.task is not None
        live = asyncio.create_task(successor.live.wait())
        await asyncio.wait(
            {live, successor.task},
            timeout=self.bridge.config.overlap_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        live.cancel()
        if successor.live.is_set():
            self.stats.planned_reconnects += 1
            self.current = successor
            log.info(
                "event=rotated exchange=%s old=%s new=%s",
                adapter.name,
                old.connection_id,
                successor.connection_id,
            )
            await old.close("replaced by " + successor.connection_id)
            return
        await successor.close("replacement gave no data in time")
        log.warning(
            "event=rotation_failed exchange=%s conn=%s reason=%r",
            adapter.name,
            successor.connection_id,
            successor.close_reason,
        )
        if old.task.done():
            return  # the supervisor loop sees the finished task and reconnects with backoff
        # Keep the old link; try again after a backoff delay.
        await asyncio.sleep(self.backoff.next_delay())
