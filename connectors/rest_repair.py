"""REST kline client for gap repair: rate limited, honouring 429/418 and ``Retry-After``.

One :class:`RestKlineClient` per bridge process shares one token bucket, so all repairs of
all series together stay under the exchange's REST limit. A 429 (too many requests), 418
(Binance's IP ban) or 403 (Bybit's IP limit) pauses the whole bucket for ``Retry-After``
seconds (or a default when the header is missing): every request of the process waits,
not just the one that was refused, because the limit is per IP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import orjson

from connectors.exchanges.base import (
    ExchangeAdapter,
    RejectedBar,
    RestError,
    RestPage,
    RestRateLimited,
)
from connectors.retry import Backoff, TokenBucket, parse_retry_after
from connectors.symbols import SymbolInfo
from udfs.record import Kline, quote

log = logging.getLogger(__name__)

# Default pauses when a rate-limit answer carries no Retry-After.
DEFAULT_RETRY_AFTER_429_S: Final[float] = 5.0
DEFAULT_RETRY_AFTER_418_S: Final[float] = 120.0
DEFAULT_RETRY_AFTER_BODY_S: Final[float] = 2.0
# Never honour a Retry-After longer than this in one go: the gap stays and is retried later.
MAX_RETRY_AFTER_S: Final[float] = 900.0
# After a network error or a 5xx: 0.5 s, doubling up to 30 s, no jitter (one client per host).
ERROR_BACKOFF: Final[Backoff] = Backoff(base_s=0.5, cap_s=30.0, min_fraction=1.0)
# Pages fetched for one range before giving up on the rest (1000 bars a page: weeks of bars).
MAX_PAGES: Final[int] = 200


class RepairUnavailable(Exception):
    """The range could not be fetched now (rate limited, server or network error)."""


@dataclass(slots=True)
class RestStats:
    """Counters of the REST client (read by the bridge's periodic stats)."""

    requests: int = 0
    rate_limited: int = 0
    banned: int = 0
    server_errors: int = 0
    network_errors: int = 0
    client_errors: int = 0
    # 200 answers whose body could not be used (wrong shape or types): the range is retried.
    malformed_answers: int = 0


@dataclass(slots=True)
class FetchResult:
    """Closed bars of ``[start_ms, end_ms)`` in open-time order, plus what could not be used."""

    klines: list[Kline]
    rejected: list[RejectedBar] = field(default_factory=list)
    unconfirmed: list[int] = field(default_factory=list)


class RestKlineClient:
    """Fetches closed 1m bars of one exchange over REST.

    ``clock`` (monotonic seconds) and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        adapter: ExchangeAdapter,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        bucket: TokenBucket | None = None,
        attempts: int = 4,
        request_timeout_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.adapter = adapter
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.bucket = bucket or TokenBucket(adapter.rest_rate_per_s, adapter.rest_burst)
        self.attempts = attempts
        self.timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self.clock = clock
        self.wall_ms = wall_ms
        self.stats = RestStats()

    async def fetch_closed(self, info: SymbolInfo, start_ms: int, end_ms: int) -> FetchResult:
        """Every closed bar the exchange has with ``start_ms <= open_time < end_ms``.

        Raises :class:`RepairUnavailable` when the exchange cannot be asked right now, and
        :class:`~connectors.exchanges.base.RestError` when it refuses the request itself.
        """
        result = FetchResult([])
        page_start, page_end = start_ms, end_ms
        for _ in range(MAX_PAGES):
            if page_start >= page_end:
                break
            page = await self._fetch_page(info, page_start, page_end)
            result.klines.extend(page.klines)
            result.rejected.extend(page.rejected)
            result.unconfirmed.extend(page.unconfirmed)
            if page.next_start_ms is not None and page.next_start_ms > page_start:
                page_start = page.next_start_ms
            elif page.next_end_ms is not None and page.next_end_ms < page_end:
                page_end = page.next_end_ms
            else:
                break
        else:
            log.warning(
                "event=rest_page_cap exchange=%s symbol=%s start=%d end=%d pages=%d",
                self.adapter.name,
                info.symbol,
                start_ms,
                end_ms,
                MAX_PAGES,
            )
        result.klines.sort(key=lambda kline: kline.open_time)
        return result

    async def _fetch_page(self, info: SymbolInfo, start_ms: int, end_ms: int) -> RestPage:
        request = self.adapter.rest_request(info, start_ms, end_ms)
        url = self.base_url + request.path
        last_problem = "no attempt made"
        for attempt in range(self.attempts):
            await self.bucket.acquire(self.clock)
            self.stats.requests += 1
            try:
                async with self.session.get(
                    url, params=dict(request.params), timeout=self.timeout
                ) as response:
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.stats.network_errors += 1
                last_problem = f"network error: {exc!r}"[:300]
                await asyncio.sleep(ERROR_BACKOFF.delay(attempt))
                continue
            if status in (429, 418) or (status == 403 and self.adapter.name == "bybit"):
                default = DEFAULT_RETRY_AFTER_418_S if status == 418 else DEFAULT_RETRY_AFTER_429_S
                pause = min(MAX_RETRY_AFTER_S, parse_retry_after(retry_after, default))
                if status == 418:
                    self.stats.banned += 1
                else:
                    self.stats.rate_limited += 1
                self.bucket.block_until(self.clock() + pause)
                last_problem = f"HTTP {status}, Retry-After {retry_after!r}"
                log.warning(
                    "event=rest_rate_limited exchange=%s status=%d retry_after_s=%.1f",
                    self.adapter.name,
                    status,
                    pause,
                )
                continue
            if status >= 500:
                self.stats.server_errors += 1
                last_problem = f"HTTP {status}"
                await asyncio.sleep(ERROR_BACKOFF.delay(attempt))
                continue
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                self.stats.client_errors += 1
                raise RestError(f"HTTP {status}: body is not JSON: {body[:200]!r}") from None
            if status >= 400:
                self.stats.client_errors += 1
                raise RestError(f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}")
            try:
                return self.adapter.parse_rest(info, payload, start_ms, end_ms, self.wall_ms())
            except RestRateLimited as exc:  # "slow down" inside a 200 answer (OKX, Bybit)
                self.stats.rate_limited += 1
                self.bucket.block_until(self.clock() + DEFAULT_RETRY_AFTER_BODY_S)
                last_problem = str(exc)
            except RestError:
                raise  # the exchange's own error answer: the caller logs and retries later
            except Exception as exc:
                # The parsers reject every known bad shape with RestError or a rejected row;
                # anything they still raise is one unusable answer, never a dead repairer.
                self.stats.malformed_answers += 1
                raise RestError(
                    f"{self.adapter.name}: unusable answer: internal: "
                    f"{type(exc).__name__}: {quote(exc, 200)}"
                ) from exc
        raise RepairUnavailable(
            f"{self.adapter.name} {info.symbol}: gave up after {self.attempts} attempts "
            f"({last_problem})"
        )
