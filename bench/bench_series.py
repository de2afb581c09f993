"""Benchmark of the series operator's logic alone (no Flink, no I/O), in CPU µs per bar.

Drives :class:`udfs.series.SeriesProcessor` the way ``udfs/flink/series_function.py`` does
(decode the ingest element, ``on_kline``, ``on_watermark`` when the next window is due,
encode the outputs, and the sink's decode of them), with the job's default settings and
the ``full`` variant of ``bench_peers`` (roll-ups, profiles 15m/1h/4h/1d, indicators,
rules signals on 15m/1h), over ``--series`` random-walk series of ``--minutes`` closed 1m
bars each, interleaved minute by minute as a replay delivers them. Modes:

- ``replay``: history far behind the wall clock (what ``bench_peers`` replays): windows
  fire once, when the watermark closes them;
- ``live``: every bar within the live horizon, so each bar also refreshes the developing
  roll-ups and profiles (what a live feed costs per closed bar).

- ``updates``: what a live feed mostly is: in-progress updates of the current minute
  (``is_closed`` false, event time growing) of one series with ``--minutes`` of history in
  its windows, per update; with and without ``--rollup-emit-in-progress`` (which re-emits
  every developing roll-up and profile on each update).

Each mode runs with and without profiles. CPU time of this process (``time.process_time``),
so a busy machine disturbs it less than wall time would. Prints one JSON object.

    python bench/bench_series.py [--series 10] [--minutes 3000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_udfs import synthetic_bars  # noqa: E402

from jobs.config import AnalyticsConfig, PipelineConfig  # noqa: E402
from jobs.pipeline import series_settings  # noqa: E402
from jobs.signals import SignalConfig  # noqa: E402
from udfs.flink.ingest import decode_bars, encode_bars  # noqa: E402
from udfs.series import Journal, SeriesProcessor, decode_outputs, encode_outputs  # noqa: E402

PROFILE_TIMEFRAMES = ("15m", "1h", "4h", "1d")
SIGNAL_TIMEFRAMES = ("15m", "1h")


def replay_elements(series: int, minutes: int) -> list[tuple[str, bytes]]:
    """``(key, ingest element)`` of ``series`` series, minute by minute."""
    base = synthetic_bars(minutes)
    streams = [[replace(bar, symbol=f"S{index}-USDT") for bar in base] for index in range(series)]
    return [
        (f"binance:S{index}-USDT", encode_bars([streams[index][minute]]))
        for minute in range(minutes)
        for index in range(series)
    ]


def run(elements: list[tuple[str, bytes]], *, live: bool, profiles: bool) -> dict[str, Any]:
    """Feed ``elements`` through one processor; CPU µs per bar and output bytes per bar."""
    analytics = AnalyticsConfig(profile_timeframes=PROFILE_TIMEFRAMES if profiles else ())
    config = PipelineConfig()
    settings = series_settings(config, analytics, SignalConfig(timeframes=SIGNAL_TIMEFRAMES))
    processor = SeriesProcessor(settings)
    states: dict[str, Any] = {}
    journal = Journal()
    wall_clock = int(time.time() * 1000)
    newest = 0
    output_bytes = 0
    started = time.process_time()
    for key, element in elements:
        (kline,) = decode_bars(element)
        state = states.get(key)
        if state is None:
            state = states[key] = processor.new_state()
        newest = max(newest, kline.open_time)
        watermark = newest - config.max_out_of_orderness_ms - 1
        now_ms = kline.ingest_time if live else wall_clock
        batches = [processor.on_kline(state, kline, watermark, now_ms, journal)]
        journal.clear()
        processor.next_processing_due(state)
        if processor.next_event_due(state) <= watermark:
            batches.append(processor.on_watermark(state, watermark, journal))
            journal.clear()
        for outputs in batches:
            if outputs:
                encoded = encode_outputs(outputs)
                output_bytes += len(encoded)
                decode_outputs(encoded)
    seconds = time.process_time() - started
    return {
        "bars": len(elements),
        "cpu_us_per_bar": round(seconds / len(elements) * 1e6, 1),
        "output_bytes_per_bar": round(output_bytes / len(elements)),
    }


def run_updates(minutes: int, updates: int, *, emit_in_progress: bool) -> dict[str, Any]:
    """In-progress updates of the current minute after ``minutes`` of closed history."""
    analytics = AnalyticsConfig(profile_timeframes=PROFILE_TIMEFRAMES)
    config = PipelineConfig(rollup_emit_in_progress=emit_in_progress)
    settings = series_settings(config, analytics, SignalConfig(timeframes=SIGNAL_TIMEFRAMES))
    processor = SeriesProcessor(settings)
    now_ms = int(time.time() * 1000)
    base = synthetic_bars(minutes + 1)
    shift = now_ms - now_ms % 60_000 - base[-1].open_time  # the last bar: the current minute
    bars = [replace(bar, open_time=bar.open_time + shift, close_time=bar.close_time + shift,
                    ingest_time=now_ms) for bar in base]  # fmt: skip
    state = processor.new_state()
    journal = Journal()
    for bar in bars[:-1]:
        processor.on_kline(state, bar, bar.open_time - 1, now_ms, journal)
        journal.clear()
    current = bars[-1]
    feed = [
        replace(current, is_closed=False, close=current.close + (n % 7) * 0.01,
                volume=current.volume * (1 + n / updates), event_time=current.open_time + 1 + n)
        for n in range(updates)
    ]  # fmt: skip
    watermark = current.open_time - config.max_out_of_orderness_ms - 1
    outputs = 0
    started = time.process_time()
    for update in feed:
        emitted = processor.on_kline(state, update, watermark, now_ms, journal)
        journal.clear()
        outputs += len(emitted)
        decode_outputs(encode_outputs(emitted))
    seconds = time.process_time() - started
    return {
        "updates": updates,
        "cpu_us_per_update": round(seconds / updates * 1e6, 1),
        "outputs_per_update": round(outputs / updates, 2),
    }


def main(argv: list[str] | None = None) -> None:
    """Run every mode and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--series", type=int, default=10, help="series interleaved")
    parser.add_argument("--minutes", type=int, default=3000, help="1m bars per series")
    args = parser.parse_args(argv)
    elements = replay_elements(args.series, args.minutes)
    report: dict[str, Any] = {
        "benchmark": "series",
        "python": platform.python_version(),
        "series": args.series,
        "minutes": args.minutes,
    }
    for mode in ("replay", "live"):
        for profiles in (True, False):
            name = f"{mode}_{'full' if profiles else 'no_profiles'}"
            report[name] = run(elements, live=mode == "live", profiles=profiles)
    for emit_in_progress in (False, True):
        name = f"updates{'_emit_in_progress' if emit_in_progress else ''}"
        report[name] = run_updates(args.minutes, 3000, emit_in_progress=emit_in_progress)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
