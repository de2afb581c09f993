"""Which markets, symbols and URLs one bridge process follows: the parsing and its refusals.

``--market`` lists where a symbol without a prefix goes, ``MARKET:SYMBOL`` names one market,
an OKX instId names its own; anything that cannot be told without guessing is refused with
a message that says what to write instead.
"""

from __future__ import annotations

import argparse

import pytest

from connectors.bridge.markets import (
    MarketSpecError,
    MarketUrls,
    parse_market_urls,
    parse_markets,
    symbols_by_market,
)
from connectors.symbols import UnknownSymbol
from jobs import bridge_cmd
from jobs.cli import main

# --- --market --------------------------------------------------------------------------------


def test_markets_are_a_comma_separated_list_in_the_given_order() -> None:
    assert parse_markets("spot") == ("spot",)
    assert parse_markets("linear, spot") == ("linear", "spot")
    assert parse_markets("SPOT,Inverse") == ("spot", "inverse")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("perp", "unknown market 'perp' (expected one of spot, linear"),
        ("spot,futures", "unknown market 'futures'"),
        ("spot,spot", "spot given twice"),
        (" , ", "no market given"),
        (None, "no market given"),
    ],
)
def test_a_market_list_that_names_no_market_or_one_twice_is_refused(
    text: str | None, message: str
) -> None:
    with pytest.raises(MarketSpecError, match="--market") as caught:
        parse_markets(text)
    assert message in str(caught.value)


# --- symbols per market ----------------------------------------------------------------------


def test_one_market_takes_every_symbol_as_before() -> None:
    plan = symbols_by_market("binance", ("spot",), ["BTCUSDT", "ETHUSDT"])
    assert plan == {"spot": ["BTCUSDT", "ETHUSDT"]}


def test_a_plain_binance_or_bybit_symbol_is_followed_on_every_listed_market() -> None:
    plan = symbols_by_market("bybit", ("linear", "spot"), ["BTCUSDT", "ETHUSDT"])
    # Markets come in their fixed order (spot, linear, inverse), symbols in the given one.
    assert list(plan) == ["spot", "linear"]
    assert plan == {"spot": ["BTCUSDT", "ETHUSDT"], "linear": ["BTCUSDT", "ETHUSDT"]}


def test_a_market_prefix_gives_each_market_its_own_symbols() -> None:
    # spot BTCUSDT, linear BTCUSDT and ETHUSDT: written out, or plain ones on --market spot.
    spelled_out = ["spot:BTCUSDT", "linear:BTCUSDT", "linear:ETHUSDT"]
    expected = {"spot": ["BTCUSDT"], "linear": ["BTCUSDT", "ETHUSDT"]}
    assert symbols_by_market("bybit", ("spot",), spelled_out) == expected
    assert symbols_by_market("bybit", ("spot",), ["BTCUSDT", *spelled_out[1:]]) == expected
    assert symbols_by_market("binance", ("linear",), ["BTCUSDT", "ETHUSDT", "spot:BTCUSDT"]) == {
        "spot": ["BTCUSDT"],
        "linear": ["BTCUSDT", "ETHUSDT"],
    }
    # A prefixed symbol needs no --market entry: --market only places the plain ones.
    assert symbols_by_market("binance", ("spot",), ["inverse:BTCUSD_PERP"]) == {
        "inverse": ["BTCUSD_PERP"]
    }
    assert symbols_by_market("bybit", ("spot",), ["LINEAR:btcusdt"]) == {"linear": ["btcusdt"]}


def test_an_okx_instid_is_followed_on_the_market_it_names() -> None:
    plan = symbols_by_market(
        "okx", ("spot", "linear", "inverse"), ["BTC-USDT", "BTC-USDT-SWAP", "BTC-USD-SWAP"]
    )
    assert plan == {"spot": ["BTC-USDT"], "linear": ["BTC-USDT-SWAP"], "inverse": ["BTC-USD-SWAP"]}
    # Dated futures are linear or inverse by their quote, like the swaps.
    assert symbols_by_market("okx", ("linear",), ["BTC-USDT-250627", "ETH-USDT-SWAP"]) == {
        "linear": ["BTC-USDT-250627", "ETH-USDT-SWAP"]
    }
    # A prefix that agrees is accepted, and then needs no --market.
    assert symbols_by_market("okx", ("spot",), ["BTC-USDT", "linear:BTC-USDT-SWAP"]) == {
        "spot": ["BTC-USDT"],
        "linear": ["BTC-USDT-SWAP"],
    }


def test_an_okx_instid_of_a_market_not_listed_is_refused_with_what_to_write() -> None:
    with pytest.raises(MarketSpecError) as caught:
        symbols_by_market("okx", ("spot",), ["BTC-USDT", "BTC-USDT-SWAP"])
    message = str(caught.value)
    assert "'BTC-USDT-SWAP' is an OKX linear instrument, and --market is spot" in message
    assert "--market linear" in message and "--market spot,linear" in message
    assert "linear:BTC-USDT-SWAP" in message


def test_an_okx_prefix_that_contradicts_the_instrument_is_refused() -> None:
    with pytest.raises(MarketSpecError, match="is an OKX linear instrument, not spot"):
        symbols_by_market("okx", ("spot", "linear"), ["spot:BTC-USDT-SWAP"])
    with pytest.raises(MarketSpecError, match="is an OKX spot instrument, not inverse"):
        symbols_by_market("okx", ("spot",), ["inverse:BTC-USDT"])


def test_an_okx_instrument_that_cannot_be_told_is_refused_as_the_adapter_would() -> None:
    with pytest.raises(UnknownSymbol, match="expected -SWAP or -YYMMDD"):
        symbols_by_market("okx", ("spot", "linear"), ["BTC-USDT-PERP"])
    with pytest.raises(UnknownSymbol, match="contract size is not known"):
        symbols_by_market("okx", ("linear",), ["PEPE-USDT-SWAP"])
    # ... unless its contract size is given.
    plan = symbols_by_market("okx", ("linear",), ["PEPE-USDT-SWAP"], {"PEPE-USDT-SWAP": 1e7})
    assert plan == {"linear": ["PEPE-USDT-SWAP"]}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["perp:BTCUSDT"], "--symbols 'perp:BTCUSDT': unknown market 'perp'"),
        ([":BTCUSDT"], "expected SYMBOL or MARKET:SYMBOL"),
        (["spot:"], "expected SYMBOL or MARKET:SYMBOL"),
        (["spot:linear:BTCUSDT"], "expected SYMBOL or MARKET:SYMBOL"),
        (["BTCUSDT", "btcusdt"], "bybit spot: symbol 'btcusdt' given twice"),
        # Plain BTCUSDT already goes to linear: naming it there again is a second subscription.
        (["BTCUSDT", "linear:BTCUSDT"], "bybit linear: symbol 'BTCUSDT' given twice"),
        ([], "no symbol given"),
    ],
)
def test_symbol_lists_that_are_malformed_or_repeat_a_symbol_are_refused(
    items: list[str], message: str
) -> None:
    with pytest.raises(MarketSpecError) as caught:
        symbols_by_market("bybit", ("spot", "linear"), items)
    assert message in str(caught.value)


# --- endpoint URLs ---------------------------------------------------------------------------


def test_one_url_serves_every_market_and_keeps_its_commas_and_equals_signs() -> None:
    urls = parse_market_urls("wss://proxy.example/ws?a=1,2&b=spot=x", "--ws-url")
    assert urls == MarketUrls(every="wss://proxy.example/ws?a=1,2&b=spot=x")
    assert urls.for_market("spot") == urls.for_market("inverse") == urls.every
    assert parse_market_urls("", "--ws-url") == MarketUrls()
    assert parse_market_urls(None, "--ws-url").for_market("spot") is None


def test_per_market_urls_name_their_market_and_others_fall_through() -> None:
    urls = parse_market_urls(
        "spot=wss://stream.binance.com:9443,linear=wss://fstream.binance.com/stream?x=1,2",
        "--ws-url",
    )
    assert urls.for_market("spot") == "wss://stream.binance.com:9443"
    assert urls.for_market("linear") == "wss://fstream.binance.com/stream?x=1,2"
    assert urls.for_market("inverse") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("spot=ws://a,spot=ws://b", "--ws-url: spot given twice"),
        ("spot=ws://a,linear=", "--ws-url 'linear=': expected MARKET=URL"),
        ("spot=", "--ws-url 'spot=': expected MARKET=URL"),
    ],
)
def test_malformed_per_market_urls_are_refused(text: str, message: str) -> None:
    with pytest.raises(MarketSpecError) as caught:
        parse_market_urls(text, "--ws-url")
    assert message in str(caught.value)


# --- the command line ------------------------------------------------------------------------

BRIDGE_VARIABLES = (
    "BRIDGE_EXCHANGE", "BRIDGE_SYMBOLS", "BRIDGE_MARKET", "BRIDGE_CONTRACT_SIZES",
    "KLINES_TOPIC", "KLINES_LINEAR_TOPIC", "KLINES_DLQ_TOPIC", "BINANCE_WS_URL",
    "BINANCE_REST_URL", "BYBIT_WS_URL", "BYBIT_REST_URL", "OKX_WS_URL", "OKX_REST_URL",
)  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No bridge variable set (a developer's shell must not change the results)."""
    for name in BRIDGE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bridge_cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bridge", *argv])


def _plan(args: argparse.Namespace) -> list[tuple[str, list[str], str, str, str]]:
    """(market, canonical symbols, topic, ws URL, REST URL) of each market the args follow."""
    items = bridge_cmd.split_symbols(args.symbols)
    markets = parse_markets(args.market)
    plan = symbols_by_market(args.exchange, markets, items)
    adapters = bridge_cmd.market_adapters(args.exchange, plan, {}, items)
    found = []
    for adapter in adapters:
        config = bridge_cmd.bridge_config(args, adapter)
        symbols = [info.symbol for info in adapter.symbols.values()]
        found.append((adapter.market, symbols, config.topic, config.ws_url, config.rest_url))
    return found


def test_spot_and_linear_get_their_symbols_topics_and_public_endpoints(
    clean_env: pytest.MonkeyPatch,
) -> None:
    args = _args(["--exchange", "binance", "--market", "spot,linear", "--symbols",
                  "BTCUSDT,linear:ETHUSDT", "--topic", "raw",
                  "--linear-topic", "perps"])  # fmt: skip
    assert _plan(args) == [
        ("spot", ["BTC-USDT"], "raw", "wss://stream.binance.com:9443", "https://api.binance.com"),
        (
            "linear",
            ["BTC-USDT-PERP", "ETH-USDT-PERP"],
            "perps",
            "wss://fstream.binance.com",
            "https://fapi.binance.com",
        ),
    ]
    # Without --linear-topic every market goes to --topic (the series keys differ).
    args = _args(["--exchange", "bybit", "--market", "spot,linear,inverse", "--symbols",
                  "spot:BTCUSDT,linear:BTCUSDT,inverse:BTCUSD", "--topic", "raw"])  # fmt: skip
    assert [(market, symbols, topic) for market, symbols, topic, *_ in _plan(args)] == [
        ("spot", ["BTC-USDT"], "raw"),
        ("linear", ["BTC-USDT-PERP"], "raw"),
        ("inverse", ["BTC-USD-PERP"], "raw"),
    ]


def test_urls_come_from_the_flag_then_the_variable_then_the_default_per_market(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("BINANCE_WS_URL", "linear=ws://env-linear,inverse=ws://env-inverse")
    clean_env.setenv("BINANCE_REST_URL", "http://env-rest")
    args = _args(["--exchange", "binance", "--market", "spot,linear,inverse", "--symbols",
                  "spot:BTCUSDT,linear:BTCUSDT,inverse:BTCUSD_PERP",
                  "--ws-url", "spot=ws://flag-spot,inverse=ws://flag-inverse"])  # fmt: skip
    assert [(market, ws, rest) for market, _, _, ws, rest in _plan(args)] == [
        ("spot", "ws://flag-spot", "http://env-rest"),
        ("linear", "ws://env-linear", "http://env-rest"),
        ("inverse", "ws://flag-inverse", "http://env-rest"),
    ]
    # A plain URL still serves the one market of a single-market bridge, as before.
    args = _args(["--exchange", "binance", "--symbols", "BTCUSDT", "--ws-url", "ws://one"])
    assert [(ws, rest) for *_, ws, rest in _plan(args)] == [("ws://one", "http://env-rest")]


def test_bridge_variables_may_name_several_markets(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BRIDGE_MARKET", "spot,linear")
    clean_env.setenv("BRIDGE_SYMBOLS", "BTCUSDT,linear:ETHUSDT")
    args = _args(["--exchange", "bybit"])
    assert [(market, symbols) for market, symbols, *_ in _plan(args)] == [
        ("spot", ["BTC-USDT"]),
        ("linear", ["BTC-USDT-PERP", "ETH-USDT-PERP"]),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--exchange", "bybit", "--market", "spot,perp", "--symbols", "BTCUSDT"],
         "--market: unknown market 'perp'"),
        (["--exchange", "bybit", "--symbols", "futures:BTCUSDT"],
         "--symbols 'futures:BTCUSDT': unknown market 'futures'"),
        # A plain symbol goes to every listed market: one that does not fit one is refused,
        # naming the market and how to follow it on one market only.
        (["--exchange", "bybit", "--market", "spot,linear", "--symbols", "BTCUSDT,ETHBTC"],
         "bybit linear: 'ETHBTC': no known quote asset at its end"),
        (["--exchange", "bybit", "--market", "spot,linear", "--symbols", "BTCUSDT,ETHBTC"],
         "ETHBTC has no market prefix, so it is followed on every market of --market; give "
         "it as MARKET:ETHBTC"),
        (["--exchange", "binance", "--market", "spot,inverse", "--symbols", "BTCUSD_PERP"],
         "binance spot: 'BTCUSD_PERP'"),
        (["--exchange", "binance", "--symbols", "BTCUSDT,linear:BTCUSD_PERP"],
         "binance linear: 'BTCUSD_PERP': _PERP names a COIN-M (inverse) contract"),
        (["--exchange", "okx", "--market", "spot,linear", "--symbols", "BTC-USDT,BTC-USD-SWAP"],
         "'BTC-USD-SWAP' is an OKX inverse instrument, and --market is spot,linear"),
        (["--exchange", "okx", "--symbols", "linear:BTC-USDT"],
         "BTC-USDT is an OKX spot instrument, not linear"),
        (["--exchange", "bybit", "--market", "spot,linear", "--symbols", "BTCUSDT",
          "--ws-url", "spot=ws://a,spot=ws://b"], "--ws-url: spot given twice"),
        (["--exchange", "bybit", "--market", "spot,linear", "--symbols", "BTCUSDT,BTCUSDT"],
         "bybit spot: symbol 'BTCUSDT' given twice"),
    ],
)  # fmt: skip
def test_the_command_refuses_what_it_would_have_to_guess(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert main(["bridge", *argv, "--bootstrap-servers", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("klineflow bridge: ")
    assert message in err


def test_a_single_market_refusal_reads_as_it_always_did(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bridge", "--exchange", "binance", "--symbols", "BTCUSDT,FOOBAR"]) == 2
    assert capsys.readouterr().err.startswith("klineflow bridge: 'FOOBAR': no known quote")


def test_help_explains_the_market_syntax_and_names_every_variable(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["bridge", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "MARKET:SYMBOL" in text and "--market spot,linear" in text
    assert "linear:ETHUSDT follows ETHUSDT on linear only" in text
    assert "spot=URL,linear=URL" in text
    for variable in ("BRIDGE_MARKET", "BRIDGE_SYMBOLS", "KLINES_TOPIC", "KLINES_LINEAR_TOPIC",
                     "BYBIT_WS_URL", "BINANCE_REST_URL"):  # fmt: skip
        assert f"env {variable}" in text or f"{variable} /" in text or f"/ {variable}" in text
