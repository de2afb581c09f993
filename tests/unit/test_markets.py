"""Markets in the identity (issue 13): symbols, contract sizes and units per venue."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.exchanges import BinanceSpot, Bybit, Okx, create_adapter
from connectors.symbols import MARGINS, UnknownSymbol, parse_symbol
from tests.unit.hostile_corpus import (
    BINANCE_COINM_PUSH,
    BYBIT_INVERSE_PUSH,
    BYBIT_PUSH,
    HOSTILE_SETTINGS,
    INGEST_MS,
    OKX_LEGACY_PUSH,
    OKX_SWAP_PUSH,
    OPEN_MS,
)


@pytest.mark.parametrize(
    ("exchange", "market", "raw", "symbol", "record_market", "multiplier"),
    [
        ("binance", "spot", "BTCUSDT", "BTC-USDT", "spot", 1),
        ("binance", "linear", "BTCUSDT", "BTC-USDT-PERP", "perp", 1),
        ("binance", "linear", "BTCUSDT_250627", "BTC-USDT-250627", "future", 1),
        ("binance", "linear", "1000PEPEUSDT", "1000PEPE-USDT-PERP", "perp", 1000),
        ("binance", "linear", "1000SHIBUSDT", "1000SHIB-USDT-PERP", "perp", 1000),
        ("binance", "linear", "1MBABYDOGEUSDT", "1MBABYDOGE-USDT-PERP", "perp", 1_000_000),
        ("binance", "inverse", "BTCUSD_PERP", "BTC-USD-PERP", "perp", 1),
        ("binance", "inverse", "ETHUSD_250627", "ETH-USD-250627", "future", 1),
        ("okx", "spot", "BTC-USDT", "BTC-USDT", "spot", 1),
        ("okx", "linear", "BTC-USDT-SWAP", "BTC-USDT-PERP", "perp", 1),
        ("okx", "inverse", "BTC-USD-SWAP", "BTC-USD-PERP", "perp", 1),
        ("okx", "linear", "BTC-USDT-250627", "BTC-USDT-250627", "future", 1),
        ("bybit", "spot", "BTCUSDT", "BTC-USDT", "spot", 1),
        ("bybit", "spot", "BTCUSDC", "BTC-USDC", "spot", 1),
        ("bybit", "linear", "BTCUSDT", "BTC-USDT-PERP", "perp", 1),
        ("bybit", "linear", "BTCPERP", "BTC-USDC-PERP", "perp", 1),
        ("bybit", "linear", "BTCUSDT-27JUN25", "BTC-USDT-250627", "future", 1),
        ("bybit", "linear", "1000PEPEUSDT", "1000PEPE-USDT-PERP", "perp", 1000),
        ("bybit", "inverse", "BTCUSD", "BTC-USD-PERP", "perp", 1),
    ],
)
def test_instrument_names(
    exchange: str, market: str, raw: str, symbol: str, record_market: str, multiplier: int
) -> None:
    info = parse_symbol(exchange, raw, market)
    assert (info.symbol, info.market, info.base_multiplier) == (symbol, record_market, multiplier)
    assert info.raw_symbol == raw


def test_the_collisions_of_issue_13_are_gone() -> None:
    # Bybit spot and linear BTCUSDT; Bybit BTCPERP vs spot BTCUSDC; OKX SWAP vs spot.
    assert (
        parse_symbol("bybit", "BTCUSDT", "spot").symbol
        != parse_symbol("bybit", "BTCUSDT", "linear").symbol
    )
    assert (
        parse_symbol("bybit", "BTCPERP", "linear").symbol
        != parse_symbol("bybit", "BTCUSDC", "spot").symbol
    )
    assert (
        parse_symbol("okx", "BTC-USDT-SWAP", "linear").symbol
        != parse_symbol("okx", "BTC-USDT", "spot").symbol
    )


@pytest.mark.parametrize(
    ("exchange", "market", "raw", "message"),
    [
        ("binance", "linear", "BTCUSD_PERP", "names a COIN-M"),
        ("binance", "linear", "BTCUSD", "no known quote asset"),  # USD is no linear quote
        ("binance", "inverse", "BTCUSDT_PERP", r"no known quote asset at its end \(known: USD\)"),
        ("binance", "inverse", "BTCUSD", "ends in _PERP or _YYMMDD"),
        ("binance", "linear", "BTCUSDT_PERP", "names a COIN-M"),
        ("binance", "linear", "BTCUSDT_251399", "expected nothing or _YYMMDD"),
        ("binance", "spot", "FOOBAR", "no known quote asset"),
        ("okx", "linear", "PEPE-USDT-SWAP", "contract size is not known"),
        ("okx", "linear", "BTC-EUR-SWAP", "EUR is not a known margin asset"),
        ("okx", "linear", "BTC-USDT-FUTURES", "expected -SWAP or -YYMMDD"),
        ("bybit", "inverse", "BTCUSDH25", "inverse dated futures"),
        ("bybit", "linear", "BTCXYZ", "no known quote asset"),
        ("bybit", "margin", "BTCUSDT", "market 'margin'"),
    ],
)
def test_symbols_that_cannot_be_named_are_refused(
    exchange: str, market: str, raw: str, message: str
) -> None:
    with pytest.raises(UnknownSymbol, match=message):
        parse_symbol(exchange, raw, market)


def test_an_unknown_contract_size_is_refused_at_start_up_unless_given() -> None:
    with pytest.raises(UnknownSymbol, match="--contract-size PEPE-USDT-SWAP="):
        create_adapter("okx", "linear", ["BTC-USDT-SWAP", "PEPE-USDT-SWAP"])
    adapter = create_adapter(
        "okx", "linear", ["PEPE-USDT-SWAP"], contract_sizes={"PEPE-USDT-SWAP": 10_000_000.0}
    )
    assert adapter.symbols["PEPE-USDT-SWAP"].contract_size == 10_000_000.0
    with pytest.raises(UnknownSymbol, match="not positive"):
        create_adapter("okx", "linear", ["BTC-USDT-SWAP"], {"BTC-USDT-SWAP": 0.0})


def test_binance_coin_margined_push_is_converted_to_base_units() -> None:
    adapter = BinanceSpot("inverse", ["BTCUSD_PERP"])
    (kline,) = adapter.parse_frame(orjson.dumps(BINANCE_COINM_PUSH).decode(), INGEST_MS).klines
    assert (kline.symbol, kline.market, kline.raw_symbol) == ("BTC-USD-PERP", "perp", "BTCUSD_PERP")
    assert kline.volume == 1.92550381  # q: BTC, not 1300 contracts
    assert kline.quote_volume == 130_000.0  # 1300 contracts x 100 USD
    assert kline.taker_buy_volume == 1.03680205 and kline.taker_buy_quote_volume == 70_000.0
    assert kline.low <= kline.quote_volume / kline.volume <= kline.high
    assert adapter.default_ws_url() == "wss://dstream.binance.com"
    assert adapter.rest_request(adapter.symbols["BTCUSD_PERP"], 0, 60_000).path == (
        "/dapi/v1/klines"
    )


def test_binance_coin_margined_alt_contracts_are_10_usd() -> None:
    info = parse_symbol("binance", "ETHUSD_PERP", "inverse")
    assert info.contract_size == 10.0
    assert parse_symbol("binance", "BTCUSD_PERP", "inverse").contract_size == 100.0


def test_binance_usdt_margined_endpoints() -> None:
    adapter = BinanceSpot("linear", ["BTCUSDT"])
    assert adapter.default_ws_url() == "wss://fstream.binance.com"
    assert adapter.default_rest_base() == "https://fapi.binance.com"
    assert adapter.rest_request(adapter.symbols["BTCUSDT"], 0, 60_000).path == "/fapi/v1/klines"


def test_bybit_spot_and_linear_of_one_symbol_are_two_series() -> None:
    text = orjson.dumps(BYBIT_PUSH).decode()
    (spot,) = Bybit("spot", ["BTCUSDT"]).parse_frame(text, INGEST_MS).klines
    (perp,) = Bybit("linear", ["BTCUSDT"]).parse_frame(text, INGEST_MS).klines
    assert spot.series_key == "bybit:BTC-USDT:1m"
    assert perp.series_key == "bybit:BTC-USDT-PERP:1m"
    assert spot.raw_symbol == perp.raw_symbol == "BTCUSDT"
    assert (spot.market, perp.market) == ("spot", "perp")
    assert Bybit("inverse", ["BTCUSD"]).ws_endpoint("wss://x").endswith("/v5/public/inverse")


def test_bybit_inverse_volume_is_the_turnover_in_coin() -> None:
    adapter = Bybit("inverse", ["BTCUSD"])
    (kline,) = adapter.parse_frame(orjson.dumps(BYBIT_INVERSE_PUSH).decode(), INGEST_MS).klines
    assert kline.symbol == "BTC-USD-PERP"
    assert kline.volume == 1.92550381 and kline.quote_volume == 130_000.0


def test_okx_swap_volume_is_the_base_volume_contracts_times_ct_val() -> None:
    adapter = Okx("linear", ["BTC-USDT-SWAP"])
    (kline,) = adapter.parse_frame(orjson.dumps(OKX_SWAP_PUSH).decode(), INGEST_MS).klines
    assert kline.symbol == "BTC-USDT-PERP" and kline.market == "perp"
    assert kline.volume == pytest.approx(18.86934)
    assert kline.quote_volume == 1274220.8


def test_okx_inverse_swap_takes_vol_ccy_as_base_and_contracts_as_usd() -> None:
    adapter = Okx("inverse", ["BTC-USD-SWAP"])
    frame = {
        "arg": {"channel": "candle1m", "instId": "BTC-USD-SWAP"},
        "data": [[str(OPEN_MS), "67512.1", "67544", "67508", "67530", "1300", "1.92550381",
                  "130000", "1"]],
    }  # fmt: skip
    (kline,) = adapter.parse_frame(orjson.dumps(frame).decode(), INGEST_MS).klines
    assert kline.symbol == "BTC-USD-PERP"
    assert kline.volume == 1.92550381 and kline.quote_volume == 130_000.0


def test_okx_legacy_seven_field_rows_are_read_and_closed_only_when_past() -> None:
    adapter = Okx("spot", ["BTC-USDT"])
    text = orjson.dumps(OKX_LEGACY_PUSH).decode()
    (past,) = adapter.parse_frame(text, INGEST_MS).klines  # received after the minute ended
    assert past.is_closed is True
    assert past.volume == 18.86934 and past.quote_volume == 1274220.8  # spot volCcy is quote
    (during,) = adapter.parse_frame(text, OPEN_MS + 30_000).klines
    assert during.is_closed is False
    swap = Okx("linear", ["BTC-USDT-SWAP"])
    legacy_swap = {
        "arg": {"channel": "candle1m", "instId": "BTC-USDT-SWAP"},
        "data": [[str(OPEN_MS), "67512.1", "67544", "67508", "67530", "1886.934", "18.86934"]],
    }
    (kline,) = swap.parse_frame(orjson.dumps(legacy_swap).decode(), INGEST_MS).klines
    assert kline.volume == pytest.approx(18.86934) and kline.quote_volume is None


@HOSTILE_SETTINGS
@given(st.text(max_size=40), st.sampled_from(["binance", "okx", "bybit"]), st.sampled_from(MARGINS))
def test_symbol_parsers_raise_only_unknown_symbol(raw: str, exchange: str, market: str) -> None:
    try:
        info = parse_symbol(exchange, raw, market)
    except UnknownSymbol as exc:
        assert str(exc)
        return
    assert info.symbol.isascii() and info.symbol == info.symbol.upper()
    assert info.contract_size > 0 and info.base_multiplier >= 1
