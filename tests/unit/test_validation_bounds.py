"""The documented validation bounds, dead letters that always fit, and secrets kept out of reprs."""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.archives import Rejection, iter_source, plan_sources
from connectors.bridge import BridgeConfig
from connectors.redaction import redact_url, redacted_repr
from jobs.config import JobSettings, SinkConfig
from jobs.signals import SignalConfig
from tests.unit.hostile_corpus import HOSTILE_SETTINGS, INGEST_MS, OPEN_MS, WIRE_RECORD
from udfs.dead_letter import (
    MAX_DEAD_LETTER_BYTES,
    DeadLetter,
    decode_dead_letter,
    encode_dead_letter,
)
from udfs.record import (
    MAX_AHEAD_MS,
    MAX_PRICE,
    MAX_SYMBOL_CHARS,
    MAX_TRADES,
    MAX_VOLUME,
    InvalidKline,
    decode_kline,
    kline_from_dict,
)

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"


def record(**changes: Any) -> dict[str, Any]:
    return {**WIRE_RECORD, **changes}


# --- ceilings ---------------------------------------------------------------------------


def test_no_roll_up_sum_can_overflow_with_the_ceilings() -> None:
    bars_per_day = 1440
    assert bars_per_day * MAX_TRADES < 2**63 - 1  # ClickHouse UInt64, JSON/Python int64
    assert 2048 * MAX_TRADES <= 2**63
    assert MAX_TRADES <= 2**53  # exact even where JSON numbers are read as doubles
    assert math.isfinite(bars_per_day * MAX_VOLUME)
    assert math.isfinite(bars_per_day * MAX_PRICE * MAX_VOLUME)  # a VWAP numerator


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"trades": MAX_TRADES + 1}, "trades: 4503599627370497 is above the ceiling 2**52"),
        ({"trades": 2**63}, "trades: 9223372036854775808 is above the ceiling"),
        ({"trades": 2**64 - 1}, "is above the ceiling"),
        ({"trades": -1}, "trades: -1 is negative"),
        ({"volume": 1.01e24}, "volume: 1.01e+24 is above the ceiling 1e+24"),
        ({"quote_volume": 2e24}, "quote_volume: 2e+24 is above the ceiling"),
        ({"taker_buy_volume": 1e300}, "taker_buy_volume: 1e+300 is above the ceiling"),
        ({"high": 2e15, "close": 2e15}, "high: 2000000000000000.0 is above the ceiling 1e+15"),
        ({"volume": 10**400}, "volume: <integer of about 400 digits> is too large for a float"),
        ({"symbol": "BTC-USDT\n"}, "symbol: 'BTC-USDT\\n' is not canonical"),
        ({"symbol": "btc-usdt"}, "is not canonical"),
        ({"symbol": "A" * 21 + "-USDT"}, "is not canonical"),
        ({"symbol": "A" * 200 + "-USDT"}, f"at most {MAX_SYMBOL_CHARS}"),
        ({"raw_symbol": "BTCUSDT\n"}, "raw_symbol: 'BTCUSDT\\n' is not an exchange symbol"),
        ({"raw_symbol": "B" * 65}, "at most 64"),
        ({"raw_symbol": "ＢＴＣ"}, "is not an exchange symbol"),
    ],
)
def test_bounds_reject_with_their_reason(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidKline) as caught:
        kline_from_dict(record(**changes))
    assert reason in caught.value.reason


def test_values_at_the_ceilings_are_valid() -> None:
    kline = kline_from_dict(
        record(
            trades=MAX_TRADES,
            volume=MAX_VOLUME,
            quote_volume=MAX_VOLUME,
            taker_buy_volume=MAX_VOLUME,
            high=MAX_PRICE,
            # quote_volume / volume = 1 must lie in [low, high] (the implied-price check).
            open=1.0,
            low=1.0,
            close=1.0,
            symbol="A" * 20 + "-" + "B" * 20 + "-PERP",
            market="perp",
            raw_symbol="1000PEPE-USDT-SWAP_x.y/z",
        )
    )
    assert kline.trades == MAX_TRADES and kline.high == MAX_PRICE


# --- how far ahead a bar may be ---------------------------------------------------------


def at(open_time: int, *, ingest_delay: int = 60_010, event_delay: int = 60_000) -> dict[str, Any]:
    return record(
        open_time=open_time,
        close_time=open_time + 59_999,
        event_time=open_time + event_delay,
        ingest_time=open_time + ingest_delay,
    )


def test_open_time_and_event_time_at_most_the_margin_ahead_of_ingest_time() -> None:
    clock = lambda: INGEST_MS  # noqa: E731
    margin_minutes = MAX_AHEAD_MS // 60_000
    ok = kline_from_dict(at(OPEN_MS, ingest_delay=-MAX_AHEAD_MS, event_delay=0), clock=clock)
    assert ok.open_time - ok.ingest_time == MAX_AHEAD_MS
    with pytest.raises(InvalidKline, match=rf"open_time: .* more than {margin_minutes} min ahead"):
        kline_from_dict(
            at(OPEN_MS, ingest_delay=-MAX_AHEAD_MS - 60_000, event_delay=0), clock=clock
        )
    with pytest.raises(InvalidKline, match=r"event_time: .* ahead of ingest_time"):
        kline_from_dict(at(OPEN_MS, event_delay=60_010 + MAX_AHEAD_MS + 1), clock=clock)


def test_ingest_time_at_most_the_margin_ahead_of_the_clock() -> None:
    kline_from_dict(at(OPEN_MS), clock=lambda: OPEN_MS + 60_010 - MAX_AHEAD_MS)
    with pytest.raises(InvalidKline, match=r"ingest_time: .* ahead of the clock"):
        kline_from_dict(at(OPEN_MS), clock=lambda: OPEN_MS + 60_009 - MAX_AHEAD_MS)


def test_a_bar_from_the_far_future_is_rejected_by_the_wall_clock() -> None:
    year_2090 = 3_786_912_000_000
    with pytest.raises(InvalidKline, match="ingest_time: 2090-01-01T00:01:00Z is more than"):
        decode_kline(orjson.dumps(at(year_2090)))
    # Years ahead of a current ingest time: the series would otherwise freeze.
    with pytest.raises(InvalidKline, match="open_time: 2090-01-01"):
        decode_kline(orjson.dumps({**at(year_2090), "ingest_time": INGEST_MS}))


def test_the_sample_data_of_make_demo_stays_valid() -> None:
    sources = plan_sources(
        sorted(p for p in SAMPLE_DIR.iterdir() if p.is_file() and p.suffix != ".md")
    )
    rejected = [row for s in sources for row in iter_source(s) if isinstance(row, Rejection)]
    assert rejected == []


# --- dead letters -----------------------------------------------------------------------

originals = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.tuples(
        st.sampled_from([b"\x01", b'"\\', "é\x00".encode(), b"a", b"\xff", "\u2028".encode()]),
        st.sampled_from([1, 1000, 150_000, 200_000, 500_000, 1_000_000]),
    ).map(lambda pair: pair[0] * pair[1]),
)


@HOSTILE_SETTINGS
@given(originals, st.sampled_from(["r", "x" * 50_000, "\x00" * 5000, "bad \ud800 surrogate"]))
def test_a_dead_letter_always_fits_and_says_when_it_was_cut(original: bytes, reason: str) -> None:
    letter = DeadLetter(
        reason=reason, stage="validate", original=original, key="k:" * 500, rejected_at=1
    )
    encoded = encode_dead_letter(letter)
    assert len(encoded) <= MAX_DEAD_LETTER_BYTES
    back = decode_dead_letter(encoded)
    envelope = orjson.loads(encoded)
    if back.truncated:
        assert envelope["original_truncated"] is True
        assert back.original_length == len(original)
        assert back.original_sha256 == hashlib.sha256(original).hexdigest()
        assert original.startswith(back.original)
        assert len(encoded) > MAX_DEAD_LETTER_BYTES * 0.5  # the prefix uses the room there is
    else:
        assert "original_truncated" not in envelope
        assert back.original == original


def test_a_200_kb_message_of_control_characters_fits() -> None:
    encoded = encode_dead_letter(DeadLetter("not JSON", "validate", b"\x01" * 200_000))
    assert len(encoded) <= MAX_DEAD_LETTER_BYTES < 1024 * 1024
    assert decode_dead_letter(encoded).truncated


# --- secrets ---------------------------------------------------------------------------

SECRETS = ("s3cret-ch", "hunter2-redis", "l2-pass", "sk-api-key")


def test_settings_reprs_show_no_passwords() -> None:
    from connectors.inference import InferenceSettings

    sinks = SinkConfig(
        clickhouse_url="clickhouse://app:s3cret-ch@db:9000/crypto_kline",
        redis_url="redis://:hunter2-redis@cache:6379/0?password=hunter2-redis",
    )
    settings = JobSettings(
        sinks=sinks,
        signals=SignalConfig(
            inference=InferenceSettings(
                url="https://user:sk-api-key@api.example/v1", l2_redis_url="redis://:l2-pass@x:1"
            )
        ),
    )
    bridge = BridgeConfig(
        ws_url="wss://x/ws?token=sk-api-key",
        rest_url="https://u:s3cret-ch@r",
        topic="t",
        dlq_topic="d",
    )
    for text in (repr(sinks), repr(settings), str(settings), repr(bridge)):
        assert not any(secret in text for secret in SECRETS), text
    assert "clickhouse://app:***@db:9000/crypto_kline" in repr(settings)
    assert "redis://:***@cache:6379/0?password=***" in repr(sinks)
    # The objects themselves are unchanged (and still pickle as before).
    assert pickle.loads(pickle.dumps(settings)).sinks.redis_url == sinks.redis_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("clickhouse://app:pw@db:9000/x", "clickhouse://app:***@db:9000/x"),
        ("clickhouse://u:p@ss/w?rd@db:9000/x", "clickhouse://u:***@db:9000/x"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://h:6379/0?ssl=1&password=pw", "rediss://h:6379/0?ssl=1&password=***"),
        ("https://api/v1?api_key=abc&model=m", "https://api/v1?api_key=***&model=m"),
        ("redis+cluster://node:7000", "redis+cluster://node:7000"),
        ("chdb:///data/p@th", "chdb:///data/p@th"),
        ("user:pw@host:9092", "user:***@host:9092"),
        ("http://[::1", "http://[::1"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redacted_repr_honours_repr_false_and_nests() -> None:
    assert redacted_repr(5) == "5"
    assert "redis_url='redis://:***@h:1/0'" in redacted_repr(
        SinkConfig(redis_url="redis://:x@h:1/0")
    )


# --- klineflow query --------------------------------------------------------------------


def test_query_start_with_a_400_digit_number_is_one_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jobs.cli import main

    for value in ("9" * 400, "٣٣", "1e999"):
        with pytest.raises(SystemExit) as exited:
            main(
                [
                    "query",
                    "klines",
                    "--exchange",
                    "binance",
                    "--symbol",
                    "BTC-USDT",
                    "--start",
                    value,
                ]
            )
        assert exited.value.code == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and "argument --start: time:" in errors[0]
        assert "Traceback" not in err


def test_query_limit_beyond_int64_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.cli import main

    code = main(
        ["query", "klines", "--exchange", "binance", "--symbol", "BTC-USDT", "--limit", "9" * 400]
    )
    assert code == 2
    assert (
        capsys.readouterr().err.strip()
        == "klineflow query: --limit must be from 0 to 9223372036854775807"
    )
