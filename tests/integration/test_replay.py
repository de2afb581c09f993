"""``klineflow replay`` against the real Kafka broker: exact counts, keys, per-series order, DLQ."""

from __future__ import annotations

import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

from connectors.archives import Rejection, iter_source, plan_sources
from connectors.kafka_admin import read_topic
from connectors.replay import replay_files
from jobs import sample_data
from jobs.cli import main as klineflow
from udfs.dead_letter import decode_dead_letter
from udfs.record import Kline, decode_kline, encode_kline

NOW = 1_767_225_600_000  # fixed ingest time of archive rows, so expectations are exact
SAMPLE_BARS = 12_288  # 4 zips x 1,440 + 6,528 JSONL records (see data/sample/README.md)
SAMPLE_REJECTED = 28  # data/sample/bad: 12 CSV rows + 16 JSONL lines


def fixed_clock() -> int:
    return NOW


def expected_rows(paths: list[Path]) -> tuple[list[Kline], list[Rejection]]:
    """What the replay should send, in send order, from the parser itself."""
    bars: list[Kline] = []
    rejections: list[Rejection] = []
    for source in plan_sources(paths):
        for row in iter_source(source, clock=fixed_clock):
            (bars if isinstance(row, Kline) else rejections).append(row)  # type: ignore[arg-type]
    return bars, rejections


def test_replay_sample_and_bad_files(kafka_bootstrap: str, kafka_topics, tmp_path: Path) -> None:
    extra_bad = tmp_path / "ETHUSDT-1m-2025-03-14.csv"
    good_row = sample_data.binance_csv(
        sample_data.sample_bars(sample_data.SAMPLE_BINANCE[1])[:1], header=False, microseconds=False
    )
    extra_bad.write_bytes(b"not,a,row\n" + good_row + b"1741910460000,1,2\n")
    corrupt = tmp_path / "BTCUSDT-1m-2025-03-13.zip"
    corrupt.write_bytes(b"PK\x03\x04 broken")
    missing = tmp_path / "BTCUSDT-1m-2025-03-12.csv"
    paths = [sample_data.SAMPLE_DIR, corrupt, extra_bad, missing]

    result = replay_files(
        paths,
        bootstrap=kafka_bootstrap,
        topic=kafka_topics.raw,
        dlq_topic=kafka_topics.dlq,
        progress=False,
        clock=fixed_clock,
    )

    assert result.produced == SAMPLE_BARS + 1
    assert result.rejected == SAMPLE_REJECTED + 2
    assert sorted(result.failed_files) == sorted([str(corrupt), str(missing)])
    assert result.delivery_failures == 0
    assert not result.ok
    assert result.files == 7 + 3

    raw = read_topic(kafka_bootstrap, kafka_topics.raw, min_messages=result.produced)
    assert len(raw) == SAMPLE_BARS + 1
    expected_bars, expected_rejections = expected_rows(
        [sample_data.SAMPLE_DIR, extra_bad]  # the readable ones, in the same order
    )
    by_key: dict[str, list[Kline]] = defaultdict(list)
    for key, value in raw:
        bar = decode_kline(value)
        assert key == bar.series_key.encode()
        by_key[bar.series_key].append(bar)
    expected_by_key: dict[str, list[Kline]] = defaultdict(list)
    for bar in expected_bars:
        expected_by_key[bar.series_key].append(bar)
    assert sorted(by_key) == [
        "binance:BTC-USDT:1m",
        "binance:ETH-USDT:1m",
        "bybit:SOL-USDT:1m",
        "okx:BTC-USDT:1m",
    ]
    for key, bars in expected_by_key.items():
        # Replay merges files by open time (a series' archives are chained in date order).
        in_time_order = sorted(bars, key=lambda bar: bar.open_time)
        assert by_key[key] == in_time_order, f"{key} out of order or changed"
    assert len(by_key["binance:BTC-USDT:1m"]) == 2880
    assert len(by_key["binance:ETH-USDT:1m"]) == 2881
    first = by_key["binance:BTC-USDT:1m"][0]
    assert (first.is_closed, first.event_time, first.ingest_time) == (True, first.close_time, NOW)

    dlq = read_topic(kafka_bootstrap, kafka_topics.dlq, min_messages=result.rejected)
    assert len(dlq) == SAMPLE_REJECTED + 2
    letters = [decode_dead_letter(value) for _, value in dlq]
    # Files are merged by open time, so rejections of different files interleave.
    assert sorted((letter.original, letter.reason) for letter in letters) == sorted(
        (r.raw, r.describe()) for r in expected_rejections
    )
    assert {letter.stage for letter in letters} == {"replay"}
    for (key, _), letter in zip(dlq, letters, strict=True):
        assert key == (letter.key.encode() if letter.key else None)
    csv_letters = [letter for letter in letters if "BTCUSDT-1m-2025-03-16.csv:" in letter.reason]
    assert len(csv_letters) == 12
    assert csv_letters[0].reason.endswith(
        "BTCUSDT-1m-2025-03-16.csv:1: expected 12 columns, got 11"
    )
    assert {letter.key for letter in csv_letters} == {"binance:BTC-USDT:1m"}
    binary = [letter for letter in letters if letter.original.startswith(b"\xff\xfe")]
    assert len(binary) == 1  # kept byte for byte (base64 in the envelope)
    extra_reasons = [letter.reason for letter in letters if str(extra_bad) in letter.reason]
    assert extra_reasons == [
        f"{extra_bad}:1: expected 12 columns, got 3",
        f"{extra_bad}:3: expected 12 columns, got 3",
    ]


def test_cli_replay_exit_codes_and_summary(
    kafka_bootstrap: str, kafka_topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "replay",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        kafka_topics.raw,
        "--dlq-topic",
        kafka_topics.dlq,
        "--no-progress",
    ]
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(sample_data.SAMPLE_DIR / "ETHUSDT-1m-2025-03-15.zip") as original:
        csv = original.read("ETHUSDT-1m-2025-03-15.csv")
    with zipfile.ZipFile(archive, "w") as renamed:
        renamed.writestr("data.csv", csv)

    # A name that says nothing: refused before anything is sent.
    assert klineflow([*common, str(archive)]) == 2
    assert "cannot tell the symbol and timeframe" in capsys.readouterr().err

    # The flags say it: 1,440 bars, exit 0.
    assert klineflow([*common, "--symbol", "SOLUSDT", "--timeframe", "1m", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "produced 1,440 bars, rejected 0 rows" in out
    assert "bars/s" in out
    raw = read_topic(kafka_bootstrap, kafka_topics.raw, min_messages=1440)
    assert len(raw) == 1440
    assert {key for key, _ in raw} == {b"binance:SOL-USDT:1m"}

    # Bad rows alone do not fail a run; an unreadable file does.
    bad = sample_data.SAMPLE_DIR / "bad"
    assert klineflow([*common, str(bad)]) == 0
    assert "rejected 28 rows" in capsys.readouterr().out
    assert klineflow([*common, str(bad), str(tmp_path / "ETHUSDT-1m-2025-01-01.zip")]) == 1
    captured = capsys.readouterr()
    assert "1 file(s) FAILED" in captured.out
    assert "could not read" in captured.err


def test_replayed_bars_equal_the_encoded_originals(kafka_bootstrap: str, kafka_topics) -> None:
    """A JSONL replay is byte-transparent: the wire record goes out as it came in."""
    feed = sample_data.SAMPLE_DIR / "okx-bybit-1m-2025-03-14_2025-03-15.jsonl.gz"
    result = replay_files(
        [feed],
        bootstrap=kafka_bootstrap,
        topic=kafka_topics.raw,
        dlq_topic=kafka_topics.dlq,
        progress=False,
        rate_limit=None,
    )
    assert (result.produced, result.rejected, result.ok) == (6528, 0, True)
    values = {
        value for _, value in read_topic(kafka_bootstrap, kafka_topics.raw, min_messages=6528)
    }
    assert values == {encode_kline(bar) for bar in sample_data.live_feed()}
