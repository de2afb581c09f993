"""The engine's limits: the requests and tokens budget (:class:`RateLimiter`, over
:class:`connectors.retry.TokenBucket`) and the :class:`CircuitBreaker`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from connectors.retry import TokenBucket

log = logging.getLogger(__name__)


class RateLimiter:
    """Requests-per-second and tokens-per-minute buckets, FIFO, honouring ``Retry-After``.

    :meth:`acquire` waits until one request and the estimated tokens fit both buckets and takes
    them; a waiter that is cancelled (its deadline passed) takes nothing. :meth:`settle` books
    the difference between the estimate and the tokens the reply actually used.
    """

    def __init__(
        self,
        requests_per_s: float,
        request_burst: float,
        tokens_per_min: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.requests = TokenBucket(requests_per_s, max(1.0, request_burst))
        self.tokens = TokenBucket(tokens_per_min / 60.0, tokens_per_min)
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()

    def wait_time(self, token_estimate: float, now: float) -> float:
        """Seconds until a request of ``token_estimate`` tokens may go out (0: now)."""
        return max(
            self.requests.wait_for(1.0, now),
            self.tokens.wait_for(token_estimate, now),
        )

    async def acquire(self, token_estimate: float) -> None:
        """Wait for the budget of one request of about ``token_estimate`` tokens and take it."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = self.wait_time(token_estimate, now)
                if wait <= 0:
                    self.requests.take(1.0, now)
                    self.tokens.take(min(token_estimate, self.tokens.burst), now)
                    return
                await self._sleep(wait)

    def settle(self, estimated: float, actual: float) -> None:
        """Book ``actual - estimated`` more tokens (a refund when negative)."""
        self.tokens.take(actual - min(estimated, self.tokens.burst), self._clock())

    def block_until(self, until: float) -> None:
        """Let no request out before ``until`` (monotonic seconds); never shortens a block."""
        self.requests.block_until(until)


# --- circuit breaker ------------------------------------------------------------------------


class BreakerState(Enum):
    """Closed: calls flow. Open: no calls until the cool-down ends. Half-open: one probe."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failed calls; probes after ``open_s``.

    :meth:`permit` says whether a call may go out (and whether it is the probe); the caller
    reports the outcome with :meth:`record`. In half-open state exactly one probe is in
    flight: success closes the breaker, failure opens it for another ``open_s``.
    """

    failure_threshold: int
    open_s: float
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    opened_count: int = 0

    def current(self) -> BreakerState:
        """The state now (an open breaker whose cool-down ended reports half-open)."""
        if self.state is BreakerState.OPEN and self.clock() - self.opened_at >= self.open_s:
            self.state = BreakerState.HALF_OPEN
            self.probe_in_flight = False
        return self.state

    def permit(self) -> tuple[bool, bool]:
        """``(allowed, is_probe)`` for a call about to start."""
        state = self.current()
        if state is BreakerState.CLOSED:
            return True, False
        if state is BreakerState.HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True, True
        return False, False

    def record(self, *, success: bool, is_probe: bool) -> None:
        """Report the outcome of a permitted call."""
        if self.state is BreakerState.HALF_OPEN:
            if not is_probe:
                return
            self.probe_in_flight = False
            if success:
                self._close()
            else:
                self._open()
            return
        if self.state is BreakerState.OPEN:
            return  # a call started before the breaker opened: its outcome is stale
        if success:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.failure_threshold:
            self._open()

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = self.clock()
        self.opened_count += 1
        self.failures = 0
        log.warning("inference circuit breaker opened for %.1f s", self.open_s)

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        log.info("inference circuit breaker closed again")
