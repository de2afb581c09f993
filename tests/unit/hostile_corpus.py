"""Hostile input for the boundary tests: hand-listed kinds from issue 12 and hypothesis strategies.

Documents are built as Python values and written with :func:`to_json_text`, which also
writes what ``json``/``orjson`` refuse to (NaN, integers of any size, lone surrogates), so the
parsers see the bytes an attacker could send. Templates are real frames and answers.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Fast and reproducible: fixed examples (derandomize), no example database, no deadline.
HOSTILE_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

OPEN_MS = 1_717_171_200_000
INGEST_MS = 1_717_171_260_100


class Raw(str):
    """A JSON fragment written verbatim (``NaN``, ``1e999``, a 400-digit integer...)."""


def to_json_text(value: Any) -> str:
    """JSON text of ``value``, Raw fragments verbatim, any int and float written as such."""
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**4000 else "1" + "0" * 4000
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(to_json_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{json.dumps(str(k))}:{to_json_text(v)}" for k, v in value.items())
            + "}"
        )
    return json.dumps(str(value))


# The kinds the issue lists, as field values (strings are what exchanges send numbers as).
HAND_LISTED_TEXTS: tuple[str, ...] = (
    "²",  # superscript two: str.isdigit() is True, int() raises
    "³³",
    "٣",  # Arabic-Indic three: int() and float() accept it
    "١٧١٧١٧١٢٠٠٠٠٠",  # an epoch-ms timestamp in Arabic-Indic digits
    "١.٥",
    "１２３",  # full-width digits
    "𝟙𝟚",  # mathematical double-struck digits
    "9" * 400,  # too big for a float after int()
    "1" * 5000,  # too long for int() (int max str digits)
    "1e999",
    "nan",
    "-inf",
    "1_000",  # int() and float() accept underscores
    "",
    " ",
    "0x1F",
    "\x00",
    "x" * 100_000,  # a huge string
)
HAND_LISTED_RAW: tuple[str, ...] = (
    "1" + "0" * 400,  # an integer whose float conversion overflows
    "18446744073709551615",  # 2**64 - 1: orjson reads it as an int past int64
    "9223372036854775808",  # 2**63
    "-9223372036854775809",
    "1e308",
    "1e999",
    "NaN",
    "Infinity",
    "-0.0",
    "5e-324",
)
HAND_LISTED_VALUES: tuple[Any, ...] = (
    *HAND_LISTED_TEXTS,
    *(Raw(token) for token in HAND_LISTED_RAW),
    [],
    {},
    [1, 2],
    {"a": 1},
    True,
    False,
    None,
    10**400,
    2**63,
    -1,
    float("nan"),
    float("inf"),
    [0.5] * 5000,  # a huge array
)

unicode_digit_texts = st.text(
    alphabet=st.characters(categories=["Nd", "No", "Nl"], exclude_characters="0123456789"),
    min_size=1,
    max_size=16,
)
numeric_texts = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{1,30}(\.[0-9]{0,12})?\Z"),
    st.integers().map(str),
    st.floats().map(repr),
    unicode_digit_texts,
    st.sampled_from(HAND_LISTED_TEXTS),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
hostile_values = st.one_of(
    st.sampled_from(HAND_LISTED_VALUES),
    numeric_texts,
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    json_values,
    st.sampled_from([Raw(token) for token in HAND_LISTED_RAW]),
)


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every element's path in a nested list/dict (the root excluded)."""
    paths: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return paths
    for key, child in items:
        path = (*prefix, key)
        paths.append(path)
        paths.extend(leaf_paths(child, path))
    return paths


@st.composite
def mutated(draw: st.DrawFn, template: Any, max_changes: int = 3) -> Any:
    """A copy of ``template`` with 1..``max_changes`` elements replaced by hostile values,
    deleted, or with an unknown key added."""
    document = json.loads(json.dumps(template))
    for _ in range(draw(st.integers(min_value=1, max_value=max_changes))):
        paths = leaf_paths(document)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent["unexpected"] = copy.deepcopy(draw(hostile_values))
        else:
            # A copy: the listed values are shared objects, and a later change could otherwise
            # edit them (or make a list contain itself).
            parent[path[-1]] = copy.deepcopy(draw(hostile_values))
    return document


@st.composite
def damaged_texts(draw: st.DrawFn, template: Any) -> str:
    """JSON text of a mutated template, sometimes structurally damaged on top."""
    text = to_json_text(draw(mutated(template)))
    damage = draw(st.sampled_from(["none", "none", "truncate", "nest", "wrap", "bom", "tail"]))
    if damage == "truncate":
        return text[: draw(st.integers(min_value=0, max_value=len(text)))]
    if damage == "nest":
        depth = draw(st.sampled_from([10, 1100, 20_000]))
        return "[" * depth + text + "]" * depth
    if damage == "wrap":
        return "[" + text + "]"
    if damage == "bom":
        return "\ufeff" + text
    if damage == "tail":
        return text + draw(st.sampled_from([",", "}", "\x00", " x"]))
    return text


# --- templates: real frames and answers -------------------------------------------------------

WIRE_RECORD: dict[str, Any] = {
    "exchange": "binance",
    "symbol": "BTC-USDT",
    "raw_symbol": "BTCUSDT",
    "timeframe": "1m",
    "open_time": OPEN_MS,
    "close_time": OPEN_MS + 59_999,
    "open": 67512.01,
    "high": 67544.0,
    "low": 67508.0,
    "close": 67530.0,
    "volume": 18.86934,
    "quote_volume": 1274220.8258747,
    "trades": 1300,
    "taker_buy_volume": 10.08735,
    "taker_buy_quote_volume": 681240.2663708,
    "is_closed": True,
    "event_time": OPEN_MS + 60_012,
    "ingest_time": INGEST_MS,
    "market": "spot",
    "base_multiplier": 1,
    "provenance": "ws",
}
BINANCE_PUSH: dict[str, Any] = {
    "stream": "btcusdt@kline_1m",
    "data": {
        "e": "kline",
        "E": 1717171260012,
        "s": "BTCUSDT",
        "k": {
            "t": OPEN_MS,
            "T": OPEN_MS + 59_999,
            "s": "BTCUSDT",
            "i": "1m",
            "o": "67512.01000000",
            "c": "67530.00000000",
            "h": "67544.00000000",
            "l": "67508.00000000",
            "v": "18.86934000",
            "n": 1300,
            "x": True,
            "q": "1274220.82587470",
            "V": "10.08735000",
            "Q": "681240.26637080",
        },
    },
}
OKX_PUSH: dict[str, Any] = {
    "arg": {"channel": "candle1m", "instId": "BTC-USDT"},
    "data": [
        [str(OPEN_MS), "67512.1", "67544", "67508", "67530", "18.86934", "1.27e6", "1.2742e6", "0"]
    ],
}
BYBIT_PUSH: dict[str, Any] = {
    "topic": "kline.1.BTCUSDT",
    "type": "snapshot",
    "ts": 1717171260012,
    "data": [
        {
            "start": OPEN_MS,
            "end": OPEN_MS + 59_999,
            "interval": "1",
            "open": "67512.01",
            "close": "67530",
            "high": "67544",
            "low": "67508",
            "volume": "18.869342",
            "turnover": "1274220.8258747",
            "confirm": True,
            "timestamp": 1717171260012,
        }
    ],
}
# Derivatives (issue 13), in the shapes the venues send: contracts where they count contracts.
BINANCE_COINM_PUSH: dict[str, Any] = {
    "stream": "btcusd_perp@kline_1m",
    "data": {
        "e": "kline",
        "E": 1717171260012,
        "s": "BTCUSD_PERP",
        "k": {
            "t": OPEN_MS,
            "T": OPEN_MS + 59_999,
            "s": "BTCUSD_PERP",
            "i": "1m",
            "o": "67512.1",
            "c": "67530.0",
            "h": "67544.0",
            "l": "67508.0",
            "v": "1300",  # contracts of 100 USD
            "n": 211,
            "x": True,
            "q": "1.92550381",  # BTC
            "V": "700",
            "Q": "1.03680205",
        },
    },
}
OKX_SWAP_PUSH: dict[str, Any] = {
    "arg": {"channel": "candle1m", "instId": "BTC-USDT-SWAP"},
    "data": [
        [str(OPEN_MS), "67512.1", "67544", "67508", "67530", "1886.934", "18.86934",
         "1274220.8", "1"]
    ],
}  # fmt: skip
OKX_LEGACY_PUSH: dict[str, Any] = {
    "arg": {"channel": "candle1m", "instId": "BTC-USDT"},
    "data": [[str(OPEN_MS), "67512.1", "67544", "67508", "67530", "18.86934", "1274220.8"]],
}
BYBIT_INVERSE_PUSH: dict[str, Any] = {
    "topic": "kline.1.BTCUSD",
    "type": "snapshot",
    "ts": 1717171260012,
    "data": [
        {
            "start": OPEN_MS,
            "end": OPEN_MS + 59_999,
            "interval": "1",
            "open": "67512.5",
            "close": "67530",
            "high": "67544",
            "low": "67508",
            "volume": "130000",  # 1-USD contracts
            "turnover": "1.92550381",  # BTC
            "confirm": True,
            "timestamp": 1717171260012,
        }
    ],
}
_PRICES = ["67512.01", "67544", "67508", "67530", "18.869342"]
BINANCE_REST: list[Any] = [
    [OPEN_MS + i * 60_000, *_PRICES, OPEN_MS + i * 60_000 + 59_999, "1.2e6", 1300, "10", "6e5", "0"]
    for i in range(2)
]
OKX_REST: dict[str, Any] = {
    "code": "0",
    "msg": "",
    "data": [[str(OPEN_MS + i * 60_000), *_PRICES, "18.8", "1274220.8", "1"] for i in range(2)],
}
BYBIT_REST: dict[str, Any] = {
    "retCode": 0,
    "retMsg": "OK",
    "result": {
        "category": "spot",
        "symbol": "BTCUSDT",
        "list": [[str(OPEN_MS + i * 60_000), *_PRICES, "1274220.8"] for i in range(2)],
    },
}
CSV_ROW: tuple[str, ...] = (
    str(OPEN_MS),
    *_PRICES,
    str(OPEN_MS + 59_999),
    "1274220.8",
    "1300",
    "10.0",
    "681240.2",
    "0",
)
MODEL_REPLY: dict[str, Any] = {
    "pattern": "doji",
    "recommendation": "neutral",
    "confidence": 0.5,
    "key_levels": [67000.0, 68000.0],
}
# REST answers of the derivative markets (contracts where the venue counts contracts).
_DERIVATIVE_PRICES = ["67512.01", "67544", "67508", "67530"]
BINANCE_COINM_REST: list[Any] = [
    [OPEN_MS + i * 60_000, *_DERIVATIVE_PRICES, "1300", OPEN_MS + i * 60_000 + 59_999,
     "1.92550381", 211, "700", "1.03680205", "0"]
    for i in range(2)
]  # fmt: skip
OKX_SWAP_REST: dict[str, Any] = {
    "code": "0",
    "msg": "",
    "data": [
        [str(OPEN_MS + i * 60_000), *_DERIVATIVE_PRICES, "1886.934", "18.86934", "1274220.8", "1"]
        for i in range(2)
    ],
}
BYBIT_INVERSE_REST: dict[str, Any] = {
    "retCode": 0,
    "retMsg": "OK",
    "result": {
        "category": "inverse",
        "symbol": "BTCUSD",
        "list": [
            [str(OPEN_MS + i * 60_000), *_DERIVATIVE_PRICES, "130000", "1.92550381"] for i in (1, 0)
        ],
    },
}
