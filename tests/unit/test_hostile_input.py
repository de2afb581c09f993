"""Every input boundary under hostile input: only the contract's rejection ever escapes.

Boundaries: the record decoder (the job's parse operator), each exchange's WebSocket frame
parser and REST parser (the bridge), archive CSV/JSONL rows (``klineflow replay``) and model
replies (the signals operator). Each gets a generated corpus (hypothesis, fixed examples) and
the hand-listed kinds of issue 12; good input must still parse exactly as before. Outcomes are
counted with ``hypothesis.event`` (``pytest --hypothesis-show-statistics`` shows them).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from connectors.archives import (
    BINANCE_COLUMNS,
    Rejection,
    Series,
    iter_csv_rows,
    iter_jsonl_rows,
    iter_source,
    plan_sources,
)
from connectors.exchanges import BinanceSpot, Bybit, Okx
from connectors.exchanges.base import (
    ExchangeAdapter,
    FrameKind,
    RestError,
    RestRateLimited,
    to_float,
    to_int,
)
from connectors.inference import (
    HttpResponse,
    InferenceEngine,
    InferenceFailure,
    InferenceSettings,
    parse_chat_response,
)
from tests.unit.hostile_corpus import (
    BINANCE_COINM_PUSH,
    BINANCE_COINM_REST,
    BINANCE_PUSH,
    BINANCE_REST,
    BYBIT_INVERSE_PUSH,
    BYBIT_INVERSE_REST,
    BYBIT_PUSH,
    BYBIT_REST,
    CSV_ROW,
    HAND_LISTED_TEXTS,
    HAND_LISTED_VALUES,
    HOSTILE_SETTINGS,
    INGEST_MS,
    MODEL_REPLY,
    OKX_LEGACY_PUSH,
    OKX_PUSH,
    OKX_REST,
    OKX_SWAP_PUSH,
    OKX_SWAP_REST,
    OPEN_MS,
    WIRE_RECORD,
    Raw,
    damaged_texts,
    hostile_values,
    json_values,
    leaf_paths,
    mutated,
    numeric_texts,
    to_json_text,
)
from udfs.record import (
    FIELDS,
    MAX_PRICE,
    MAX_TRADES,
    MAX_VOLUME,
    InvalidKline,
    Kline,
    decode_kline,
    encode_kline,
    parse_timestamp_ms,
    validate_kline,
)
from udfs.rules import Analysis
from udfs.signals import (
    RECOMMENDATIONS,
    ContextBar,
    InvalidReply,
    MarketContext,
    Signal,
    SignalRequest,
    parse_reply,
    rules_signal,
)

ADAPTERS: dict[str, tuple[ExchangeAdapter, Any, Any]] = {
    "binance": (BinanceSpot("spot", ["BTCUSDT"]), BINANCE_PUSH, BINANCE_REST),
    "okx": (Okx("spot", ["BTC-USDT"]), OKX_PUSH, OKX_REST),
    "bybit": (Bybit("spot", ["BTCUSDT"]), BYBIT_PUSH, BYBIT_REST),
    # Derivatives (issue 13): their pushes count contracts, the adapters convert.
    "binance-coinm": (
        BinanceSpot("inverse", ["BTCUSD_PERP"]),
        BINANCE_COINM_PUSH,
        BINANCE_COINM_REST,
    ),
    "okx-swap": (Okx("linear", ["BTC-USDT-SWAP"]), OKX_SWAP_PUSH, OKX_SWAP_REST),
    "okx-legacy": (Okx("spot", ["BTC-USDT"]), OKX_LEGACY_PUSH, OKX_REST),
    "bybit-inverse": (Bybit("inverse", ["BTCUSD"]), BYBIT_INVERSE_PUSH, BYBIT_INVERSE_REST),
}
SERIES = Series("binance", "BTC-USDT", "BTCUSDT", "1m")
# A COIN-M archive series: its rows' volume columns are contracts, converted on the way.
COIN_M_SERIES = Series("binance", "BTC-USD-PERP", "BTCUSD_PERP", "1m", "perp", "inverse", 1, 100.0)


def set_path(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``document`` with the element at ``path`` replaced."""
    copy = orjson.loads(orjson.dumps(document))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return copy


def check_bar(kline: Kline) -> None:
    """An accepted bar keeps every documented bound and survives the wire unchanged."""
    assert validate_kline(kline) == kline
    assert decode_kline(encode_kline(kline)) == kline
    for price in (kline.open, kline.high, kline.low, kline.close):
        assert 0 <= price <= MAX_PRICE
    for volume in (kline.volume, kline.quote_volume, kline.taker_buy_volume):
        assert volume is None or 0 <= volume <= MAX_VOLUME
    assert kline.trades is None or 0 <= kline.trades <= MAX_TRADES


# --- the record decoder (the job's parse operator) -----------------------------------------


def decode_outcome(raw: bytes | str) -> str:
    """``accepted`` or ``rejected``; fails the test if anything but InvalidKline escapes or
    the last-resort guard (``internal: ...``) was needed."""
    try:
        kline = decode_kline(raw)
    except InvalidKline as exc:
        assert exc.reason.strip(), "a rejection without a reason"
        assert not exc.reason.startswith("internal:"), exc.reason
        assert len(exc.reason) < 1000
        return "rejected"
    check_bar(kline)
    return "accepted"


record_inputs = st.one_of(
    damaged_texts(WIRE_RECORD),
    mutated(WIRE_RECORD).map(to_json_text),
    json_values.map(to_json_text),
    st.binary(max_size=400),
    st.text(max_size=200),
)


@HOSTILE_SETTINGS
@given(record_inputs)
def test_decode_kline_raises_nothing_but_invalid_kline(raw: str | bytes) -> None:
    outcome = decode_outcome(raw)
    event(outcome)
    if isinstance(raw, str):
        try:
            as_bytes = raw.encode("utf-8")
        except UnicodeEncodeError:
            return
        assert decode_outcome(as_bytes) == outcome


def test_every_hand_listed_kind_in_every_field_is_rejected_or_valid() -> None:
    outcomes: dict[str, int] = {"accepted": 0, "rejected": 0}
    for name in FIELDS:
        for value in HAND_LISTED_VALUES:
            outcomes[decode_outcome(to_json_text({**WIRE_RECORD, name: value}))] += 1
    # Only a few listed values are valid anywhere (null in an optional field, -0.0 ...).
    assert outcomes["rejected"] > 10 * outcomes["accepted"]


@pytest.mark.parametrize("name", ["open_time", "close_time", "event_time", "ingest_time"])
@pytest.mark.parametrize(
    "value", ["²", "٣", "١٧١٧١٧١٢٠٠٠٠٠", "9" * 400, "1" * 5000, Raw("18446744073709551615")]
)
def test_unicode_digits_and_huge_numbers_in_timestamps_are_rejected(name: str, value: Any) -> None:
    with pytest.raises(InvalidKline, match=f"^{name}: "):
        decode_kline(to_json_text({**WIRE_RECORD, name: value}))


def test_unicode_digit_strings_are_never_timestamps() -> None:
    # int() and float() take Arabic-Indic and full-width digits: only ASCII digits count here.
    for text in ("١٧١٧١٧١٢٠٠٠٠٠", "٣", "１７１７１７１２００００００", "²"):
        with pytest.raises(InvalidKline, match="non-ASCII"):
            parse_timestamp_ms(text, "ts")
    for huge in (10**400, -(10**400), 2**64):
        with pytest.raises(InvalidKline, match="is not a timestamp"):
            parse_timestamp_ms(huge, "ts")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe{}", "not JSON"),
        (b"[1,2]", "expected a JSON object, got list"),
        (b'"x"', "expected a JSON object, got str"),
        (b"[" * 5000 + b"]" * 5000, "not JSON"),
        (b" " * 20_000, "message of 20000 bytes"),
        (to_json_text({**WIRE_RECORD, "trades": Raw("18446744073709551615")}), "trades:"),
        (to_json_text({**WIRE_RECORD, "trades": True}), "trades:"),
        (to_json_text({**WIRE_RECORD, "volume": Raw("1" + "0" * 300)}), "volume:"),
        (to_json_text({**WIRE_RECORD, "open": [1]}), "open: expected a number, got list"),
        (to_json_text({**WIRE_RECORD, "high": {"a": 1}}), "high: expected a number"),
        (to_json_text({**WIRE_RECORD, "symbol": "BTC-USDT\n"}), "symbol:"),
        (to_json_text({**WIRE_RECORD, "exchange": "x" * 5000}), "exchange:"),
        (to_json_text({**WIRE_RECORD, "timeframe": ["1m"]}), "timeframe:"),
        (to_json_text({**WIRE_RECORD, **{f"k{i}": 1 for i in range(300)}}), "unknown field"),
    ],
)
def test_hand_listed_records_are_rejected_with_a_clear_reason(raw: Any, reason: str) -> None:
    with pytest.raises(InvalidKline) as caught:
        decode_kline(raw)
    assert reason in caught.value.reason
    assert len(caught.value.reason) < 300


def test_decode_kline_refuses_wrong_input_types() -> None:
    for value in (None, 5, ["x"], {"a": 1}):
        with pytest.raises(InvalidKline, match="expected bytes or str"):
            decode_kline(value)  # type: ignore[arg-type]


@HOSTILE_SETTINGS
@given(
    st.integers(min_value=1_262_304_000_000 // 60_000, max_value=1_735_689_600_000 // 60_000),
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
    st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)),
)
def test_good_records_parse_identically_from_bytes_and_str(
    minute: int, low: float, volume: float, trades: int | None
) -> None:
    open_time = minute * 60_000
    record = {
        **WIRE_RECORD,
        "open_time": open_time,
        "close_time": open_time + 59_999,
        "event_time": open_time + 60_000,
        "ingest_time": open_time + 60_005,
        "open": low,
        "low": low,
        "close": low * 1.5,
        "high": low * 2,
        "volume": volume,
        "trades": trades,
        "taker_buy_volume": volume / 2,
        "quote_volume": None,
        "taker_buy_quote_volume": None,
    }
    raw = orjson.dumps(record)
    kline = decode_kline(raw)
    assert kline.to_dict() == record
    assert decode_kline(raw.decode()) == kline
    assert encode_kline(kline) == raw


# --- exchange frames (the bridge's WebSocket boundary) --------------------------------------


def frame_outcome(adapter: ExchangeAdapter, text: str) -> str:
    parsed = adapter.parse_frame(text, INGEST_MS)  # must never raise
    assert isinstance(parsed.kind, FrameKind)
    for kline in parsed.klines:
        check_bar(kline)
    for rejected in parsed.rejected:
        assert rejected.reason.strip() and len(rejected.reason) < 1000
        assert isinstance(rejected.original, bytes)
    assert len(parsed.detail) <= 400
    if parsed.rejected or parsed.kind in (FrameKind.MALFORMED, FrameKind.ERROR):
        return "rejected"
    return "accepted"


@pytest.mark.parametrize("exchange", sorted(ADAPTERS))
def test_frame_parsers_never_raise_on_generated_frames(exchange: str) -> None:
    adapter, push, _ = ADAPTERS[exchange]

    @HOSTILE_SETTINGS
    @given(st.one_of(damaged_texts(push), st.text(max_size=100)))
    def check(text: str) -> None:
        event(frame_outcome(adapter, text))

    check()


@pytest.mark.parametrize("exchange", sorted(ADAPTERS))
def test_frame_parsers_take_every_hand_listed_kind_in_every_field(exchange: str) -> None:
    adapter, push, _ = ADAPTERS[exchange]
    assert frame_outcome(adapter, orjson.dumps(push).decode()) == "accepted"
    rejected = 0
    for path in leaf_paths(push):
        for value in HAND_LISTED_VALUES:
            rejected += frame_outcome(adapter, to_json_text(set_path(push, path, value))) == (
                "rejected"
            )
    assert rejected > 0


@pytest.mark.parametrize("text", ["²", "³³", "٣", "１２３", "9" * 400, "1" * 5000, "1_000", "nan"])
def test_number_fields_take_only_ascii_numbers(text: str) -> None:
    with pytest.raises(InvalidKline):
        to_int(text, "t")
    with pytest.raises(InvalidKline):
        to_float(text, "o")
    with pytest.raises(InvalidKline, match="too large"):
        to_float(10**400, "o")
    assert to_int(" 1717171200000 ", "t") == 1_717_171_200_000
    assert to_float("1e-8", "o") == 1e-8


# --- REST answers (the bridge's gap repair) --------------------------------------------------


def rest_outcome(adapter: ExchangeAdapter, payload: Any) -> str:
    info = next(iter(adapter.symbols.values()))
    try:
        page = adapter.parse_rest(info, payload, OPEN_MS, OPEN_MS + 2 * 60_000, INGEST_MS + 600_000)
    except (RestError, RestRateLimited) as exc:
        assert str(exc).strip() and len(str(exc)) < 1000
        return "rejected"
    for kline in page.klines:
        check_bar(kline)
    assert all(rejected.reason.strip() for rejected in page.rejected)
    return "rejected" if page.rejected else "accepted"


@pytest.mark.parametrize("exchange", sorted(ADAPTERS))
def test_rest_parsers_raise_only_rest_errors(exchange: str) -> None:
    adapter, _, answer = ADAPTERS[exchange]
    assert rest_outcome(adapter, answer) == "accepted"

    @HOSTILE_SETTINGS
    @given(st.one_of(mutated(answer), json_values))
    def check(payload: Any) -> None:
        event(
            rest_outcome(
                adapter, orjson.loads(to_json_text(payload)) if _json_ok(payload) else payload
            )
        )

    check()


def _json_ok(payload: Any) -> bool:
    try:
        orjson.loads(to_json_text(payload))
    except orjson.JSONDecodeError:
        return False
    return True


@pytest.mark.parametrize("exchange", sorted(ADAPTERS))
def test_rest_parsers_take_every_hand_listed_kind_in_every_field(exchange: str) -> None:
    adapter, _, answer = ADAPTERS[exchange]
    for path in leaf_paths(answer):
        for value in HAND_LISTED_VALUES:
            try:
                payload = orjson.loads(to_json_text(set_path(answer, path, value)))
            except orjson.JSONDecodeError:
                continue  # the client refuses a body that is not JSON before parsing it
            rest_outcome(adapter, payload)


@pytest.mark.parametrize("code", [[], [10006], {"a": 1}, None, "abc", 1.5, True, "٣"])
def test_bybit_ret_code_of_the_wrong_type_is_a_rest_error(code: Any) -> None:
    adapter, _, answer = ADAPTERS["bybit"]
    with pytest.raises(RestError, match="retCode"):
        adapter.parse_rest(
            next(iter(adapter.symbols.values())),
            {**answer, "retCode": code},
            OPEN_MS,
            OPEN_MS + 60_000,
            INGEST_MS,
        )


def test_okx_code_of_the_wrong_type_and_deep_bodies_are_rest_errors() -> None:
    adapter, _, answer = ADAPTERS["okx"]
    info = next(iter(adapter.symbols.values()))
    deep: Any = []
    for _ in range(900):
        deep = [deep]
    for payload in ({**answer, "code": deep}, {**answer, "code": ["0"]}, deep):
        with pytest.raises(RestError):
            adapter.parse_rest(info, payload, OPEN_MS, OPEN_MS + 60_000, INGEST_MS)


# --- archive rows (klineflow replay) ---------------------------------------------------------


def rows_outcome(rows: Iterable[Kline | Rejection], location: str) -> str:
    outcome = "accepted"
    for row in rows:
        if isinstance(row, Rejection):
            assert row.location.startswith(location + ":")
            assert row.reason.strip() and not row.reason.startswith("internal:")
            assert row.describe().startswith(f"{row.location}: ")
            outcome = "rejected"
        else:
            check_bar(row)
    return outcome


def csv_lines(columns: list[str]) -> bytes:
    return ",".join(columns).encode("utf-8", "surrogatepass")


@HOSTILE_SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=11), numeric_texts | st.text(max_size=20)),
        min_size=1,
        max_size=3,
    ),
    st.booleans(),
    st.sampled_from([SERIES, COIN_M_SERIES]),
)
def test_archive_csv_rows_are_bars_or_located_rejections(
    changes: list[tuple[int, str]], short: bool, series: Series
) -> None:
    columns = list(CSV_ROW)
    for index, text in changes:
        columns[index] = text
    if short:
        columns = columns[:-1]
    rows = iter_csv_rows(
        [csv_lines(columns)], location="a.csv", series=series, clock=lambda: INGEST_MS
    )
    event(rows_outcome(rows, "a.csv"))


@HOSTILE_SETTINGS
@given(
    st.one_of(
        damaged_texts(WIRE_RECORD).map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary()
    )
)
def test_archive_jsonl_rows_are_bars_or_located_rejections(line: bytes) -> None:
    event(rows_outcome(iter_jsonl_rows([line.replace(b"\n", b" ")], location="a.jsonl"), "a.jsonl"))


def test_a_byte_order_mark_does_not_defeat_header_detection() -> None:
    header = ("\ufeff" + ",".join(BINANCE_COLUMNS)).encode()
    data = ",".join(CSV_ROW).encode()
    rows = list(
        iter_csv_rows([header, data], location="f.csv", series=SERIES, clock=lambda: INGEST_MS)
    )
    assert [type(row) for row in rows] == [Kline]
    # ... nor a headerless file that starts with one.
    rows = list(
        iter_csv_rows(
            [b"\xef\xbb\xbf" + data], location="f.csv", series=SERIES, clock=lambda: INGEST_MS
        )
    )
    assert [type(row) for row in rows] == [Kline]
    assert (
        rows_outcome(iter_jsonl_rows([b"\xef\xbb\xbf" + encode_kline(rows[0])], location="f"), "f")
        == "accepted"
    )


def test_replay_rows_report_file_and_line_and_the_good_rows_still_come(tmp_path: Path) -> None:
    good = [list(CSV_ROW) for _ in range(3)]
    for number, columns in enumerate(good):
        columns[0] = str(OPEN_MS + number * 60_000)
        columns[6] = str(OPEN_MS + number * 60_000 + 59_999)
    bad = [
        ["²", *CSV_ROW[1:]],
        [CSV_ROW[0], "9" * 400, *CSV_ROW[2:]],
        [*CSV_ROW[:8], "1" * 5000, *CSV_ROW[9:]],
    ]
    lines = [
        ",".join(good[0]),
        *(",".join(b) for b in bad),
        ",".join(good[1]),
        "\xff",
        ",".join(good[2]),
    ]
    path = tmp_path / "BTCUSDT-1m-2024-05-31.csv"
    path.write_bytes(
        "\n".join(lines).encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff")
    )
    (source,) = plan_sources([path])
    rows = list(iter_source(source, clock=lambda: INGEST_MS))
    rejections = [row for row in rows if isinstance(row, Rejection)]
    assert [row.open_time for row in rows if isinstance(row, Kline)] == [
        OPEN_MS,
        OPEN_MS + 60_000,
        OPEN_MS + 120_000,
    ]
    assert [r.location for r in rejections] == [f"{path}:{n}" for n in (2, 3, 4, 6)]
    assert rejections[0].describe() == f"{path}:2: open_time: '²' has non-ASCII characters"
    assert "not UTF-8" in rejections[3].reason


# --- model replies (the signals operator) ----------------------------------------------------


def reply_outcome(content: Any) -> str:
    try:
        analysis = parse_reply(content)
    except InvalidReply as exc:
        assert exc.reason.strip() and len(exc.reason) < 300
        return "rejected"
    assert isinstance(analysis, Analysis)
    assert analysis.recommendation in RECOMMENDATIONS
    assert 0.0 <= analysis.confidence <= 1.0
    return "accepted"


reply_texts = st.one_of(
    damaged_texts(MODEL_REPLY),
    damaged_texts(MODEL_REPLY).map(lambda text: f"```json\n{text}\n```"),
    json_values.map(to_json_text),
    st.sampled_from(HAND_LISTED_TEXTS),
    st.text(max_size=100),
)
# What parse_reply may be handed: any text, and (from a broken caller) any value at all.
reply_contents = st.one_of(reply_texts, hostile_values)


@HOSTILE_SETTINGS
@given(reply_contents)
def test_model_replies_of_any_shape_raise_only_invalid_reply(content: Any) -> None:
    event(reply_outcome(content))


@pytest.mark.parametrize(
    "changes",
    [
        {"recommendation": []},
        {"recommendation": {"x": 1}},
        {"recommendation": ["bullish"]},
        {"confidence": "0.8"},
        {"key_levels": ["100", "200"]},
        {"key_levels": [1.0] * 100_000},
        {"key_levels": {"a": 1}},
        {"pattern": ["doji"]},
        {"pattern": "x" * 100_000},
        {"confidence": Raw("1e999")},
        {"confidence": Raw("18446744073709551615")},
    ],
)
def test_hand_listed_model_replies_are_invalid_with_a_reason(changes: dict[str, Any]) -> None:
    assert reply_outcome(to_json_text({**MODEL_REPLY, **changes})) == "rejected"
    missing = {key: value for key, value in MODEL_REPLY.items() if key not in changes}
    assert reply_outcome(to_json_text(missing)) == "rejected"


@HOSTILE_SETTINGS
@given(
    st.sampled_from([200, 200, 200, 429, 500, 404]),
    st.one_of(st.none(), st.sampled_from(["1", "-5", "1e999", "nan", "٣", "9" * 400])),
    st.one_of(
        st.binary(max_size=200),
        json_values.map(to_json_text).map(str.encode),
        reply_texts.map(
            lambda c: to_json_text(
                {"choices": [{"message": {"content": c}}], "usage": {"prompt_tokens": c}}
            ).encode("utf-8", "surrogatepass")
        ),
    ),
)
def test_chat_responses_of_any_shape_raise_only_inference_failure(
    status: int, retry_after: str | None, body: bytes
) -> None:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    try:
        reply = parse_chat_response(HttpResponse(status, headers, body), 1.0)
    except InferenceFailure as failure:
        assert failure.kind
        assert failure.retry_after_s is None or 0 <= failure.retry_after_s <= 300
        event("failure")
        return
    assert isinstance(reply.content, str)
    event(reply_outcome(reply.content))


class ScriptedTransport:
    """Answers every request with the same hostile body."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def post(self, url: str, body: bytes, headers: Any, timeout_s: float) -> HttpResponse:
        return HttpResponse(200, {}, self.body)

    async def aclose(self) -> None:
        return None

    def close_sync(self) -> None:
        return None


def _request() -> SignalRequest:
    bars = tuple(
        ContextBar(OPEN_MS + i * 60_000, 100.0 + i, 102.0 + i, 99.0 + i, 101.0 + i, 5.0)
        for i in range(30)
    )
    return SignalRequest(MarketContext("binance", "BTC-USDT", "1m", bars), 1)


async def _no_sleep(_seconds: float) -> None:
    await asyncio.sleep(0)


@HOSTILE_SETTINGS
@given(reply_texts)
def test_the_engine_turns_any_reply_into_a_valid_or_degraded_signal(content: str) -> None:
    body = to_json_text({"choices": [{"message": {"content": content}}]}).encode(
        "utf-8", "surrogatepass"
    )
    engine = InferenceEngine(
        InferenceSettings(url="http://127.0.0.1:9/v1", requests_per_s=1e6, deadline_s=60.0),
        api_key=None,
        transport=ScriptedTransport(body),
        sleep=_no_sleep,
        rng=random.Random(1),
    )
    signal = asyncio.run(engine.analyse(_request()))
    assert isinstance(signal, Signal)
    assert signal.recommendation in RECOMMENDATIONS
    event("degraded" if signal.degraded else "valid")
    if signal.degraded:
        assert signal.reason


@HOSTILE_SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["rsi_14", "macd", "macd_hist", "macd_hist_prev", "bb_upper", "bb_lower"]
            ),
            hostile_values,
        ),
        max_size=6,
    )
)
def test_rules_take_indicator_values_of_any_type(indicators: list[tuple[str, Any]]) -> None:
    request = _request()
    context = MarketContext(
        "binance", "BTC-USDT", "1m", request.context.bars, tuple(indicators), (("vwap", "x"),)
    )
    signal = rules_signal(SignalRequest(context, 1))
    assert signal.recommendation in RECOMMENDATIONS
    assert 0.0 <= (signal.confidence or 0.0) <= 1.0


def test_the_fuzz_bench_finds_no_escaping_exception() -> None:
    from bench.fuzz_boundaries import main as fuzz_main

    assert fuzz_main(["--n", "40", "--seed", "3"]) == 0
