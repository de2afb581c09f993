"""Per-series tracking of the bridge: whether an update is new, a duplicate or stale, and the
ranges of closed bars that were never produced (gaps).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from connectors.exchanges.base import (
    MINUTE_MS,
)
from udfs.record import Kline

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    """What the tracker decided about one update."""

    PRODUCE = "produce"
    DUPLICATE = "duplicate"  # same bar, same values as the last produced update
    STALE = "stale"  # older than what was already produced (e.g. the lagging overlap link)


@dataclass(slots=True)
class SeriesState:
    """What the bridge produced last for one series, and the closed bars it still misses.

    ``cursor``: every closed bar with ``open_time <= cursor`` was produced or is in ``gaps``.
    ``gaps``: sorted, disjoint ``[start, end)`` open-time ranges of closed bars not produced.
    """

    open_time: int = -1
    closed: bool = False
    event_time: int = 0
    volume: float = -1.0
    fingerprint: tuple[Any, ...] | None = None
    cursor: int | None = None
    gaps: list[list[int]] = field(default_factory=list)


def _add_range(gaps: list[list[int]], start: int, end: int) -> None:
    """Insert ``[start, end)`` into sorted disjoint ranges, merging overlaps and neighbours."""
    if start >= end:
        return
    index = bisect.bisect_left(gaps, [start, start])
    if index > 0 and gaps[index - 1][1] >= start:
        index -= 1
    while index < len(gaps) and gaps[index][0] <= end:
        start = min(start, gaps[index][0])
        end = max(end, gaps[index][1])
        del gaps[index]
    gaps.insert(index, [start, end])


def _remove_range(gaps: list[list[int]], start: int, end: int) -> int:
    """Remove ``[start, end)`` from the ranges; returns how many milliseconds were removed."""
    removed = 0
    result: list[list[int]] = []
    for gap_start, gap_end in gaps:
        if gap_end <= start or gap_start >= end:
            result.append([gap_start, gap_end])
            continue
        removed += min(gap_end, end) - max(gap_start, start)
        if gap_start < start:
            result.append([gap_start, start])
        if gap_end > end:
            result.append([end, gap_end])
    gaps[:] = result
    return removed


def _in_ranges(gaps: list[list[int]], point: int) -> bool:
    index = bisect.bisect_right(gaps, [point, 2**62]) - 1
    return index >= 0 and gaps[index][0] <= point < gaps[index][1]


class SeriesTracker:
    """Per-series state of the bridge (see :class:`SeriesState`).

    ``startup_backfill_ms``: on the first update of a series, the closed bars of that many
    milliseconds before it become a gap, so a restarted bridge repairs what it missed while
    it was down. ``max_gap_ms`` bounds a series' outstanding gaps (oldest dropped, logged).
    ``event_time_is_ingest``: the exchange has no event time; the tracker keeps the stand-in
    non-decreasing per series (the wall clock may step back) and orders by volume instead.
    """

    def __init__(
        self,
        *,
        startup_backfill_ms: int = 0,
        max_gap_ms: int = 7 * 24 * 60 * MINUTE_MS,
        event_time_is_ingest: bool = False,
    ) -> None:
        self.startup_backfill_ms = startup_backfill_ms
        self.max_gap_ms = max_gap_ms
        self.event_time_is_ingest = event_time_is_ingest
        self.series: dict[str, SeriesState] = {}
        self.gaps_dropped_ms = 0

    def state(self, key: str) -> SeriesState:
        """The state of ``key`` (created empty on first use)."""
        state = self.series.get(key)
        if state is None:
            state = self.series[key] = SeriesState()
        return state

    def accept_live(self, kline: Kline) -> tuple[Verdict, Kline, list[tuple[int, int]]]:
        """Judge one WebSocket update; returns the verdict, the record to produce, new gaps."""
        key = kline.series_key
        state = self.state(key)
        new_gaps: list[tuple[int, int]] = []
        open_time = kline.open_time
        if self.event_time_is_ingest and kline.event_time < state.event_time:
            kline = dataclasses.replace(kline, event_time=state.event_time)

        if open_time < state.open_time:
            # An older bar: only a closed bar that is still missing is worth producing.
            if kline.is_closed and _in_ranges(state.gaps, open_time):
                _remove_range(state.gaps, open_time, open_time + MINUTE_MS)
                return Verdict.PRODUCE, kline, new_gaps
            return Verdict.STALE, kline, new_gaps

        fingerprint = kline.values_fingerprint()
        if open_time == state.open_time:
            if state.closed:
                if not kline.is_closed:
                    return Verdict.STALE, kline, new_gaps
                if fingerprint == state.fingerprint:
                    return Verdict.DUPLICATE, kline, new_gaps
            elif not kline.is_closed:
                if fingerprint == state.fingerprint:
                    return Verdict.DUPLICATE, kline, new_gaps
                if kline.volume < state.volume or (
                    not self.event_time_is_ingest and kline.event_time < state.event_time
                ):
                    return Verdict.STALE, kline, new_gaps
        else:
            # A newer bar: closed bars between the cursor and it were never produced.
            if state.cursor is None:
                state.cursor = open_time - MINUTE_MS
                if self.startup_backfill_ms > 0:
                    new_gaps.append((open_time - self.startup_backfill_ms, open_time))
            elif open_time > state.cursor + MINUTE_MS:
                new_gaps.append((state.cursor + MINUTE_MS, open_time))
                state.cursor = open_time - MINUTE_MS
            for start, end in new_gaps:
                self._add_gap(key, state, start, end)

        state.open_time = open_time
        state.closed = kline.is_closed
        state.event_time = max(state.event_time, kline.event_time)
        state.volume = kline.volume
        state.fingerprint = fingerprint
        if kline.is_closed:
            state.cursor = open_time if state.cursor is None else max(state.cursor, open_time)
            if state.gaps:
                _remove_range(state.gaps, open_time, open_time + MINUTE_MS)
        return Verdict.PRODUCE, kline, new_gaps

    def accept_repaired(self, kline: Kline) -> bool:
        """True when a REST bar fills a gap (it is then no longer a gap); False: not needed."""
        state = self.state(kline.series_key)
        if kline.is_closed and _in_ranges(state.gaps, kline.open_time):
            _remove_range(state.gaps, kline.open_time, kline.open_time + MINUTE_MS)
            return True
        return False

    def add_gap(self, key: str, start: int, end: int) -> None:
        """Record closed bars ``[start, end)`` as missing (e.g. their delivery failed)."""
        self._add_gap(key, self.state(key), start, end)

    def _add_gap(self, key: str, state: SeriesState, start: int, end: int) -> None:
        _add_range(state.gaps, start, end)
        total = sum(gap_end - gap_start for gap_start, gap_end in state.gaps)
        if total > self.max_gap_ms:
            cut_before = state.gaps[-1][1] - self.max_gap_ms
            dropped = _remove_range(state.gaps, state.gaps[0][0], cut_before)
            self.gaps_dropped_ms += dropped
            log.error(
                "event=gap_dropped series=%s bars=%d reason=older than the repair horizon",
                key,
                dropped // MINUTE_MS,
            )

    def gaps(self, key: str) -> list[tuple[int, int]]:
        """A snapshot of the outstanding gaps of ``key``."""
        return [(start, end) for start, end in self.state(key).gaps]

    def finish_repair(self, key: str, start: int, end: int, unconfirmed: list[int]) -> int:
        """After a successful fetch of ``[start, end)``: bars the exchange did not return are
        given up (it has none for those minutes); ``unconfirmed`` bars stay gaps. Returns the
        number of bars given up."""
        state = self.state(key)
        removed = _remove_range(state.gaps, start, end)
        for open_time in unconfirmed:
            if start <= open_time < end:
                _add_range(state.gaps, open_time, open_time + MINUTE_MS)
                removed -= MINUTE_MS
        return max(0, removed // MINUTE_MS)
