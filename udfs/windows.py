"""Event-time windows over one series' 1m bars, without Flink: when each window emits.

A :class:`WindowSet` holds one family of UTC-aligned windows of one series (the roll-ups,
or the volume profiles) and decides, exactly as a Flink window operator with the roll-up
trigger did before the job was fused into one operator per series:

- **gate**: a 1m bar whose *smallest* window is past its allowed lateness (``window end - 1
  + lateness <= watermark``) is refused (the caller dead-letters it); larger windows end no
  earlier, so a bar goes into every window of the family or into none;
- **early (live)**: a closed 1m bar (and any update with ``emit_in_progress``) fires every
  window it joins whose end is still ahead of the watermark, if that window is live by the
  wall clock: its end is at most ``live_horizon_ms`` behind it (negative: every window). A
  replay of old data therefore emits each window once, when the watermark closes it;
- **final**: the watermark passes the window's last millisecond (``final_due``);
- **correction**: any update of a window whose end the watermark has passed, within the
  allowed lateness, fires it again (closed);
- **clean-up**: a window is forgotten once ``end - 1 + lateness <= watermark``;
- **idle fallback**: ``idle_close_ms`` after the end by the wall clock, a window that got
  its first bar before that moment fires if the watermark has not come (all input stopped).

The accumulator of a window is opaque here: an :class:`Accumulating` strategy creates it
and adds bars to it (``udfs.rollup`` for roll-ups, ``udfs.analytics`` for profiles). A
firing is a :class:`Firing`; whether it emits a closed bar is ``udfs.rollup.is_window_closed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from udfs.record import TIMEFRAME_MS, VersionedBar
from udfs.rollup import TIMEFRAME_BY_MS, is_window_closed

# "No timer needed": later than any event time.
NEVER: Final = 2**63 - 1


class Accumulating(Protocol):
    """How a window family keeps its windows' contents."""

    def create(self) -> Any:
        """A new, empty accumulator."""

    def add(self, accumulator: Any, bar: VersionedBar, arrival_ms: int) -> None:
        """Put one version of a 1m bar into ``accumulator`` (a newer version replaces it)."""

    def first_arrival_ms(self, accumulator: Any) -> int:
        """Wall clock at which the first bar reached the window."""


@dataclass(frozen=True, slots=True)
class WindowTiming:
    """The timing rules shared by every window family of a job."""

    allowed_lateness_ms: int
    emit_in_progress: bool
    idle_close_ms: int
    live_horizon_ms: int

    def __post_init__(self) -> None:
        if self.allowed_lateness_ms < 0:  # a window is never forgotten before it closes
            raise ValueError(f"allowed_lateness_ms must be >= 0, got {self.allowed_lateness_ms}")


@dataclass(slots=True)
class Window:
    """One window of a series: its bounds, accumulator and what has happened to it."""

    timeframe: str
    start: int
    length_ms: int
    accumulator: Any
    finalized: bool = False
    idle_due: int | None = None
    # The window's last millisecond (Flink's ``TimeWindow.max_timestamp``): a field, not a
    # property, because every bar and every watermark reads it for each window held.
    max_timestamp: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_timestamp = self.start + self.length_ms - 1

    def cleanup_time(self, allowed_lateness_ms: int) -> int:
        """The watermark at which the window is forgotten."""
        return self.max_timestamp + allowed_lateness_ms


@dataclass(frozen=True, slots=True)
class Firing:
    """A window emitting now: ``closed`` says whether its bar is final."""

    window: Window
    closed: bool

    @property
    def timeframe(self) -> str:
        """The window's timeframe."""
        return self.window.timeframe

    @property
    def start(self) -> int:
        """The window's open time."""
        return self.window.start


class WindowSet:
    """The windows of one family (lengths ``timeframes``) of one series."""

    __slots__ = ("_event_due", "_processing_due", "accumulating", "lengths", "timing", "windows")

    def __init__(
        self, timeframes: Sequence[str], accumulating: Accumulating, timing: WindowTiming
    ) -> None:
        if not timeframes:
            raise ValueError("a window family needs at least one timeframe")
        self.lengths = sorted(TIMEFRAME_MS[name] for name in timeframes)
        self.accumulating = accumulating
        self.timing = timing
        self.windows: dict[tuple[int, int], Window] = {}
        # next_event_due and next_processing_due, kept as windows are added (both are asked
        # after every bar); None: to be recomputed.
        self._event_due: int | None = NEVER
        self._processing_due: int | None = NEVER

    def __len__(self) -> int:
        return len(self.windows)

    def is_late(self, open_time: int, watermark: int) -> bool:
        """Whether a 1m bar opening at ``open_time`` is too late for every window."""
        smallest = self.lengths[0]
        end = open_time - open_time % smallest + smallest
        return end - 1 + self.timing.allowed_lateness_ms <= watermark

    def add(self, bar: VersionedBar, watermark: int, now_ms: int) -> list[Firing]:
        """Put a 1m bar (already gated: not late) into its windows; the firings it causes."""
        timing = self.timing
        open_time = bar.kline.open_time
        live_update = bar.kline.is_closed or timing.emit_in_progress
        firings: list[Firing] = []
        for length in self.lengths:
            start = open_time - open_time % length
            window = self.windows.get((length, start))
            if window is None:
                window = Window(TIMEFRAME_BY_MS[length], start, length, self.accumulating.create())
                self.windows[(length, start)] = window
                if self._event_due is not None:
                    self._event_due = min(self._event_due, window.max_timestamp)
            self.accumulating.add(window.accumulator, bar, now_ms)
            max_timestamp = window.max_timestamp
            if max_timestamp <= watermark:
                firings.append(Firing(window, closed=True))
                continue
            if timing.idle_close_ms > 0 and window.idle_due is None:
                due = max_timestamp + timing.idle_close_ms
                if due > now_ms:
                    window.idle_due = due
                    if self._processing_due is not None:
                        self._processing_due = min(self._processing_due, due)
            if live_update and (
                timing.live_horizon_ms < 0 or max_timestamp + timing.live_horizon_ms >= now_ms
            ):
                firings.append(Firing(window, self._closed(window, watermark, now_ms)))
        return firings

    def _closed(self, window: Window, watermark: int, now_ms: int) -> bool:
        return is_window_closed(
            window.max_timestamp,
            watermark,
            now_ms,
            self.timing.idle_close_ms,
            self.accumulating.first_arrival_ms(window.accumulator),
        )

    def on_watermark(self, watermark: int) -> list[Firing]:
        """Final firings of the windows the watermark has closed; forget expired windows."""
        firings: list[Firing] = []
        lateness = self.timing.allowed_lateness_ms
        expired: list[tuple[int, int]] = []
        for key, window in self.windows.items():
            max_timestamp = window.max_timestamp
            if max_timestamp > watermark:
                continue  # neither due nor expired (expiry comes later still)
            if not window.finalized:
                window.finalized = True
                window.idle_due = None
                firings.append(Firing(window, closed=True))
            if max_timestamp + lateness <= watermark:  # window.cleanup_time(lateness)
                expired.append(key)
        for key in expired:
            del self.windows[key]
        self._event_due = None
        self._processing_due = None
        return firings

    def on_processing_time(self, now_ms: int, watermark: int) -> list[Firing]:
        """Idle-fallback firings due by ``now_ms`` of windows the watermark has not closed."""
        firings: list[Firing] = []
        for window in self.windows.values():
            due = window.idle_due
            if due is None or due > now_ms:
                continue
            window.idle_due = None
            self._processing_due = None
            if watermark < window.max_timestamp:
                firings.append(Firing(window, self._closed(window, watermark, now_ms)))
        return firings

    def next_event_due(self) -> int:
        """The earliest watermark at which something happens (a final firing or clean-up)."""
        if self._event_due is None:
            lateness = self.timing.allowed_lateness_ms
            self._event_due = min(
                (w.cleanup_time(lateness) if w.finalized else w.max_timestamp
                 for w in self.windows.values()),
                default=NEVER,
            )  # fmt: skip
        return self._event_due

    def next_processing_due(self) -> int:
        """The earliest wall-clock time of an idle fallback, ``NEVER`` if none."""
        if self._processing_due is None:
            self._processing_due = min(
                (w.idle_due for w in self.windows.values() if w.idle_due is not None),
                default=NEVER,
            )
        return self._processing_due

    def oldest_start(self) -> int:
        """The open time of the oldest window held (``NEVER`` when none): older 1m bars are
        not needed to rebuild this family."""
        return min((w.start for w in self.windows.values()), default=NEVER)

    def finalized_keys(self) -> list[tuple[int, int]]:
        """``(length, start)`` of the windows whose final firing has happened."""
        return [key for key, window in self.windows.items() if window.finalized]

    def restore(
        self,
        bars: Iterable[VersionedBar],
        finalized: Iterable[tuple[int, int]],
        now_ms: int,
        cleaned_at: int = -NEVER,
    ) -> None:
        """Rebuild the windows from their 1m bars (after a restart) without firing them.

        ``cleaned_at``: the watermark of the last clean-up. A window it had already forgotten
        is not brought back; every other window gets all its bars back, also the bars whose
        smaller windows are gone (a 1m bar lives in one window of each length).
        """
        lateness = self.timing.allowed_lateness_ms
        for bar in sorted(bars, key=lambda b: b.kline.open_time):
            open_time = bar.kline.open_time
            for length in self.lengths:
                start = open_time - open_time % length
                if start + length - 1 + lateness <= cleaned_at:
                    continue  # this window was cleaned up before the restart
                window = self.windows.get((length, start))
                if window is None:
                    window = Window(
                        TIMEFRAME_BY_MS[length], start, length, self.accumulating.create()
                    )
                    self.windows[(length, start)] = window
                self.accumulating.add(window.accumulator, bar, now_ms)
        for key in finalized:
            window = self.windows.get(key)
            if window is not None:
                window.finalized = True
        self._event_due = None
        self._processing_due = None
        if self.timing.idle_close_ms > 0:
            for window in self.windows.values():
                due = window.max_timestamp + self.timing.idle_close_ms
                if not window.finalized and due > now_ms:
                    window.idle_due = due

    def __iter__(self) -> Iterator[Window]:
        return iter(self.windows.values())
