"""Counters and logging helpers of the bridge: per-connection and repair statistics, lag
summaries, a log sampler and the ingest wall clock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

# How many samples of malformed frames a connection logs in full before logging 1 in N.
_MALFORMED_SAMPLES_LOGGED: Final[int] = 5
_MALFORMED_LOG_EVERY: Final[int] = 1000
_SAMPLE_CHARS: Final[int] = 300
_LAG_SAMPLES_KEPT: Final[int] = 100_000
_YIELD_EVERY: Final[int] = 64


def wall_ms() -> int:
    """Wall-clock epoch milliseconds (the ingest time)."""
    return time.time_ns() // 1_000_000


class LogSampler:
    """Rate-limits one kind of log line: the first ``burst`` lines, then one per ``every_s``.

    :meth:`allow` says whether to log now and how many lines were suppressed since the last
    one, so a flood of poison input costs a few log lines, not one per message.
    """

    def __init__(
        self, burst: int = 5, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.every_s = every_s
        self.clock = clock
        self.seen = 0
        self.suppressed = 0
        self._last_logged = -math.inf

    def allow(self) -> tuple[bool, int]:
        """``(log_it, suppressed_before)``; counts every call."""
        self.seen += 1
        now = self.clock()
        if self.seen <= self.burst or now - self._last_logged >= self.every_s:
            self._last_logged = now
            suppressed, self.suppressed = self.suppressed, 0
            return True, suppressed
        self.suppressed += 1
        return False, 0


# --------------------------------------------------------------------------------------------
# Counters
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one logical connection (a shard of symbols), across its reconnects."""

    messages: int = 0
    bar_updates: int = 0
    bars_produced: int = 0
    closed_bars_produced: int = 0
    duplicates_dropped: int = 0
    stale_dropped: int = 0
    malformed: int = 0
    rejected: int = 0
    server_errors: int = 0
    reconnects: int = 0
    planned_reconnects: int = 0
    shutdown_notices: int = 0
    watchdog_timeouts: int = 0
    pings_sent: int = 0
    connection_id: str = ""
    lag_ms: deque[int] = field(default_factory=lambda: deque(maxlen=_LAG_SAMPLES_KEPT))

    def snapshot(self, *, reset_lag: bool) -> dict[str, Any]:
        """The counters as a dict, with lag percentiles of the samples since the last reset."""
        data = {name: getattr(self, name) for name in self.__slots__ if name != "lag_ms"}
        data["lag_ms"] = lag_summary(self.lag_ms)
        if reset_lag:
            self.lag_ms.clear()
        return data


@dataclass(slots=True)
class RepairStats:
    """Counters of gap detection and repair."""

    gaps_detected: int = 0
    bars_missing_detected: int = 0
    bars_repaired: int = 0
    bars_unavailable: int = 0
    repair_failures: int = 0
    rejected: int = 0


def lag_summary(samples: deque[int] | list[int]) -> dict[str, int | None]:
    """p50, p99 and max of lag samples in ms (None without samples)."""
    if not samples:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(samples)
    count = len(ordered)
    return {
        "n": count,
        "p50": ordered[(count - 1) // 2],
        "p99": ordered[min(count - 1, (count * 99) // 100)],
        "max": ordered[-1],
    }
