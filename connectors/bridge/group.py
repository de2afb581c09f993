"""Several markets of one exchange in one bridge process: one :class:`Bridge` per market
(its own adapter, WebSocket shards, tracker, gap repairer and REST client) around one shared
sink, one run and one stats line.

The venues serve spot and derivatives on different WebSocket endpoints (Binance even on
different hosts), so a market never shares a connection with another; what they share is
the Kafka producer (one flush on shutdown or on a fatal error covers every market), the
spacing of new connections (the exchange limits attempts per IP) and the counters report.
Series keys of different markets differ (``BTC-USDT`` vs ``BTC-USDT-PERP``), which is what
lets a lost closed bar find the market that repairs it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from connectors.bridge.config import BridgeConfig
from connectors.bridge.kafka_sink import RecordSink
from connectors.bridge.runtime import Bridge, log_stats, run_until_stopped
from connectors.exchanges.base import ExchangeAdapter
from connectors.retry import TokenBucket
from udfs.record import Kline

log = logging.getLogger(__name__)

# Counter sections of a bridge's stats that the group adds up over its markets.
_SUMMED_SECTIONS = ("totals", "repair", "rest")


class BridgeGroup:
    """One exchange, several markets: a :class:`Bridge` per ``(adapter, config)``, one sink.

    Raises ValueError when the markets are not of one exchange, a market comes twice, or two
    markets would produce the same series key.
    """

    def __init__(
        self,
        markets: Sequence[tuple[ExchangeAdapter, BridgeConfig]],
        sink: RecordSink,
        session: aiohttp.ClientSession,
        *,
        stats_interval_s: float | None = None,
        stats_printer: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not markets:
            raise ValueError("a bridge group needs at least one market")
        exchanges = {adapter.name for adapter, _ in markets}
        if len(exchanges) != 1:
            raise ValueError(f"one exchange per bridge process, got {', '.join(sorted(exchanges))}")
        names = [adapter.market for adapter, _ in markets]
        if len(set(names)) != len(names):
            raise ValueError(f"a market comes twice: {', '.join(names)}")
        first_adapter, first_config = markets[0]
        self.exchange = first_adapter.name
        self.sink = sink
        connect_bucket = TokenBucket(min(a.connect_rate_per_s for a, _ in markets), 1.0)
        self.bridges = [
            Bridge(
                adapter,
                config,
                sink,
                session,
                name=f"{adapter.name}-{adapter.market}",
                connect_bucket=connect_bucket,
            )
            for adapter, config in markets
        ]
        self._bridge_by_key: dict[str, Bridge] = {}
        for bridge in self.bridges:
            for key in bridge.symbol_by_key:
                other = self._bridge_by_key.setdefault(key, bridge)
                if other is not bridge:
                    raise ValueError(
                        f"series {key} would come from both {other.adapter.market} "
                        f"and {bridge.adapter.market}"
                    )
        self.stats_interval_s = stats_interval_s or first_config.stats_interval_s
        self.stats_printer = stats_printer or log_stats
        self.started_at = time.monotonic()

    @property
    def markets(self) -> list[str]:
        """The markets followed, in order."""
        return [bridge.adapter.market for bridge in self.bridges]

    def on_closed_bar_lost(self, kline: Kline) -> None:
        """A closed bar's delivery failed: the bridge of its market repairs it."""
        bridge = self._bridge_by_key.get(kline.series_key)
        if bridge is None:
            log.error("event=lost_bar_of_unknown_series series=%s", kline.series_key)
            return
        bridge.on_closed_bar_lost(kline)

    def stats(self, *, reset_lag: bool = True) -> dict[str, Any]:
        """One report: counters summed over the markets, the sink once, each market's own."""
        by_market: dict[str, dict[str, Any]] = {}
        for bridge in self.bridges:
            market_stats = bridge.stats(reset_lag=reset_lag)
            for shared in ("exchange", "sink", "uptime_s"):
                market_stats.pop(shared, None)
            by_market[bridge.adapter.market] = market_stats
        summed: dict[str, dict[str, int]] = {section: {} for section in _SUMMED_SECTIONS}
        for market_stats in by_market.values():
            for section in _SUMMED_SECTIONS:
                for name, value in market_stats[section].items():
                    if isinstance(value, int) and not isinstance(value, bool):
                        summed[section][name] = summed[section].get(name, 0) + value
        return {
            "exchange": self.exchange,
            "markets": self.markets,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            **summed,
            "sink": self.sink.stats(),
            "dead_letters": sum(bridge.dead_letters for bridge in self.bridges),
            "by_market": by_market,
        }

    async def run(self, stop: asyncio.Event) -> dict[str, Any]:
        """Run every market until ``stop`` is set; returns the final counters.

        A fatal error in any market stops them all, after the shared sink was flushed.
        """
        tasks = [task for bridge in self.bridges for task in bridge.start_tasks()]
        tasks.append(asyncio.create_task(self._print_stats_periodically(), name="stats"))
        await run_until_stopped(stop, tasks, self.sink)
        return self.stats(reset_lag=False)

    async def _print_stats_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            self.stats_printer(self.stats())
