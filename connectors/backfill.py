"""History over REST: the closed 1m bars of a time range, paged, rate limited and resumable.

``klineflow backfill`` (``jobs/backfill_cmd.py``) runs :func:`backfill_markets` for the
symbols of one exchange on one or more of its markets (spot, linear, inverse), each market
with its own adapter and REST base URL (:class:`MarketBackfill`). The range
``[start_ms, end_ms)`` is fetched in chunks of ``chunk_minutes`` through the bridge's
:class:`~connectors.rest_repair.RestKlineClient` (the command gives the markets served by one
host one token bucket; 429/418 and ``Retry-After`` pause every request to that host, as the
exchanges' limits are per IP). Every closed bar is emitted with provenance ``rest``; a bar
the exchange still reports open is never emitted (a range reaching the present stops at the
last closed minute); a row the parser rejects goes to the dead-letter topic with its reason.

Resumable: after each chunk, and only once every record of that chunk is acknowledged, the
chunk's end is saved in a progress file (JSON, replaced atomically). A run interrupted
anywhere re-fetches at most one chunk; bars produced twice are harmless, since the job's
upsert keeps one bar per minute and version.

Hand-over to the live bridge: run the bridge first (its WebSocket delivers every minute from
its start on) and backfill up to the bridge's start, or to now; the boundary minute may come
from both, and the job keeps one (the higher version: the bridge's final update carries the
exchange's event time). A minute no source has stays a gap: ``klineflow gaps`` lists it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from connectors.exchanges.base import MINUTE_MS, RejectedBar, RestError
from connectors.rest_repair import FetchResult, RepairUnavailable, RestKlineClient
from connectors.retry import Backoff
from connectors.symbols import SymbolInfo
from udfs.record import Kline

log = logging.getLogger(__name__)

# A chunk the exchange cannot be asked for right now (rate limited past the client's own
# attempts, server or network errors) is tried again after 2 s, 4 s, ... up to 2 min.
CHUNK_RETRY_BACKOFF: Final = Backoff(base_s=2.0, cap_s=120.0)
DEFAULT_CHUNK_MINUTES: Final = 1440
DEFAULT_CHUNK_ATTEMPTS: Final = 8

EmitBar = Callable[[Kline], None]
EmitRejected = Callable[[RejectedBar], None]
# Waits until everything emitted so far is acknowledged; raises if a delivery failed.
Settle = Callable[[], Awaitable[None]]


class BackfillFailed(Exception):
    """A symbol's range could not be fetched (the exchange refused it, or kept failing)."""


@dataclass(slots=True)
class SymbolReport:
    """What the backfill of one symbol did."""

    symbol: str
    start_ms: int
    end_ms: int
    resumed_from_ms: int
    market: str = ""
    bars: int = 0
    rejected: int = 0
    open_bars_skipped: int = 0
    chunks: int = 0
    error: str | None = None


@dataclass(slots=True)
class BackfillReport:
    """The reports of every symbol, and the REST clients' counters (summed, and per market)."""

    symbols: list[SymbolReport] = field(default_factory=list)
    rest: dict[str, int] = field(default_factory=dict)
    rest_by_market: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def failed(self) -> list[SymbolReport]:
        """The symbols whose range was not completed."""
        return [report for report in self.symbols if report.error is not None]


class ProgressFile:
    """Where each series' backfill has got to: ``{"exchange:market:RAW": next_start_ms}``.

    Written atomically (a temporary file renamed over the old one), so an interrupted run
    never leaves half a file. A missing file is an empty progress.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done: dict[str, int] = {}
        if path.exists():
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict) or not all(
                isinstance(key, str) and isinstance(value, int) for key, value in loaded.items()
            ):
                raise ValueError(f"{path}: not a backfill progress file")
            self._done = loaded

    def next_start(self, key: str) -> int | None:
        """Where the backfill of ``key`` goes on (None: not started)."""
        return self._done.get(key)

    def save(self, key: str, next_start_ms: int) -> None:
        """Record that everything of ``key`` before ``next_start_ms`` is delivered."""
        self._done[key] = next_start_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(self._done, out, indent=1, sort_keys=True)
        os.replace(temporary, self.path)


def progress_key(exchange: str, market: str, raw_symbol: str) -> str:
    """The progress file's key of one series."""
    return f"{exchange}:{market}:{raw_symbol}"


def minute_floor(ms: int) -> int:
    """``ms`` rounded down to its minute."""
    return ms - ms % MINUTE_MS


@dataclass(frozen=True, slots=True)
class MarketBackfill:
    """One market of a backfill: its REST client (adapter and base URL), symbols, progress.

    Several markets may share one :class:`ProgressFile` (its keys name the market) and one
    token bucket (their clients' ``bucket``).
    """

    client: RestKlineClient
    symbols: Sequence[SymbolInfo]
    progress: ProgressFile


@dataclass(slots=True)
class _Series:
    info: SymbolInfo
    client: RestKlineClient
    progress: ProgressFile
    key: str
    position: int
    report: SymbolReport
    done: bool = False


async def backfill(
    client: RestKlineClient,
    symbols: list[SymbolInfo],
    start_ms: int,
    end_ms: int,
    *,
    emit: EmitBar,
    reject: EmitRejected,
    settle: Settle,
    progress: ProgressFile,
    chunk_minutes: int = DEFAULT_CHUNK_MINUTES,
    chunk_attempts: int = DEFAULT_CHUNK_ATTEMPTS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> BackfillReport:
    """Emit every closed 1m bar of ``symbols`` of ``client``'s market with
    ``start_ms <= open_time < end_ms``: :func:`backfill_markets` of one market."""
    return await backfill_markets(
        [MarketBackfill(client, symbols, progress)], start_ms, end_ms,
        emit=emit, reject=reject, settle=settle, chunk_minutes=chunk_minutes,
        chunk_attempts=chunk_attempts, sleep=sleep,
    )  # fmt: skip


async def backfill_markets(
    markets: Sequence[MarketBackfill],
    start_ms: int,
    end_ms: int,
    *,
    emit: EmitBar,
    reject: EmitRejected,
    settle: Settle,
    chunk_minutes: int = DEFAULT_CHUNK_MINUTES,
    chunk_attempts: int = DEFAULT_CHUNK_ATTEMPTS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> BackfillReport:
    """Emit every closed 1m bar of every market's symbols with ``start_ms <= open_time < end_ms``.

    Both bounds are rounded down to the minute. The range is walked in rounds of
    ``chunk_minutes``: each round fetches that stretch of every symbol of every market and
    emits the bars of all of them merged by open time, as a live feed delivers them (one
    symbol's or one market's whole history before the next one's would put every later
    series hopelessly behind the job's event-time watermark). Each series goes on from its
    market's progress file when it got further than ``start_ms``. A symbol the exchange
    refuses, or whose chunk keeps failing ``chunk_attempts`` times, is reported failed and
    left out of later rounds; what it had delivered stays recorded, so a new run goes on from
    there. Raises ValueError when two markets would produce the same series (the canonical
    symbol names the instrument, so that means a market was given twice).
    """
    start_ms, end_ms = minute_floor(start_ms), minute_floor(end_ms)
    report = BackfillReport()
    series: list[_Series] = []
    market_of_series: dict[str, str] = {}
    for market in markets:
        adapter = market.client.adapter
        for info in market.symbols:
            series_name = f"{adapter.name}:{info.symbol}"
            if series_name in market_of_series:
                raise ValueError(
                    f"series {series_name} given twice "
                    f"({market_of_series[series_name]} and {adapter.market})"
                )
            market_of_series[series_name] = adapter.market
            key = progress_key(adapter.name, adapter.market, info.raw_symbol)
            saved = market.progress.next_start(key)
            position = max(start_ms, saved) if saved is not None else start_ms
            symbol_report = SymbolReport(info.symbol, start_ms, end_ms, resumed_from_ms=position,
                                         market=adapter.market)  # fmt: skip
            report.symbols.append(symbol_report)
            series.append(_Series(info, market.client, market.progress, key, position,
                                  symbol_report, done=position >= end_ms))  # fmt: skip
    chunk_ms = max(1, chunk_minutes) * MINUTE_MS
    round_start = start_ms
    while round_start < end_ms and any(not item.done for item in series):
        round_end = min(round_start + chunk_ms, end_ms)
        fetched: list[tuple[_Series, int, FetchResult]] = []
        for item in series:
            if item.done or item.position >= round_end:
                continue
            try:
                result = await _fetch_chunk(item.client, item.info, item.position, round_end,
                                            attempts=chunk_attempts, sleep=sleep)  # fmt: skip
            except BackfillFailed as exc:
                item.report.error = str(exc)
                item.done = True
                log.error("event=backfill_failed symbol=%s reason=%s", item.info.symbol, exc)
                continue
            fetched.append((item, round_end, result))
        bars: list[tuple[int, Kline]] = []
        for item, chunk_end, result in fetched:
            for kline in result.klines:
                if item.position <= kline.open_time < chunk_end:
                    bars.append((kline.open_time, kline))
                    item.report.bars += 1
            for rejected in result.rejected:
                reject(rejected)
                item.report.rejected += 1
            item.report.open_bars_skipped += len(result.unconfirmed)
        bars.sort(key=lambda pair: pair[0])  # stable: one symbol's bars keep their order
        for _open_time, kline in bars:
            emit(kline if kline.provenance == "rest" else replace(kline, provenance="rest"))
        await settle()
        for item, chunk_end, result in fetched:
            item.report.chunks += 1
            next_start = chunk_end
            if result.unconfirmed:
                # The exchange still has a bar of this stretch open: the range reached the
                # present, whose last minutes are not history yet. Stop before the first.
                next_start = max(item.position, minute_floor(min(result.unconfirmed)))
                item.done = True
            item.progress.save(item.key, next_start)
            item.position = next_start
            log.info(
                "event=backfill_chunk symbol=%s next_start=%d bars=%d rejected=%d",
                item.info.symbol, next_start, item.report.bars, item.report.rejected,
            )  # fmt: skip
        round_start = round_end
    for client in {id(market.client): market.client for market in markets}.values():
        by_market = report.rest_by_market.setdefault(client.adapter.market, {})
        for name in client.stats.__slots__:
            value = getattr(client.stats, name)
            by_market[name] = by_market.get(name, 0) + value
            report.rest[name] = report.rest.get(name, 0) + value
    return report


async def _fetch_chunk(
    client: RestKlineClient,
    info: SymbolInfo,
    start_ms: int,
    end_ms: int,
    *,
    attempts: int,
    sleep: Callable[[float], Awaitable[None]],
) -> FetchResult:
    for attempt in range(attempts):
        try:
            return await client.fetch_closed(info, start_ms, end_ms)
        except RepairUnavailable as exc:
            delay = CHUNK_RETRY_BACKOFF.delay(attempt)
            log.warning(
                "event=backfill_chunk_retry symbol=%s start=%d end=%d attempt=%d delay_s=%.1f "
                "reason=%s",
                info.symbol, start_ms, end_ms, attempt + 1, delay, exc,
            )  # fmt: skip
            await sleep(delay)
        except RestError as exc:
            raise BackfillFailed(f"{info.symbol}: the exchange refused: {exc}") from None
    raise BackfillFailed(
        f"{info.symbol}: [{start_ms}, {end_ms}) still unavailable after {attempts} attempts"
    )
