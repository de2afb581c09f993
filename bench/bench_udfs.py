"""Benchmark of the profile and indicator maths alone (no Flink, no I/O), in bars per second.

- ``profile_batch``: :func:`compute_volume_profile` over whole windows of 1m bars
  (15m = 15 bars, 1h = 60, 4h = 240, 1d = 1440); bars/s = window bars / time.
- ``profile_incremental``: a live window fed through :class:`ProfileAccumulator`, every 1m
  bar arriving as ``--versions`` updates (earlier versions of the still-open minute, then the
  final one), the profile recomputed after each update, as the job emits it; reported as
  updates/s per window length, and as 1m updates/s when every update refreshes the four
  default windows (15m, 1h, 4h, 1d) at once.
- ``indicators_batch``: :func:`compute_indicators` over ``--closes`` closes.
- ``indicators_incremental``: :meth:`IndicatorState.update` over the same closes.

Prints one JSON object. Single-threaded; the numbers are per core.

    python -m bench.bench_udfs [--closes 100000] [--days 2] [--versions 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from udfs.indicators import IndicatorState, compute_indicators  # noqa: E402
from udfs.record import Kline  # noqa: E402
from udfs.volume_profile import ProfileAccumulator, compute_volume_profile  # noqa: E402

MINUTE_MS = 60_000
START = 1_735_689_600_000  # 2025-01-01T00:00:00Z
WINDOWS = {"15m": 15, "1h": 60, "4h": 240, "1d": 1440}


def synthetic_bars(count: int, seed: int = 7) -> list[Kline]:
    """A random-walk 1m series with Binance-like fields (quote and taker volume present)."""
    rng = random.Random(seed)
    bars = []
    price = 50_000.0
    for minute in range(count):
        open_ = price
        price = max(1.0, price + rng.gauss(0.0, 15.0))
        high = max(open_, price) + abs(rng.gauss(0.0, 8.0))
        low = min(open_, price) - abs(rng.gauss(0.0, 8.0))
        volume = rng.lognormvariate(2.0, 1.0)
        open_time = START + minute * MINUTE_MS
        bars.append(
            Kline(
                exchange="binance",
                symbol="BTC-USDT",
                raw_symbol="BTCUSDT",
                timeframe="1m",
                open_time=open_time,
                close_time=open_time + MINUTE_MS - 1,
                open=open_,
                high=high,
                low=low,
                close=price,
                volume=volume,
                quote_volume=volume * (high + low) / 2,
                trades=int(volume * 10),
                taker_buy_volume=volume * rng.random(),
                taker_buy_quote_volume=None,
                is_closed=True,
                event_time=open_time + MINUTE_MS,
                ingest_time=open_time + MINUTE_MS,
            )
        )
    return bars


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_profile_batch(bars: list[Kline]) -> dict[str, int]:
    result: dict[str, int] = {}
    for name, length in WINDOWS.items():
        windows = [bars[i : i + length] for i in range(0, len(bars) - length + 1, length)]

        def run(windows: list[list[Kline]] = windows) -> None:
            for window in windows:
                compute_volume_profile(window)

        result[name] = round(len(windows) * length / timed(run))
    return result


def live_updates(bars: list[Kline], versions: int) -> list[Kline]:
    updates = []
    for bar in bars:
        for step in range(1, versions):
            share = step / versions
            updates.append(replace(bar, volume=bar.volume * share, is_closed=False))
        updates.append(bar)
    return updates


def bench_profile_incremental(bars: list[Kline], versions: int) -> dict[str, int]:
    result: dict[str, int] = {}
    updates = live_updates(bars, versions)
    for name, length in WINDOWS.items():

        def run(length: int = length) -> None:
            accumulator = ProfileAccumulator()
            for index, update in enumerate(updates):
                if index % (length * versions) == 0:
                    accumulator = ProfileAccumulator()  # a new window opens
                accumulator.upsert(update)
                accumulator.profile()

        result[f"{name}_updates_per_s"] = round(len(updates) / timed(run))

    def run_all_windows() -> None:
        accumulators = {name: ProfileAccumulator() for name in WINDOWS}
        for index, update in enumerate(updates):
            for name, length in WINDOWS.items():
                if index % (length * versions) == 0:
                    accumulators[name] = ProfileAccumulator()
                accumulators[name].upsert(update)
                accumulators[name].profile()

    result["all_4_windows_1m_updates_per_s"] = round(len(updates) / timed(run_all_windows))
    return result


def bench_indicators(closes: list[float]) -> dict[str, int]:
    batch_seconds = timed(lambda: compute_indicators(closes))

    def run_state() -> None:
        state = IndicatorState()
        for index, close in enumerate(closes):
            state.update(close, open_time=index * MINUTE_MS)

    state_seconds = timed(run_state)
    return {
        "batch_bars_per_s": round(len(closes) / batch_seconds),
        "incremental_bars_per_s": round(len(closes) / state_seconds),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--closes", type=int, default=100_000, help="closes for the indicators")
    parser.add_argument("--days", type=int, default=2, help="days of 1m bars for the profiles")
    parser.add_argument("--versions", type=int, default=3, help="updates per 1m bar (live)")
    args = parser.parse_args(argv)

    bars = synthetic_bars(args.days * 1440)
    closes = [bar.close for bar in synthetic_bars(args.closes, seed=8)]
    report = {
        "benchmark": "udfs",
        "python": platform.python_version(),
        "profile_bars": len(bars),
        "profile_batch_bars_per_s": bench_profile_batch(bars),
        "profile_incremental": bench_profile_incremental(bars, args.versions),
        "indicator_closes": len(closes),
        "indicators": bench_indicators(closes),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
