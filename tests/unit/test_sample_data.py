"""The synthetic data generator (jobs/sample_data.py) and the committed data/sample/."""

from __future__ import annotations

import gzip
import itertools
import statistics
import time
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from jobs import sample_data
from udfs.record import Kline, decode_kline, validate_kline

START = 1_741_910_400_000  # 2025-03-14T00:00:00Z


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    """The generated sample, made once for this module."""
    return sample_data.sample_files()


def btc(count: int = 1440, seed: int = 1, exchange: str = "binance") -> list[Kline]:
    raw = "BTC-USDT" if exchange == "okx" else "BTCUSDT"
    return sample_data.generate_series(exchange, "BTC-USDT", raw, START, count, seed, 83_000.0)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes(files: dict[str, bytes]) -> None:
    assert sample_data.sample_files() == files
    assert sample_data.sample_bars(sample_data.SAMPLE_JSONL[1], seed=1) != sample_data.sample_bars(
        sample_data.SAMPLE_JSONL[1]
    )


def test_committed_sample_matches_the_generator(files: dict[str, bytes]) -> None:
    stale = [
        name for name, data in files.items() if (sample_data.SAMPLE_DIR / name).read_bytes() != data
    ]
    assert stale == [], "run: .venv/bin/python -m jobs.sample_data"


def test_committed_sample_is_small_and_documented() -> None:
    files = [path for path in sample_data.SAMPLE_DIR.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < 2_000_000
    readme = (sample_data.SAMPLE_DIR / "README.md").read_text()
    assert "synthetic" in readme
    assert "python -m jobs.sample_data" in readme


def test_write_and_check(tmp_path: Path) -> None:
    sizes = sample_data.write_sample(tmp_path)
    assert sample_data.check_sample(tmp_path) == []
    assert sorted(sizes) == sorted(path.relative_to(tmp_path).as_posix()
                                   for path in tmp_path.rglob("*") if path.is_file())  # fmt: skip
    (tmp_path / "bad" / "bad-records.jsonl").write_bytes(b"changed\n")
    assert sample_data.main(["--check", "--out", str(tmp_path)]) == 1


def test_zip_and_gzip_metadata_is_fixed(files: dict[str, bytes]) -> None:
    archive = zipfile.ZipFile(BytesIO(files["BTCUSDT-1m-2025-03-14.zip"]))
    (info,) = archive.infolist()
    assert info.filename == "BTCUSDT-1m-2025-03-14.csv"
    assert info.date_time == (2025, 3, 14, 0, 0, 0)
    packed = files["okx-bybit-1m-2025-03-14_2025-03-15.jsonl.gz"]
    assert packed[4:8] == b"\x00\x00\x00\x00"  # gzip mtime


# ----------------------------------------------------------------------------- one series


def test_generated_bars_are_valid_contiguous_and_continuous() -> None:
    bars = btc()
    assert len(bars) == 1440
    for bar in bars:
        assert validate_kline(bar) == bar
    assert [bar.open_time for bar in bars] == [START + 60_000 * i for i in range(1440)]
    assert all(b.open == a.close for a, b in itertools.pairwise(bars))
    assert bars[0].open == 83_000.0
    assert all(bar.is_closed for bar in bars)
    assert all(bar.close_time < bar.event_time <= bar.ingest_time for bar in bars)


def test_start_is_aligned_down_and_other_timeframes_work() -> None:
    bars = sample_data.generate_series(
        "binance", "ETH-USDT", "ETHUSDT", START + 1234, 3, 5, 1900.0, timeframe="1h"
    )
    assert [bar.open_time for bar in bars] == [START, START + 3_600_000, START + 7_200_000]
    assert all(validate_kline(bar) == bar for bar in bars)


def test_bars_are_internally_consistent() -> None:
    for bar in btc(2000, seed=3):
        assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
        assert bar.quote_volume is not None
        vwap = bar.quote_volume / bar.volume
        assert bar.low * 0.999999 <= vwap <= bar.high * 1.000001
        assert bar.trades is not None and bar.trades >= 1
        assert bar.taker_buy_volume is not None and bar.taker_buy_quote_volume is not None
        assert bar.taker_buy_volume <= bar.volume
        assert bar.taker_buy_quote_volume <= bar.quote_volume
        assert round(bar.open, 2) == bar.open and round(bar.volume, 5) == bar.volume


@pytest.mark.parametrize("exchange", ["okx", "bybit"])
def test_okx_and_bybit_have_no_trades_or_taker_volumes(exchange: str) -> None:
    for bar in btc(100, exchange=exchange):
        assert bar.trades is None
        assert bar.taker_buy_volume is None and bar.taker_buy_quote_volume is None
        assert bar.quote_volume is not None


def test_volume_follows_the_utc_day() -> None:
    bars = btc(1440 * 4, seed=11)
    busy = [bar.volume for bar in bars if 13 <= (bar.open_time // 3_600_000) % 24 < 17]
    quiet = [bar.volume for bar in bars if 1 <= (bar.open_time // 3_600_000) % 24 < 5]
    assert statistics.mean(busy) > 1.5 * statistics.mean(quiet)


def test_prices_move_like_a_random_walk() -> None:
    bars = btc(1440, seed=2)
    returns = [b.close / a.close - 1 for a, b in itertools.pairwise(bars)]
    assert 0.0003 < statistics.pstdev(returns) < 0.003
    assert 0.8 < bars[-1].close / bars[0].open < 1.25
    assert len({bar.close for bar in bars}) > 1000


def test_tick_sizes_follow_the_price() -> None:
    assert sample_data.price_decimals(83_000.0) == 2
    assert sample_data.price_decimals(0.00001234) == 8
    assert sample_data.volume_decimals(83_000.0) == 5
    assert sample_data.volume_decimals(0.2) == 0
    cheap = sample_data.generate_series("bybit", "DOGE-USDT", "DOGEUSDT", START, 50, 1, 0.2)
    assert all(validate_kline(bar) == bar for bar in cheap)
    assert all(bar.volume == int(bar.volume) for bar in cheap)


def test_in_progress_updates_lead_up_to_the_final_bar() -> None:
    bar = btc(1)[0]
    updates = sample_data.in_progress_updates(bar, 3, seed=1)
    assert len(updates) == 3
    for update in updates:
        assert validate_kline(update) == update
        assert not update.is_closed
        assert update.open_time == bar.open_time and update.open == bar.open
        assert bar.open_time <= update.event_time <= bar.close_time + 1_000
        assert update.volume <= bar.volume
        assert bar.low <= update.low and update.high <= bar.high
    assert [u.volume for u in updates] == sorted(u.volume for u in updates)
    assert [u.event_time for u in updates] == sorted(u.event_time for u in updates)


def test_other_venue_follows_the_leader() -> None:
    leader = btc(500)
    okx = sample_data.follow_series(leader, "okx", "BTC-USDT", 0.3, seed=1)
    for mine, theirs in zip(okx, leader, strict=True):
        assert validate_kline(mine) == mine
        assert mine.exchange == "okx" and mine.raw_symbol == "BTC-USDT"
        assert mine.open_time == theirs.open_time
        assert abs(mine.close / theirs.close - 1) < 0.001
        assert mine.trades is None and mine.taker_buy_volume is None
    assert sample_data.follow_series([], "okx", "BTC-USDT", 0.3, seed=1) == []


# ----------------------------------------------------------------------------- the sample


def test_sample_series_counts() -> None:
    for series in sample_data.SAMPLE_BINANCE + sample_data.SAMPLE_JSONL:
        bars = sample_data.sample_bars(series)
        assert len(bars) == 2880
        assert bars[0].open_time == START
        assert bars[-1].open_time == START + 2879 * 60_000


def test_live_feed_is_in_ingest_order_with_updates() -> None:
    feed = sample_data.live_feed()
    assert len(feed) == 6528
    assert sum(1 for bar in feed if bar.is_closed) == 5760
    assert [bar.ingest_time for bar in feed] == sorted(bar.ingest_time for bar in feed)
    assert {bar.series_key for bar in feed} == {"okx:BTC-USDT:1m", "bybit:SOL-USDT:1m"}
    for bar in feed:
        assert validate_kline(bar) == bar
    # Per series, each bar's updates come before it and the bars come in time order.
    closed = [bar for bar in feed if bar.exchange == "okx" and bar.is_closed]
    assert [bar.open_time for bar in closed] == sorted(bar.open_time for bar in closed)


def test_sample_files_layout(files: dict[str, bytes]) -> None:
    assert sorted(files) == [
        "BTCUSDT-1m-2025-03-14.zip",
        "BTCUSDT-1m-2025-03-15.zip",
        "ETHUSDT-1m-2025-03-14.zip",
        "ETHUSDT-1m-2025-03-15.zip",
        "bad/BTCUSDT-1m-2025-03-16.csv",
        "bad/bad-records.jsonl",
        "okx-bybit-1m-2025-03-14_2025-03-15.jsonl.gz",
    ]
    old = zipfile.ZipFile(BytesIO(files["BTCUSDT-1m-2025-03-14.zip"])).read(
        "BTCUSDT-1m-2025-03-14.csv"
    )
    new = zipfile.ZipFile(BytesIO(files["BTCUSDT-1m-2025-03-15.zip"])).read(
        "BTCUSDT-1m-2025-03-15.csv"
    )
    assert old.startswith(b"1741910400000,83000.00000000,")  # no header, ms
    assert new.startswith(b"open_time,open,high,low,close,volume,close_time,")  # header
    assert new.splitlines()[1].startswith(b"1741996800000000,")  # µs
    assert len(old.splitlines()) == 1440 and len(new.splitlines()) == 1441
    feed = gzip.decompress(files["okx-bybit-1m-2025-03-14_2025-03-15.jsonl.gz"]).splitlines()
    assert [decode_kline(line) for line in feed] == sample_data.live_feed()


def test_bad_rows_cover_the_advertised_cases() -> None:
    csv_cases = [why for _, why in sample_data.bad_csv_rows()]
    jsonl_cases = [why for _, why in sample_data.bad_jsonl_rows()]
    assert len(csv_cases) == 12 and len(jsonl_cases) == 16
    for case in ("negative volume", "high below low", "open_time not on a minute boundary"):
        assert case in csv_cases and case in jsonl_cases
    for case in ("not JSON at all", "NaN is not JSON", "unknown timeframe", "unknown exchange"):
        assert case in jsonl_cases


# ----------------------------------------------------------------------------- benchmark feed


def test_bench_feed_is_interleaved_and_exact() -> None:
    bars = list(sample_data.iter_bench_klines(1050, 100, seed=3))
    assert len(bars) == 1050
    minute0 = bars[:100]
    assert len({bar.series_key for bar in minute0}) == 100
    assert {bar.open_time for bar in minute0} == {sample_data.BENCH_START_MS}
    assert [bar.open_time for bar in bars] == sorted(bar.open_time for bar in bars)
    assert {bar.open_time for bar in bars[1000:]} == {sample_data.BENCH_START_MS + 600_000}
    assert {bar.exchange for bar in bars} == {"binance", "okx", "bybit"}
    for bar in bars:
        assert validate_kline(bar) == bar


def test_bench_feed_series_are_continuous() -> None:
    bars = list(sample_data.iter_bench_klines(3000, 3, seed=9))
    for key in {bar.series_key for bar in bars}:
        series = [bar for bar in bars if bar.series_key == key]
        assert len(series) == 1000
        assert all(b.open == a.close for a, b in itertools.pairwise(series))
        details = series[0].exchange == "binance"
        assert all((bar.trades is not None) == details for bar in series)


def test_bench_feed_is_deterministic() -> None:
    first = list(sample_data.iter_bench_klines(500, 10, seed=1))
    assert first == list(sample_data.iter_bench_klines(500, 10, seed=1))
    assert first != list(sample_data.iter_bench_klines(500, 10, seed=2))
    assert list(sample_data.iter_bench_klines(0, 10)) == []


def test_bench_feed_is_fast() -> None:
    started = time.perf_counter()
    count = sum(1 for _ in sample_data.iter_bench_klines(200_000, 100, seed=1))
    elapsed = time.perf_counter() - started
    assert count == 200_000
    assert elapsed < 6.0, f"{count / elapsed:,.0f} bars/s"  # ~1M bars in 2-3 s on one core
