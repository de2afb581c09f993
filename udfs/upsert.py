"""Per-bar upsert: which update of a 1m bar to emit, and with which version.

Exchanges send many updates of a still-open bar and then one closed update; feeds repeat
themselves, reconnects and REST repair re-send bars, and partitions reorder. For each
(series, open_time) the job keeps a small ``BarState`` and decides with ``decide_upsert``:

- the first update of a bar is emitted;
- a closed bar is final: an in-progress update after it is dropped (``AFTER_CLOSE``); the
  same closed bar again is a ``DUPLICATE``; a closed bar re-sent with different values and
  an event time not older than the stored one is a ``CORRECTION``;
- while the bar is open, the newest update by event_time wins: an older one is ``STALE``,
  one with nothing changed is a ``DUPLICATE``, a closed one always wins (``UPDATE``).

Versions: ``2 * event_time + is_closed``, raised to ``previous + 1`` where needed, so they grow
strictly per bar and a replay of the same input yields the same versions (idempotent writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from udfs.record import Kline


class UpsertOutcome(Enum):
    """What the upsert did with one update."""

    NEW = "new"
    UPDATE = "update"
    CORRECTION = "correction"
    DUPLICATE = "duplicate"
    STALE = "stale"
    AFTER_CLOSE = "after_close"

    @property
    def emits(self) -> bool:
        """True when the update goes downstream."""
        return self in _EMITTING  # a set: member lookups on the Enum class are slow


_EMITTING: frozenset[UpsertOutcome] = frozenset(
    {UpsertOutcome.NEW, UpsertOutcome.UPDATE, UpsertOutcome.CORRECTION}
)


@dataclass(frozen=True, slots=True)
class BarState:
    """What the upsert remembers of the last emitted update of one bar."""

    event_time: int
    is_closed: bool
    fingerprint: tuple[Any, ...]
    version: int


@dataclass(frozen=True, slots=True)
class UpsertDecision:
    """The outcome for one update and the state to keep afterwards."""

    outcome: UpsertOutcome
    state: BarState
    version: int


def base_version(kline: Kline) -> int:
    """The data-derived version of an update: later event time wins, closed beats open."""
    return kline.event_time * 2 + int(kline.is_closed)


def _emit(outcome: UpsertOutcome, kline: Kline, previous: BarState | None) -> UpsertDecision:
    version = base_version(kline)
    if previous is not None:
        version = max(version, previous.version + 1)
    state = BarState(kline.event_time, kline.is_closed, kline.values_fingerprint(), version)
    return UpsertDecision(outcome, state, version)


def _drop(outcome: UpsertOutcome, kline: Kline, previous: BarState) -> UpsertDecision:
    state = BarState(
        max(previous.event_time, kline.event_time)
        if outcome is UpsertOutcome.DUPLICATE
        else previous.event_time,
        previous.is_closed,
        previous.fingerprint,
        previous.version,
    )
    return UpsertDecision(outcome, state, previous.version)


def decide_upsert(previous: BarState | None, kline: Kline) -> UpsertDecision:
    """Decide what to do with ``kline`` given the state of its bar (None: first update)."""
    if previous is None:
        return _emit(UpsertOutcome.NEW, kline, None)
    same_values = kline.values_fingerprint() == previous.fingerprint
    if previous.is_closed:
        if not kline.is_closed:
            return _drop(UpsertOutcome.AFTER_CLOSE, kline, previous)
        if same_values:
            return _drop(UpsertOutcome.DUPLICATE, kline, previous)
        if kline.event_time < previous.event_time:
            return _drop(UpsertOutcome.STALE, kline, previous)
        return _emit(UpsertOutcome.CORRECTION, kline, previous)
    if kline.is_closed:
        return _emit(UpsertOutcome.UPDATE, kline, previous)
    if kline.event_time < previous.event_time:
        return _drop(UpsertOutcome.STALE, kline, previous)
    if same_values:
        return _drop(UpsertOutcome.DUPLICATE, kline, previous)
    return _emit(UpsertOutcome.UPDATE, kline, previous)


def is_beyond_lateness(kline: Kline, reference_ms: int, allowed_lateness_ms: int) -> bool:
    """True when the bar closed more than ``allowed_lateness_ms`` before ``reference_ms``.

    The reference is the newest open_time of the bar's series. The upsert forgets a bar's
    state that long after its close, so such an update can no longer be ordered against what
    was emitted: it is rejected as ``late``.
    """
    return kline.close_time + allowed_lateness_ms < reference_ms


@dataclass(frozen=True, slots=True)
class ClockAdvance:
    """The clock after an update, and the open_time below which bar state may be dropped."""

    clock: SeriesClock
    expire_before: int | None


@dataclass(frozen=True, slots=True)
class SeriesClock:
    """A series' own event clock: its newest open_time, and when state was last pruned.

    Pruning walks the series' bar state, so it runs once the clock has moved a quarter of the
    allowed lateness (at least one bar) since the last prune: the state holds at most about
    1.25 x lateness worth of bars per series.
    """

    newest_open_time: int
    pruned_at: int

    def advance(self, open_time: int, bar_ms: int, allowed_lateness_ms: int) -> ClockAdvance:
        """Move the clock to ``open_time`` if it is newer; say what state has expired."""
        if open_time <= self.newest_open_time:
            return ClockAdvance(self, None)
        if open_time - self.pruned_at < max(bar_ms, allowed_lateness_ms // 4):
            return ClockAdvance(SeriesClock(open_time, self.pruned_at), None)
        # A bar is kept while its close + lateness is not behind the newest open_time.
        return ClockAdvance(
            SeriesClock(open_time, open_time), open_time - allowed_lateness_ms - bar_ms
        )


@dataclass(slots=True)
class SeriesMirror:
    """A series' upsert state as the Flink function holds it in memory.

    Mutable on purpose: it mirrors the series' MapState (one ``BarState`` per open_time)
    and clock so that reads never go to the state backend.
    """

    clock: SeriesClock
    bars: dict[int, BarState]

    def expire(self, before_open_time: int) -> list[int]:
        """Drop the bars that opened before ``before_open_time``; return their open times."""
        expired = [open_time for open_time in self.bars if open_time < before_open_time]
        for open_time in expired:
            del self.bars[open_time]
        return expired
