"""Archive parsing (connectors/archives.py): Binance CSV/ZIP variants, JSONL, bad rows, planning."""

from __future__ import annotations

import gzip
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from connectors.archives import (
    ArchiveError,
    ArchiveSource,
    Rejection,
    ReplayConfigError,
    Series,
    csv_row_to_kline,
    discover_files,
    iter_csv_rows,
    iter_jsonl_rows,
    iter_source,
    parse_archive_name,
    plan_sources,
    resolve_series,
    source_kind,
)
from jobs import sample_data
from udfs.record import InvalidKline, Kline, encode_kline

NOW = 1_767_225_600_000  # the replay's clock in these tests (2026-01-01)
BTC = Series("binance", "BTC-USDT", "BTCUSDT", "1m")
DAY = sample_data.SAMPLE_DAYS[0]
HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)
# A real-looking row of a 2025 spot archive (µs) and the same bar in ms.
ROW_US = (
    "1735689600000000,93576.00000000,93610.93000000,93537.50000000,93610.93000000,"
    "8.21827000,1735689659999999,768978.14123570,2397,3.76543000,352290.03637370,0"
)
ROW_MS = ROW_US.replace("1735689600000000", "1735689600000").replace(
    "1735689659999999", "1735689659999"
)


def clock() -> int:
    return NOW


def rows(lines: list[str], series: Series = BTC) -> list[Kline | Rejection]:
    data = [line.encode() + b"\n" for line in lines]
    return list(iter_csv_rows(data, location="f.csv", series=series, clock=clock))


def sample_bars(raw_symbol: str = "BTCUSDT", count: int = 5) -> list[Kline]:
    (series,) = (s for s in sample_data.SAMPLE_BINANCE if s.raw_symbol == raw_symbol)
    return sample_data.sample_bars(series)[:count]


def as_archive_row(bar: Kline) -> Kline:
    """What replay makes of a generated bar: final at its close, ingested now."""
    return replace(bar, event_time=bar.close_time, ingest_time=NOW, provenance="archive")


def write_zip(path: Path, members: list[tuple[str, bytes]], *, stored: bool = False) -> Path:
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def read_all(path: Path, **overrides: str) -> list[Kline | Rejection]:
    (source,) = plan_sources([path], **overrides)
    return list(iter_source(source, clock=clock))


# ----------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BTCUSDT-1m-2024-01-01.zip", ("BTCUSDT", "1m")),
        ("BTCUSDT-1m-2024-01-01.csv", ("BTCUSDT", "1m")),
        ("ETHBTC-1h-2024-01.zip", ("ETHBTC", "1h")),
        ("/data/spot/daily/klines/SOLUSDT/1m/SOLUSDT-1m-2025-01-01.zip", ("SOLUSDT", "1m")),
        ("btcusdt-15m-2024-01-01.csv", ("BTCUSDT", "15m")),
        ("BTCUSDT-1mo-2024-01.zip", ("BTCUSDT", "1mo")),
        ("1000SHIBUSDT-4h-2024-02-29.zip", ("1000SHIBUSDT", "4h")),
        ("klines.csv", None),
        ("BTCUSDT.csv", None),
        ("BTCUSDT-2024-01-01.csv", None),
        ("README.md", None),
    ],
)
def test_parse_archive_name(name: str, expected: tuple[str, str] | None) -> None:
    assert parse_archive_name(name) == expected


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.csv", "csv"),
        ("A.ZIP", "zip"),
        ("feed.jsonl", "jsonl"),
        ("feed.jsonl.gz", "jsonl"),
        ("notes.txt", None),
        ("data.csv.gz", None),
        (".csv", None),
    ],
)
def test_source_kind(name: str, kind: str | None) -> None:
    assert source_kind(Path(name)) == kind


def test_resolve_series_from_name() -> None:
    assert resolve_series("ETHUSDT-5m-2024-01-01.zip") == Series(
        "binance", "ETH-USDT", "ETHUSDT", "5m"
    )


def test_resolve_series_overrides_win() -> None:
    series = resolve_series("BTCUSDT-1m-2024-01-01.csv", symbol="SOL-USDT", timeframe="1h")
    assert series == Series("binance", "SOL-USDT", "SOLUSDT", "1h")
    bybit = resolve_series("klines.csv", exchange="BYBIT", symbol="ETHUSDT", timeframe="1m")
    assert bybit.key == "bybit:ETH-USDT:1m"
    okx = resolve_series("BTC-USDT.csv", exchange="okx", symbol="BTC-USDT", timeframe="1m")
    assert (okx.raw_symbol, okx.symbol) == ("BTC-USDT", "BTC-USDT")


def test_unsplittable_symbol_is_refused_clearly() -> None:
    with pytest.raises(ReplayConfigError) as caught:
        resolve_series("FOOBAR-1m-2024-01-01.zip")
    message = str(caught.value)
    assert message.startswith("FOOBAR-1m-2024-01-01.zip: cannot normalise the binance symbol")
    assert "'FOOBAR'" in message
    assert "--symbol BASE-QUOTE" in message
    # Saying where it splits fixes it only when the quote is a known quote asset (issue 13).
    assert resolve_series("FOOBAR-1m-2024-01-01.zip", symbol="FOO-USDT").symbol == "FOO-USDT"
    with pytest.raises(ReplayConfigError, match="BAR is not a known quote asset"):
        resolve_series("FOOBAR-1m-2024-01-01.zip", symbol="FOO-BAR")


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("BTCUSDT-3m-2024-01-01.zip", {}, "unknown timeframe '3m'"),
        ("BTCUSDT-1s-2024-01-01.zip", {}, "unknown timeframe '1s'"),
        ("BTCUSDT-1m-2024-01-01.zip", {"exchange": "kraken"}, "unknown exchange 'kraken'"),
        ("klines.csv", {}, "cannot tell the symbol and timeframe from the file name"),
        ("klines.csv", {"symbol": "BTCUSDT"}, "pass --symbol and --timeframe"),
    ],
)
def test_resolve_series_refusals(name: str, overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ReplayConfigError, match=message):
        resolve_series(name, **overrides)


# ----------------------------------------------------------------------------- CSV rows


def test_row_with_ms_and_row_with_us_give_the_same_bar() -> None:
    (from_ms,) = rows([ROW_MS])
    (from_us,) = rows([ROW_US])
    assert from_ms == from_us
    assert isinstance(from_ms, Kline)
    assert from_ms.open_time == 1_735_689_600_000
    assert from_ms.close_time == 1_735_689_659_999
    assert (from_ms.open, from_ms.high, from_ms.low, from_ms.close) == (
        93576.0,
        93610.93,
        93537.5,
        93610.93,
    )
    assert from_ms.volume == 8.21827
    assert from_ms.quote_volume == 768978.1412357
    assert from_ms.trades == 2397
    assert (from_ms.taker_buy_volume, from_ms.taker_buy_quote_volume) == (3.76543, 352290.0363737)


def test_archive_rows_are_closed_and_final_at_their_close() -> None:
    (bar,) = rows([ROW_MS])
    assert isinstance(bar, Kline)
    assert bar.is_closed is True
    assert bar.event_time == bar.close_time
    assert bar.ingest_time == NOW
    assert (bar.exchange, bar.symbol, bar.raw_symbol, bar.timeframe) == (
        "binance",
        "BTC-USDT",
        "BTCUSDT",
        "1m",
    )


def test_header_blank_lines_and_crlf() -> None:
    data = [f"{HEADER}\r\n".encode(), b"\r\n", f"{ROW_US}\r\n".encode(), b"", b"   \n"]
    parsed = list(iter_csv_rows(data, location="f.csv", series=BTC, clock=clock))
    assert len(parsed) == 1
    assert isinstance(parsed[0], Kline)


def test_header_check_is_on_the_first_column_only() -> None:
    (rejected,) = rows(["time,open,high,low,close,volume,close_time,q,c,tb,tbq,ignore"])
    assert isinstance(rejected, Rejection)
    assert rejected.reason == "open_time: 'time' is neither a number nor an ISO-8601 time"


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        (1, "abc", "open: 'abc' is not a number"),
        (2, "", "high: '' is not a number"),
        (4, "nan", "close: nan is not a finite number"),
        (1, "inf", "open: inf is not a finite number"),
        (5, "-1", "volume: -1.0 is negative"),
        (2, "1.0", "high: 1.0 is below max(open, close)"),
        (3, "99999", "low: 99999.0 is above min(open, close)"),
        (0, "1735689600001", "open_time: 1735689600001 is not aligned to 1m"),
        (0, "12345", "open_time: '12345' is not a timestamp"),
        (6, "1735689719999", "close_time: 1735689719999 != open_time + 1m - 1"),
        (6, "never", "close_time: 'never' is neither a number nor an ISO-8601 time"),
        (7, "-2", "quote_volume: -2.0 is negative"),
        (8, "12.5", "trades: '12.5' is not an integer"),
        (8, "-3", "trades: -3 is negative"),
        (9, "9.0", "taker_buy_volume: 9.0 exceeds volume 8.21827"),
        (10, "800000", "taker_buy_quote_volume: 800000.0 exceeds quote_volume"),
    ],
)
def test_bad_values_are_rejected_with_the_reason(column: int, value: str, reason: str) -> None:
    cells = ROW_MS.split(",")
    cells[column] = value
    (rejected,) = rows([",".join(cells)])
    assert isinstance(rejected, Rejection)
    assert rejected.reason.startswith(reason)


@pytest.mark.parametrize("count", [1, 11, 13])
def test_wrong_column_count(count: int) -> None:
    cells = (ROW_MS.split(",") * 2)[:count]
    (rejected,) = rows([",".join(cells)])
    assert isinstance(rejected, Rejection)
    assert rejected.reason == f"expected 12 columns, got {count}"


def test_rejections_carry_location_raw_line_and_key() -> None:
    lines = [f"{HEADER}\n".encode(), f"{ROW_MS}\n".encode(), b"garbage\r\n", b"\xff\xfe,1\n"]
    parsed = list(iter_csv_rows(lines, location="x/BTCUSDT.csv", series=BTC, clock=clock))
    assert isinstance(parsed[0], Kline)
    garbage, binary = parsed[1], parsed[2]
    assert isinstance(garbage, Rejection) and isinstance(binary, Rejection)
    assert garbage == Rejection(
        "x/BTCUSDT.csv:3", "expected 12 columns, got 1", b"garbage", "binance:BTC-USDT:1m"
    )
    assert garbage.describe() == "x/BTCUSDT.csv:3: expected 12 columns, got 1"
    assert binary.location == "x/BTCUSDT.csv:4"
    assert binary.reason == "not UTF-8 text"
    assert binary.raw == b"\xff\xfe,1"


def test_replay_goes_on_after_bad_rows() -> None:
    bars = sample_bars(count=4)
    lines = [sample_data.binance_csv([bar], header=False, microseconds=False).decode().strip()
             for bar in bars]  # fmt: skip
    lines.insert(2, "1,2,3")
    parsed = rows(lines)
    kinds = [type(row).__name__ for row in parsed]
    assert kinds == ["Kline", "Kline", "Rejection", "Kline", "Kline"]
    assert [row for row in parsed if isinstance(row, Kline)] == [as_archive_row(b) for b in bars]


def test_csv_row_to_kline_direct() -> None:
    bar = csv_row_to_kline(ROW_US.split(","), BTC, NOW)
    assert bar.open_time == 1_735_689_600_000
    with pytest.raises(InvalidKline, match="expected 12 columns, got 2"):
        csv_row_to_kline(["1", "2"], BTC, NOW)


def test_other_timeframes_from_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1h-2025-01-01.csv"
    hour_row = ROW_MS.replace("1735689659999", str(1_735_689_600_000 + 3_599_999))
    path.write_text(hour_row + "\n")
    (bar,) = read_all(path)
    assert isinstance(bar, Kline)
    assert (bar.timeframe, bar.close_time) == ("1h", 1_735_693_199_999)
    (wrong,) = read_all(path, timeframe="1m")
    assert isinstance(wrong, Rejection)
    assert wrong.reason.startswith("close_time: ")


# ----------------------------------------------------------------------------- files


def test_plain_csv_files_with_and_without_header(tmp_path: Path) -> None:
    bars = sample_bars(count=30)
    old = tmp_path / "BTCUSDT-1m-2025-03-14.csv"
    new = tmp_path / "new" / "BTCUSDT-1m-2025-03-14.csv"
    new.parent.mkdir()
    old.write_bytes(sample_data.binance_csv(bars, header=False, microseconds=False))
    new.write_bytes(sample_data.binance_csv(bars, header=True, microseconds=True))
    expected = [as_archive_row(bar) for bar in bars]
    assert read_all(old) == expected
    assert read_all(new) == expected


def test_daily_zip_as_published(tmp_path: Path) -> None:
    bars = sample_bars("ETHUSDT", count=20)
    csv = sample_data.binance_csv(bars, header=True, microseconds=True)
    path = write_zip(tmp_path / "ETHUSDT-1m-2025-03-14.zip", [("ETHUSDT-1m-2025-03-14.csv", csv)])
    assert read_all(path) == [as_archive_row(bar) for bar in bars]


def test_zip_with_several_csvs_keeps_archive_order_and_member_series(tmp_path: Path) -> None:
    btc, eth = sample_bars("BTCUSDT", 3), sample_bars("ETHUSDT", 2)
    btc_csv = sample_data.binance_csv(btc, header=False, microseconds=False)
    eth_csv = sample_data.binance_csv(eth, header=True, microseconds=True)
    path = write_zip(
        tmp_path / "bundle.zip",
        [
            ("BTCUSDT-1m-2025-03-14.csv", btc_csv),
            ("notes.txt", b"ignored"),
            ("ETHUSDT-1m-2025-03-14.csv", eth_csv),
            ("more/ETHUSDT-1m-2025-03-14-bad.csv", b"1,2\n"),
        ],
    )
    (source,) = plan_sources([path])
    assert [(name, s.key) for name, s in source.members] == [
        ("BTCUSDT-1m-2025-03-14.csv", "binance:BTC-USDT:1m"),
        ("ETHUSDT-1m-2025-03-14.csv", "binance:ETH-USDT:1m"),
        ("more/ETHUSDT-1m-2025-03-14-bad.csv", "binance:ETH-USDT:1m"),
    ]
    parsed = list(iter_source(source, clock=clock))
    assert parsed[:5] == [as_archive_row(bar) for bar in btc + eth]
    (bad,) = parsed[5:]
    assert isinstance(bad, Rejection)
    assert bad.location == f"{path}!more/ETHUSDT-1m-2025-03-14-bad.csv:1"


def test_zip_members_without_a_usable_name_take_the_zip_name(tmp_path: Path) -> None:
    bars = sample_bars(count=2)
    csv = sample_data.binance_csv(bars, header=False, microseconds=False)
    path = write_zip(tmp_path / "BTCUSDT-1m-2025-03.zip", [("data.csv", csv)])
    assert read_all(path) == [as_archive_row(bar) for bar in bars]


def test_zip_of_unsplittable_symbol_is_refused_up_front(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "anything.zip", [("FOOBAR-1m-2025-03-14.csv", b"")])
    with pytest.raises(ReplayConfigError, match=r"anything\.zip!FOOBAR-1m-2025-03-14\.csv: cannot"):
        plan_sources([path])


def test_plan_lists_every_refused_file_before_reading(tmp_path: Path) -> None:
    (tmp_path / "FOOBAR-1m-2025-03-14.csv").write_text(ROW_MS)
    (tmp_path / "BTCUSDT-3m-2025-03-14.csv").write_text(ROW_MS)
    (tmp_path / "BTCUSDT-1m-2025-03-14.csv").write_text(ROW_MS)
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ReplayConfigError) as caught:
        plan_sources([tmp_path, notes])
    problems = sorted(str(caught.value).splitlines())
    assert len(problems) == 3
    assert problems[0].startswith(f"{tmp_path}/BTCUSDT-3m-2025-03-14.csv: unknown timeframe '3m'")
    assert problems[1].startswith(f"{tmp_path}/FOOBAR-1m-2025-03-14.csv: cannot normalise")
    assert problems[2] == f"{notes}: unsupported file type (expected .csv, .zip, .jsonl, .jsonl.gz)"


def test_discover_walks_directories_sorted_and_skips_hidden(tmp_path: Path) -> None:
    for name in (
        "b/ETHUSDT-1m-2025-03-15.zip",
        "b/ETHUSDT-1m-2025-03-14.zip",
        "a.jsonl",
        "c/d/feed.jsonl.gz",
        "README.md",
        ".hidden/BTCUSDT-1m-2025-03-14.csv",
        "b/.partial.csv",
        "z.csv",
    ):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    files, problems = discover_files([tmp_path, tmp_path / "missing.csv"])
    assert problems == []
    assert [str(path.relative_to(tmp_path)) for path in files] == [
        "a.jsonl",
        "b/ETHUSDT-1m-2025-03-14.zip",
        "b/ETHUSDT-1m-2025-03-15.zip",
        "c/d/feed.jsonl.gz",
        "z.csv",
        "missing.csv",
    ]


def test_missing_file_is_an_archive_error(tmp_path: Path) -> None:
    (source,) = plan_sources([tmp_path / "BTCUSDT-1m-2025-03-14.csv"])
    with pytest.raises(ArchiveError) as caught:
        list(iter_source(source))
    assert caught.value.reason == "no such file"
    assert caught.value.path == str(tmp_path / "BTCUSDT-1m-2025-03-14.csv")


def test_corrupt_zip_is_planned_and_then_reported(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m-2025-03-14.zip"
    path.write_bytes(b"PK\x03\x04 this is not a zip")
    (source,) = plan_sources([path])
    assert source == ArchiveSource(path, "zip")
    with pytest.raises(ArchiveError, match="corrupt zip"):
        list(iter_source(source))


def test_crc_error_after_rows_is_an_archive_error(tmp_path: Path) -> None:
    bars = sample_bars(count=300)  # larger than the zip reader's chunks: rows come out first
    csv = sample_data.binance_csv(bars, header=False, microseconds=False)
    path = write_zip(tmp_path / "BTCUSDT-1m-2025-03-14.zip", [("BTCUSDT-1m-2025-03-14.csv", csv)],
                     stored=True)  # fmt: skip
    data = bytearray(path.read_bytes())
    last_volume = f"{bars[-1].volume:.8f}".encode()
    at = data.rindex(last_volume)
    data[at] = ord("9") if data[at] != ord("9") else ord("8")  # still a number: CRC catches it
    path.write_bytes(bytes(data))
    (source,) = plan_sources([path])
    produced: list[Kline | Rejection] = []
    with pytest.raises(ArchiveError, match="corrupt zip: Bad CRC-32"):
        for row in iter_source(source, clock=clock):
            produced.append(row)
    assert len(produced) > 100
    assert produced[:100] == [as_archive_row(bar) for bar in bars[:100]]


def test_zip_without_csv_is_an_archive_error(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "BTCUSDT-1m-2025-03-14.zip", [("README.txt", b"hi")])
    with pytest.raises(ArchiveError, match=r"holds no \.csv"):
        read_all(path)


def test_directory_named_like_an_archive_is_walked_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "BTCUSDT-1m-2025-03-14.csv"
    folder.mkdir()
    assert plan_sources([folder]) == []


# ----------------------------------------------------------------------------- JSONL


def test_jsonl_records_and_rejections() -> None:
    bar = sample_data.live_feed()[0]
    lines = [encode_kline(bar) + b"\n", b"\n", b'{"exchange":"okx"}\n', b"oops\r\n"]
    parsed = list(iter_jsonl_rows(lines, location="feed.jsonl"))
    assert parsed[0] == bar
    missing, oops = parsed[1], parsed[2]
    assert isinstance(missing, Rejection) and isinstance(oops, Rejection)
    assert missing.location == "feed.jsonl:3"
    assert missing.reason.startswith("missing field(s): symbol, raw_symbol")
    assert (oops.location, oops.raw, oops.key) == ("feed.jsonl:4", b"oops", None)
    assert oops.reason.startswith("not JSON")


def test_jsonl_keeps_the_records_own_times(tmp_path: Path) -> None:
    feed = sample_data.live_feed()[:50]
    plain = tmp_path / "feed.jsonl"
    packed = tmp_path / "feed.jsonl.gz"
    plain.write_bytes(sample_data.jsonl(feed))
    packed.write_bytes(gzip.compress(sample_data.jsonl(feed)))
    assert read_all(plain) == feed
    assert read_all(packed) == feed
    # Overrides are for archives; JSONL records name their own series.
    assert read_all(plain, exchange="binance", symbol="ETHUSDT") == feed


def test_corrupt_gzip_is_an_archive_error(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl.gz"
    feed = sample_data.jsonl(sample_data.live_feed()[:100])
    path.write_bytes(gzip.compress(feed)[:2000])
    with pytest.raises(ArchiveError, match="corrupt compressed data"):
        read_all(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ArchiveError):
        read_all(path)


# ----------------------------------------------------------------------------- the sample


def test_committed_sample_parses_to_the_generated_bars() -> None:
    by_file: dict[str, list[Kline | Rejection]] = {}
    for source in plan_sources([sample_data.SAMPLE_DIR]):
        by_file[str(source.path.relative_to(sample_data.SAMPLE_DIR))] = list(
            iter_source(source, clock=clock)
        )
    for series in sample_data.SAMPLE_BINANCE:
        bars = [as_archive_row(bar) for bar in sample_data.sample_bars(series)]
        for index, day in enumerate(sample_data.SAMPLE_DAYS):
            name = f"{series.raw_symbol}-1m-{day.isoformat()}.zip"
            assert by_file[name] == bars[index * 1440 : (index + 1) * 1440]
    (feed_name,) = (name for name in by_file if name.endswith(".jsonl.gz"))
    assert by_file[feed_name] == sample_data.live_feed()


def test_committed_bad_files_are_all_rejected_line_by_line() -> None:
    bad_dir = sample_data.SAMPLE_DIR / "bad"
    for source in plan_sources([bad_dir]):
        parsed = list(iter_source(source, clock=clock))
        assert parsed, source.path
        assert all(isinstance(row, Rejection) for row in parsed)
        locations = [row.location for row in parsed if isinstance(row, Rejection)]
        assert locations == [f"{source.path}:{n}" for n in range(1, len(parsed) + 1)]
    csv_rows = rows([line for line, _ in sample_data.bad_csv_rows()])
    assert len(csv_rows) == 12
    jsonl_rows = list(
        iter_jsonl_rows([line for line, _ in sample_data.bad_jsonl_rows()], location="bad")
    )
    assert len(jsonl_rows) == 16
    assert all(isinstance(row, Rejection) for row in csv_rows + jsonl_rows)
