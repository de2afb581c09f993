"""Deterministic synthetic klines: the committed sample in ``data/sample/`` and benchmark feeds.

Nothing here is market data: prices are a geometric random walk with volatility clustering,
volumes follow a daily (UTC) seasonality and grow with the size of the move, and every bar is
internally consistent (low <= open, close <= high; quote volume = volume x a price inside the
bar; taker buy volume <= volume). Binance bars carry trade counts and taker volumes; OKX and
Bybit bars do not (those exchanges do not publish them), so those fields are null.

The same seed gives byte-identical output: the generator uses ``random.Random`` and rounds
prices and volumes to exchange-like ticks, and the files are written with fixed zip/gzip
metadata. ``python -m jobs.sample_data`` rewrites ``data/sample/`` (``--check`` verifies it).

:func:`iter_bench_klines` is the vectorised (numpy) variant for benchmarks: a million bars over
a hundred series, interleaved in time order like a live feed, in a couple of seconds.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import math
import random
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Final

import numpy as np
import orjson

from udfs.record import OPTIONAL_FIELDS, TIMEFRAME_MS, Kline

REPO_ROOT: Final[Path] = Path(__file__).resolve().parents[1]
SAMPLE_DIR: Final[Path] = REPO_ROOT / "data" / "sample"
SAMPLE_SEED: Final[int] = 20250314
SAMPLE_DAYS: Final[tuple[date, ...]] = (date(2025, 3, 14), date(2025, 3, 15))
# The day the deliberately bad rows pretend to come from (nothing valid is produced for it).
BAD_DAY: Final[date] = date(2025, 3, 16)
# Every UPDATE_EVERY-th bar of the JSONL feed is preceded by UPDATES_PER_BAR in-progress updates.
UPDATE_EVERY: Final[int] = 15
UPDATES_PER_BAR: Final[int] = 2
BENCH_START_MS: Final[int] = 1_735_689_600_000  # 2025-01-01T00:00:00Z

_DAY_MS: Final[int] = 86_400_000
_MINUTE_MS: Final[int] = 60_000
_TRADE_SIZE_QUOTE: Final[float] = 450.0  # average trade size in quote currency (Binance)


@dataclass(frozen=True, slots=True)
class SampleSeries:
    """One series of the committed sample."""

    exchange: str
    symbol: str
    raw_symbol: str
    base_price: float
    mean_quote_volume: float  # per 1m bar
    volatility: float  # per 1m bar, log-return standard deviation
    # Follow this series of SAMPLE_BINANCE (same coin, another venue) instead of a walk of its own.
    follows: str | None = None


SAMPLE_BINANCE: Final[tuple[SampleSeries, ...]] = (
    SampleSeries("binance", "BTC-USDT", "BTCUSDT", 83_000.0, 1_500_000.0, 0.0009),
    SampleSeries("binance", "ETH-USDT", "ETHUSDT", 1_900.0, 700_000.0, 0.0012),
)
SAMPLE_JSONL: Final[tuple[SampleSeries, ...]] = (
    SampleSeries("okx", "BTC-USDT", "BTC-USDT", 83_000.0, 400_000.0, 0.0009, follows="BTCUSDT"),
    SampleSeries("bybit", "SOL-USDT", "SOLUSDT", 128.0, 250_000.0, 0.0016),
)


def series_seed(seed: int, exchange: str, symbol: str, timeframe: str = "1m") -> int:
    """A stable 64-bit seed per series (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{seed}:{exchange}:{symbol}:{timeframe}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def price_decimals(price: float) -> int:
    """Decimals of an exchange-like price tick: about 6-7 significant digits, at most 8."""
    return max(0, min(8, 6 - math.floor(math.log10(price))))


def volume_decimals(price: float) -> int:
    """Decimals of an exchange-like lot size: coarser for cheap coins, finer for dear ones."""
    return max(0, min(8, math.floor(math.log10(price)) + 1))


def _quote_decimals(value: float) -> int:
    """At most 8 decimals and 15 significant digits, so the CSV text round-trips exactly."""
    if value <= 0:
        return 8
    return max(0, min(8, 14 - math.floor(math.log10(value))))


def _round_down(value: float, decimals: int) -> float:
    scale = 10**decimals
    return math.floor(value * scale + 1e-9) / scale


def _round_up(value: float, decimals: int) -> float:
    scale = 10**decimals
    return math.ceil(value * scale - 1e-9) / scale


def _seasonality(open_time: int) -> float:
    """Activity over the UTC day: busiest around 15:00 (US open), quietest around 03:00."""
    day_fraction = (open_time % _DAY_MS) / _DAY_MS
    return 1.0 + 0.45 * math.cos(2 * math.pi * (day_fraction - 15 / 24))


def generate_series(  # noqa: PLR0917 (the benchmark calls it positionally)
    exchange: str,
    symbol: str,
    raw_symbol: str,
    start_ms: int,
    count: int,
    seed: int,
    base_price: float,
    *,
    timeframe: str = "1m",
    mean_quote_volume: float = 500_000.0,
    volatility: float = 0.001,
) -> list[Kline]:
    """``count`` consecutive closed bars of one series from ``start_ms`` (aligned down).

    A geometric random walk from ``base_price`` with volatility clustering and a daily
    seasonality of volatility and volume. ``event_time`` is a few tens of milliseconds after
    the close and ``ingest_time`` a little later, as a live feed would stamp them. Same
    arguments, same bars.
    """
    length = TIMEFRAME_MS[timeframe]
    rng = random.Random(series_seed(seed, exchange, symbol, timeframe))
    p_dec = price_decimals(base_price)
    v_dec = volume_decimals(base_price)
    has_details = exchange == "binance"
    open_time = start_ms - start_ms % length
    price = round(base_price, p_dec)
    log_regime = 0.0
    bars: list[Kline] = []
    for _ in range(count):
        season = _seasonality(open_time)
        log_regime = 0.995 * log_regime + rng.gauss(0.0, 0.03)
        sigma = volatility * math.sqrt(season) * math.exp(log_regime)
        ret = rng.gauss(0.0, sigma)
        if rng.random() < 0.002:  # the odd jump
            ret += rng.choice((-1.0, 1.0)) * 4.0 * sigma
        open_ = price
        close = max(round(open_ * math.exp(ret), p_dec), 10.0**-p_dec)
        up = math.exp(abs(rng.gauss(0.0, 0.6 * sigma)))
        down = math.exp(-abs(rng.gauss(0.0, 0.6 * sigma)))
        high = max(_round_up(max(open_, close) * up, p_dec), open_, close)
        low = min(_round_down(min(open_, close) * down, p_dec), open_, close)
        low = max(low, 0.0)
        move = abs(ret) / sigma if sigma > 0 else 0.0
        base_volume = mean_quote_volume / close
        volume = base_volume * season**1.3 * math.exp(0.8 * log_regime)
        volume *= rng.lognormvariate(-0.1, 0.45) * (1.0 + 0.8 * move) / 1.64
        volume = max(_round_down(volume, v_dec), 10.0**-v_dec)
        typical = (high + low + close) / 3
        vwap = min(max(typical * (1.0 + rng.gauss(0.0, 0.1 * sigma)), low), high)
        quote = volume * vwap
        quote_volume = round(quote, _quote_decimals(quote))
        trades: int | None = None
        taker_buy: float | None = None
        taker_buy_quote: float | None = None
        if has_details:
            trades = max(1, round(quote / _TRADE_SIZE_QUOTE * rng.lognormvariate(0.0, 0.3)))
            share = 0.5 + 0.35 * math.tanh(ret / sigma if sigma > 0 else 0.0)
            share = min(max(share + rng.gauss(0.0, 0.08), 0.02), 0.98)
            taker_buy = _round_down(volume * share, v_dec)
            buy_quote = taker_buy * vwap
            taker_buy_quote = min(round(buy_quote, _quote_decimals(buy_quote)), quote_volume)
        close_time = open_time + length - 1
        event_time = close_time + 1 + int(rng.expovariate(1 / 40.0))
        bars.append(
            Kline(
                exchange=exchange,
                symbol=symbol,
                raw_symbol=raw_symbol,
                timeframe=timeframe,
                open_time=open_time,
                close_time=close_time,
                open=open_,
                high=high,
                low=low,
                close=close,
                volume=volume,
                quote_volume=quote_volume,
                trades=trades,
                taker_buy_volume=taker_buy,
                taker_buy_quote_volume=taker_buy_quote,
                is_closed=True,
                event_time=event_time,
                ingest_time=event_time + 3 + int(rng.expovariate(1 / 12.0)),
            )
        )
        price = close
        open_time += length
    return bars


def follow_series(
    leader: Sequence[Kline], exchange: str, raw_symbol: str, volume_share: float, seed: int
) -> list[Kline]:
    """The same market on another exchange: ``leader``'s prices within a small basis.

    Prices move with the leader (a few basis points apart, as arbitrage keeps venues), volume
    is ``volume_share`` of the leader's with noise of its own. Meant for OKX and Bybit, so
    trade counts and taker volumes are null.
    """
    if not leader:
        return []
    rng = random.Random(series_seed(seed, exchange, leader[0].symbol, leader[0].timeframe))
    p_dec = price_decimals(leader[0].open)
    v_dec = volume_decimals(leader[0].open)
    bars: list[Kline] = []
    for bar in leader:
        basis = 1.0 + rng.gauss(0.0, 0.00005)
        open_, close = round(bar.open * basis, p_dec), round(bar.close * basis, p_dec)
        high = max(_round_up(bar.high * basis, p_dec), open_, close)
        low = min(_round_down(bar.low * basis, p_dec), open_, close)
        volume = bar.volume * volume_share * rng.lognormvariate(-0.02, 0.2)
        volume = max(_round_down(volume, v_dec), 10.0**-v_dec)
        vwap = min(max((high + low + close) / 3, low), high)
        quote = volume * vwap
        event_time = bar.close_time + 1 + int(rng.expovariate(1 / 60.0))
        bars.append(
            replace(
                bar,
                exchange=exchange,
                raw_symbol=raw_symbol,
                open=open_,
                high=high,
                low=low,
                close=close,
                volume=volume,
                quote_volume=round(quote, _quote_decimals(quote)),
                trades=None,
                taker_buy_volume=None,
                taker_buy_quote_volume=None,
                event_time=event_time,
                ingest_time=event_time + 3 + int(rng.expovariate(1 / 12.0)),
            )
        )
    return bars


def in_progress_updates(bar: Kline, count: int, seed: int) -> list[Kline]:
    """``count`` earlier, not-yet-closed updates of ``bar`` (growing volume, moving close).

    Each is a valid record (``is_closed`` false) with an event time inside the bar, as a
    live WebSocket feed sends them before the final one.
    """
    rng = random.Random(series_seed(seed, bar.exchange, bar.symbol) ^ bar.open_time)
    p_dec = price_decimals(bar.open)
    v_dec = volume_decimals(bar.open)
    length = bar.close_time - bar.open_time + 1
    updates: list[Kline] = []
    for index in range(1, count + 1):
        fraction = index / (count + 1)
        close = round(bar.open + (bar.close - bar.open) * fraction, p_dec)
        close = min(max(close, bar.low), bar.high)
        high, low = max(bar.open, close), min(bar.open, close)
        volume = _round_down(bar.volume * fraction, v_dec)
        quote = volume * (high + low) / 2
        event_time = bar.open_time + int(length * fraction) + rng.randrange(1_000)
        updates.append(
            replace(
                bar,
                high=high,
                low=low,
                close=close,
                volume=volume,
                quote_volume=round(quote, _quote_decimals(quote)),
                trades=None if bar.trades is None else max(1, int(bar.trades * fraction)),
                taker_buy_volume=None,
                taker_buy_quote_volume=None,
                is_closed=False,
                event_time=event_time,
                ingest_time=event_time + 5 + rng.randrange(30),
            )
        )
    return updates


# ----------------------------------------------------------------------------- file formats


def _day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000


def _fmt(value: float | None) -> str:
    return f"{0.0 if value is None else value:.8f}"


def binance_csv(bars: Sequence[Kline], *, header: bool, microseconds: bool) -> bytes:
    """Bars as a data.binance.vision kline CSV (12 columns; optional header; ms or µs times)."""
    lines: list[str] = []
    if header:
        lines.append(
            "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
            "taker_buy_volume,taker_buy_quote_volume,ignore"
        )
    for bar in bars:
        open_time = bar.open_time * 1000 if microseconds else bar.open_time
        close_time = bar.close_time * 1000 + 999 if microseconds else bar.close_time
        lines.append(
            f"{open_time},{_fmt(bar.open)},{_fmt(bar.high)},{_fmt(bar.low)},{_fmt(bar.close)},"
            f"{_fmt(bar.volume)},{close_time},{_fmt(bar.quote_volume)},{bar.trades or 0},"
            f"{_fmt(bar.taker_buy_volume)},{_fmt(bar.taker_buy_quote_volume)},0"
        )
    return ("\n".join(lines) + "\n").encode()


def deterministic_zip(members: Sequence[tuple[str, bytes]], day: date) -> bytes:
    """A zip of ``members`` whose bytes depend only on the inputs (fixed time and attributes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(day.year, day.month, day.day, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def deterministic_gzip(data: bytes) -> bytes:
    """gzip without a file name or time stamp in the header."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as out:
        out.write(data)
    return buffer.getvalue()


def legacy_record(bar: Kline) -> dict[str, object]:
    """The wire record as producers wrote it before issue 13 (no ``market``,
    ``base_multiplier``, ``provenance``): the sample recordings keep that form, so every replay
    of the sample also checks that old recordings stay valid (DESIGN.md's defaults)."""
    return {name: value for name, value in bar.to_dict().items() if name not in OPTIONAL_FIELDS}


def jsonl(bars: Sequence[Kline]) -> bytes:
    """Bars as JSONL wire records in the pre-issue-13 form, one per line."""
    return b"".join(orjson.dumps(legacy_record(bar)) + b"\n" for bar in bars)


# ----------------------------------------------------------------------------- the sample


def sample_bars(series: SampleSeries, seed: int = SAMPLE_SEED) -> list[Kline]:
    """All 1m bars of one sample series over :data:`SAMPLE_DAYS` (2 x 1440)."""
    return list(_sample_bars(series, seed))


@functools.lru_cache(maxsize=16)
def _sample_bars(series: SampleSeries, seed: int) -> tuple[Kline, ...]:
    if series.follows is not None:
        (leader,) = (other for other in SAMPLE_BINANCE if other.raw_symbol == series.follows)
        return tuple(
            follow_series(
                _sample_bars(leader, seed),
                series.exchange,
                series.raw_symbol,
                series.mean_quote_volume / leader.mean_quote_volume,
                seed,
            )
        )
    return tuple(
        generate_series(
            series.exchange,
            series.symbol,
            series.raw_symbol,
            _day_start_ms(SAMPLE_DAYS[0]),
            len(SAMPLE_DAYS) * 1440,
            seed,
            series.base_price,
            mean_quote_volume=series.mean_quote_volume,
            volatility=series.volatility,
        )
    )


def live_feed(seed: int = SAMPLE_SEED) -> list[Kline]:
    """The OKX and Bybit records of the sample as a recorded live feed, in ingest order."""
    records: list[Kline] = []
    for series in SAMPLE_JSONL:
        for index, bar in enumerate(sample_bars(series, seed)):
            if index % UPDATE_EVERY == UPDATE_EVERY - 1:
                records.extend(in_progress_updates(bar, UPDATES_PER_BAR, seed))
            records.append(bar)
    records.sort(key=lambda bar: (bar.ingest_time, bar.exchange, bar.symbol))
    return records


def sample_files(seed: int = SAMPLE_SEED) -> dict[str, bytes]:
    """Every file of ``data/sample/`` (path relative to it -> bytes), README excluded."""
    files: dict[str, bytes] = {}
    for series in SAMPLE_BINANCE:
        bars = sample_bars(series, seed)
        for index, day in enumerate(SAMPLE_DAYS):
            day_bars = bars[index * 1440 : (index + 1) * 1440]
            # The first day looks like an older archive (no header, ms), the second like a
            # 2025 spot archive (header row, µs timestamps).
            newer = index % 2 == 1
            name = f"{series.raw_symbol}-1m-{day.isoformat()}"
            csv = binance_csv(day_bars, header=newer, microseconds=newer)
            files[f"{name}.zip"] = deterministic_zip([(f"{name}.csv", csv)], day)
    first, last = SAMPLE_DAYS[0].isoformat(), SAMPLE_DAYS[-1].isoformat()
    files[f"okx-bybit-1m-{first}_{last}.jsonl.gz"] = deterministic_gzip(jsonl(live_feed(seed)))
    files.update({f"bad/{name}": data for name, data in bad_files(seed).items()})
    return files


# ----------------------------------------------------------------------------- bad rows


def _bad_day_bars(seed: int) -> list[Kline]:
    btc = SAMPLE_BINANCE[0]
    return generate_series(
        "binance", btc.symbol, btc.raw_symbol, _day_start_ms(BAD_DAY), 12, seed, btc.base_price,
        mean_quote_volume=btc.mean_quote_volume, volatility=btc.volatility,
    )  # fmt: skip


def _csv_line(bar: Kline) -> str:
    return binance_csv([bar], header=False, microseconds=False).decode().rstrip("\n")


def bad_csv_rows(seed: int = SAMPLE_SEED) -> list[tuple[str, str]]:
    """``(line, what is wrong)`` for the bad Binance CSV: every line is rejected."""
    bars = _bad_day_bars(seed)

    def cells(bar: Kline) -> list[str]:
        return _csv_line(bar).split(",")

    def with_cell(bar: Kline, column: int, value: str) -> str:
        row = cells(bar)
        row[column] = value
        return ",".join(row)

    b = bars
    return [
        (",".join(cells(b[0])[:11]), "11 columns instead of 12"),
        (with_cell(b[1], 2, "abc"), "high is not a number"),
        (with_cell(b[2], 4, "nan"), "close is NaN"),
        (with_cell(b[3], 5, "-1.50000000"), "negative volume"),
        (with_cell(b[4], 2, _fmt(b[4].low - 10)), "high below low"),
        (
            _csv_line(replace(b[5], open_time=b[5].open_time + 1, close_time=b[5].close_time + 1)),
            "open_time not on a minute boundary",
        ),
        (with_cell(b[6], 6, str(b[6].close_time + 60_000)), "close_time is not open_time + 1m - 1"),
        (with_cell(b[7], 0, "12345"), "open_time is not a timestamp"),
        (with_cell(b[8], 9, _fmt(b[8].volume * 2)), "taker buy volume above volume"),
        (with_cell(b[9], 8, "12.5"), "trade count is not an integer"),
        (with_cell(b[10], 1, "1e400"), "open is infinite"),
        (with_cell(b[11], 7, "-5.00000000"), "negative quote volume"),
    ]


def bad_jsonl_rows(seed: int = SAMPLE_SEED) -> list[tuple[bytes, str]]:
    """``(line, what is wrong)`` for the bad JSONL file: every line is rejected."""
    okx = SAMPLE_JSONL[0]
    start = _day_start_ms(BAD_DAY)
    bar = generate_series(okx.exchange, okx.symbol, okx.raw_symbol, start, 1, seed, okx.base_price)[
        0
    ]
    good = legacy_record(bar)

    def changed(**fields: object) -> bytes:
        return orjson.dumps({**good, **fields})

    without_volume = {name: value for name, value in good.items() if name != "volume"}
    marker = 0.123456789  # orjson cannot write NaN; put it in by hand
    with_nan = orjson.dumps({**good, "open": marker}).replace(str(marker).encode(), b"NaN")
    return [
        (b"this is not JSON", "not JSON at all"),
        (with_nan, "NaN is not JSON"),
        (changed(volume=-3.5), "negative volume"),
        (changed(high=bar.low - 1.0), "high below low"),
        (
            changed(open_time=bar.open_time + 30_000, close_time=bar.close_time + 30_000),
            "open_time not on a minute boundary",
        ),
        (changed(timeframe="3m"), "unknown timeframe"),
        (changed(exchange="kraken"), "unknown exchange"),
        (changed(open=str(bar.open)), "price as a string"),
        (changed(trades=12.5), "trade count as a float"),
        (changed(is_closed="yes"), "is_closed as a string"),
        (changed(open_time="yesterday"), "a time that is no timestamp"),
        (changed(symbol="btcusdt"), "symbol not canonical"),
        (orjson.dumps(without_volume), "volume missing"),
        (changed(extra_field=1), "unknown field"),
        (orjson.dumps([1, 2, 3]), "an array, not an object"),
        (b"\xff\xfe{not utf-8}", "bytes that are not UTF-8"),
    ]


def bad_files(seed: int = SAMPLE_SEED) -> dict[str, bytes]:
    """The files of ``data/sample/bad/``: a bad Binance CSV and a bad JSONL, no valid row."""
    csv = "".join(f"{line}\n" for line, _ in bad_csv_rows(seed)).encode()
    lines = b"".join(line + b"\n" for line, _ in bad_jsonl_rows(seed))
    return {
        f"BTCUSDT-1m-{BAD_DAY.isoformat()}.csv": csv,
        "bad-records.jsonl": lines,
    }


# ----------------------------------------------------------------------------- benchmark feed

_BENCH_BASES: Final[tuple[str, ...]] = (
    "BTC", "ETH", "SOL", "XRP", "BNB", "DOGE", "ADA", "TRX", "AVAX", "LINK", "DOT", "LTC",
    "BCH", "NEAR", "UNI", "APT", "ARB", "OP", "ATOM", "FIL", "ETC", "INJ", "SUI", "SEI",
    "TIA", "AAVE", "MKR", "RUNE", "PEPE", "SHIB", "WIF", "BONK", "FET", "RNDR",
)  # fmt: skip
_BENCH_EXCHANGES: Final[tuple[str, ...]] = ("binance", "okx", "bybit")


@dataclass(frozen=True, slots=True)
class BenchSeries:
    """One synthetic benchmark series."""

    exchange: str
    symbol: str
    raw_symbol: str
    base_price: float


def bench_series(n_series: int, seed: int) -> list[BenchSeries]:
    """``n_series`` distinct series, spread over the three exchanges."""
    rng = np.random.default_rng(seed)
    prices = np.exp(rng.uniform(math.log(0.01), math.log(60_000.0), n_series)).tolist()
    out: list[BenchSeries] = []
    for index in range(n_series):
        exchange = _BENCH_EXCHANGES[index % len(_BENCH_EXCHANGES)]
        slot = index // len(_BENCH_EXCHANGES)
        base = _BENCH_BASES[slot] if slot < len(_BENCH_BASES) else f"SYN{slot:04d}"
        raw = f"{base}-USDT" if exchange == "okx" else f"{base}USDT"
        price = float(prices[index])
        out.append(BenchSeries(exchange, f"{base}-USDT", raw, round(price, price_decimals(price))))
    return out


def iter_bench_klines(
    n_bars: int = 1_000_000,
    n_series: int = 100,
    seed: int = 7,
    *,
    start_ms: int = BENCH_START_MS,
) -> Iterator[Kline]:
    """``n_bars`` closed 1m bars over ``n_series`` series, interleaved minute by minute.

    Minute t yields one bar of every series before minute t+1 (the last minute may be
    partial), like a live feed of many symbols. Vectorised with numpy: a million bars take a
    couple of seconds, almost all of it building the Kline objects. Deterministic per seed.
    """
    if n_bars <= 0 or n_series <= 0:
        return
    specs = bench_series(n_series, seed)
    minutes = -(-n_bars // n_series)
    rng = np.random.default_rng(seed + 1)
    open_times = start_ms - start_ms % _MINUTE_MS + _MINUTE_MS * np.arange(minutes, dtype=np.int64)
    day_fraction = (open_times % _DAY_MS) / _DAY_MS
    season = (1.0 + 0.45 * np.cos(2 * np.pi * (day_fraction - 15 / 24)))[:, None]
    base = np.array([spec.base_price for spec in specs])[None, :]
    scale = (10.0 ** np.array([price_decimals(spec.base_price) for spec in specs]))[None, :]
    lot = (10.0 ** np.array([volume_decimals(spec.base_price) for spec in specs]))[None, :]
    sigma = 0.001 * np.sqrt(season) * rng.uniform(0.6, 1.6, (1, n_series))
    returns = rng.standard_normal((minutes, n_series)) * sigma
    close = np.round(base * np.exp(np.cumsum(returns, axis=0)) * scale) / scale
    close = np.maximum(close, 1.0 / scale)
    open_ = np.vstack([np.round(base * scale) / scale, close[:-1]])
    top, bottom = np.maximum(open_, close), np.minimum(open_, close)
    wick = np.abs(rng.standard_normal((2, minutes, n_series))) * 0.6 * sigma
    high = np.maximum(np.ceil(top * np.exp(wick[0]) * scale) / scale, top)
    low = np.clip(np.floor(bottom * np.exp(-wick[1]) * scale) / scale, 0.0, bottom)
    volume = (300_000.0 / base) * season * rng.lognormal(-0.1, 0.45, (minutes, n_series))
    volume = np.maximum(np.floor(volume * lot) / lot, 1.0 / lot)
    vwap = np.clip((high + low + close) / 3, low, high)
    quote = np.round(volume * vwap, 4)
    share = np.clip(0.5 + 0.35 * np.tanh(returns / sigma), 0.02, 0.98)
    taker = np.floor(volume * share * lot) / lot
    taker_quote = np.minimum(np.round(taker * vwap, 4), quote)
    trades = np.maximum(1, np.round(quote / _TRADE_SIZE_QUOTE)).astype(np.int64)

    columns = [
        array.tolist()
        for array in (open_, high, low, close, volume, quote, trades, taker, taker_quote)
    ]
    o_rows, h_rows, l_rows, c_rows, v_rows, q_rows, n_rows, tb_rows, tbq_rows = columns
    details = [spec.exchange == "binance" for spec in specs]
    produced = 0
    for t, open_time in enumerate(open_times.tolist()):
        close_time = open_time + _MINUTE_MS - 1
        event_time = close_time + 1
        o, h, lo, c, v = o_rows[t], h_rows[t], l_rows[t], c_rows[t], v_rows[t]
        q, n, tb, tbq = q_rows[t], n_rows[t], tb_rows[t], tbq_rows[t]
        for s, spec in enumerate(specs):
            if produced == n_bars:
                return
            full = details[s]
            yield Kline(
                spec.exchange, spec.symbol, spec.raw_symbol, "1m", open_time, close_time,
                o[s], h[s], lo[s], c[s], v[s], q[s],
                n[s] if full else None, tb[s] if full else None, tbq[s] if full else None,
                True, event_time, event_time + 5,
            )  # fmt: skip
            produced += 1


# ----------------------------------------------------------------------------- command line


def write_sample(out_dir: Path = SAMPLE_DIR, seed: int = SAMPLE_SEED) -> dict[str, int]:
    """Write the sample files under ``out_dir`` (README.md untouched); returns name -> size."""
    sizes: dict[str, int] = {}
    for name, data in sample_files(seed).items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sizes[name] = len(data)
    return sizes


def check_sample(out_dir: Path = SAMPLE_DIR, seed: int = SAMPLE_SEED) -> list[str]:
    """Files under ``out_dir`` that differ from what the generator makes (empty: all equal)."""
    return [
        name
        for name, data in sample_files(seed).items()
        if not (out_dir / name).is_file() or (out_dir / name).read_bytes() != data
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.sample_data [--out DIR] [--seed N] [--check]``."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.sample_data", description="Regenerate the synthetic data/sample/."
    )
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR, help="output directory")
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED, help="random seed")
    parser.add_argument(
        "--check", action="store_true", help="only verify that the files match; exit 1 if not"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = check_sample(args.out, args.seed)
        for name in stale:
            print(f"differs: {args.out / name}", file=sys.stderr)
        return 1 if stale else 0
    sizes = write_sample(args.out, args.seed)
    for name, size in sizes.items():
        print(f"{size:>9,}  {args.out / name}")
    print(f"{sum(sizes.values()):>9,}  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
