"""Timing policies of the bridge as plain, testable objects: reconnect backoff and rate limits.

Nothing here sleeps or reads a clock on its own: every function takes the time (monotonic
seconds) and the random source it needs, so the unit tests drive them deterministically and
the asyncio runtime in :mod:`connectors.bridge` does the waiting.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class ReconnectBackoff:
    """Exponential backoff with full jitter, capped, reset after a stable period.

    Attempt ``n`` (0-based) waits a uniform random time in ``[0, min(cap, base * 2**n)]``
    ("full jitter", which spreads many clients reconnecting at once). A connection that stayed
    up for ``stable_after_s`` resets the attempt counter, so one drop after days of uptime
    reconnects at once, while a flapping server is retried ever more slowly up to ``cap_s``.
    """

    base_s: float = 0.5
    cap_s: float = 60.0
    stable_after_s: float = 60.0
    random_uniform: Callable[[float, float], float] = field(default=random.uniform)
    attempt: int = 0
    connected_at: float | None = None

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the wait before attempt ``attempt`` (0-based)."""
        # 2**64 already exceeds any sane cap; avoid float overflow on a very long outage.
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, 64))

    def next_delay(self) -> float:
        """The wait before the next connection attempt; advances the attempt counter."""
        delay = self.random_uniform(0.0, self.ceiling(self.attempt))
        self.attempt += 1
        return delay

    def on_connected(self, now: float) -> None:
        """Record that a connection was established at ``now`` (monotonic seconds)."""
        self.connected_at = now

    def on_disconnected(self, now: float) -> None:
        """Record a drop at ``now``; reset the counter when the connection had been stable."""
        if self.connected_at is not None and now - self.connected_at >= self.stable_after_s:
            self.attempt = 0
        self.connected_at = None


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: ``rate_per_s`` tokens per second, at most ``burst`` saved up.

    :meth:`reserve` takes one token and returns how long the caller must wait before using
    it (0 when one is available), so concurrent callers queue fairly without a lock in a
    single asyncio loop. :meth:`block_until` pauses the whole bucket (HTTP 429/418 with a
    ``Retry-After``).
    """

    rate_per_s: float
    burst: float
    tokens: float = -1.0
    updated_at: float | None = None
    blocked_until: float = 0.0

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated_at is not None and now > self.updated_at:
            self.tokens = min(self.burst, self.tokens + (now - self.updated_at) * self.rate_per_s)
        if self.updated_at is None or now > self.updated_at:
            self.updated_at = now

    def reserve(self, now: float) -> float:
        """Take a token; return the seconds to wait before the request may go out."""
        self._refill(now)
        self.tokens -= 1.0
        wait = 0.0 if self.tokens >= 0 else -self.tokens / self.rate_per_s
        return max(wait, self.blocked_until - now)

    def block_until(self, until: float) -> None:
        """Let no request out before ``until`` (monotonic seconds); never shortens a block."""
        self.blocked_until = max(self.blocked_until, until)


def parse_retry_after(value: str | None, default_s: float) -> float:
    """Seconds from an HTTP ``Retry-After`` header (delta-seconds form), else ``default_s``.

    The HTTP-date form is not used by the exchanges the bridge talks to; it falls back to the
    default, as does a missing or malformed header.
    """
    if value is None:
        return default_s
    try:
        seconds = float(value.strip())
    except ValueError:
        return default_s
    if math.isnan(seconds) or seconds < 0:
        return default_s
    return seconds
