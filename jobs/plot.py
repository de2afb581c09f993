"""Candlestick charts of one series: candles, volume bars and the volume profile beside them.

Pure rendering (matplotlib, Agg backend, no display needed): :func:`render_chart` draws
bars (dicts with the ``klines`` columns, times in epoch ms) to a PNG file and to a
self-contained HTML page (the chart inline as SVG, no external assets).
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from udfs.record import Kline, market_of_symbol
from udfs.volume_profile import VolumeProfile, compute_volume_profile

UP_COLOUR = "#26a69a"
DOWN_COLOUR = "#ef5350"
PROFILE_COLOUR = "#5c6bc0"
VALUE_AREA_COLOUR = "#9fa8da"


@dataclass(frozen=True, slots=True)
class ChartFiles:
    """Where :func:`render_chart` wrote the chart."""

    png: Path
    html: Path


def bars_to_klines(rows: Sequence[Mapping[str, Any]], exchange: str, symbol: str,
                   timeframe: str) -> list[Kline]:  # fmt: skip
    """``fetch_klines`` rows as Kline records (for the volume profile)."""
    return [
        Kline(
            exchange=exchange,
            symbol=symbol,
            raw_symbol=symbol,
            timeframe=timeframe,
            open_time=int(row["open_time"]),
            close_time=int(row["close_time"]),
            open=float(row["open"]),
            high=float(row["high"]),
            low=float(row["low"]),
            close=float(row["close"]),
            volume=float(row["volume"]),
            quote_volume=row.get("quote_volume"),
            trades=row.get("trades"),
            taker_buy_volume=row.get("taker_buy_volume"),
            taker_buy_quote_volume=row.get("taker_buy_quote_volume"),
            is_closed=bool(row["is_closed"]),
            event_time=int(row["open_time"]),
            ingest_time=int(row["open_time"]),
            market=str(row.get("market") or market_of_symbol(symbol)),
            base_multiplier=int(row.get("base_multiplier") or 1),
            provenance=str(row.get("provenance") or "unknown"),
        )
        for row in rows
    ]


def render_chart(
    rows: Sequence[Mapping[str, Any]],
    *,
    exchange: str,
    symbol: str,
    timeframe: str,
    out_prefix: Path,
    profile_rows: int = 24,
) -> ChartFiles:
    """Draw ``rows`` (oldest first) and write ``{out_prefix}.png`` and ``{out_prefix}.html``.

    The profile beside the candles is computed from the drawn bars (DESIGN.md rules).
    Raises ValueError when there are no bars.
    """
    if not rows:
        raise ValueError(f"no bars of {exchange}:{symbol}:{timeframe} to plot")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.figure import Figure

    klines = bars_to_klines(rows, exchange, symbol, timeframe)
    profile = compute_volume_profile(klines, rows=profile_rows)
    title = (
        f"{exchange}:{symbol} {timeframe} — {_utc(klines[0].open_time)} … "
        f"{_utc(klines[-1].close_time)} UTC ({len(klines)} bars)"
    )
    figure: Figure = plt.figure(figsize=(13, 7), dpi=100)
    try:
        grid = figure.add_gridspec(2, 2, width_ratios=(5, 1), height_ratios=(3, 1),
                                   wspace=0.02, hspace=0.05)  # fmt: skip
        prices = figure.add_subplot(grid[0, 0])
        volumes = figure.add_subplot(grid[1, 0], sharex=prices)
        beside = figure.add_subplot(grid[0, 1], sharey=prices)
        _draw_candles(prices, volumes, klines)
        _draw_profile(beside, profile)
        prices.set_title(title, fontsize=10)
        prices.set_ylabel("price")
        volumes.set_ylabel("volume")
        volumes.set_xlabel("bar (UTC open time)")
        _time_ticks(volumes, klines)
        prices.tick_params(labelbottom=False)
        beside.tick_params(labelleft=False)
        beside.set_xlabel("volume at price")
        out_prefix.parent.mkdir(parents=True, exist_ok=True)
        png = out_prefix.with_name(out_prefix.name + ".png")
        page = out_prefix.with_name(out_prefix.name + ".html")
        figure.savefig(png, format="png", bbox_inches="tight")
        svg = io.StringIO()
        figure.savefig(svg, format="svg", bbox_inches="tight")
    finally:
        plt.close(figure)
    page.write_text(_html_page(title, svg.getvalue(), profile, klines), encoding="utf-8")
    return ChartFiles(png=png, html=page)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _draw_candles(prices: Any, volumes: Any, klines: Sequence[Kline]) -> None:
    # Bars are drawn at their index so gaps in the data do not stretch the chart.
    xs = range(len(klines))
    colours = [UP_COLOUR if k.close >= k.open else DOWN_COLOUR for k in klines]
    prices.vlines(xs, [k.low for k in klines], [k.high for k in klines], colors=colours,
                  linewidth=0.8)  # fmt: skip
    bottoms = [min(k.open, k.close) for k in klines]
    heights = [max(abs(k.close - k.open), 1e-12) for k in klines]
    prices.bar(xs, heights, bottom=bottoms, width=0.7, color=colours, edgecolor=colours)
    volumes.bar(xs, [k.volume for k in klines], width=0.7, color=colours)
    prices.grid(alpha=0.2)
    volumes.grid(alpha=0.2)


def _draw_profile(axis: Any, profile: VolumeProfile) -> None:
    centres = [low + profile.row_size / 2 for low in profile.row_low]
    in_value_area = [
        profile.value_area_low is not None
        and profile.value_area_high is not None
        and profile.value_area_low <= centre <= profile.value_area_high
        for centre in centres
    ]
    colours = [PROFILE_COLOUR if inside else VALUE_AREA_COLOUR for inside in in_value_area]
    axis.barh(centres, profile.volume, height=profile.row_size * 0.9, color=colours)
    if profile.poc is not None:
        axis.axhline(profile.poc, color="black", linewidth=0.8, linestyle="--", label="POC")
    if profile.vwap is not None:
        axis.axhline(profile.vwap, color="orange", linewidth=0.8, label="VWAP")
    axis.legend(loc="upper right", fontsize=8)
    axis.grid(alpha=0.2)


def _time_ticks(axis: Any, klines: Sequence[Kline]) -> None:
    step = max(1, len(klines) // 8)
    ticks = list(range(0, len(klines), step))
    axis.set_xticks(ticks)
    axis.set_xticklabels([_utc(klines[i].open_time)[5:] for i in ticks], fontsize=8,
                         rotation=20)  # fmt: skip


def _html_page(title: str, svg: str, profile: VolumeProfile, klines: Sequence[Kline]) -> str:
    svg_body = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE
    last = klines[-1]
    facts = [
        ("bars", str(len(klines))),
        ("last close", f"{last.close:.10g}"),
        ("high", f"{max(k.high for k in klines):.10g}"),
        ("low", f"{min(k.low for k in klines):.10g}"),
        ("volume", f"{profile.total_volume:.10g}"),
        ("POC", "-" if profile.poc is None else f"{profile.poc:.10g}"),
        ("value area", "-" if profile.value_area_low is None
         else f"{profile.value_area_low:.10g} … {profile.value_area_high:.10g}"),
        ("VWAP", "-" if profile.vwap is None else f"{profile.vwap:.10g}"),
    ]  # fmt: skip
    rows = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in facts
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
th, td {{ padding: 0.2em 0.8em; text-align: left; border-bottom: 1px solid #ddd; }}
svg {{ max-width: 100%; height: auto; }}
</style>
</head>
<body>
<h1 style="font-size: 1.2em">{html.escape(title)}</h1>
{svg_body}
<table>
{rows}
</table>
</body>
</html>
"""
