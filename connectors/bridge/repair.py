"""Gap repair of the bridge: fetches the missing closed bars over REST and produces them."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from typing import TYPE_CHECKING, Final

from connectors.bridge.stats import LogSampler, RepairStats
from connectors.exchanges.base import (
    MINUTE_MS,
    RestError,
)
from connectors.rest_repair import RepairUnavailable, RestKlineClient
from connectors.retry import Backoff

if TYPE_CHECKING:
    from connectors.bridge.runtime import Bridge

log = logging.getLogger(__name__)

# A series whose repair failed waits up to 4 s, 8 s, ... 10 min (full jitter) before a retry.
FAILED_REPAIR_BACKOFF: Final = Backoff(base_s=2.0, cap_s=600.0)


class GapRepairer:
    """Fetches the gaps of series over REST and produces the bars still missing."""

    def __init__(self, bridge: Bridge, client: RestKlineClient) -> None:
        self.bridge = bridge
        self.client = client
        self.stats = RepairStats()
        self._due: list[tuple[float, str]] = []
        self._scheduled: set[str] = set()
        self._wakeup = asyncio.Event()
        self._failures: dict[str, int] = {}
        self._failure_log = LogSampler(burst=10, every_s=10.0)

    def notify(self, key: str, delay_s: float | None = None) -> None:
        """Repair ``key``'s gaps after ``delay_s`` (default: the configured repair delay)."""
        if key in self._scheduled:
            return
        delay = self.bridge.config.repair_delay_s if delay_s is None else delay_s
        self._scheduled.add(key)
        heapq.heappush(self._due, (time.monotonic() + delay, key))
        self._wakeup.set()

    @property
    def pending_series(self) -> int:
        """Series waiting for a repair."""
        return len(self._scheduled)

    async def run(self) -> None:
        """Run ``repair_concurrency`` workers until cancelled."""
        workers = [
            asyncio.create_task(self._worker(), name=f"repair-{number}")
            for number in range(max(1, self.bridge.config.repair_concurrency))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    async def _next_key(self) -> str:
        while True:
            now = time.monotonic()
            if self._due and self._due[0][0] <= now and self.bridge.sink.healthy():
                _, key = heapq.heappop(self._due)
                self._scheduled.discard(key)
                return key
            self._wakeup.clear()
            timeout = self._due[0][0] - now if self._due else None
            if self._due and not self.bridge.sink.healthy():
                timeout = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)

    async def _worker(self) -> None:
        while True:
            key = await self._next_key()
            try:
                await self._repair(key)
            except (RepairUnavailable, RestError) as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                self.stats.repair_failures += 1
                delay = FAILED_REPAIR_BACKOFF.delay(failures)
                log_it, suppressed = self._failure_log.allow()
                if log_it:  # a poison answer of every series must not flood the log
                    log.warning(
                        "event=repair_failed series=%s failures=%d retry_in_s=%.1f error=%s "
                        "suppressed=%d",
                        key,
                        failures,
                        delay,
                        exc,
                        suppressed,
                    )
                self.notify(key, delay)
            else:
                self._failures.pop(key, None)

    async def _repair(self, key: str) -> None:
        bridge = self.bridge
        tracker = bridge.tracker
        info = bridge.symbol_by_key[key]
        for start, end in tracker.gaps(key):
            result = await self.client.fetch_closed(info, start, end)
            produced = 0
            for kline in result.klines:
                if tracker.accept_repaired(kline):
                    await bridge.produce(kline)
                    produced += 1
            for rejected in result.rejected:
                self.stats.rejected += 1
                await bridge.dead_letter(rejected)
            given_up = tracker.finish_repair(key, start, end, result.unconfirmed)
            self.stats.bars_repaired += produced
            self.stats.bars_unavailable += given_up
            log.info(
                "event=gap_repaired series=%s start=%d end=%d bars=%d repaired=%d "
                "unavailable=%d unconfirmed=%d",
                key,
                start,
                end,
                (end - start) // MINUTE_MS,
                produced,
                given_up,
                len(result.unconfirmed),
            )
            if result.unconfirmed:
                self.notify(key, max(5.0, bridge.config.repair_delay_s))
