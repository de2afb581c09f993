"""``klineflow query`` and ``klineflow plot`` against chdb with the real schema."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import orjson
import pytest

from connectors.clickhouse import open_writer
from jobs.cli import main as klineflow_main
from tests.integration.test_clickhouse_chdb import HOSTILE_STRINGS, make_bar

START = 1_741_910_400_000  # 2025-03-14T00:00:00Z
MINUTES = 90


@pytest.fixture
def chdb_url(tmp_path: Path) -> str:
    """chdb with 90 bars (two versions of some), a profile, indicators and a signal."""
    url = f"chdb://{tmp_path / 'chdb'}"
    bars = []
    for minute in range(MINUTES):
        wave = 50 * math.sin(minute / 7)
        bars.append(
            make_bar(
                minute,
                version=2,
                open=83_000 + wave,
                close=83_010 + wave - minute % 5 * 8,
                high=83_060 + wave,
                low=82_950 + wave,
                volume=1.0 + minute % 11,
            )
        )
    bars.append(make_bar(3, version=1, close=1.0, low=0.5, open=1.0, high=1.0))  # older: loses
    with open_writer(url) as writer:
        writer.insert_bars(bars)
        writer.insert_rows(
            "volume_profile",
            [
                {
                    "exchange": "binance",
                    "symbol": "BTC-USDT",
                    "timeframe": "1h",
                    "window_start": START,
                    "window_end": START + 3_600_000 - 1,
                    "row_size": 2.5,
                    "row_low": [100.0, 102.5],
                    "volume": [1.5, 0.0],
                    "buy_volume": [0.5, 0.0],
                    "poc": 101.25,
                    "value_area_low": 100.0,
                    "value_area_high": 102.5,
                    "vwap": None,
                    "total_volume": 1.5,
                    "version": 1,
                }
            ],
        )
        writer.insert_rows(
            "indicators",
            [
                {
                    "exchange": "binance",
                    "symbol": "BTC-USDT",
                    "timeframe": "1m",
                    "open_time": START + m * 60_000,
                    "rsi_14": 40.0 + m,
                    "macd": None,
                    "macd_signal": None,
                    "macd_hist": None,
                    "bb_middle": 1.0,
                    "bb_upper": 2.0,
                    "bb_lower": 0.0,
                    "version": 1,
                }
                for m in range(3)
            ],
        )
        writer.insert_rows(
            "signals",
            [
                {
                    "exchange": "binance",
                    "symbol": "BTC-USDT",
                    "timeframe": "1m",
                    "open_time": START,
                    "source": "rules",
                    "pattern": "hammer, bullish",
                    "recommendation": "buy",
                    "confidence": 0.75,
                    "key_levels": [82_000.0, 84_000.5],
                    "latency_ms": None,
                    "tokens": None,
                    "cached": False,
                    "degraded": False,
                    "version": 1,
                }
            ],
        )
    return url


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = klineflow_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_query_every_kind_in_every_format(
    chdb_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    series = ["--clickhouse-url", chdb_url, "--exchange", "binance", "--symbol", "BTC-USDT"]
    code, out, _ = run_cli(
        capsys,
        "query",
        "klines",
        *series,
        "--format",
        "json",
        "--start",
        "2025-03-14T00:02:00Z",
        "--end",
        str(START + 10 * 60_000),
    )
    assert code == 0
    rows = orjson.loads(out)
    assert [row["open_time"] for row in rows] == [START + m * 60_000 for m in range(2, 10)]
    assert all(row["version"] == 2 for row in rows)  # FINAL: the newer version of minute 3

    code, out, _ = run_cli(capsys, "query", "klines", *series, "--format", "csv", "--limit", "5")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert [row["open_time"] for row in table] == [
        f"2025-03-14T01:{m - 60:02d}:00.000Z" for m in range(MINUTES - 5, MINUTES)
    ]

    code, out, _ = run_cli(capsys, "query", "profile", *series, "--timeframe", "1h")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["window_start", "window_end", "row_size"]
    assert "[100,102.5]" in lines[2] and "2025-03-14T00:00:00.000Z" in lines[2]

    code, out, _ = run_cli(capsys, "query", "indicators", *series, "--format", "json")
    assert [row["rsi_14"] for row in orjson.loads(out)] == [40.0, 41.0, 42.0]

    code, out, _ = run_cli(capsys, "query", "signals", *series, "--format", "csv")
    (signal,) = list(csv.DictReader(io.StringIO(out)))
    assert signal["pattern"] == "hammer, bullish"
    assert signal["key_levels"] == "[82000,84000.5]"


@pytest.mark.parametrize("hostile", HOSTILE_STRINGS)
def test_query_values_are_parameters_never_sql(
    chdb_url: str, capsys: pytest.CaptureFixture[str], hostile: str
) -> None:
    code, out, err = run_cli(
        capsys,
        "query",
        "klines",
        "--clickhouse-url",
        chdb_url,
        "--exchange",
        "binance",
        "--symbol",
        hostile,
        "--timeframe",
        hostile,
        "--format",
        "json",
    )
    assert (code, orjson.loads(out), err) == (0, [], "")
    with open_writer(chdb_url, migrate_schema=False) as writer:
        assert writer.table_counts()["klines"] == MINUTES


def test_query_refuses_a_bad_time(chdb_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        klineflow_main(
            [
                "query",
                "klines",
                "--clickhouse-url",
                chdb_url,
                "--exchange",
                "binance",
                "--symbol",
                "BTC-USDT",
                "--start",
                "yesterday-ish",
            ]
        )
    assert "time" in capsys.readouterr().err


def test_plot_writes_a_png_and_a_self_contained_html(
    chdb_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "charts" / "btc"
    code, printed, _ = run_cli(
        capsys,
        "plot",
        "--clickhouse-url",
        chdb_url,
        "--exchange",
        "binance",
        "--symbol",
        "BTC-USDT",
        "--out",
        str(out),
    )
    assert code == 0
    png, page = (Path(line) for line in printed.split())
    assert png == out.with_name("btc.png") and page == out.with_name("btc.html")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # 90 candles, volume bars and a profile, not an empty canvas
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text
    assert 'src="http' not in text and 'href="http' not in text.replace('href="http://www.w3', "")
    assert text.count("<path") > 2 * MINUTES  # candle bodies, wicks, volume bars, profile rows
    assert "binance:BTC-USDT 1m" in text and "POC" in text

    code, _, err = run_cli(
        capsys,
        "plot",
        "--clickhouse-url",
        chdb_url,
        "--exchange",
        "okx",
        "--symbol",
        "BTC-USDT",
        "--out",
        str(out),
    )
    assert code == 1 and "no bars" in err


def test_gaps_lists_missing_minutes_and_provenance_shows_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: a zero-trade minute is a bar, a minute no source delivered is a gap."""
    url = f"chdb://{tmp_path / 'gaps'}"
    sources = {0: "ws", 1: "ws", 2: "rest", 5: "archive", 6: "ws"}
    bars = [make_bar(minute, provenance=source) for minute, source in sources.items()]
    bars.append(make_bar(7, volume=0.0, quote_volume=0.0, trades=0, taker_buy_volume=0.0,
                         taker_buy_quote_volume=0.0, provenance="ws"))  # fmt: skip
    with open_writer(url) as writer:
        writer.insert_bars(bars)
    series = ["--clickhouse-url", url, "--exchange", "binance", "--symbol", "BTC-USDT"]
    window = ["--start", str(START), "--end", str(START + 9 * 60_000)]
    code, out, _ = run_cli(capsys, "gaps", *series, *window, "--format", "json")
    assert code == 0
    body = orjson.loads(out)
    assert body["gaps"] == [
        {"start": START + 3 * 60_000, "end": START + 5 * 60_000, "bars": 2},
        {"start": START + 8 * 60_000, "end": START + 9 * 60_000, "bars": 1},
    ]
    assert body["missing"] == 3  # minute 7 (zero trades) is a bar, not a gap
    code, out, _ = run_cli(capsys, "gaps", *series, *window)
    assert "2025-03-14T00:03:00.000Z .. 2025-03-14T00:05:00.000Z  2 minutes" in out
    # The perp of the same pair is another series: all its minutes are gaps.
    code, out, _ = run_cli(capsys, "gaps", *series[:-1], "BTC-USDT-PERP", *window)
    assert code == 0 and "9 missing minutes" in out

    code, out, _ = run_cli(capsys, "query", "klines", *series, "--provenance", "--format", "json")
    assert code == 0
    assert [row["provenance"] for row in orjson.loads(out)] == [
        "ws", "ws", "rest", "archive", "ws", "ws"
    ]  # fmt: skip
    code, out, _ = run_cli(capsys, "query", "klines", *series, "--format", "json")
    assert "provenance" not in orjson.loads(out)[0]
    code, _, err = run_cli(capsys, "query", "signals", *series, "--provenance")
    assert code == 2 and "klines only" in err
