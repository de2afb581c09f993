"""Markets in a bar's identity (issue 13): ``market``, ``base_multiplier``, ``provenance``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.hostile_corpus import HOSTILE_SETTINGS, WIRE_RECORD, to_json_text
from udfs.record import (
    OPTIONAL_FIELDS,
    InvalidKline,
    Kline,
    decode_kline,
    encode_kline,
    kline_from_dict,
    market_of_symbol,
    validate_kline,
)

# A record written before issue 13: none of the three new fields.
OLD_RECORD: dict[str, Any] = {k: v for k, v in WIRE_RECORD.items() if k not in OPTIONAL_FIELDS}
# The real BTCUSD_PERP row of issue 13, replayed as it was: 26 contracts of 100 USD as
# "volume" and 0.0278 BTC as "quote_volume"; its implied price is 0.001, not 93,400.
COIN_MARGINED_AS_CONTRACTS: dict[str, Any] = {
    **WIRE_RECORD,
    "symbol": "BTC-USD-PERP",
    "raw_symbol": "BTCUSD_PERP",
    "market": "perp",
    "open": 93_400.0,
    "high": 93_420.1,
    "low": 93_390.0,
    "close": 93_410.0,
    "volume": 26.0,
    "quote_volume": 0.02783577,
    "taker_buy_volume": 12.0,
    "taker_buy_quote_volume": 0.01284741,
}


def test_a_record_without_the_new_fields_is_valid_with_the_defaults() -> None:
    kline = decode_kline(orjson.dumps(OLD_RECORD))
    assert (kline.market, kline.base_multiplier, kline.provenance) == ("spot", 1, "unknown")
    perp = decode_kline(orjson.dumps({**OLD_RECORD, "symbol": "BTC-USDT-PERP"}))
    assert perp.market == "perp"
    future = decode_kline(orjson.dumps({**OLD_RECORD, "symbol": "BTC-USDT-250627"}))
    assert future.market == "future"


def test_new_fields_survive_the_wire_and_pickling() -> None:
    import pickle

    record = {
        **WIRE_RECORD,
        "symbol": "1000PEPE-USDT-PERP",
        "raw_symbol": "1000PEPEUSDT",
        "market": "perp",
        "base_multiplier": 1000,
        "provenance": "rest",
    }
    kline = decode_kline(orjson.dumps(record))
    assert kline.to_dict() == record
    assert decode_kline(encode_kline(kline)) == kline
    assert pickle.loads(pickle.dumps(kline)) == kline


def test_spot_and_perp_of_one_pair_have_different_series_keys() -> None:
    spot = decode_kline(orjson.dumps(WIRE_RECORD))
    perp = decode_kline(orjson.dumps({**WIRE_RECORD, "symbol": "BTC-USDT-PERP", "market": "perp"}))
    assert spot.series_key == "binance:BTC-USDT:1m"
    assert perp.series_key == "binance:BTC-USDT-PERP:1m"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"market": "swap"}, "market: str 'swap' is not one of spot, perp, future"),
        ({"market": "perp"}, "market: perp disagrees with symbol BTC-USDT (a spot symbol)"),
        ({"market": None}, "market: null is not one of"),
        ({"base_multiplier": 0}, "base_multiplier: 0 is not a power of ten"),
        ({"base_multiplier": 999}, "base_multiplier: 999 is not a power of ten"),
        ({"base_multiplier": 10**10}, "base_multiplier: 10000000000 is not a power of ten"),
        ({"base_multiplier": True}, "base_multiplier: expected an integer, got bool"),
        ({"base_multiplier": 1000.0}, "base_multiplier: expected an integer, got float"),
        ({"provenance": "kafka"}, "provenance: str 'kafka' is not one of ws, rest, archive"),
        ({"provenance": ["ws"]}, "provenance: list"),
        ({"symbol": "BTC-USDT-SWAP"}, "symbol: 'BTC-USDT-SWAP' is not canonical"),
        ({"symbol": "BTC-USDT-251327"}, "is not canonical"),  # month 13
        ({"symbol": "BTC-USDT-PERP\n"}, "is not canonical"),
        ({"unknown_a": 1, "unknown_b": 2, "unknown_c": 3}, "unknown field(s): unknown_a"),
    ],
)
def test_bad_new_fields_are_rejected_with_a_reason(changes: dict[str, Any], reason: str) -> None:
    record = {**OLD_RECORD, **changes} if "unknown_a" in changes else {**WIRE_RECORD, **changes}
    with pytest.raises(InvalidKline) as caught:
        decode_kline(to_json_text(record))
    assert reason in caught.value.reason


def test_contracts_as_volume_are_rejected_by_the_implied_price() -> None:
    with pytest.raises(InvalidKline) as caught:
        decode_kline(orjson.dumps(COIN_MARGINED_AS_CONTRACTS))
    assert "quote_volume / volume = 0.00107" in caught.value.reason
    assert "far outside [low, high] = [93390, 93420.1]" in caught.value.reason
    # The same row in base units (BTC volume, USD quote volume) is accepted.
    fixed = {
        **COIN_MARGINED_AS_CONTRACTS,
        "volume": 0.02783577,
        "quote_volume": 2600.0,
        "taker_buy_volume": 0.01284741,
        "taker_buy_quote_volume": 1200.0,
    }
    assert decode_kline(orjson.dumps(fixed)).volume == 0.02783577


def test_the_implied_price_check_skips_zero_volume_and_missing_quote_volume() -> None:
    zero = {**WIRE_RECORD, "volume": 0.0, "quote_volume": 0.0, "taker_buy_volume": 0.0,
            "taker_buy_quote_volume": 0.0}  # fmt: skip
    assert decode_kline(orjson.dumps(zero)).volume == 0.0
    no_quote = {**WIRE_RECORD, "quote_volume": None, "taker_buy_quote_volume": None}
    assert decode_kline(orjson.dumps(no_quote)).quote_volume is None


def test_a_kline_built_in_code_with_a_perp_symbol_must_say_its_market() -> None:
    spot_default = Kline(**{**kline_from_dict(WIRE_RECORD).to_dict(), "symbol": "BTC-USDT-PERP",
                            "market": "spot"})  # fmt: skip
    with pytest.raises(InvalidKline, match="disagrees with symbol"):
        validate_kline(spot_default)


@pytest.mark.parametrize(
    ("symbol", "market"),
    [("BTC-USDT", "spot"), ("BTC-USDT-PERP", "perp"), ("BTC-USD-PERP", "perp"),
     ("BTC-USDT-250627", "future"), ("1000PEPE-USDT-PERP", "perp")],
)  # fmt: skip
def test_market_of_symbol(symbol: str, market: str) -> None:
    assert market_of_symbol(symbol) == market


@HOSTILE_SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(OPTIONAL_FIELDS),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
            st.sampled_from(["spot", "perp", "future", "ws", "rest", "archive", "unknown"]),
            st.lists(st.integers(), max_size=2),
        ),
    )
)  # fmt: skip
def test_any_value_of_the_new_fields_is_accepted_or_rejected_with_a_reason(
    values: dict[str, Any],
) -> None:
    try:
        kline = decode_kline(to_json_text({**OLD_RECORD, **values}))
    except InvalidKline as exc:
        assert exc.reason.split(":")[0] in OPTIONAL_FIELDS, exc.reason
        return
    assert kline.market == "spot"
    assert kline.base_multiplier in {10**p for p in range(10)}
    assert kline.provenance in ("ws", "rest", "archive", "unknown", "mixed")


def test_string_fields_are_exactly_the_fields_that_hold_strings() -> None:
    from udfs.record import FIELDS, STRING_FIELDS

    kline = kline_from_dict(WIRE_RECORD)
    assert {name for name in FIELDS if isinstance(getattr(kline, name), str)} == STRING_FIELDS
