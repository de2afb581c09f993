"""The one backoff, retry policy and token bucket of every connector.

- :class:`Backoff`: exponential, capped, with jitter (full jitter by default: attempt ``n``
  waits a uniform random time in ``[0, min(cap, base * 2**n)]``, which spreads many clients
  retrying at once). :class:`ReconnectBackoff` adds the bridge's attempt counter that resets
  after a stable connection.
- :class:`RetryPolicy` and :func:`call_with_retries`: bounded retries of a blocking call
  (attempts, an overall deadline, and the caller's say on which errors are transient).
- :class:`Outage`: one store's outage told in one log line when it starts (the store, its
  URL, the error and how long calls wait) and one when it ends, not one per retry.
- :class:`TokenBucket`: a rate and a burst, with pauses for ``Retry-After`` answers, and
  :func:`parse_retry_after` for that header.

Nothing here reads a clock or draws a random number on its own unless it is given the
function to do so (the defaults are :func:`time.monotonic`, :func:`asyncio.sleep` and
:func:`random.uniform`), so the unit tests drive every policy deterministically.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

Uniform = Callable[[float, float], float]

# 2**64 already exceeds any sane cap; the exponent stops there so that a very long outage
# does not overflow a float.
_MAX_EXPONENT = 64


# --- backoff --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter, capped at ``cap_s``.

    The delay before retry ``attempt`` (0-based) is drawn uniformly from
    ``[min_fraction * c, c]`` with ``c = min(cap_s, base_s * 2**attempt)``: ``min_fraction``
    0 is full jitter (the default), 0.5 keeps at least half the ceiling, 1 is no jitter.
    """

    base_s: float = 0.5
    cap_s: float = 60.0
    min_fraction: float = 0.0

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the wait before retry ``attempt`` (0-based)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int, uniform: Uniform = random.uniform) -> float:
        """The wait before retry ``attempt`` (0-based), drawn with ``uniform(low, high)``."""
        ceiling = self.ceiling(attempt)
        if self.min_fraction >= 1.0:
            return ceiling
        return uniform(ceiling * self.min_fraction, ceiling)


@dataclass(slots=True)
class ReconnectBackoff:
    """A :class:`Backoff` with full jitter whose attempt counter resets after a stable period.

    A connection that stayed up for ``stable_after_s`` resets the counter, so one drop after
    days of uptime reconnects at once, while a flapping server is retried ever more slowly up
    to ``cap_s``.
    """

    base_s: float = 0.5
    cap_s: float = 60.0
    stable_after_s: float = 60.0
    random_uniform: Uniform = field(default=random.uniform)
    attempt: int = 0
    connected_at: float | None = None

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the wait before attempt ``attempt`` (0-based)."""
        return Backoff(self.base_s, self.cap_s).ceiling(attempt)

    def next_delay(self) -> float:
        """The wait before the next connection attempt; advances the attempt counter."""
        delay = Backoff(self.base_s, self.cap_s).delay(self.attempt, self.random_uniform)
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


# --- retry policy ---------------------------------------------------------------------------


class RetriesExhausted(Exception):
    """A transient failure outlasted every retry a :class:`RetryPolicy` allows."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` tries in all, delays doubling from
    ``base_delay_s`` up to ``max_delay_s``, each scaled by a random factor in [0.5, 1].

    ``deadline_s`` (None = none) also bounds the time spent: no retry starts later than
    that many seconds after the first attempt (a server down for a minute is ridden out
    by ``RetryPolicy(attempts=1_000, deadline_s=90)``). Which errors are worth a retry is
    the caller's to say (``retry_on`` and ``is_transient`` of :func:`call_with_retries`).
    """

    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    deadline_s: float | None = None

    @property
    def backoff(self) -> Backoff:
        """The curve of the delays: half jitter below the exponential ceiling."""
        return Backoff(self.base_delay_s, self.max_delay_s, min_fraction=0.5)

    def delay(self, failed_attempts: int, uniform: Uniform = random.uniform) -> float:
        """Seconds to wait after ``failed_attempts`` failures (before the next try)."""
        return self.backoff.delay(failed_attempts - 1, uniform)


def call_with_retries(
    operation: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy,
    describe: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    exhausted: Callable[[str], BaseException] = RetriesExhausted,
    outage: Outage | None = None,
) -> T:
    """Run ``operation``; on a transient error wait and retry, up to ``policy.attempts``
    (and while the next try would start within ``policy.deadline_s``).

    Errors of the ``retry_on`` types that ``is_transient`` accepts are retried; anything
    else propagates at once. After the last attempt a transient error becomes
    ``exhausted(message)`` (:class:`RetriesExhausted` unless given), chained to the last error.

    Each retry is logged as a warning, unless ``outage`` is given: the outage of the store
    it names is then logged once when it starts and once when a call succeeds again (see
    :class:`Outage`), and the message of ``exhausted`` is the outage's one line.
    """
    if policy.attempts < 1:
        raise ValueError("RetryPolicy.attempts must be >= 1")
    started = clock()
    attempt = 1
    while True:
        try:
            result = operation()
        except retry_on as exc:
            if not is_transient(exc):
                raise
            delay = policy.delay(attempt)
            out_of_time = (
                policy.deadline_s is not None and clock() - started + delay > policy.deadline_s
            )
            if attempt >= policy.attempts or out_of_time:
                if outage is not None:
                    outage.failed(exc, budget_s=policy.deadline_s)
                    raise exhausted(outage.give_up(exc)) from exc
                raise exhausted(
                    f"{describe} failed {attempt} times in {clock() - started:.1f} s; last "
                    f"error: {type(exc).__name__}: {first_line(exc)}"
                ) from exc
            if outage is not None:
                outage.failed(exc, budget_s=policy.deadline_s)
                log.debug("%s failed (attempt %d: %s); retrying in %.2fs", describe, attempt,
                          type(exc).__name__, delay)  # fmt: skip
                sleep(delay)
                attempt += 1
                continue
            log.warning(
                "%s failed (attempt %d/%d: %s: %s); retrying in %.2fs",
                describe,
                attempt,
                policy.attempts,
                type(exc).__name__,
                first_line(exc),
                delay,
            )
            sleep(delay)
            attempt += 1
        else:
            if outage is not None:
                outage.recovered()
            return result


def first_line(exc: BaseException) -> str:
    """The first line of an error message (server errors append a long stack trace)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# --- outages -------------------------------------------------------------------------------


@dataclass(slots=True)
class Outage:
    """The outage of one store (``store`` at the redacted ``url``), logged as one line.

    A caller that retries calls to the store reports each failed call (:meth:`failed`) and
    each call that succeeds (:meth:`recovered`). The first failure logs one warning naming
    the store, its URL, the error and how long calls wait; later failures log nothing more;
    the first success afterwards logs one line saying how long the store was down. When the
    caller stops waiting, :meth:`give_up` is the one-line message of the error it raises
    (and the next failure starts a new outage). ``clock`` is monotonic seconds.
    """

    store: str
    url: str
    clock: Callable[[], float] = field(default=time.monotonic)
    since: float | None = None
    failures: int = 0

    @property
    def down(self) -> bool:
        """Whether an outage is under way (a call failed and none succeeded since)."""
        return self.since is not None

    def down_for(self) -> float:
        """Seconds since the first failure of the outage under way (0 if none)."""
        return 0.0 if self.since is None else max(0.0, self.clock() - self.since)

    def failed(self, exc: BaseException, *, budget_s: float | None) -> float:
        """Record a failed call (``budget_s``: how long calls wait, None = unbounded);
        logs the outage line on its first failure. Returns the seconds it has lasted."""
        self.failures += 1
        if self.since is None:
            self.since = self.clock()
            wait = "without a time limit" if budget_s is None else f"for up to {budget_s:.0f} s"
            log.warning(
                "%s at %s is unreachable (%s); calls wait and are retried %s",
                self.store, self.url, describe_error(exc), wait,
            )  # fmt: skip
        return self.down_for()

    def recovered(self) -> None:
        """Record a successful call; ends (and logs the end of) an outage under way."""
        if self.since is None:
            return
        log.warning(
            "%s at %s is reachable again after %.1f s (%d failed attempts)",
            self.store, self.url, self.down_for(), self.failures,
        )  # fmt: skip
        self.since = None
        self.failures = 0

    def give_up(self, exc: BaseException) -> str:
        """The one-line message of the error raised when the caller stops waiting; the
        outage counts as reported (the next failure starts and logs a new one)."""
        message = (
            f"{self.store} at {self.url} has been unreachable for {self.down_for():.0f} s "
            f"(failed {self.failures} times; last error: {describe_error(exc)}); giving up"
        )
        self.since = None
        self.failures = 0
        return message


def describe_error(exc: BaseException) -> str:
    """``Type: first line of the message`` of an error, for a one-line log message."""
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- token bucket ---------------------------------------------------------------------------


@dataclass(slots=True)
class TokenBucket:
    """``rate_per_s`` tokens per second, at most ``burst`` saved up; may go negative (debt).

    :meth:`reserve` takes one token and returns how long the caller must wait before using
    it (0 when one is available), so concurrent callers queue fairly without a lock in a
    single asyncio loop; :meth:`acquire` does the waiting. :meth:`wait_for` and :meth:`take`
    serve callers that weigh a request in many tokens. :meth:`block_until` pauses the whole
    bucket (HTTP 429/418 with a ``Retry-After``).
    """

    rate_per_s: float
    burst: float
    tokens: float = math.nan
    updated_at: float | None = None
    blocked_until: float = 0.0

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst <= 0:
            raise ValueError("rate_per_s and burst must be positive")
        if math.isnan(self.tokens):
            self.tokens = self.burst

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last call (``now``: monotonic seconds)."""
        if self.updated_at is not None and now > self.updated_at:
            self.tokens = min(self.burst, self.tokens + (now - self.updated_at) * self.rate_per_s)
        if self.updated_at is None or now > self.updated_at:
            self.updated_at = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` tokens are available and no block holds (0: now).

        Takes nothing. More than ``burst`` is never asked for: ``burst`` is then enough.
        """
        self.refill(now)
        missing = min(amount, self.burst) - self.tokens
        wait = 0.0 if missing <= 1e-12 else missing / self.rate_per_s
        return max(wait, self.blocked_until - now)

    def take(self, amount: float, now: float) -> None:
        """Remove ``amount`` tokens (the balance may go negative: a debt paid by waiting)."""
        self.refill(now)
        self.tokens -= amount

    def reserve(self, now: float) -> float:
        """Take a token; return the seconds to wait before the request may go out."""
        self.take(1.0, now)
        wait = 0.0 if self.tokens >= 0 else -self.tokens / self.rate_per_s
        return max(wait, self.blocked_until - now)

    async def acquire(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """Take a token and wait until it may be used."""
        wait = self.reserve(clock())
        if wait > 0:
            await sleep(wait)

    def block_until(self, until: float) -> None:
        """Let no request out before ``until`` (monotonic seconds); never shortens a block."""
        self.blocked_until = max(self.blocked_until, until)


def parse_retry_after(value: str | None, default_s: float) -> float:
    """Seconds from an HTTP ``Retry-After`` header (delta-seconds form), else ``default_s``.

    The HTTP-date form is not used by the services the connectors talk to; it falls back to
    the default, as does a missing or malformed header.
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
