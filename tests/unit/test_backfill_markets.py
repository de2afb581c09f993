"""``klineflow backfill`` follows markets as the bridge does: which markets, symbols and REST
base URL each market gets, the refusals, the shared rate limit per host, and the merge of
several markets' bars by open time (a stub REST client: no network, no Kafka, no JVM)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from connectors.backfill import MarketBackfill, ProgressFile, backfill_markets, progress_key
from connectors.exchanges import create_adapter
from connectors.rest_repair import FetchResult, RestStats
from connectors.symbols import SymbolInfo
from jobs import backfill_cmd
from jobs.config import STATE_DIR
from jobs.market_urls import market_url
from udfs.record import Kline

MINUTE_MS = 60_000
T0 = 1_717_200_000_000
VARIABLES = (
    "BACKFILL_EXCHANGE", "BACKFILL_MARKET", "BACKFILL_SYMBOLS", "BACKFILL_SINCE",
    "BACKFILL_UNTIL", "BACKFILL_CHUNK_MINUTES", "BACKFILL_PROGRESS_FILE",
    "BRIDGE_CONTRACT_SIZES", "KLINES_TOPIC", "KLINES_LINEAR_TOPIC", "KLINES_DLQ_TOPIC",
    "KAFKA_BOOTSTRAP_SERVERS", "BINANCE_REST_URL", "OKX_REST_URL", "BYBIT_REST_URL",
)  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No variable the backfill reads is set (a developer's shell must not change results)."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    backfill_cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["backfill", "--since", str(T0), "--until", str(T0 + MINUTE_MS),
                              *argv])  # fmt: skip


def _plan(argv: list[str]) -> list[tuple[str, list[str], str, str, Path]]:
    """(market, canonical symbols, REST base, topic, progress file) of each market."""
    return [
        (run.adapter.market, [info.symbol for info in run.adapter.symbols.values()],
         run.rest_url, run.topic, run.progress_path)
        for run in backfill_cmd.plan_markets(_args(argv))
    ]  # fmt: skip


# --- markets, symbols, URLs ----------------------------------------------------------------


def test_spot_and_linear_of_binance_get_their_public_hosts_topics_and_progress_files(
    clean_env: pytest.MonkeyPatch,
) -> None:
    plan = _plan(["--exchange", "binance", "--market", "spot,linear",
                  "--symbols", "BTCUSDT,linear:ETHUSDT",
                  "--topic", "raw", "--linear-topic", "perps"])  # fmt: skip
    assert plan == [
        ("spot", ["BTC-USDT"], "https://api.binance.com", "raw",
         STATE_DIR / "backfill" / "binance-spot.json"),
        ("linear", ["BTC-USDT-PERP", "ETH-USDT-PERP"], "https://fapi.binance.com", "perps",
         STATE_DIR / "backfill" / "binance-linear.json"),
    ]  # fmt: skip


def test_one_market_without_flags_stays_spot_on_the_spot_host(
    clean_env: pytest.MonkeyPatch,
) -> None:
    plan = _plan(["--exchange", "binance", "--symbols", "BTCUSDT,ETHUSDT"])
    assert [(market, symbols, url) for market, symbols, url, *_ in plan] == [
        ("spot", ["BTC-USDT", "ETH-USDT"], "https://api.binance.com")
    ]


def test_inverse_defaults_to_the_coin_m_host(clean_env: pytest.MonkeyPatch) -> None:
    plan = _plan(["--exchange", "binance", "--market", "inverse", "--symbols", "BTCUSD_PERP"])
    assert [(market, symbols, url) for market, symbols, url, *_ in plan] == [
        ("inverse", ["BTC-USD-PERP"], "https://dapi.binance.com")
    ]


def test_the_bridges_per_market_variable_serves_the_backfill(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv(
        "BINANCE_REST_URL", "spot=http://127.0.0.1:1,linear=http://127.0.0.1:2/x?a=1,2"
    )
    plan = _plan(["--exchange", "binance", "--market", "spot,linear",
                  "--symbols", "BTCUSDT,inverse:BTCUSD_PERP"])  # fmt: skip
    assert {market: url for market, _, url, *_ in plan} == {
        "spot": "http://127.0.0.1:1",
        "linear": "http://127.0.0.1:2/x?a=1,2",
        "inverse": "https://dapi.binance.com",  # no entry: the adapter's default
    }


def test_the_flag_wins_per_market_and_a_market_it_omits_falls_back_to_the_variable(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("BYBIT_REST_URL", "http://env.example")
    plan = _plan(["--exchange", "bybit", "--market", "spot,linear", "--symbols", "BTCUSDT",
                  "--rest-url", "linear=http://flag.example"])  # fmt: skip
    assert {market: url for market, _, url, *_ in plan} == {
        "spot": "http://env.example",
        "linear": "http://flag.example",
    }
    # One plain URL serves every market.
    plan = _plan(["--exchange", "bybit", "--market", "spot,linear", "--symbols", "BTCUSDT",
                  "--rest-url", "http://one.example"])  # fmt: skip
    assert {url for _, _, url, *_ in plan} == {"http://one.example"}
    assert market_url(None, "--rest-url", "bybit", "REST", "inverse") == "http://env.example"


def test_okx_instids_name_their_markets_and_share_one_host(clean_env: pytest.MonkeyPatch) -> None:
    plan = _plan(["--exchange", "okx", "--market", "spot,linear",
                  "--symbols", "BTC-USDT,BTC-USDT-SWAP,ETH-USDT-SWAP",
                  "--progress-file", "/tmp/p.json"])  # fmt: skip
    assert plan == [
        ("spot", ["BTC-USDT"], "https://www.okx.com", "klines.raw", Path("/tmp/p.json")),
        ("linear", ["BTC-USDT-PERP", "ETH-USDT-PERP"], "https://www.okx.com", "klines.raw",
         Path("/tmp/p.json")),
    ]  # fmt: skip


def test_the_market_list_comes_from_the_variable_too(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BACKFILL_MARKET", "spot,linear")
    clean_env.setenv("BACKFILL_SYMBOLS", "BTCUSDT")
    plan = _plan(["--exchange", "bybit"])
    assert [(market, symbols) for market, symbols, *_ in plan] == [
        ("spot", ["BTC-USDT"]),
        ("linear", ["BTC-USDT-PERP"]),
    ]


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "environment", "message"),
    [
        (["--exchange", "binance", "--market", "perp", "--symbols", "BTCUSDT"], {},
         "--market: unknown market 'perp'"),
        (["--exchange", "binance", "--market", "spot,spot", "--symbols", "BTCUSDT"], {},
         "--market: spot given twice"),
        (["--exchange", "binance", "--symbols", "perp:BTCUSDT"], {},
         "--symbols 'perp:BTCUSDT': unknown market 'perp'"),
        (["--exchange", "bybit", "--symbols", "BTCUSDT,spot:BTCUSDT"], {},
         "bybit spot: symbol 'BTCUSDT' given twice"),
        (["--exchange", "okx", "--symbols", "BTC-USDT-SWAP"], {},
         "'BTC-USDT-SWAP' is an OKX linear instrument, and --market is spot"),
        (["--exchange", "okx", "--market", "spot,linear", "--symbols", "spot:BTC-USDT-SWAP"], {},
         "BTC-USDT-SWAP is an OKX linear instrument, not spot"),
        (["--exchange", "binance", "--market", "spot,linear", "--symbols", "ETHBTC"], {},
         "give it as MARKET:ETHBTC"),
        (["--exchange", "binance", "--symbols", "BTCUSDT", "--rest-url", "spot="], {},
         "--rest-url 'spot=': expected MARKET=URL"),
        (["--exchange", "binance", "--symbols", "BTCUSDT"],
         {"BINANCE_REST_URL": "spot=http://a,spot=http://b"},
         "BINANCE_REST_URL: spot given twice"),
    ],
)  # fmt: skip
def test_what_the_backfill_refuses_before_sending_anything(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    environment: dict[str, str],
    message: str,
) -> None:
    for name, value in environment.items():
        clean_env.setenv(name, value)
    assert backfill_cmd.run(_args(argv)) == backfill_cmd.EXIT_REFUSED
    assert message in capsys.readouterr().err


def test_help_names_the_variable_of_every_flag(clean_env: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    backfill_cmd.register(subparsers)
    backfill = subparsers.choices["backfill"]
    helps = {
        action.option_strings[0]: action.help or ""
        for action in backfill._actions
        if action.option_strings and action.dest != "help"
    }
    for flag, variable in {
        "--exchange": "BACKFILL_EXCHANGE", "--market": "BACKFILL_MARKET",
        "--symbols": "BACKFILL_SYMBOLS", "--contract-size": "BRIDGE_CONTRACT_SIZES",
        "--since": "BACKFILL_SINCE", "--until": "BACKFILL_UNTIL",
        "--chunk-minutes": "BACKFILL_CHUNK_MINUTES", "--progress-file": "BACKFILL_PROGRESS_FILE",
        "--rest-url": "BINANCE_REST_URL / OKX_REST_URL / BYBIT_REST_URL",
        "--topic": "KLINES_TOPIC", "--linear-topic": "KLINES_LINEAR_TOPIC",
        "--dlq-topic": "KLINES_DLQ_TOPIC", "--bootstrap-servers": "KAFKA_BOOTSTRAP_SERVERS",
    }.items():  # fmt: skip
        assert f"env {variable}" in helps.pop(flag), flag
    assert helps == {}, "a flag without its variable in the table above"
    assert "spot=URL,linear=URL" in backfill.format_help().replace("\n", " ").replace(" ", "")


# --- rate limits -----------------------------------------------------------------------------


def test_markets_on_one_host_share_a_bucket_and_other_hosts_keep_their_own(
    clean_env: pytest.MonkeyPatch,
) -> None:
    binance = backfill_cmd.plan_markets(_args(
        ["--exchange", "binance", "--market", "spot,linear", "--symbols",
         "BTCUSDT,inverse:BTCUSD_PERP"]))  # fmt: skip
    spot, linear, inverse = backfill_cmd.rest_buckets(binance)
    assert len({id(spot), id(linear), id(inverse)}) == 3  # api, fapi, dapi
    bybit = backfill_cmd.plan_markets(_args(
        ["--exchange", "bybit", "--market", "spot,linear", "--symbols", "BTCUSDT",
         "--rest-url", "spot=http://127.0.0.1:9/a,linear=HTTP://127.0.0.1:9/b"]))  # fmt: skip
    first, second = backfill_cmd.rest_buckets(bybit)
    assert first is second
    assert first.rate_per_s == bybit[0].adapter.rest_rate_per_s


# --- several markets in one backfill -----------------------------------------------------------


class StubClient:
    """Answers every range with closed bars of the adapter's symbols (no HTTP)."""

    def __init__(self, adapter: Any, price: float) -> None:
        self.adapter = adapter
        self.price = price
        self.stats = RestStats()
        self.asked: list[tuple[str, int, int]] = []

    async def fetch_closed(self, info: SymbolInfo, start_ms: int, end_ms: int) -> FetchResult:
        self.stats.requests += 1
        self.asked.append((info.symbol, start_ms, end_ms))
        bars = [
            Kline(self.adapter.name, info.symbol, info.raw_symbol, "1m", open_time,
                  open_time + MINUTE_MS - 1, self.price, self.price, self.price, self.price,
                  1.0, None, None, None, None, True, open_time + MINUTE_MS, 0,
                  market=info.market, provenance="rest")
            for open_time in range(start_ms, end_ms, MINUTE_MS)
        ]  # fmt: skip
        return FetchResult(bars)


async def _settled() -> None:
    return None


def test_markets_are_merged_by_open_time_and_keep_their_own_progress(tmp_path: Path) -> None:
    spot = StubClient(create_adapter("bybit", "spot", ["BTCUSDT"]), price=100.0)
    linear = StubClient(create_adapter("bybit", "linear", ["BTCUSDT"]), price=200.0)
    shared = ProgressFile(tmp_path / "progress.json")
    # The linear series got further in an earlier run.
    shared.save(progress_key("bybit", "linear", "BTCUSDT"), T0 + 3 * MINUTE_MS)
    emitted: list[Kline] = []
    report = asyncio.run(backfill_markets(
        [MarketBackfill(spot, list(spot.adapter.symbols.values()), shared),
         MarketBackfill(linear, list(linear.adapter.symbols.values()), shared)],
        T0, T0 + 6 * MINUTE_MS, emit=emitted.append, reject=lambda rejected: None,
        settle=_settled, chunk_minutes=2,
    ))  # fmt: skip
    assert [(bar.symbol, bar.open_time) for bar in emitted] == [
        ("BTC-USDT", T0), ("BTC-USDT", T0 + MINUTE_MS),
        ("BTC-USDT", T0 + 2 * MINUTE_MS), ("BTC-USDT", T0 + 3 * MINUTE_MS),
        ("BTC-USDT-PERP", T0 + 3 * MINUTE_MS),
        ("BTC-USDT", T0 + 4 * MINUTE_MS), ("BTC-USDT-PERP", T0 + 4 * MINUTE_MS),
        ("BTC-USDT", T0 + 5 * MINUTE_MS), ("BTC-USDT-PERP", T0 + 5 * MINUTE_MS),
    ]  # fmt: skip
    # Each market's bars are its own: no perp bar from the spot client, nor the reverse.
    assert {bar.close for bar in emitted if bar.symbol == "BTC-USDT"} == {100.0}
    assert {bar.close for bar in emitted if bar.symbol == "BTC-USDT-PERP"} == {200.0}
    assert {(bar.symbol, bar.market) for bar in emitted} == {("BTC-USDT", "spot"),
                                                            ("BTC-USDT-PERP", "perp")}  # fmt: skip
    assert [item.market for item in report.symbols] == ["spot", "linear"]
    assert [item.resumed_from_ms for item in report.symbols] == [T0, T0 + 3 * MINUTE_MS]
    assert report.rest_by_market == {
        "spot": {**report.rest_by_market["spot"], "requests": 3},
        "linear": {**report.rest_by_market["linear"], "requests": 2},
    }
    assert report.rest["requests"] == 5
    again = ProgressFile(tmp_path / "progress.json")
    assert again.next_start(progress_key("bybit", "spot", "BTCUSDT")) == T0 + 6 * MINUTE_MS
    assert again.next_start(progress_key("bybit", "linear", "BTCUSDT")) == T0 + 6 * MINUTE_MS


def test_a_series_from_two_markets_is_refused(tmp_path: Path) -> None:
    first = StubClient(create_adapter("bybit", "linear", ["BTCUSDT"]), price=1.0)
    second = StubClient(create_adapter("bybit", "linear", ["BTCUSDT"]), price=2.0)
    progress = ProgressFile(tmp_path / "progress.json")
    markets = [MarketBackfill(client, list(client.adapter.symbols.values()), progress)
               for client in (first, second)]  # fmt: skip
    with pytest.raises(ValueError, match="bybit:BTC-USDT-PERP given twice"):
        asyncio.run(backfill_markets(markets, T0, T0 + MINUTE_MS, emit=lambda bar: None,
                                     reject=lambda rejected: None, settle=_settled))  # fmt: skip
    assert first.asked == second.asked == []
