"""``klineflow backfill`` against the local exchange servers, into the real Kafka broker.

The fakes serve a deterministic tape over their real REST protocols (paging, 429 with
Retry-After, OKX's ``confirm`` flag on the bar still open); the test checks what reached
Kafka against the tape: every closed minute of the range exactly once, with provenance
``rest``, in open-time order across symbols, and that a second run with the same progress
file fetches and produces only what the first one had not.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.backfill import ProgressFile, backfill, progress_key
from connectors.exchanges import create_adapter
from connectors.kafka_admin import read_topic
from connectors.rest_repair import RestKlineClient
from tests.fakes.exchange_servers import FAKES, MINUTE_MS, ThreadedFake
from udfs.record import Kline, decode_kline

REPO_ROOT = Path(__file__).resolve().parents[2]

VENUES = {
    "binance": ("spot", ["BTCUSDT", "ETHUSDT"]),
    "okx": ("linear", ["BTC-USDT-SWAP", "ETH-USDT-SWAP"]),
    "bybit": ("spot", ["BTCUSDT", "ETHUSDT"]),
}


def _backfill_cli(
    fake: Any, exchange: str, market: str, symbols: list[str], topics: Any, bootstrap: str,
    progress: Path, since: int, until: int,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    command = [
        sys.executable, "-m", "jobs.cli", "backfill",
        "--exchange", exchange, "--market", market, "--symbols", ",".join(symbols),
        "--since", str(since), "--until", str(until), "--chunk-minutes", "500",
        "--rest-url", fake.rest_base, "--topic", topics.raw, "--linear-topic", topics.raw,
        "--dlq-topic", topics.dlq, "--bootstrap-servers", bootstrap,
        "--progress-file", str(progress),
    ]  # fmt: skip
    return subprocess.run(
        command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("exchange", list(VENUES))
def test_backfill_delivers_every_closed_minute_once_and_resumes(
    exchange: str, kafka_bootstrap: str, kafka_topics: Any, tmp_path: Path
) -> None:
    market, symbols = VENUES[exchange]
    fake = FAKES[exchange](symbols, market=market, first_bar=2_500)
    progress = tmp_path / "progress.json"
    tape = fake.tape
    with ThreadedFake(fake) as threaded:
        threaded.call(fake.pause)
        fake.limit_rest(2, 429, "0.3")  # the first requests are rate limited
        first = _backfill_cli(fake, exchange, market, symbols, kafka_topics, kafka_bootstrap,
                              progress, tape.open_time(5), tape.open_time(1_805))  # fmt: skip
        assert first.returncode == 0, first.stderr
        requests_after_first = len(fake.rest_requests)
        second = _backfill_cli(fake, exchange, market, symbols, kafka_topics, kafka_bootstrap,
                               progress, tape.open_time(5), tape.open_time(1_905))  # fmt: skip
        assert second.returncode == 0, second.stderr
        second_requests = fake.rest_requests[requests_after_first:]
    statuses = [status for *_, status in fake.rest_requests]
    assert statuses[:2] == [429, 429] and statuses[2:] == [200] * (len(statuses) - 2)
    # The second run fetched only the 100 new minutes of each symbol: one page each.
    assert len(second_requests) == len(symbols), second_requests

    records = read_topic(kafka_bootstrap, kafka_topics.raw, min_messages=1)
    bars = [decode_kline(value) for _key, value in records]
    seen: dict[tuple[str, int], Kline] = {}
    for bar in bars:
        assert (bar.series_key, bar.open_time) not in seen, f"{bar.series_key} {bar.open_time}"
        seen[(bar.series_key, bar.open_time)] = bar
    assert len(bars) == len(symbols) * 1_900
    canonical = create_adapter(exchange, market, symbols).symbols
    for index, raw in enumerate(symbols):
        mine = {bar.open_time: bar for bar in bars if bar.symbol == canonical[raw].symbol}
        assert sorted(mine) == [tape.open_time(bar) for bar in range(5, 1_905)]
        for bar_index in (5, 900, 1_904):
            final = tape.final(index, bar_index)
            bar = mine[final.open_time]
            assert (bar.open, bar.close, bar.is_closed) == (final.open, final.close, True)
    assert {bar.provenance for bar in bars} == {"rest"}
    # Merged by open time across symbols: no partition ever goes back in time.
    by_key: dict[bytes | None, list[int]] = {}
    for (key, _value), bar in zip(records, bars, strict=True):
        by_key.setdefault(key, []).append(bar.open_time)
    assert all(times == sorted(times) for times in by_key.values())
    assert read_topic(kafka_bootstrap, kafka_topics.dlq) == []
    state = ProgressFile(progress)
    adapter = create_adapter(exchange, market, symbols)
    for raw in symbols:
        key = progress_key(exchange, adapter.market, raw)
        assert state.next_start(key) == tape.open_time(1_905)


def test_backfill_stops_before_the_bar_still_open(tmp_path: Path) -> None:
    """OKX marks the bar in progress ``confirm=0``: a range reaching the present ends before
    it, the progress stops there, and a later run starts from it."""

    async def scenario() -> tuple[list[Kline], Any, int | None, int]:
        symbols = ["BTC-USDT", "ETH-USDT"]
        fake = FAKES["okx"](symbols, first_bar=300)
        await fake.start(ticking=False)
        try:
            for _ in range(2):
                await fake.advance()  # the current bar has an in-progress update
            adapter = create_adapter("okx", "spot", symbols)
            emitted: list[Kline] = []
            progress = ProgressFile(tmp_path / "progress.json")

            async def settle() -> None:
                return None

            async with aiohttp.ClientSession() as session:
                client = RestKlineClient(adapter, fake.rest_base, session)
                report = await backfill(
                    client, list(adapter.symbols.values()),
                    fake.tape.open_time(200), fake.tape.open_time(400),
                    emit=emitted.append, reject=lambda rejected: None, settle=settle,
                    progress=progress, chunk_minutes=60,
                )  # fmt: skip
            key = progress_key("okx", "spot", "BTC-USDT")
            return emitted, report, progress.next_start(key), fake.current_bar()
        finally:
            await fake.stop()

    emitted, report, next_start, current_bar = asyncio.run(scenario())
    tape_open = FAKES["okx"](["BTC-USDT"], first_bar=300).tape.open_time
    assert current_bar == 300
    per_symbol = {
        symbol: [bar.open_time for bar in emitted if bar.symbol == symbol]
        for symbol in ("BTC-USDT", "ETH-USDT")
    }
    assert all(times == [tape_open(bar) for bar in range(200, 300)]
               for times in per_symbol.values())  # fmt: skip
    assert all(bar.is_closed for bar in emitted)
    assert [item.open_bars_skipped for item in report.symbols] == [1, 1]
    assert not report.failed
    assert next_start == tape_open(300)  # the open bar's minute: fetched again next time
    # Across symbols the bars come out in open-time order, as a live feed delivers them.
    assert [bar.open_time for bar in emitted] == sorted(bar.open_time for bar in emitted)


def test_cli_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    def cli(*flags: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "jobs.cli", "backfill", *flags]
        return subprocess.run(
            command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )

    missing = cli("--exchange", "binance", "--symbols", "BTCUSDT")
    assert missing.returncode == 2 and "--since" in missing.stderr
    backwards = cli("--exchange", "binance", "--symbols", "BTCUSDT", "--since", "2025-02-01",
                    "--until", "2025-01-01")  # fmt: skip
    assert backwards.returncode == 2 and "must be after" in backwards.stderr
    unknown = cli("--exchange", "binance", "--symbols", "BTCFOO", "--since", "2025-01-01")
    assert unknown.returncode == 2 and "BTCFOO" in unknown.stderr
    assert MINUTE_MS == 60_000
