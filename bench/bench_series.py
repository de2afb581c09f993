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
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
