"""The series operator's logic (udfs/series.py) without a JVM: what it emits, and that a
restore from what it journals continues exactly where it was."""

from __future__ import annotations

import dataclasses
import math
import pickle
import random
from collections import defaultdict
from dataclasses import replace
from typing import Any

import pytest

from tests.unit.test_rollup import DAY, MINUTE, bar
from udfs.record import Kline, VersionedBar
from udfs.rollup import roll_up
from udfs.series import InstrumentMeta, Journal, SeriesProcessor, SeriesSettings, Tag
from udfs.windows import NEVER

SETTINGS = SeriesSettings(
    rollup_timeframes=("5m", "15m", "1h"),
    profile_timeframes=("15m", "1h"),
    indicators=True,
    signal_timeframes=("15m",),
    live_horizon_ms=3_600_000,  # old data: each window emits once, when closed
)


class FakeKeyedState:
    """What Flink's keyed state would hold: the journal applied to dicts (pickled, so no
    object is shared with the processor)."""

    def __init__(self) -> None:
        self.meta: bytes | None = None
        self.bar_states: dict[int, bytes] = {}
        self.window_bars: dict[int, bytes] = {}

    def apply(self, journal: Journal, meta: InstrumentMeta) -> None:
        for target, changes in ((self.bar_states, journal.bar_states),
                                (self.window_bars, journal.window_bars)):  # fmt: skip
            for key, value in changes.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = pickle.dumps(value)
        if journal.meta:
            self.meta = pickle.dumps(meta)
        journal.clear()


def run(
    processor: SeriesProcessor, klines: list[Kline], store: FakeKeyedState, state: Any = None,
    watermark_lag: int = 5 * MINUTE,
) -> tuple[list[tuple[int, Any]], Any]:  # fmt: skip
    state = state or processor.new_state()
    journal = Journal()
    outputs: list[tuple[int, Any]] = []
    watermark = -(2**63)
    for kline in klines:
        outputs += processor.on_kline(state, kline, watermark, DAY + 10**10, journal)
        store.apply(journal, state.meta)
        watermark = max(watermark, kline.open_time - watermark_lag)
        if processor.next_event_due(state) <= watermark:
            outputs += processor.on_watermark(state, watermark, journal)
            store.apply(journal, state.meta)
    return outputs, state


def finish(processor: SeriesProcessor, state: Any, store: FakeKeyedState) -> list[Any]:
    journal = Journal()
    outputs = processor.on_watermark(state, NEVER, journal)
    store.apply(journal, state.meta)
    return outputs


def scenario(seed: int) -> tuple[list[Kline], list[VersionedBar]]:
    """Two hours of 1m bars with in-progress updates, duplicates and mild disorder."""
    rng = random.Random(seed)
    finals = [bar(m, close=100 + rng.uniform(-5, 5), volume=rng.uniform(1, 9)) for m in range(120)]
    stream: list[tuple[float, Kline]] = []
    for final in finals:
        k = final.kline
        stream.append((k.open_time + 1_000 + rng.uniform(0, 90_000), bar(
            (k.open_time - DAY) // MINUTE, close=k.close - 0.5, closed=False, event_offset=30_000
        ).kline))  # fmt: skip
        stream.append((k.open_time + 59_999 + rng.uniform(0, 90_000), k))
        if rng.random() < 0.2:
            stream.append((k.open_time + 200_000, k))  # duplicate
    stream.sort(key=lambda item: item[0])
    return [k for _, k in stream], finals


def closed_rollups(outputs: list[tuple[int, Any]]) -> dict[tuple[str, int], VersionedBar]:
    newest: dict[tuple[str, int], VersionedBar] = {}
    for tag, payload in outputs:
        if tag == Tag.BAR and payload.kline.timeframe != "1m":
            key = (payload.kline.timeframe, payload.kline.open_time)
            if key not in newest or payload.version > newest[key].version:
                newest[key] = payload
    return newest


def test_final_rollups_equal_the_batch_roll_up_of_the_final_bars() -> None:
    klines, finals = scenario(1)
    processor = SeriesProcessor(SETTINGS)
    store = FakeKeyedState()
    outputs, state = run(processor, klines, store)
    outputs += finish(processor, state, store)
    rollups = closed_rollups(outputs)
    for timeframe in SETTINGS.rollup_timeframes:
        expected = roll_up(finals, timeframe)
        got = [rollups[(timeframe, b.kline.open_time)] for b in expected]
        assert [(b.version, b.bars_present) for b in got] == [
            (b.version, b.bars_present) for b in expected
        ]
        for mine, reference in zip(got, expected, strict=True):
            # Sums kept incrementally differ from a batch sum in the last bits only.
            for name, value in reference.kline.to_dict().items():
                assert getattr(mine.kline, name) == (
                    pytest.approx(value, rel=1e-12) if isinstance(value, float) else value
                ), name
    tags = defaultdict(int)
    for tag, _ in outputs:
        tags[tag] += 1
    assert tags[Tag.SIGNAL] == 8  # one per closed 15m bar
    assert tags[Tag.PROFILE] == 10  # 8 x 15m + 2 x 1h, each emitted once (replay)
    assert Tag.DEAD_LETTER not in tags


@pytest.mark.parametrize(
    ("lateness_ms", "restore_at"),
    [(3_600_000, 0.5), (10 * MINUTE, 0.5), (10 * MINUTE, 0.8), (0, 0.3)],
    ids=["lateness-1h-half", "lateness-10m-half", "lateness-10m-late", "no-lateness-early"],
)
def test_a_restore_from_the_journal_continues_exactly(lateness_ms: int, restore_at: float) -> None:
    """Restored at a point where small windows may already be cleaned while larger ones
    (and profiles) still hold the same 1m bars: the larger windows must get them all back."""
    settings = replace(SETTINGS, allowed_lateness_ms=lateness_ms)
    klines, _ = scenario(2)
    half = int(len(klines) * restore_at)
    processor = SeriesProcessor(settings)
    whole_store = FakeKeyedState()
    whole, state = run(processor, klines, whole_store)
    whole += finish(processor, state, whole_store)

    store = FakeKeyedState()
    first, _ = run(SeriesProcessor(settings), klines[:half], store)
    restarted = SeriesProcessor(settings)
    assert store.meta is not None
    restored = restarted.restore(
        pickle.loads(store.meta),
        [(slot, pickle.loads(v)) for slot, v in store.bar_states.items()],
        [pickle.loads(v) for v in store.window_bars.values()],
        DAY + 10**10,
    )
    second, restored = run(restarted, klines[half:], store, restored)
    second += finish(restarted, restored, store)

    def final_by_key(outputs: list[tuple[int, Any]]) -> dict[Any, Any]:
        final: dict[Any, Any] = {}
        for tag, payload in outputs:
            if tag == Tag.BAR:
                key = (tag, payload.kline.timeframe, payload.kline.open_time)
            elif tag in (Tag.INDICATOR, Tag.SIGNAL):
                key = (tag, payload.timeframe, payload.open_time)
            elif tag == Tag.PROFILE:
                key = (tag, payload.timeframe, payload.window_start)
            else:
                continue
            if key not in final or payload.version >= final[key].version:
                final[key] = payload
        return final

    restarted_final, whole_final = final_by_key(first + second), final_by_key(whole)
    assert restarted_final.keys() == whole_final.keys()
    for key, payload in whole_final.items():
        # Versions, counts and texts exactly; roll-up sums kept incrementally (with in-progress
        # updates replaced) differ from sums rebuilt on restore in the last bits only.
        assert _same(restarted_final[key], payload), key
    # Nothing outlives the windows: after the end of input only clocks and upsert state stay.
    assert not store.window_bars


def _same(mine: Any, want: Any) -> bool:
    """Equal, floats within 1e-12 relative (walks dataclasses, tuples, lists and dicts)."""
    if dataclasses.is_dataclass(want) and not isinstance(want, type):
        return type(mine) is type(want) and all(
            _same(getattr(mine, item.name), getattr(want, item.name))
            for item in dataclasses.fields(want)
        )
    if isinstance(want, float) and isinstance(mine, float):
        return math.isclose(mine, want, rel_tol=1e-12, abs_tol=1e-12)
    if isinstance(want, (tuple, list)):
        return (type(mine) is type(want) and len(mine) == len(want)
                and all(_same(a, b) for a, b in zip(mine, want, strict=True)))  # fmt: skip
    if isinstance(want, dict):
        return mine.keys() == want.keys() and all(_same(mine[k], want[k]) for k in want)
    return bool(mine == want)
