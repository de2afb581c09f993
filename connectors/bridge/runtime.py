"""The bridge itself: wires connections, tracker, repairer and sink, and reports counters."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from connectors.bridge.config import BridgeConfig
from connectors.bridge.connection import Connection, ShardSupervisor
from connectors.bridge.kafka_sink import RecordSink
from connectors.bridge.repair import GapRepairer
from connectors.bridge.stats import (
    _MALFORMED_LOG_EVERY,
    _MALFORMED_SAMPLES_LOGGED,
    _SAMPLE_CHARS,
    LogSampler,
    wall_ms,
)
from connectors.bridge.tracker import SeriesTracker, Verdict
from connectors.exchanges.base import (
    MINUTE_MS,
    ExchangeAdapter,
    FrameKind,
    RejectedBar,
)
from connectors.rest_repair import RestKlineClient
from connectors.retry import TokenBucket
from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.record import Kline, encode_kline, quote

log = logging.getLogger(__name__)


class Bridge:
    """One exchange and market: shards of connections, the tracker, the repairer, the sink.

    Several markets of one exchange in one process are several bridges sharing one sink
    (:class:`~connectors.bridge.group.BridgeGroup`); ``name`` then tells their connections
    apart in logs and counters (``bybit-linear``; default: the exchange), and
    ``connect_bucket`` spaces out the connections of all of them (the exchange limits
    connection attempts per IP).
    """

    def __init__(
        self,
        adapter: ExchangeAdapter,
        config: BridgeConfig,
        sink: RecordSink,
        session: aiohttp.ClientSession,
        *,
        stats_printer: Callable[[dict[str, Any]], None] | None = None,
        name: str | None = None,
        connect_bucket: TokenBucket | None = None,
    ) -> None:
        self.adapter = adapter
        self.name = name or adapter.name
        self.config = config
        self.sink = sink
        self.session = session
        self.tracker = SeriesTracker(
            startup_backfill_ms=config.startup_backfill_minutes * MINUTE_MS,
            event_time_is_ingest=adapter.event_time_is_ingest_time,
        )
        self.symbol_by_key = {
            adapter.series_key_of(info): info for info in adapter.symbols.values()
        }
        self._key_bytes: dict[str, bytes] = {key: key.encode() for key in self.symbol_by_key}
        symbols = list(adapter.symbols.values())
        size = adapter.max_streams_per_connection
        self.shards = [
            ShardSupervisor(self, index, symbols[offset : offset + size])
            for index, offset in enumerate(range(0, len(symbols), size))
        ]
        self.repairer = GapRepairer(self, RestKlineClient(adapter, config.rest_url, session))
        self._connect_bucket = connect_bucket or TokenBucket(adapter.connect_rate_per_s, 1.0)
        self.stats_printer = stats_printer or log_stats
        self.started_at = time.monotonic()
        self.dead_letters = 0
        self._rejection_log = LogSampler()

    # --- hot path --------------------------------------------------------------------------

    async def handle_frame(self, connection: Connection, text: str) -> None:
        """Parse one frame and act on it (produce, count, rotate, log)."""
        stats = connection.shard.stats
        stats.messages += 1
        ingest_time = wall_ms()
        try:
            parsed = self.adapter.parse_frame(text, ingest_time)
        except Exception as exc:  # noqa: BLE001 - counted and logged as malformed, see below
            # parse_frame's contract is "never raises" (every known bad input is handled
            # there); should a new kind still raise, it is one malformed frame, not the end of
            # the bridge process.
            self.on_malformed(connection, text, f"internal: {type(exc).__name__}: {quote(exc)}")
            return
        kind = parsed.kind
        if kind is FrameKind.KLINES:
            connection.last_data_at = connection.last_frame_at
            if not connection.live.is_set():
                connection.live.set()
            track_lag = not self.adapter.event_time_is_ingest_time
            for update in parsed.klines:
                stats.bar_updates += 1
                verdict, kline, gaps = self.tracker.accept_live(update)
                if verdict is Verdict.PRODUCE:
                    await self.produce(kline)
                    stats.bars_produced += 1
                    if kline.is_closed:
                        stats.closed_bars_produced += 1
                    if track_lag:
                        stats.lag_ms.append(ingest_time - kline.event_time)
                elif verdict is Verdict.DUPLICATE:
                    stats.duplicates_dropped += 1
                else:
                    stats.stale_dropped += 1
                if gaps:
                    self._on_gaps(kline.series_key, gaps)
            for rejected in parsed.rejected:
                stats.rejected += 1
                await self.dead_letter(rejected)
        elif kind is FrameKind.SHUTDOWN:
            stats.shutdown_notices += 1
            log.warning(
                "event=shutdown_notice exchange=%s conn=%s detail=%r",
                self.adapter.name,
                connection.connection_id,
                parsed.detail,
            )
            connection.rotate_requested.set()
        elif kind is FrameKind.ERROR:
            stats.server_errors += 1
            log.error(
                "event=server_error exchange=%s conn=%s detail=%r",
                self.adapter.name,
                connection.connection_id,
                parsed.detail,
            )
        elif kind is FrameKind.MALFORMED:
            self.on_malformed(connection, text, parsed.detail)

    def on_malformed(self, connection: Connection, text: str, detail: str) -> None:
        """Count a frame the adapter could not use; log the first few and then 1 in N."""
        connection.shard.stats.malformed += 1
        connection.malformed_seen += 1
        seen = connection.malformed_seen
        if seen <= _MALFORMED_SAMPLES_LOGGED or seen % _MALFORMED_LOG_EVERY == 0:
            log.warning(
                "event=malformed_frame exchange=%s conn=%s count=%d detail=%r sample=%r",
                self.adapter.name,
                connection.connection_id,
                seen,
                detail,
                text[:_SAMPLE_CHARS],
            )

    async def produce(self, kline: Kline) -> None:
        """Send one bar to the klines topic, keyed by its series."""
        key = self._key_bytes.get(kline.series_key) or kline.series_key.encode()
        await self.sink.send(
            self.config.topic,
            key,
            encode_kline(kline),
            kline if kline.is_closed else None,
        )

    async def dead_letter(self, rejected: RejectedBar) -> None:
        """Send a rejected bar to the dead-letter topic with its reason (log sampled)."""
        self.dead_letters += 1
        log_it, suppressed = self._rejection_log.allow()
        if log_it:
            log.warning(
                "event=bar_rejected exchange=%s series=%s reason=%r sample=%r suppressed=%d",
                self.adapter.name,
                rejected.key,
                rejected.reason[:_SAMPLE_CHARS],
                rejected.original[:_SAMPLE_CHARS],
                suppressed,
            )
        letter = DeadLetter(
            reason=rejected.reason,
            stage="bridge",
            original=rejected.original,
            key=rejected.key,
            rejected_at=wall_ms(),
        )
        key = rejected.key.encode() if rejected.key else b""
        await self.sink.send(self.config.dlq_topic, key, encode_dead_letter(letter), None)

    def _on_gaps(self, key: str, gaps: list[tuple[int, int]]) -> None:
        stats = self.repairer.stats
        for start, end in gaps:
            stats.gaps_detected += 1
            stats.bars_missing_detected += (end - start) // MINUTE_MS
            log.info(
                "event=gap_detected series=%s start=%d end=%d bars=%d",
                key,
                start,
                end,
                (end - start) // MINUTE_MS,
            )
        self.repairer.notify(key)

    def on_closed_bar_lost(self, kline: Kline) -> None:
        """A closed bar's delivery failed: make it a gap so the repairer produces it again."""
        key = kline.series_key
        self.tracker.add_gap(key, kline.open_time, kline.open_time + MINUTE_MS)
        self.repairer.notify(key)

    async def wait_connect_slot(self) -> None:
        """Space out new connections (exchanges limit connection attempts per IP)."""
        await self._connect_bucket.acquire()

    # --- lifecycle -------------------------------------------------------------------------

    def stats(self, *, reset_lag: bool = True) -> dict[str, Any]:
        """All counters: per connection, repair, REST, sink, totals."""
        connections = {
            shard.name: shard.stats.snapshot(reset_lag=reset_lag) for shard in self.shards
        }
        totals: dict[str, Any] = {}
        for data in connections.values():
            for name, value in data.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[name] = totals.get(name, 0) + value
        lag: list[int] = []
        for shard in self.shards:
            lag.extend(shard.stats.lag_ms)
        return {
            "exchange": self.adapter.name,
            "market": self.adapter.market,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "totals": totals,
            "connections": connections,
            "repair": {
                **dataclasses.asdict(self.repairer.stats),
                "series_waiting": self.repairer.pending_series,
                "gap_bars_outstanding": sum(
                    sum(end - start for start, end in state.gaps) // MINUTE_MS
                    for state in self.tracker.series.values()
                ),
            },
            "rest": dataclasses.asdict(self.repairer.client.stats),
            "sink": self.sink.stats(),
            "dead_letters": self.dead_letters,
            "lag_note": (
                "no exchange event time: event_time is the ingest time"
                if self.adapter.event_time_is_ingest_time
                else "ingest_time - event_time of live bars since the last report"
            ),
        }

    def start_tasks(self) -> list[asyncio.Task[Any]]:
        """Start the connection shards and the repairer (they run until cancelled)."""
        tasks = [asyncio.create_task(shard.run(), name=shard.name) for shard in self.shards]
        repairer_name = "repairer" if self.name == self.adapter.name else f"{self.name}-repairer"
        tasks.append(asyncio.create_task(self.repairer.run(), name=repairer_name))
        return tasks

    async def run(self, stop: asyncio.Event) -> dict[str, Any]:
        """Run until ``stop`` is set; returns the final counters."""
        tasks = self.start_tasks()
        tasks.append(asyncio.create_task(self._print_stats_periodically(), name="stats"))
        await run_until_stopped(stop, tasks, self.sink)
        final = self.stats(reset_lag=False)
        return final

    async def _print_stats_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            self.stats_printer(self.stats())


async def run_until_stopped(
    stop: asyncio.Event, tasks: list[asyncio.Task[Any]], sink: RecordSink
) -> None:
    """Wait until ``stop`` is set or a task ends, then cancel and await every task.

    A task that failed ends the run with its exception, after what ``sink`` holds was
    flushed (nothing queued is lost to a fatal error).
    """
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    except BaseException as exc:
        await flush_on_fatal_exit(sink, exc)
        raise
    finally:
        stopper.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def flush_on_fatal_exit(sink: RecordSink, exc: BaseException) -> None:
    """Before a fatal error ends the process: deliver what is queued (nothing lost)."""
    close = getattr(sink, "close", None)
    pending = getattr(sink, "pending", None)
    log.error(
        "event=fatal_exit error=%s pending=%s (flushing the producer)",
        quote(exc, 300),
        pending,
    )
    if close is not None:
        clean = await close()
        log.error("event=fatal_exit_flushed clean=%s", clean)


def log_stats(stats: dict[str, Any]) -> None:
    """The default stats printer: one ``event=stats {json}`` log line."""
    log.info("event=stats %s", orjson.dumps(stats).decode())
