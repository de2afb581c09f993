"""``klineflow plot``: one series from ClickHouse to a candlestick chart (PNG and HTML)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from jobs.query_cmd import add_series_arguments


def register(subparsers: Any) -> None:
    """Add the ``plot`` command."""
    parser = subparsers.add_parser(
        "plot",
        help="draw a series as candles with volume and the volume profile (PNG + HTML)",
        description=(
            "Read one series from ClickHouse and draw candles, volume bars and the volume "
            "profile beside them, to OUT.png and a self-contained OUT.html."
        ),
    )
    add_series_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output path without extension (default: ./{exchange}_{symbol}_{timeframe})",
    )
    parser.add_argument("--profile-rows", type=int, default=24, help="volume profile rows")
    parser.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    """Fetch the bars, render them and print the two file paths."""
    from connectors.clickhouse import ClickHouseError, open_writer
    from jobs.plot import render_chart

    out = args.out or Path(f"{args.exchange}_{args.symbol}_{args.timeframe}")
    try:
        with open_writer(args.clickhouse_url, migrate_schema=False) as writer:
            rows = writer.fetch_klines(
                args.exchange,
                args.symbol,
                args.timeframe,
                start_ms=args.start,
                end_ms=args.end,
            )
    except (ClickHouseError, ValueError) as exc:
        print(f"klineflow plot: {exc}", file=sys.stderr)
        return 1
    if args.limit is not None:
        rows = rows[-args.limit :] if args.limit > 0 else []
    try:
        files = render_chart(
            rows,
            exchange=args.exchange,
            symbol=args.symbol,
            timeframe=args.timeframe,
            out_prefix=out,
            profile_rows=args.profile_rows,
        )
    except ValueError as exc:
        print(f"klineflow plot: {exc}", file=sys.stderr)
        return 1
    print(files.png)
    print(files.html)
    return 0
