"""``klineflow gaps``: the minutes (or bars) of one series that no source delivered.

A minute the exchange reported with zero trades is a bar with volume 0 and is *not* a gap;
a gap is an open time with no stored bar at all. For a roll-up timeframe the command also
lists the bars that exist but lack some of their 1m bars (``bars_present < bars_expected``),
since those are the roll-ups a repair would change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from connectors.clickhouse import DEFAULT_URL
from jobs.cliutil import env_flag
from jobs.query_cmd import _iso, parse_time
from udfs.record import TIMEFRAME_MS, InvalidKline, align_open_time, now_ms

FORMATS: Final = ("table", "json")


@dataclass(frozen=True, slots=True)
class Gap:
    """``count`` consecutive missing bars, the first opening at ``start_ms``."""

    start_ms: int
    count: int
    step_ms: int

    @property
    def end_ms(self) -> int:
        """The first open time after the gap (exclusive end)."""
        return self.start_ms + self.count * self.step_ms

    def to_dict(self) -> dict[str, Any]:
        """``{"start": ms, "end": ms (exclusive), "bars": n}``."""
        return {"start": self.start_ms, "end": self.end_ms, "bars": self.count}


def missing_ranges(
    open_times: Iterable[int], start_ms: int, end_ms: int, step_ms: int
) -> list[Gap]:
    """The runs of open times in ``[start_ms, end_ms)`` (aligned to ``step_ms``) that are not
    in ``open_times``, oldest first. ``start_ms`` is rounded up to the grid."""
    if step_ms <= 0:
        raise ValueError("step_ms must be positive")
    first = -(-start_ms // step_ms) * step_ms
    present = sorted({t for t in open_times if first <= t < end_ms and t % step_ms == 0})
    gaps: list[Gap] = []
    expected = first
    for open_time in [*present, None]:
        stop = end_ms if open_time is None else open_time
        if stop > expected:
            count = -(-(stop - expected) // step_ms)
            gaps.append(Gap(expected, count, step_ms))
        if open_time is not None:
            expected = open_time + step_ms
    return gaps


def register(subparsers: Any) -> None:
    """Add the ``gaps`` command."""
    parser = subparsers.add_parser(
        "gaps",
        help="list the missing minutes (or bars) of one series in ClickHouse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env_flag(
        parser,
        "--clickhouse-url",
        env="CLICKHOUSE_URL",
        default=DEFAULT_URL,
        help="chdb:///path (embedded) or clickhouse://user:pass@host:9000/crypto_kline",
        secret=True,
    )
    parser.add_argument("--exchange", required=True, help="binance, okx or bybit")
    parser.add_argument(
        "--symbol", required=True, help="canonical symbol, e.g. BTC-USDT or BTC-USDT-PERP"
    )
    parser.add_argument("--timeframe", default="1m", help="1m 5m 15m 1h 4h 1d (default: 1m)")
    parser.add_argument(
        "--start",
        type=parse_time,
        default=None,
        help="first time included: ISO-8601 UTC or epoch s/ms (default: the first stored bar)",
    )
    parser.add_argument(
        "--end",
        type=parse_time,
        default=None,
        help="first time excluded (default: the last closed minute, now)",
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.set_defaults(func=run_gaps)


def _read(args: argparse.Namespace) -> tuple[list[int], list[dict[str, Any]]]:
    """The stored open times of the series and its incomplete roll-ups, oldest first."""
    from connectors.clickhouse import open_writer

    params: dict[str, Any] = {
        "exchange": args.exchange,
        "symbol": args.symbol,
        "timeframe": args.timeframe,
    }
    # Columns are qualified (k.): the alias open_time (epoch ms) must not shadow the column.
    conditions = [
        "k.exchange = {exchange:String}",
        "k.symbol = {symbol:String}",
        "k.timeframe = {timeframe:String}",
    ]
    if args.start is not None:
        conditions.append("k.open_time >= fromUnixTimestamp64Milli({start_ms:Int64})")
        params["start_ms"] = args.start
    if args.end is not None:
        conditions.append("k.open_time < fromUnixTimestamp64Milli({end_ms:Int64})")
        params["end_ms"] = args.end
    sql = (
        "SELECT toUnixTimestamp64Milli(k.open_time) AS open_time, k.bars_present AS "
        "bars_present, k.bars_expected AS bars_expected FROM crypto_kline.klines AS k FINAL "
        f"WHERE {' AND '.join(conditions)} ORDER BY k.open_time"
    )
    with open_writer(args.clickhouse_url, migrate_schema=False) as writer:
        rows = writer.query(sql, params)
    incomplete = [row for row in rows if row["bars_present"] < row["bars_expected"]]
    return [int(row["open_time"]) for row in rows], incomplete


def run_gaps(args: argparse.Namespace) -> int:
    """Print the gaps of one series; 1 on a ClickHouse error, 2 on a bad argument."""
    from connectors.clickhouse import ClickHouseError

    step = TIMEFRAME_MS.get(args.timeframe)
    if step is None:
        print(f"klineflow gaps: unknown timeframe {args.timeframe!r}", file=sys.stderr)
        return 2
    if args.start is not None and args.end is not None and args.end <= args.start:
        print("klineflow gaps: --end must be after --start", file=sys.stderr)
        return 2
    try:
        open_times, incomplete = _read(args)
    except (ClickHouseError, ValueError) as exc:
        print(f"klineflow gaps: {exc}", file=sys.stderr)
        return 1
    if args.start is None and not open_times:
        print(
            f"klineflow gaps: no {args.timeframe} bars of {args.exchange}:{args.symbol}; "
            "pass --start to list a range",
            file=sys.stderr,
        )
        return 1
    start = args.start if args.start is not None else open_times[0]
    try:
        # Default end: the newest bar of the grid that has closed by now.
        end = args.end if args.end is not None else align_open_time(now_ms(), args.timeframe)
    except InvalidKline as exc:
        print(f"klineflow gaps: {exc.reason}", file=sys.stderr)
        return 2
    gaps = missing_ranges(open_times, start, end, step)
    sys.stdout.write(format_gaps(gaps, incomplete, args.format, args.timeframe))
    return 0


def format_gaps(
    gaps: Sequence[Gap], incomplete: Sequence[dict[str, Any]], output: str, timeframe: str
) -> str:
    """``table``: one line per gap (ISO times, end exclusive), then incomplete roll-ups;
    ``json``: ``{"gaps": [...], "missing": n, "incomplete": [...]}`` with epoch-ms times."""
    missing = sum(gap.count for gap in gaps)
    if output == "json":
        body = {
            "gaps": [gap.to_dict() for gap in gaps],
            "missing": missing,
            "incomplete": [
                {"open_time": int(r["open_time"]), "bars_present": r["bars_present"],
                 "bars_expected": r["bars_expected"]}
                for r in incomplete
            ],
        }  # fmt: skip
        return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n"
    unit = "minute" if timeframe == "1m" else f"{timeframe} bar"
    lines = [
        f"{_iso(gap.start_ms)} .. {_iso(gap.end_ms)}  {gap.count} {unit}"
        + ("s" if gap.count != 1 else "")
        for gap in gaps
    ]
    lines += [
        f"{_iso(int(r['open_time']))}  incomplete: {r['bars_present']}/{r['bars_expected']} 1m bars"
        for r in incomplete
    ]
    lines.append(f"{missing} missing {unit}{'s' if missing != 1 else ''}")
    return "\n".join(lines) + "\n"
