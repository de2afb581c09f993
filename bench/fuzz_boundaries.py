"""Fuzz every input boundary with generated hostile input and count what came out.

Each boundary gets ``--n`` inputs, generated deterministically from ``--seed``: valid
templates (real exchange frames, REST answers, archive rows, wire records, model replies)
with one to three values swapped for hostile ones (Unicode digits, integer strings too long
for ``int()``, integers past int64 or past float range, NaN/inf tokens, wrong types, huge
strings, deep nesting), plus structural damage (truncation, non-UTF-8 bytes, byte-order marks,
non-object JSON). About one input in ten is left unchanged, so the counts show that good
input still passes.

An outcome is ``accepted`` (a value came back), ``rejected_with_reason`` (the boundary's
contract rejection with a non-empty reason) or ``other_exceptions`` (anything else escaped:
a bug). Prints one JSON object ``{boundary: {tried, rejected_with_reason, accepted,
other_exceptions, ...}}`` plus a ``total``; ``oversized`` counts dead letters above
:data:`DEAD_LETTER_LIMIT` and ``of_which_internal_guard`` rejections that only the decoder's
last-resort guard caught. Exit status 1 if anything but the contract's outcomes was seen.
Pure Python, no servers.

    python -m bench.fuzz_boundaries [--n 300] [--seed 12]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.archives import BINANCE_COLUMNS, Rejection, Series, iter_csv_rows, iter_jsonl_rows
from connectors.exchanges import BinanceSpot, Bybit, Okx
from connectors.exchanges.base import (
    ExchangeAdapter,
    FrameKind,
    RestError,
    RestRateLimited,
)
from connectors.inference import HttpResponse, InferenceFailure, parse_chat_response
from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.record import InvalidKline, Kline, decode_kline, encode_kline
from udfs.signals import (
    ContextBar,
    InvalidReply,
    MarketContext,
    SignalRequest,
    parse_reply,
    rules_signal,
)

INGEST_MS = 1_717_171_260_100
OPEN_MS = 1_717_171_200_000
# The limit an encoded dead letter must stay under (Kafka's default message size is 1 MiB).
DEAD_LETTER_LIMIT = 900_000


class Raw(str):
    """A JSON fragment written verbatim (NaN, a 400-digit integer, ...)."""


def dump(value: Any, rng: random.Random) -> str:
    """JSON text of ``value``; Raw fragments verbatim; strings randomly ASCII-escaped or not."""
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value).replace("nan", "NaN").replace("inf", "Infinity")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=rng.random() < 0.5)
    if isinstance(value, list | tuple):
        return "[" + ",".join(dump(item, rng) for item in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ",".join(f"{json.dumps(str(k))}:{dump(v, rng)}" for k, v in value.items()) + "}"
        )
    return json.dumps(str(value))


HOSTILE_TEXTS: tuple[str, ...] = (
    "²",
    "³³",
    "٣",
    "١٧١٧١٧١٢٠٠٠٠٠",
    "１２３",
    "߁߂",
    "𝟙𝟚",
    "1" * 5000,
    "9" * 400,
    "1e999",
    "-1e999",
    "nan",
    "NaN",
    "inf",
    "-Infinity",
    "",
    " ",
    "\n",
    "1.5.5",
    "0x1F",
    "1_000",
    " 42 ",
    "+7",
    "-0",
    "١.٥",
    "٣e٣",
    "\x00",
    "\u202e123",
    "1" + "0" * 30,
    "-" + "9" * 30,
    "BTC-USDT\n",
    "btc-usdt",
    "ＢＴＣ-USDT",
    "A" * 300 + "-USDT",
    "\ud800",
)
HOSTILE_RAW: tuple[str, ...] = (
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "1" + "0" * 400,
    "18446744073709551616",
    "18446744073709551615",
    "9223372036854775808",
    "-9223372036854775809",
    "1e308",
    "-0.0",
    "5e-324",
    "1.7976931348623157e308",
    "4102444799999",
    "1e19",
)


def hostile_value(rng: random.Random) -> Any:
    """One hostile JSON value (as a Python value or a Raw fragment)."""
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(HOSTILE_TEXTS)
    if roll < 0.6:
        return Raw(rng.choice(HOSTILE_RAW))
    if roll < 0.7:
        return rng.choice([True, False, None, 0, -1, 2**63 - 1, -(2**63), 10**300, 1e300])
    if roll < 0.8:
        return rng.choice([[], {}, [[]], {"a": {}}, [1, "2", None], [1.0] * 5, {"0": 1}])
    if roll < 0.85:
        return "x" * rng.choice([1000, 70_000, 200_000])
    if roll < 0.9:
        return [rng.random() for _ in range(rng.choice([11, 1000, 5000]))]
    return random_json(rng, depth=3)


def random_json(rng: random.Random, depth: int) -> Any:
    """An arbitrary small JSON value."""
    kind = rng.randrange(7 if depth > 0 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, 1, -5, 2**53, 3.5, -0.0])
    if kind == 2:
        return rng.choice(["", "a", "bullish", "1", "٣", "[]"])
    if kind == 3:
        return Raw(rng.choice(HOSTILE_RAW))
    if kind in (4, 5):
        return [random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {rng.choice("abck"): random_json(rng, depth - 1) for _ in range(rng.randrange(4))}


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every element of a nested list/dict (containers included, root excluded)."""
    paths: list[tuple[Any, ...]] = []
    items: Any = value.items() if isinstance(value, dict) else enumerate(value)
    if isinstance(value, dict | list):
        for key, child in items:
            path = (*prefix, key)
            paths.append(path)
            if isinstance(child, dict | list):
                paths.extend(leaf_paths(child, path))
    return paths


def _is_numeric_leaf(document: Any, path: tuple[Any, ...]) -> bool:
    value = document
    for key in path:
        value = value[key]
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and value.replace(".", "", 1).isdigit()


def replace_at(value: Any, path: tuple[Any, ...], new: Any) -> None:
    """Set the element at ``path`` (in place)."""
    for key in path[:-1]:
        value = value[key]
    value[path[-1]] = new


def mutate_document(template: Any, rng: random.Random) -> Any:
    """A deep copy of ``template`` with 1-3 elements replaced, deleted or an extra key added."""
    document = json.loads(json.dumps(template))
    for _ in range(rng.randint(1, 3)):
        paths = leaf_paths(document)
        if not paths:
            break
        numeric = [path for path in paths if _is_numeric_leaf(document, path)]
        # Numbers (and numbers in strings) are where parsers break: pick them more often.
        path = rng.choice(numeric if numeric and rng.random() < 0.6 else paths)
        roll = rng.random()
        parent: Any = document
        for key in path[:-1]:
            parent = parent[key]
        if roll < 0.8 or not isinstance(parent, dict | list):
            replace_at(document, path, hostile_value(rng))
        elif roll < 0.9 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent["zz_extra"] = hostile_value(rng)
        else:
            parent.append(hostile_value(rng))
    return document


def damage_text(text: str, rng: random.Random) -> str:
    """Structural damage of a JSON text: truncation, deep nesting, a BOM, a non-object."""
    roll = rng.random()
    if roll < 0.25:
        return text[: rng.randrange(max(1, len(text)))]
    if roll < 0.45:
        depth = rng.choice([100, 1100, 50_000])
        return "[" * depth + text + "]" * depth
    if roll < 0.55:
        return "\ufeff" + text
    if roll < 0.7:
        return rng.choice(["[]", "null", "1", '"x"', "[" + text + "]", "true", ""])
    if roll < 0.85:
        return '{"a":' * 2000 + "1" + "}" * 2000
    return text + rng.choice([",", "}", " x", "\x00"])


def document_inputs(template: Any, rng: random.Random) -> Iterator[str]:
    """JSON texts: the template itself about one time in ten, else mutated or damaged."""
    while True:
        roll = rng.random()
        if roll < 0.1:
            yield dump(template, rng)
        elif roll < 0.8:
            yield dump(mutate_document(template, rng), rng)
        else:
            yield damage_text(dump(mutate_document(template, rng), rng), rng)


# --- templates ----------------------------------------------------------------------------

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
        [str(OPEN_MS), "67512.1", "67544", "67508", "67530", "18.86934", "1274220.8", "1.2e6", "0"]
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
_ROW = ["67512.01", "67544", "67508", "67530", "18.869342"]
BINANCE_REST: list[Any] = [
    [OPEN_MS + i * 60_000, *_ROW, OPEN_MS + i * 60_000 + 59_999, "1.2e6", 1300, "10", "6e5", "0"]
    for i in range(3)
]
OKX_REST: dict[str, Any] = {
    "code": "0",
    "msg": "",
    "data": [[str(OPEN_MS + i * 60_000), *_ROW, "18.8", "1274220.8", "1"] for i in range(3)],
}
BYBIT_REST: dict[str, Any] = {
    "retCode": 0,
    "retMsg": "OK",
    "result": {
        "category": "spot",
        "symbol": "BTCUSDT",
        "list": [[str(OPEN_MS + i * 60_000), *_ROW, "1274220.8"] for i in range(3)],
    },
}
CSV_ROW: list[str] = [
    str(OPEN_MS),
    *_ROW,
    str(OPEN_MS + 59_999),
    "1274220.8",
    "1300",
    "10.0",
    "681240.2",
    "0",
]
REPLY: dict[str, Any] = {
    "pattern": "doji",
    "recommendation": "neutral",
    "confidence": 0.5,
    "key_levels": [67000.0, 68000.0],
}

# --- outcomes -----------------------------------------------------------------------------


class Counts:
    """The outcome counters of one boundary."""

    def __init__(self) -> None:
        self.tried = 0
        self.rejected_with_reason = 0
        self.accepted = 0
        self.other_exceptions = 0
        self.other_kinds: collections.Counter[str] = collections.Counter()
        self.extra: collections.Counter[str] = collections.Counter()

    def other(self, exc: BaseException) -> None:
        self.other_exceptions += 1
        self.other_kinds[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tried": self.tried,
            "rejected_with_reason": self.rejected_with_reason,
            "accepted": self.accepted,
            "other_exceptions": self.other_exceptions,
        }
        out.update(self.extra)
        if self.other_kinds:
            out["other_kinds"] = dict(self.other_kinds.most_common(8))
        return out


def _reason_of(exc: BaseException) -> str:
    return str(getattr(exc, "reason", "") or getattr(exc, "kind", "") or exc)


def run_boundary(
    counts: Counts,
    inputs: Iterator[Any],
    n: int,
    call: Callable[[Any], str],
    rejections: tuple[type[BaseException], ...],
) -> None:
    """Feed ``n`` inputs to ``call``, which returns "accepted" or "rejected" (or raises)."""
    for _ in range(n):
        item = next(inputs)
        counts.tried += 1
        try:
            verdict = call(item)
        except rejections as exc:
            reason = _reason_of(exc)
            if reason.strip():
                counts.rejected_with_reason += 1
                if reason.startswith("internal:"):
                    # Caught only by decode_kline's last-resort guard: a kind of bad input
                    # that is not handled explicitly yet.
                    counts.extra["of_which_internal_guard"] += 1
            else:
                counts.other(exc)
        except Exception as exc:  # noqa: BLE001 - counting what escapes is the point
            counts.other(exc)
        else:
            if verdict == "accepted":
                counts.accepted += 1
            elif verdict == "rejected":
                counts.rejected_with_reason += 1
            else:
                counts.extra[verdict] += 1


# --- boundaries ---------------------------------------------------------------------------


def _decode(item: str | bytes) -> str:
    # Accepted means usable downstream: the bar must also encode back to the wire.
    encode_kline(decode_kline(item))
    return "accepted"


def _frame(adapter: ExchangeAdapter) -> Callable[[str], str]:
    def call(text: str) -> str:
        parsed = adapter.parse_frame(text, INGEST_MS)
        if parsed.rejected or parsed.kind in (FrameKind.MALFORMED, FrameKind.ERROR):
            reasons = [r.reason for r in parsed.rejected] or [parsed.detail]
            if not all(reason.strip() for reason in reasons):
                return "rejected_without_reason"
            return "rejected"
        return "accepted"

    return call


def _rest(adapter: ExchangeAdapter) -> Callable[[str], str]:
    info = next(iter(adapter.symbols.values()))

    def call(text: str) -> str:
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            return "rejected"  # the client refuses a body that is not JSON before parsing
        page = adapter.parse_rest(
            info, payload, OPEN_MS, OPEN_MS + 3 * 60_000, INGEST_MS + 10 * 60_000
        )
        if page.rejected:
            if not all(r.reason.strip() for r in page.rejected):
                return "rejected_without_reason"
            return "rejected"
        return "accepted"

    return call


SERIES = Series("binance", "BTC-USDT", "BTCUSDT", "1m")


def _rows(outcomes: list[Kline | Rejection]) -> str:
    if any(isinstance(row, Rejection) for row in outcomes):
        if not all(row.reason.strip() for row in outcomes if isinstance(row, Rejection)):
            return "rejected_without_reason"
        return "rejected"
    return "accepted"


def csv_inputs(rng: random.Random) -> Iterator[bytes]:
    """Archive CSV lines: the good row, hostile columns, BOMs, headers, non-UTF-8 bytes."""
    header = ",".join(BINANCE_COLUMNS)
    while True:
        roll = rng.random()
        row = list(CSV_ROW)
        if roll < 0.1:
            yield ",".join(row).encode()
            continue
        if roll < 0.15:
            yield ("\ufeff" + header).encode()
            continue
        if roll < 0.2:
            yield rng.choice([b"\xff\xfe\x00", b"1717171200000,\xff,1", b"\xef\xbb\xbf" + b"x"])
            continue
        for _ in range(rng.randint(1, 3)):
            value = hostile_value(rng)
            text = value if isinstance(value, str) else dump(value, rng)
            row[rng.randrange(len(row))] = text
        if rng.random() < 0.1:
            row = row[: rng.randrange(len(row))]
        yield ",".join(row).encode("utf-8", "surrogatepass")


def _csv(line: bytes) -> str:
    return _rows(
        list(iter_csv_rows([line], location="f.csv", series=SERIES, clock=lambda: INGEST_MS))
    )


def _jsonl(line: bytes) -> str:
    return _rows(list(iter_jsonl_rows([line], location="f.jsonl")))


def reply_inputs(rng: random.Random) -> Iterator[Any]:
    """Model reply contents: JSON texts (fenced sometimes) and non-string values."""
    texts = document_inputs(REPLY, rng)
    while True:
        roll = rng.random()
        if roll < 0.08:
            yield rng.choice([None, 1, [], {}, b"{}", 2.5, True])
        else:
            text = next(texts)
            yield f"```json\n{text}\n```" if rng.random() < 0.2 else text


def _reply(content: Any) -> str:
    parse_reply(content)
    return "accepted"


def chat_inputs(rng: random.Random) -> Iterator[HttpResponse]:
    """Chat-completion HTTP responses with hostile bodies, statuses and Retry-After values."""
    replies = reply_inputs(rng)
    envelope = {
        "choices": [{"message": {"role": "assistant", "content": "x"}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20},
    }
    bodies = document_inputs(envelope, rng)
    while True:
        status = rng.choice([200, 200, 200, 200, 429, 500, 404, 408])
        retry_after = rng.choice([None, "1", "-5", "1e999", "nan", "٣", "9" * 400, "Wed, 21"])
        headers = {} if retry_after is None else {"retry-after": retry_after}
        if rng.random() < 0.5:
            content = next(replies)
            body = dump(
                {
                    "choices": [{"message": {"content": content}}],
                    "usage": {"prompt_tokens": hostile_value(rng), "completion_tokens": 3},
                },
                rng,
            )
        else:
            body = next(bodies)
        yield HttpResponse(status, headers, body.encode("utf-8", "surrogatepass"))


def _chat(response: HttpResponse) -> str:
    reply = parse_chat_response(response, 1.0)
    parse_reply(reply.content)
    return "accepted"


def _context_bars() -> tuple[ContextBar, ...]:
    return tuple(
        ContextBar(OPEN_MS + i * 60_000, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 10.0)
        for i in range(30)
    )


def signal_inputs(rng: random.Random) -> Iterator[SignalRequest]:
    """Signal requests whose indicator and volume values are hostile."""
    names = ("rsi_14", "macd", "macd_signal", "macd_hist", "macd_hist_prev", "bb_middle")
    bars = _context_bars()
    while True:
        indicators = tuple(
            (name, hostile_value(rng) if rng.random() < 0.5 else 50.0)
            for name in (*names, "bb_upper", "bb_lower")
        )
        profile = (("vwap", hostile_value(rng)), ("total_volume", 300.0))
        context = MarketContext("binance", "BTC-USDT", "1m", bars, indicators, profile)
        yield SignalRequest(context, 1)


def _signal(request: SignalRequest) -> str:
    rules_signal(request)
    return "accepted"


def dead_letter_inputs(rng: random.Random) -> Iterator[DeadLetter]:
    """Dead letters of hostile originals: control characters, invalid UTF-8, huge sizes."""
    while True:
        size = rng.choice([10, 1000, 100_000, 200_000, 800_000, 1_500_000])
        kind = rng.randrange(4)
        if kind == 0:
            original = b"\x01" * size
        elif kind == 1:
            original = bytes(rng.randrange(256) for _ in range(min(size, 5000))) * (
                max(1, size // 5000)
            )
        elif kind == 2:
            original = ('"\\' * (size // 2)).encode()
        else:
            original = ("é\x00" * (size // 3)).encode()
        reason = rng.choice(["bad", "x" * 10_000, "\x00" * 5000])
        yield DeadLetter(reason=reason, stage="bridge", original=original, key="k" * 50)


def _dead_letter(letter: DeadLetter) -> str:
    encoded = encode_dead_letter(letter)
    return "accepted" if len(encoded) <= DEAD_LETTER_LIMIT else "oversized"


def query_time_inputs(rng: random.Random) -> Iterator[str]:
    """``klineflow query --start`` values."""
    good = ["2025-01-01", "2025-01-01T12:00Z", "1735689600000", "1735689600"]
    while True:
        value = hostile_value(rng) if rng.random() < 0.9 else rng.choice(good)
        yield value if isinstance(value, str) else dump(value, rng)


def _query_time(text: str) -> str:
    from jobs.query_cmd import parse_time

    parse_time(text)
    return "accepted"


Boundary = tuple[
    str,
    Callable[[random.Random], Iterator[Any]],
    Callable[[Any], str],
    tuple[type[BaseException], ...],
]


def main(argv: list[str] | None = None) -> int:
    """Run every boundary; print the JSON counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="inputs per boundary")
    parser.add_argument("--seed", type=int, default=12, help="random seed")
    args = parser.parse_args(argv)
    import argparse as _argparse

    binance = BinanceSpot("spot", ["BTCUSDT"])
    okx = Okx("spot", ["BTC-USDT"])
    bybit = Bybit("spot", ["BTCUSDT"])
    rest_rejections = (RestError, RestRateLimited)

    def record_inputs(rng: random.Random) -> Iterator[str | bytes]:
        texts = document_inputs(WIRE_RECORD, rng)
        while True:
            text = next(texts)
            roll = rng.random()
            if roll < 0.05:
                yield text.encode("utf-8", "surrogatepass") + b"\xff"
            elif roll < 0.5:
                yield text.encode("utf-8", "surrogatepass")
            else:
                yield text

    def jsonl_inputs(rng: random.Random) -> Iterator[bytes]:
        for item in record_inputs(rng):
            yield item if isinstance(item, bytes) else item.encode("utf-8", "surrogatepass")

    boundaries: list[Boundary] = [
        ("record_decoder", record_inputs, _decode, (InvalidKline,)),
        ("binance_frame", lambda r: document_inputs(BINANCE_PUSH, r), _frame(binance), ()),
        ("okx_frame", lambda r: document_inputs(OKX_PUSH, r), _frame(okx), ()),
        ("bybit_frame", lambda r: document_inputs(BYBIT_PUSH, r), _frame(bybit), ()),
        (
            "binance_rest",
            lambda r: document_inputs(BINANCE_REST, r),
            _rest(binance),
            rest_rejections,
        ),
        ("okx_rest", lambda r: document_inputs(OKX_REST, r), _rest(okx), rest_rejections),
        ("bybit_rest", lambda r: document_inputs(BYBIT_REST, r), _rest(bybit), rest_rejections),
        ("archive_csv_row", csv_inputs, _csv, ()),
        ("archive_jsonl_row", jsonl_inputs, _jsonl, ()),
        ("model_reply", reply_inputs, _reply, (InvalidReply,)),
        ("chat_response", chat_inputs, _chat, (InferenceFailure, InvalidReply)),
        ("rules_signal", signal_inputs, _signal, ()),
        ("dead_letter", dead_letter_inputs, _dead_letter, ()),
        ("query_start", query_time_inputs, _query_time, (_argparse.ArgumentTypeError,)),
    ]
    results: dict[str, Any] = {}
    total = Counts()
    started = time.perf_counter()
    for number, (name, make_inputs, call, rejections) in enumerate(boundaries):
        counts = Counts()
        rng = random.Random(args.seed * 1000 + number)
        run_boundary(counts, make_inputs(rng), args.n, call, rejections)
        results[name] = counts.as_dict()
        total.tried += counts.tried
        total.rejected_with_reason += counts.rejected_with_reason
        total.accepted += counts.accepted
        total.other_exceptions += counts.other_exceptions
        total.extra.update(counts.extra)
    results["total"] = total.as_dict()
    results["elapsed_s"] = round(time.perf_counter() - started, 2)
    print(json.dumps(results, indent=2, ensure_ascii=True))
    problems = total.other_exceptions + total.extra["oversized"]
    problems += total.extra["of_which_internal_guard"]
    problems += total.extra["rejected_without_reason"]
    return 0 if problems == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
