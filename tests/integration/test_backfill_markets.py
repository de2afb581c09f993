"""``klineflow backfill`` of spot and linear of one venue in one command, into the real broker.

Each market is served by the fake that speaks its protocol: Binance and Bybit by one fake per
market on its own port (Binance serves spot and USDT-M from different hosts; the Bybit fake
answers only its own ``category``), so the per-market REST URL syntax the bridge takes
(``spot=URL,linear=URL``, from ``--rest-url`` or ``BINANCE_REST_URL``) is what routes each
market's requests to the right server. OKX serves every instrument from one host, so one fake
holds both the spot pair and the swap, behind one plain URL.

The fakes list the symbols of the two markets in different orders, so the spot pair and the
perpetual of one name have different prices on the tapes: a bar of one market under the other
market's key would show. The test checks that every closed minute of every series arrives
exactly once under its own key (``BTC-USDT`` spot, ``BTC-USDT-PERP`` the perpetual), with the
values of the market that serves it, and that each server was asked only about its market.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connectors.backfill import ProgressFile, progress_key
from connectors.exchanges import create_adapter
from connectors.kafka_admin import read_topic
from tests.fakes.exchange_servers import FAKES, FakeExchange, ThreadedFake
from udfs.record import Kline, decode_kline

REPO_ROOT = Path(__file__).resolve().parents[2]
FIRST_BAR = 600  # the tape's current bar: every earlier one is closed
RANGE = (10, 310)  # bars backfilled: 300 minutes, three chunks of 100
URL_VARIABLES = ("BINANCE_REST_URL", "OKX_REST_URL", "BYBIT_REST_URL")


@dataclass(frozen=True)
class Case:
    """One venue: the symbols each market's fake serves, and the backfill's --symbols."""

    exchange: str
    served: dict[str, list[str]]  # market -> raw symbols of its fake, in the tape's order
    symbols: str
    followed: dict[str, list[str]]  # market -> raw symbols the backfill must fill
    one_fake: bool = False  # OKX: one host serves every market
    url_from_env: bool = False  # the per-market list comes from BINANCE_REST_URL
    linear_topic: bool = False  # derivatives to their own topic


CASES = {
    "binance": Case(
        "binance",
        served={"spot": ["BTCUSDT", "ETHUSDT"], "linear": ["ETHUSDT", "BTCUSDT"]},
        symbols="BTCUSDT,ETHUSDT",
        followed={"spot": ["BTCUSDT", "ETHUSDT"], "linear": ["BTCUSDT", "ETHUSDT"]},
        url_from_env=True,
    ),
    "bybit": Case(
        "bybit",
        served={"spot": ["BTCUSDT"], "linear": ["ETHUSDT", "BTCUSDT"]},
        symbols="BTCUSDT,linear:ETHUSDT",
        followed={"spot": ["BTCUSDT"], "linear": ["BTCUSDT", "ETHUSDT"]},
        linear_topic=True,
    ),
    "okx": Case(
        "okx",
        served={"spot": ["BTC-USDT", "BTC-USDT-SWAP"]},
        symbols="BTC-USDT,BTC-USDT-SWAP",
        followed={"spot": ["BTC-USDT"], "linear": ["BTC-USDT-SWAP"]},
        one_fake=True,
    ),
}


def _run_backfill(
    case: Case, fakes: dict[str, FakeExchange], topics: Any, linear_topic: str,
    bootstrap: str, progress: Path,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    tape = next(iter(fakes.values())).tape
    environment = {name: value for name, value in os.environ.items() if name not in URL_VARIABLES}
    command = [
        sys.executable, "-m", "jobs.cli", "backfill", "--exchange", case.exchange,
        "--market", "spot,linear", "--symbols", case.symbols,
        "--since", str(tape.open_time(RANGE[0])), "--until", str(tape.open_time(RANGE[1])),
        "--chunk-minutes", "100", "--topic", topics.raw, "--linear-topic", linear_topic,
        "--dlq-topic", topics.dlq, "--bootstrap-servers", bootstrap,
        "--progress-file", str(progress),
    ]  # fmt: skip
    if case.one_fake:
        command += ["--rest-url", fakes["spot"].rest_base]
    else:
        per_market = ",".join(f"{market}={fake.rest_base}" for market, fake in fakes.items())
        if case.url_from_env:
            environment[f"{case.exchange.upper()}_REST_URL"] = per_market
        else:
            command += ["--rest-url", per_market]
    return subprocess.run(
        command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env=environment,
    )  # fmt: skip


@pytest.mark.parametrize("exchange", list(CASES))
def test_one_backfill_fills_spot_and_linear_each_under_its_own_key(
    exchange: str, kafka_bootstrap: str, kafka_topics: Any, tmp_path: Path
) -> None:
    case = CASES[exchange]
    fakes: dict[str, FakeExchange] = {
        market: FAKES[exchange](raw, market=market, first_bar=FIRST_BAR)
        for market, raw in case.served.items()
    }
    server_of = {market: fakes["spot" if case.one_fake else market] for market in case.followed}
    linear_topic = f"{kafka_topics.raw}-perp" if case.linear_topic else kafka_topics.raw
    progress = tmp_path / "progress.json"
    with contextlib.ExitStack() as stack:
        for fake in fakes.values():
            stack.enter_context(ThreadedFake(fake)).call(fake.pause)
        done = _run_backfill(case, fakes, kafka_topics, linear_topic, kafka_bootstrap, progress)
    assert done.returncode == 0, done.stderr
    assert "rest spot:" in done.stdout and "rest linear:" in done.stdout, done.stdout

    # What each series must hold: its market's tape, under its canonical symbol.
    expected: dict[str, tuple[str, FakeExchange, str]] = {}  # series key -> market, fake, raw
    for market, raws in case.followed.items():
        canonical = create_adapter(exchange, market, raws).symbols
        for raw in raws:
            key = f"{exchange}:{canonical[raw].symbol}:1m"
            expected[key] = (market, server_of[market], raw)
    spot_keys = {key for key, (market, *_) in expected.items() if market == "spot"}
    perp_keys = set(expected) - spot_keys
    assert all(key.endswith("-PERP:1m") for key in perp_keys), perp_keys
    assert {key.removesuffix("-PERP:1m") + ":1m" for key in perp_keys} & spot_keys, (
        "the case should fill the spot pair and the perpetual of one name"
    )

    records = read_topic(kafka_bootstrap, kafka_topics.raw, min_messages=1)
    if case.linear_topic:
        perp_records = read_topic(kafka_bootstrap, linear_topic, min_messages=1)
        assert {key.decode() for key, _ in records if key} == spot_keys
        assert {key.decode() for key, _ in perp_records if key} == perp_keys
        records = records + perp_records
    bars = [decode_kline(value) for _key, value in records]
    minutes = RANGE[1] - RANGE[0]
    assert len(bars) == len(expected) * minutes
    seen: dict[tuple[str, int], Kline] = {}
    for (key, _value), bar in zip(records, bars, strict=True):
        assert key is not None and key.decode() == bar.series_key
        assert (bar.series_key, bar.open_time) not in seen, (bar.series_key, bar.open_time)
        seen[(bar.series_key, bar.open_time)] = bar
    assert {bar.series_key for bar in bars} == set(expected)
    for key, (market, fake, raw) in expected.items():
        mine = sorted((bar for bar in bars if bar.series_key == key), key=lambda b: b.open_time)
        tape, index = fake.tape, fake.symbol_index(raw)
        assert index is not None
        assert [bar.open_time for bar in mine] == [tape.open_time(n) for n in range(*RANGE)]
        assert {bar.market for bar in mine} == {"spot" if market == "spot" else "perp"}, key
        assert {bar.raw_symbol for bar in mine} == {raw}
        for bar in mine:
            final = tape.final(index, tape.bar_of(bar.open_time))
            assert (bar.open, bar.close, bar.is_closed) == (final.open, final.close, True), key
            assert bar.volume == pytest.approx(final.volume), key
    # Spot and perpetual of one name differ on the tapes, so a swapped bar would have shown;
    # make sure the test would have seen it.
    for perp_key in perp_keys:
        spot_key = perp_key.removesuffix("-PERP:1m") + ":1m"
        if spot_key in spot_keys:
            minute = next(iter(seen))[1]
            assert seen[(perp_key, minute)].open != seen[(spot_key, minute)].open
    assert {bar.provenance for bar in bars} == {"rest"}
    by_key: dict[bytes | None, list[int]] = {}
    for (key, _value), bar in zip(records, bars, strict=True):
        by_key.setdefault(key, []).append(bar.open_time)
    assert all(times == sorted(times) for times in by_key.values())
    assert read_topic(kafka_bootstrap, kafka_topics.dlq) == []

    # Each server was asked only about the market it serves.
    if not case.one_fake:
        paths = {"binance": {"spot": "/api/v3/klines", "linear": "/fapi/v1/klines"},
                 "bybit": {"spot": "/v5/market/kline", "linear": "/v5/market/kline"}}  # fmt: skip
        for market, fake in fakes.items():
            assert fake.rest_requests, market
            assert {path for path, _, _ in fake.rest_requests} == {paths[exchange][market]}
            assert {status for *_, status in fake.rest_requests} == {200}
            if exchange == "bybit":
                assert {query["category"] for _, query, _ in fake.rest_requests} == {market}
    else:
        asked = {query["instId"] for _, query, _ in fakes["spot"].rest_requests}
        assert asked == {"BTC-USDT", "BTC-USDT-SWAP"}
    # One progress file holds both markets, each series at the end of the range.
    state = ProgressFile(progress)
    end = next(iter(fakes.values())).tape.open_time(RANGE[1])
    for market, raws in case.followed.items():
        assert all(state.next_start(progress_key(exchange, market, raw)) == end for raw in raws)
