"""The wire record (udfs/record.py) and dead letters (udfs/dead_letter.py)."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import orjson
import pytest

from udfs.dead_letter import DeadLetter, decode_dead_letter, encode_dead_letter
from udfs.record import (
    FIELDS,
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    InvalidKline,
    Kline,
    VersionedBar,
    align_open_time,
    decode_kline,
    encode_kline,
    kline_from_dict,
    parse_timestamp_ms,
    series_key,
    timeframe_ms,
    validate_kline,
)

OPEN_MS = 1_741_910_400_000  # 2025-03-14T00:00:00Z


def good_bar(**changes: Any) -> Kline:
    bar = Kline(
        exchange="binance",
        symbol="BTC-USDT",
        raw_symbol="BTCUSDT",
        timeframe="1m",
        open_time=OPEN_MS,
        close_time=OPEN_MS + 59_999,
        open=83_000.0,
        high=83_016.15,
        low=82_920.97,
        close=82_928.63,
        volume=15.78149,
        quote_volume=1_309_082.0157503,
        trades=2357,
        taker_buy_volume=2.48164,
        taker_buy_quote_volume=205_853.20483469,
        is_closed=True,
        event_time=OPEN_MS + 60_000,
        ingest_time=OPEN_MS + 60_012,
    )
    return replace(bar, **changes)


def good_dict(**changes: Any) -> dict[str, Any]:
    data = good_bar().to_dict()
    data.update(changes)
    return data


def reason_of(data: Any) -> str:
    with pytest.raises(InvalidKline) as caught:
        kline_from_dict(data)
    return caught.value.reason


# ----------------------------------------------------------------------------- codec


def test_round_trip_keeps_every_field() -> None:
    bar = good_bar()
    assert decode_kline(encode_kline(bar)) == bar


def test_round_trip_with_nulls_and_open_bar() -> None:
    bar = good_bar(
        exchange="okx",
        raw_symbol="BTC-USDT",
        quote_volume=None,
        trades=None,
        taker_buy_volume=None,
        taker_buy_quote_volume=None,
        is_closed=False,
    )
    assert decode_kline(encode_kline(bar)) == bar


def test_pickle_round_trip_keeps_every_field() -> None:
    """Flink operators exchange bars pickled; Kline pickles by its FIELDS order."""
    import pickle
    from dataclasses import fields

    assert tuple(field.name for field in fields(Kline)) == FIELDS
    kline = good_bar(quote_volume=None, is_closed=False)
    bar = VersionedBar(kline=kline, version=7, bars_present=3, bars_expected=5)
    assert pickle.loads(pickle.dumps(bar)) == bar


def test_encoding_is_contract_field_order() -> None:
    assert list(orjson.loads(encode_kline(good_bar()))) == list(FIELDS)


def test_decode_accepts_str_and_bytes() -> None:
    raw = encode_kline(good_bar())
    assert decode_kline(raw.decode()) == decode_kline(raw)


def test_series_key() -> None:
    assert good_bar().series_key == "binance:BTC-USDT:1m"
    assert series_key("okx", "ETH-USDT", "5m") == "okx:ETH-USDT:5m"


def test_integer_prices_become_floats() -> None:
    bar = kline_from_dict(
        good_dict(open=83000, high=83100, low=82900, close=83050, volume=20, quote_volume=1_660_000)
    )
    assert isinstance(bar.open, float)
    assert isinstance(bar.volume, float)


def test_validate_kline_returns_an_equal_bar() -> None:
    assert validate_kline(good_bar()) == good_bar()
    with pytest.raises(InvalidKline, match="volume"):
        validate_kline(good_bar(volume=-1.0))


def test_values_fingerprint_ignores_times() -> None:
    a = good_bar()
    b = good_bar(event_time=a.event_time + 5, ingest_time=a.ingest_time + 9)
    assert a.values_fingerprint() == b.values_fingerprint()
    assert a.values_fingerprint() != good_bar(close=82_930.0).values_fingerprint()


def test_decode_rejects_non_json() -> None:
    with pytest.raises(InvalidKline, match=r"^not JSON"):
        decode_kline(b"{nope")
    with pytest.raises(InvalidKline, match=r"^not JSON"):
        decode_kline(b"\xff\xfe")


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exchange": "kraken"}, "exchange: unknown exchange 'kraken'"),
        ({"exchange": ""}, "exchange: expected a non-empty string"),
        ({"exchange": 7}, "exchange: expected a non-empty string, got int 7"),
        ({"symbol": "btc-usdt"}, "symbol: 'btc-usdt' is not canonical upper case BASE-QUOTE"),
        ({"symbol": "BTCUSDT"}, "symbol: 'BTCUSDT' is not canonical"),
        ({"raw_symbol": None}, "raw_symbol: expected a non-empty string, got null"),
        ({"timeframe": "3m"}, "unknown timeframe '3m'"),
        ({"open_time": OPEN_MS + 1}, "open_time: 1741910400001 is not aligned to 1m"),
        ({"close_time": OPEN_MS + 60_000}, "close_time: 1741910460000 != open_time + 1m - 1"),
        ({"open_time": "yesterday"}, "open_time: 'yesterday' is neither a number nor an ISO"),
        ({"event_time": None}, "event_time: expected a timestamp, got NoneType"),
        ({"ingest_time": True}, "ingest_time: expected a timestamp, got a boolean"),
        ({"open": "83000"}, "open: expected a number, got str '83000'"),
        ({"high": None}, "high: expected a number, got null"),
        ({"close": True}, "close: expected a number, got bool True"),
        ({"low": float("nan")}, "low: nan is not a finite number"),
        ({"open": float("inf"), "high": float("inf")}, "open: inf is not a finite number"),
        ({"low": -1.0, "open": 1.0, "close": 1.0, "high": 2.0}, "low: -1.0 is negative"),
        ({"high": 82_000.0}, "high: 82000.0 is below max(open, close) = 83000.0"),
        ({"low": 83_000.0}, "low: 83000.0 is above min(open, close) = 82928.63"),
        ({"volume": -0.5}, "volume: -0.5 is negative"),
        ({"quote_volume": -1.0}, "quote_volume: -1.0 is negative"),
        ({"quote_volume": "x"}, "quote_volume: expected a number, got str 'x'"),
        ({"taker_buy_volume": 16.0}, "taker_buy_volume: 16.0 exceeds volume 15.78149"),
        ({"taker_buy_quote_volume": 2e6}, "taker_buy_quote_volume: 2000000.0 exceeds quote_volume"),
        ({"trades": 1.5}, "trades: expected an integer or null, got float 1.5"),
        ({"trades": True}, "trades: expected an integer or null, got bool True"),
        ({"trades": -1}, "trades: -1 is negative"),
        ({"is_closed": "yes"}, "is_closed: expected true or false, got str 'yes'"),
        ({"is_closed": 1}, "is_closed: expected true or false, got int 1"),
        ({"extra": 1}, "unknown field(s): extra"),
    ],
)
def test_each_rule_rejects_with_its_reason(changes: dict[str, Any], reason: str) -> None:
    assert reason_of(good_dict(**changes)).startswith(reason)


def test_missing_fields_are_listed() -> None:
    data = good_dict()
    del data["volume"]
    del data["trades"]
    assert reason_of(data) == "missing field(s): volume, trades"


def test_not_an_object() -> None:
    assert reason_of([1, 2]) == "expected a JSON object, got list"
    with pytest.raises(InvalidKline, match="expected a JSON object, got int"):
        decode_kline(b"42")


def test_taker_buy_volume_equal_to_volume_within_rounding_is_fine() -> None:
    bar = kline_from_dict(good_dict(taker_buy_volume=15.78149 * (1 + 1e-12)))
    assert bar.taker_buy_volume == pytest.approx(15.78149)


def test_doji_and_zero_volume_bar_is_valid() -> None:
    flat = kline_from_dict(
        good_dict(open=1.0, high=1.0, low=1.0, close=1.0, volume=0.0, quote_volume=0.0,
                  trades=0, taker_buy_volume=0.0, taker_buy_quote_volume=0.0)
    )  # fmt: skip
    assert flat.volume == 0.0


def test_higher_timeframes_use_their_length() -> None:
    hour = OPEN_MS + 3_600_000
    bar = kline_from_dict(good_dict(timeframe="1h", open_time=hour, close_time=hour + 3_599_999))
    assert bar.timeframe == "1h"
    reason = reason_of(good_dict(timeframe="1h", open_time=hour + 60_000))
    assert reason.startswith("open_time: ") and "is not aligned to 1h" in reason


def test_timestamps_are_normalised_in_records() -> None:
    bar = kline_from_dict(
        good_dict(
            open_time=OPEN_MS * 1000,  # µs
            close_time=str(OPEN_MS + 59_999),  # ms as text
            event_time="2025-03-14T00:01:00Z",  # ISO
            ingest_time=(OPEN_MS + 60_012) / 1000,  # s as float
        )
    )
    assert (bar.open_time, bar.close_time) == (OPEN_MS, OPEN_MS + 59_999)
    assert (bar.event_time, bar.ingest_time) == (OPEN_MS + 60_000, OPEN_MS + 60_012)


def test_timeframe_helpers() -> None:
    assert timeframe_ms("4h") == 14_400_000
    with pytest.raises(InvalidKline, match="unknown timeframe '2h'"):
        timeframe_ms("2h")
    assert align_open_time(OPEN_MS + 61_234, "1m") == OPEN_MS + 60_000
    assert align_open_time(OPEN_MS + 61_234, "1d") == OPEN_MS


# ----------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_741_910_400, OPEN_MS),  # seconds
        (1_741_910_400.5, OPEN_MS + 500),  # fractional seconds
        (OPEN_MS, OPEN_MS),  # milliseconds
        (float(OPEN_MS), OPEN_MS),
        (1_741_910_400_123_456, OPEN_MS + 123),  # microseconds, truncated to the ms
        (1_741_910_400_999_999, OPEN_MS + 999),
        ("1741910400", OPEN_MS),
        ("1741910400000", OPEN_MS),
        (" 1741910400000000 ", OPEN_MS),
        ("1741910400.25", OPEN_MS + 250),
        ("2025-03-14T00:00:00Z", OPEN_MS),
        ("2025-03-14T00:00:00", OPEN_MS),  # no offset: UTC
        ("2025-03-14 01:00:00+01:00", OPEN_MS),
        ("2025-03-14T00:00:00.123456+00:00", OPEN_MS + 123),
        ("2025-03-14", OPEN_MS),
    ],
)
def test_parse_timestamp_units(value: Any, expected: int) -> None:
    assert parse_timestamp_ms(value) == expected


def test_parse_timestamp_range_edges() -> None:
    assert parse_timestamp_ms(MIN_EPOCH_MS) == MIN_EPOCH_MS
    assert parse_timestamp_ms(MAX_EPOCH_MS - 1) == MAX_EPOCH_MS - 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "ts: expected a timestamp, got a boolean"),
        (None, "ts: expected a timestamp, got NoneType"),
        ([OPEN_MS], "ts: expected a timestamp, got list"),
        ("", "ts: empty timestamp"),
        ("   ", "ts: empty timestamp"),
        ("soon", "ts: 'soon' is neither a number nor an ISO-8601 time"),
        ("12:00", "ts: '12:00' is neither a number nor an ISO-8601 time"),
        (float("nan"), "ts: timestamp is not finite"),
        (float("inf"), "ts: timestamp is not finite"),
        (12_345, "ts: 12345 is not a timestamp in seconds, milliseconds or microseconds"),
        (-OPEN_MS, "ts: -1741910400000 is not a timestamp"),
        (10**20, "ts: 100000000000000000000 is not a timestamp"),
        ("1999-12-31T23:59:59Z", "ts: '1999-12-31T23:59:59Z' is outside 2009..2100"),
        ("2150-01-01", "ts: '2150-01-01' is outside 2009..2100"),
    ],
)
def test_parse_timestamp_rejects(value: Any, reason: str) -> None:
    with pytest.raises(InvalidKline) as caught:
        parse_timestamp_ms(value, "ts")
    assert caught.value.reason.startswith(reason)
    assert str(caught.value) == caught.value.reason


# ----------------------------------------------------------------------------- dead letters


def test_dead_letter_round_trip_text() -> None:
    letter = DeadLetter(
        reason="volume: -1.0 is negative",
        stage="replay",
        original=b'{"volume":-1.0}',
        key="binance:BTC-USDT:1m",
        rejected_at=OPEN_MS,
    )
    raw = encode_dead_letter(letter)
    envelope = orjson.loads(raw)
    assert envelope == {
        "reason": "volume: -1.0 is negative",
        "stage": "replay",
        "key": "binance:BTC-USDT:1m",
        "rejected_at": OPEN_MS,
        "original": '{"volume":-1.0}',
    }
    assert decode_dead_letter(raw) == letter


def test_dead_letter_keeps_binary_originals_as_base64() -> None:
    original = b"\xff\xfe\x00 not utf-8"
    letter = DeadLetter(reason="not JSON", stage="validate", original=original, rejected_at=1)
    envelope = orjson.loads(encode_dead_letter(letter))
    assert "original" not in envelope
    assert base64.b64decode(envelope["original_b64"]) == original
    assert envelope["key"] is None
    assert decode_dead_letter(encode_dead_letter(letter)).original == original


def test_dead_letter_stamps_rejection_time() -> None:
    envelope = DeadLetter(reason="r", stage="replay", original=b"x").to_dict()
    assert envelope["rejected_at"] >= OPEN_MS
