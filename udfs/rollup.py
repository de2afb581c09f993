"""Roll-ups of 1m bars into 5m, 15m, 1h, 4h and 1d bars: the maths, without Flink.

A roll-up bar (DESIGN.md "Conventions"): open of the earliest 1m bar present, close of the
latest, high = max, low = min; volume, quote_volume, trades and the taker volumes are sums.
Windows are aligned to the UTC epoch. ``bars_present`` counts the 1m bars used and
``bars_expected`` is the window length in minutes, so a gap is visible.

A sum is null when any bar present lacks that value (an exchange that gives no quote volume):
a sum over part of the bars would look complete and be wrong.

The accumulator keeps every 1m bar of its window by open time, so a newer version of a 1m
bar (an in-progress update, the closed bar, a correction) replaces the older one instead of
being counted twice. Its summary is kept up to date incrementally so that reading it at each
firing costs O(1); only a replacement that removes the running high or low rescans the bars.

Identity and provenance (issue 13): a roll-up keeps the market and base multiplier of its
1m bars, and its ``provenance`` is the one its 1m bars share (``ws`` only when every minute
present came from the live stream), else ``mixed``; the accumulator counts the 1m bars per
provenance, so a replaced minute moves from one count to the other.

Versions: ``2 * (sum of the versions of the 1m bars present) + closed``. A 1m bar's version
grows strictly with each of its emitted updates (``udfs.upsert``) and is positive, so the sum
grows strictly whenever the window's content changes, and the final firing (``closed``) adds
one when nothing else changed. The version depends only on the 1m versions present, so a
replay of the same input ends with the same versions (idempotent writes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from udfs.record import TIMEFRAME_MS, Kline, VersionedBar

MINUTE_MS: Final = TIMEFRAME_MS["1m"]
SOURCE_TIMEFRAME: Final = "1m"
DEFAULT_ROLLUP_TIMEFRAMES: Final[tuple[str, ...]] = ("5m", "15m", "1h", "4h", "1d")
TIMEFRAME_BY_MS: Final[dict[int, str]] = {length: name for name, length in TIMEFRAME_MS.items()}

# Positions in an accumulator entry (a tuple: small to pickle, fast to index).
_VERSION, _OPEN, _HIGH, _LOW, _CLOSE = 0, 1, 2, 3, 4
# The summed fields, their positions in an entry, and the Kline attributes they come from.
SUM_FIELDS: Final[tuple[str, ...]] = (
    "volume",
    "quote_volume",
    "trades",
    "taker_buy_volume",
    "taker_buy_quote_volume",
)
_SUM_START: Final = 5
# The provenance of the 1m bar, after the summed fields.
_PROVENANCE: Final = _SUM_START + len(SUM_FIELDS)
# (version, open, high, low, close, volume, quote_volume, trades, taker_buy_volume,
#  taker_buy_quote_volume, provenance)
Entry = tuple[Any, ...]
MIXED_PROVENANCE: Final = "mixed"


def parse_rollup_timeframes(text: str) -> tuple[str, ...]:
    """``"5m,1h"`` -> ``("5m", "1h")`` sorted by length; ``""`` or ``"none"`` -> ``()`` (off).

    Raises ValueError for an unknown timeframe or ``1m`` (the roll-ups' source).
    """
    cleaned = text.strip().lower()
    if cleaned in ("", "none", "off"):
        return ()
    names = [part.strip() for part in cleaned.split(",") if part.strip()]
    return validate_rollup_timeframes(names)


def validate_rollup_timeframes(names: Iterable[str]) -> tuple[str, ...]:
    """The distinct timeframes sorted by length; ValueError for ``1m`` or an unknown one."""
    chosen = set(names)
    for name in chosen:
        if name not in TIMEFRAME_MS:
            raise ValueError(
                f"unknown roll-up timeframe {name!r} (expected some of "
                f"{', '.join(DEFAULT_ROLLUP_TIMEFRAMES)})"
            )
        if name == SOURCE_TIMEFRAME:
            raise ValueError("1m is the source of the roll-ups, not a roll-up timeframe")
    return tuple(sorted(chosen, key=TIMEFRAME_MS.__getitem__))


def bars_expected(timeframe: str) -> int:
    """How many 1m bars make a complete bar of ``timeframe``."""
    return TIMEFRAME_MS[timeframe] // MINUTE_MS


def window_start(open_time: int, length_ms: int) -> int:
    """The UTC-epoch-aligned start of the window of ``length_ms`` holding ``open_time``."""
    return open_time - open_time % length_ms


def window_starts(open_time: int, lengths_ms: Sequence[int]) -> list[int]:
    """The start of each roll-up window (one per length) that a 1m bar belongs to."""
    return [open_time - open_time % length for length in lengths_ms]


def is_late_for_rollups(
    open_time: int, smallest_length_ms: int, watermark: int, allowed_lateness_ms: int
) -> bool:
    """True when the smallest roll-up window of a 1m bar is past its allowed lateness.

    Flink keeps a window until ``window end - 1 + allowed lateness`` <= watermark. Larger
    windows end no earlier, so a bar that passes this test is accepted by every window: a bar
    is rolled up into all timeframes or into none (and then dead-lettered), never into some.
    """
    end = window_start(open_time, smallest_length_ms) + smallest_length_ms
    return end - 1 + allowed_lateness_ms <= watermark


def is_window_closed(
    max_timestamp: int,
    watermark: int,
    processing_time: int,
    idle_close_ms: int,
    first_arrival_ms: int,
) -> bool:
    """Whether a firing of the window ``[.., max_timestamp]`` emits a closed (final) bar.

    Closed when the watermark has passed the window's last millisecond, or, with the
    processing-time fallback on (``idle_close_ms`` > 0), when the wall clock is
    ``idle_close_ms`` past the window end and the window was live: its first 1m bar reached
    the job (wall clock ``first_arrival_ms``) before that moment, which is also when the
    trigger sets its fallback timer. A replay of old data is never closed by the wall clock.
    """
    if watermark >= max_timestamp:
        return True
    if idle_close_ms <= 0:
        return False
    due = max_timestamp + idle_close_ms
    return processing_time >= due and first_arrival_ms < due


def rollup_version(version_sum: int, closed: bool) -> int:
    """The version of a roll-up emission (see the module docstring)."""
    return 2 * version_sum + int(closed)


@dataclass(frozen=True, slots=True)
class RollupSummary:
    """What a roll-up window holds right now: enough to build its bar."""

    exchange: str
    symbol: str
    raw_symbol: str
    open: float
    high: float
    low: float
    close: float
    volume: float | None
    quote_volume: float | None
    trades: int | None
    taker_buy_volume: float | None
    taker_buy_quote_volume: float | None
    bars_present: int
    version_sum: int
    event_time: int
    latest_ingest_time: int
    first_arrival_ms: int
    market: str = "spot"
    base_multiplier: int = 1
    provenance: str = MIXED_PROVENANCE


class RollupAccumulator:
    """The 1m bars of one roll-up window by open time, with a running summary.

    ``entries`` maps a 1m open time to ``(version, open, high, low, close, volume,
    quote_volume, trades, taker_buy_volume, taker_buy_quote_volume)``. Running values:
    first/last open time, high, low, one sum and one missing-value count per summed field,
    the sum of versions, the newest event and ingest times, the wall-clock time at which
    the first bar reached the window (for the processing-time fallback only), and the number
    of 1m bars per provenance.
    """

    __slots__ = (
        "base_multiplier",
        "entries",
        "event_time",
        "exchange",
        "first_arrival_ms",
        "first_open_time",
        "high",
        "last_open_time",
        "latest_ingest_time",
        "low",
        "market",
        "missing",
        "provenance_counts",
        "raw_symbol",
        "sums",
        "symbol",
        "version_sum",
    )

    def __init__(self) -> None:
        self.entries: dict[int, Entry] = {}
        self.exchange = ""
        self.symbol = ""
        self.raw_symbol = ""
        self.first_open_time = 0
        self.last_open_time = 0
        self.high = -math.inf
        self.low = math.inf
        self.sums: list[float] = [0.0] * len(SUM_FIELDS)
        self.missing: list[int] = [0] * len(SUM_FIELDS)
        self.version_sum = 0
        self.event_time = 0
        self.latest_ingest_time = 0
        self.first_arrival_ms = 0
        self.market = "spot"
        self.base_multiplier = 1
        self.provenance_counts: dict[str, int] = {}

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.entries)


def _entry(bar: VersionedBar) -> Entry:
    k = bar.kline
    return (
        bar.version,
        k.open,
        k.high,
        k.low,
        k.close,
        k.volume,
        k.quote_volume,
        k.trades,
        k.taker_buy_volume,
        k.taker_buy_quote_volume,
        k.provenance,
    )


def bar_entry(bar: VersionedBar) -> Entry:
    """What an accumulator keeps of one version of a 1m bar (pass it to :func:`add_bar` when
    the same bar goes into several windows)."""
    return _entry(bar)


def add_bar(
    acc: RollupAccumulator, bar: VersionedBar, arrival_ms: int = 0, entry: Entry | None = None
) -> RollupAccumulator:
    """Put one version of a 1m bar into ``acc`` (replacing an older version of that bar).

    ``arrival_ms`` is the wall-clock time the bar reached the window; only the first one is
    kept (see :func:`is_window_closed`). ``entry``: :func:`bar_entry` of ``bar``, if known.

    A version not newer than the one held is ignored: the upsert emits strictly growing
    versions per bar, so that only happens if a stream is replayed into the window twice.
    Returns ``acc`` (mutated).
    """
    k = bar.kline
    if not acc.entries:
        acc.exchange, acc.symbol = k.exchange, k.symbol
        acc.market, acc.base_multiplier = k.market, k.base_multiplier
        acc.first_open_time = acc.last_open_time = k.open_time
        acc.first_arrival_ms = arrival_ms
    if _put(acc, k.open_time, entry if entry is not None else _entry(bar)):
        acc.raw_symbol = k.raw_symbol
        acc.event_time = max(acc.event_time, k.event_time)
        acc.latest_ingest_time = max(acc.latest_ingest_time, k.ingest_time)
    return acc


def _put(acc: RollupAccumulator, open_time: int, entry: Entry) -> bool:
    """Insert or replace one entry and update the running summary; False if not newer."""
    entries = acc.entries
    old = entries.get(open_time)
    if old is None:
        _put_new(acc, open_time, entry)
        return True
    if old[_VERSION] >= entry[_VERSION]:
        return False
    entries[open_time] = entry
    acc.version_sum += entry[_VERSION] - (old[_VERSION] if old is not None else 0)
    acc.first_open_time = min(acc.first_open_time, open_time)
    acc.last_open_time = max(acc.last_open_time, open_time)
    counts = acc.provenance_counts
    if old is not None:
        left = counts[old[_PROVENANCE]] - 1
        if left:
            counts[old[_PROVENANCE]] = left
        else:
            del counts[old[_PROVENANCE]]
    counts[entry[_PROVENANCE]] = counts.get(entry[_PROVENANCE], 0) + 1

    high, low = entry[_HIGH], entry[_LOW]
    if high >= acc.high:
        acc.high = high
    elif old is not None and old[_HIGH] == acc.high:
        acc.high = max(e[_HIGH] for e in entries.values())
    if low <= acc.low:
        acc.low = low
    elif old is not None and old[_LOW] == acc.low:
        acc.low = min(e[_LOW] for e in entries.values())

    sums, missing = acc.sums, acc.missing
    for i in range(len(SUM_FIELDS)):
        position = _SUM_START + i
        removed = old[position] if old is not None else None
        added = entry[position]
        if old is not None and removed is None:
            missing[i] -= 1
        if added is None:
            missing[i] += 1
        total = sums[i]
        if removed is not None:
            total -= removed
        if added is not None:
            total += added
        # Subtracting a value that made up most of the sum loses its low digits: add again.
        if removed is not None and abs(total) < abs(removed):
            total = math.fsum(e[position] for e in entries.values() if e[position] is not None)
        sums[i] = total
    return True


def _put_new(acc: RollupAccumulator, open_time: int, entry: Entry) -> None:
    """``_put`` of a minute the window does not hold yet (nothing to take out): the path of
    every bar of a replay, so kept short."""
    acc.entries[open_time] = entry
    acc.version_sum += entry[_VERSION]
    acc.first_open_time = min(acc.first_open_time, open_time)
    acc.last_open_time = max(acc.last_open_time, open_time)
    counts = acc.provenance_counts
    provenance = entry[_PROVENANCE]
    counts[provenance] = counts.get(provenance, 0) + 1
    acc.high = max(entry[_HIGH], acc.high)
    acc.low = min(entry[_LOW], acc.low)
    sums, missing = acc.sums, acc.missing
    for i, added in enumerate(entry[_SUM_START:_PROVENANCE]):
        if added is None:
            missing[i] += 1
        else:
            sums[i] += added


def merge_accumulators(a: RollupAccumulator, b: RollupAccumulator) -> RollupAccumulator:
    """Fold ``b`` into ``a`` (for each 1m bar the newer version wins); returns ``a``."""
    if not b.entries:
        return a
    if not a.entries:
        return b
    for open_time, entry in b.entries.items():
        _put(a, open_time, entry)
    if b.latest_ingest_time >= a.latest_ingest_time:
        a.raw_symbol = b.raw_symbol
    a.event_time = max(a.event_time, b.event_time)
    a.first_arrival_ms = min(a.first_arrival_ms, b.first_arrival_ms)
    a.latest_ingest_time = max(a.latest_ingest_time, b.latest_ingest_time)
    return a


def summarize(acc: RollupAccumulator) -> RollupSummary:
    """The current summary of a non-empty accumulator; ValueError when it is empty."""
    if not acc.entries:
        raise ValueError("an empty roll-up window has no bar")
    first = acc.entries[acc.first_open_time]
    last = acc.entries[acc.last_open_time]
    volume, quote_volume, trades, taker_buy_volume, taker_buy_quote_volume = (
        None if missing else total for total, missing in zip(acc.sums, acc.missing, strict=True)
    )
    return RollupSummary(
        exchange=acc.exchange,
        symbol=acc.symbol,
        raw_symbol=acc.raw_symbol,
        open=first[_OPEN],
        high=acc.high,
        low=acc.low,
        close=last[_CLOSE],
        volume=volume,
        quote_volume=quote_volume,
        trades=int(trades) if trades is not None else None,
        taker_buy_volume=taker_buy_volume,
        taker_buy_quote_volume=taker_buy_quote_volume,
        bars_present=len(acc.entries),
        version_sum=acc.version_sum,
        event_time=acc.event_time,
        latest_ingest_time=acc.latest_ingest_time,
        first_arrival_ms=acc.first_arrival_ms,
        market=acc.market,
        base_multiplier=acc.base_multiplier,
        provenance=(
            next(iter(acc.provenance_counts))
            if len(acc.provenance_counts) == 1
            else MIXED_PROVENANCE
        ),
    )


def build_rollup_bar(
    summary: RollupSummary, timeframe: str, open_time: int, *, closed: bool
) -> VersionedBar:
    """The emitted roll-up bar of ``timeframe`` opening at ``open_time``."""
    length = TIMEFRAME_MS[timeframe]
    kline = Kline(
        exchange=summary.exchange,
        symbol=summary.symbol,
        raw_symbol=summary.raw_symbol,
        timeframe=timeframe,
        open_time=open_time,
        close_time=open_time + length - 1,
        open=summary.open,
        high=summary.high,
        low=summary.low,
        close=summary.close,
        # volume is never null on a Kline; missing stays 0 for it.
        volume=summary.volume if summary.volume is not None else 0.0,
        quote_volume=summary.quote_volume,
        trades=summary.trades,
        taker_buy_volume=summary.taker_buy_volume,
        taker_buy_quote_volume=summary.taker_buy_quote_volume,
        is_closed=closed,
        event_time=summary.event_time,
        ingest_time=summary.latest_ingest_time,
        market=summary.market,
        base_multiplier=summary.base_multiplier,
        provenance=summary.provenance,
    )
    return VersionedBar(
        kline=kline,
        version=rollup_version(summary.version_sum, closed),
        bars_present=summary.bars_present,
        bars_expected=length // MINUTE_MS,
    )


def roll_up(
    bars: Iterable[VersionedBar], timeframe: str, *, closed: bool = True
) -> list[VersionedBar]:
    """Roll a batch of 1m bar versions of one series up into ``timeframe`` bars.

    The batch form of what the Flink window does incrementally (replay tooling, tests):
    later versions of a 1m bar replace earlier ones; one bar per window, oldest first.
    """
    length = TIMEFRAME_MS[timeframe]
    windows: dict[int, RollupAccumulator] = {}
    for bar in bars:
        start = window_start(bar.kline.open_time, length)
        add_bar(windows.setdefault(start, RollupAccumulator()), bar)
    return [
        build_rollup_bar(summarize(windows[start]), timeframe, start, closed=closed)
        for start in sorted(windows)
    ]
