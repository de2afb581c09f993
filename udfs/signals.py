"""Signals of closed bars: the record, the context given to a model, the prompt, and strict
validation of the model's reply (with one repair prompt). Plain Python, no I/O.

A :class:`SignalRequest` carries one closed bar's :class:`MarketContext` (its last N bars, the
indicators, a volume summary) and the bar's version; every request becomes exactly one
:class:`Signal`: from a model, from the cache, from the rules analyser (no endpoint configured),
or degraded (the rules verdict, marked ``degraded`` with a ``reason``) when the model could not
answer in time or validly.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from udfs import rules
from udfs.pickling import pickled_as_arguments
from udfs.record import Kline
from udfs.rules import Analysis

PROMPT_VERSION: Final = "signals-v1"
RULES_SOURCE: Final = "rules"
RECOMMENDATIONS: Final = frozenset({"bullish", "bearish", "neutral"})
REPLY_FIELDS: Final = frozenset({"pattern", "recommendation", "confidence", "key_levels"})
MAX_PATTERN_CHARS: Final = 80
MAX_KEY_LEVELS: Final = 10
# A reply of max_tokens (300 by default) is about 1,200 characters; longer is not parsed.
MAX_REPLY_CHARS: Final = 20_000
# The columns of ClickHouse `signals`, in table order.
SIGNAL_COLUMNS: Final[tuple[str, ...]] = (
    "exchange",
    "symbol",
    "timeframe",
    "open_time",
    "source",
    "pattern",
    "recommendation",
    "confidence",
    "key_levels",
    "latency_ms",
    "tokens",
    "cached",
    "degraded",
    "version",
)
_FENCE_RE: Final = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


class InvalidReply(ValueError):
    """A model reply that breaks the contract; ``reason`` is short and contains no secrets."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@pickled_as_arguments
@dataclass(frozen=True, slots=True)
class ContextBar:
    """The part of a closed bar a model (and the rules) look at."""

    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float


def context_bar(kline: Kline) -> ContextBar:
    """The context view of a bar."""
    return ContextBar(kline.open_time, kline.open, kline.high, kline.low, kline.close, kline.volume)


@pickled_as_arguments
@dataclass(frozen=True, slots=True)
class MarketContext:
    """What one analysis sees: a series, its last bars (oldest first, the analysed bar last),
    indicator values and a volume summary (name -> value pairs, None = unknown).

    ``indicators`` and ``profile`` are computed from the bars today; when the indicator and
    volume-profile operators of the pipeline feed them, pass their values instead.
    """

    exchange: str
    symbol: str
    timeframe: str
    bars: tuple[ContextBar, ...]
    indicators: tuple[tuple[str, float | None], ...] = ()
    profile: tuple[tuple[str, float | None], ...] = ()

    @property
    def open_time(self) -> int:
        """The open time of the analysed (newest) bar."""
        return self.bars[-1].open_time

    def payload(self) -> dict[str, Any]:
        """The compact JSON-able form that goes into the prompt and the cache key."""
        return {
            "series": f"{self.exchange}:{self.symbol}:{self.timeframe}",
            "bar_open_time": _iso(self.open_time),
            "bars": {
                "columns": ["open", "high", "low", "close", "volume"],
                "rows": [[b.open, b.high, b.low, b.close, b.volume] for b in self.bars],
            },
            "indicators": {name: _rounded(value) for name, value in self.indicators},
            "volume": {name: _rounded(value) for name, value in self.profile},
        }


@pickled_as_arguments
@pickled_as_arguments
@dataclass(frozen=True, slots=True)
class SignalRequest:
    """One closed bar to analyse: its context and the bar's version."""

    context: MarketContext
    version: int

    @property
    def series_key(self) -> str:
        """``exchange:symbol:timeframe``."""
        c = self.context
        return f"{c.exchange}:{c.symbol}:{c.timeframe}"


@pickled_as_arguments
@dataclass(frozen=True, slots=True)
class Signal:
    """A row of ClickHouse ``signals`` (and the ``signal:`` hash, which adds ``reason``)."""

    exchange: str
    symbol: str
    timeframe: str
    open_time: int
    source: str
    pattern: str
    recommendation: str
    confidence: float | None
    key_levels: tuple[float, ...]
    latency_ms: int | None
    tokens: int | None
    cached: bool
    degraded: bool
    version: int
    reason: str = field(default="")

    @property
    def series_key(self) -> str:
        """``exchange:symbol:timeframe``."""
        return f"{self.exchange}:{self.symbol}:{self.timeframe}"

    def row(self) -> dict[str, Any]:
        """The ClickHouse row (column -> value; key_levels as a list)."""
        values = {name: getattr(self, name) for name in SIGNAL_COLUMNS}
        values["key_levels"] = list(self.key_levels)
        return values

    def hash_fields(self) -> dict[str, Any]:
        """The ``signal:`` hash content: the row plus the degradation reason."""
        fields = self.row()
        fields["reason"] = self.reason
        return fields


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rounded(value: float | None) -> float | None:
    number = _number(value)
    if number is None:
        return None
    return float(f"{number:.6g}")


def default_indicators(bars: Sequence[ContextBar]) -> tuple[tuple[str, float | None], ...]:
    """RSI 14, MACD 12/26/9 and Bollinger 20 of the bars (the rules' internal computation)."""
    snap = rules.indicator_snapshot(bars)
    return (
        ("rsi_14", snap.rsi),
        ("macd", snap.macd),
        ("macd_signal", snap.macd_signal),
        ("macd_hist", snap.macd_hist),
        ("macd_hist_prev", snap.macd_hist_prev),
        ("bb_middle", snap.bb_middle),
        ("bb_upper", snap.bb_upper),
        ("bb_lower", snap.bb_lower),
    )


def default_profile(bars: Sequence[ContextBar]) -> tuple[tuple[str, float | None], ...]:
    """A volume summary of the bars: typical-price VWAP, total volume, last / mean volume."""
    total = sum(b.volume for b in bars)
    if not bars or total <= 0:
        return (("vwap", None), ("total_volume", total), ("last_volume_ratio", None))
    vwap = sum((b.high + b.low + b.close) / 3 * b.volume for b in bars) / total
    mean = total / len(bars)
    return (("vwap", vwap), ("total_volume", total), ("last_volume_ratio", bars[-1].volume / mean))


def build_context(
    exchange: str,
    symbol: str,
    timeframe: str,
    history: Sequence[ContextBar],
    prompt_bars: int,
    *,
    indicators: Mapping[str, float | None] | None = None,
    profile: Mapping[str, float | None] | None = None,
) -> MarketContext:
    """The context of the newest bar of ``history`` (oldest first, at least one bar).

    Indicators are computed over the whole history (so they warm up) and default to the rules'
    computation; only the newest ``prompt_bars`` bars go into the prompt.
    """
    if not history:
        raise ValueError("a context needs at least one bar")
    bars = tuple(history[-prompt_bars:])
    return MarketContext(
        exchange=exchange,
        symbol=symbol,
        timeframe=timeframe,
        bars=bars,
        indicators=(
            tuple(indicators.items()) if indicators is not None else default_indicators(history)
        ),
        profile=tuple(profile.items()) if profile is not None else default_profile(bars),
    )


def merge_history(
    history: Sequence[ContextBar], bar: ContextBar, keep: int
) -> tuple[list[ContextBar], list[ContextBar]]:
    """Put ``bar`` into ``history`` (sorted by open time, a same-time bar replaced).

    Returns ``(new_history, context_history)``: the newest ``keep`` bars to store, and the bars
    up to and including ``bar`` (what a correction of an older bar is analysed with).
    """
    merged = [b for b in history if b.open_time != bar.open_time]
    merged.append(bar)
    merged.sort(key=lambda b: b.open_time)
    upto = [b for b in merged if b.open_time <= bar.open_time][-keep:]
    return merged[-keep:], upto


def context_hash(context: MarketContext, model: str) -> str:
    """The cache key: SHA-256 of the prompt version, the model and the context payload."""
    blob = orjson.dumps(
        {"prompt": PROMPT_VERSION, "model": model, "context": context.payload()},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(blob).hexdigest()


SYSTEM_PROMPT: Final = (
    "You are a technical analyst of cryptocurrency candlestick charts. You receive one series' "
    "most recent closed bars (oldest first, the last row is the bar to analyse), indicator values "
    "and a volume summary. Reply with ONLY one JSON object, no prose, exactly these keys: "
    '"pattern" (string, the main candlestick or chart pattern on the last bar, snake_case, '
    '"none" if there is none), "recommendation" (one of "bullish", "bearish", "neutral"), '
    '"confidence" (number from 0 to 1), "key_levels" (array of up to 10 support/resistance '
    "prices, numbers)."
)


def build_messages(context: MarketContext) -> list[dict[str, str]]:
    """The chat-completions messages asking for the analysis of ``context``."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": orjson.dumps(context.payload()).decode()},
    ]


def repair_messages(
    messages: Sequence[Mapping[str, str]], bad_reply: str, reason: str
) -> list[dict[str, str]]:
    """The one repair attempt: the conversation, the invalid reply, and what was wrong."""
    return [
        *(dict(m) for m in messages),
        {"role": "assistant", "content": bad_reply[:4000]},
        {
            "role": "user",
            "content": (
                f"That reply is invalid: {reason}. Answer again with ONLY the JSON object with "
                'keys "pattern", "recommendation", "confidence", "key_levels" as specified.'
            ),
        },
    ]


def _strip_fence(text: str) -> str:
    stripped = text.strip()
    match = _FENCE_RE.match(stripped)
    return match.group(1).strip() if match else stripped


def _number(value: Any) -> float | None:
    """A finite float from an int or float; None for anything else (bools, strings, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def parse_reply(content: Any) -> Analysis:
    """Validate a model reply strictly; raise :class:`InvalidReply` with the reason.

    The reply must be one JSON object (a single Markdown code fence around it is tolerated)
    with exactly ``pattern`` (non-empty string), ``recommendation`` (bullish / bearish /
    neutral), ``confidence`` (a number in [0, 1]) and ``key_levels`` (at most 10 positive
    finite numbers). Numbers given as strings are refused like any other wrong type. Raises
    nothing but InvalidReply, whatever ``content`` is.
    """
    if not isinstance(content, str) or not content.strip():
        raise InvalidReply("the reply is empty")
    if len(content) > MAX_REPLY_CHARS:
        raise InvalidReply(f"the reply is longer than {MAX_REPLY_CHARS} characters")
    try:
        data = orjson.loads(_strip_fence(content))
    except orjson.JSONDecodeError:
        raise InvalidReply("the reply is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidReply(f"expected a JSON object, got {type(data).__name__}")
    missing = sorted(REPLY_FIELDS - set(data))
    if missing:
        raise InvalidReply(f"missing key(s): {', '.join(missing)}")
    extra = sorted(set(data) - REPLY_FIELDS)
    if extra:
        raise InvalidReply(f"unexpected key(s): {', '.join(extra[:5])}")
    pattern = data["pattern"]
    if not isinstance(pattern, str) or not pattern.strip():
        raise InvalidReply("pattern must be a non-empty string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidReply(f"pattern is longer than {MAX_PATTERN_CHARS} characters")
    recommendation = data["recommendation"]
    if not isinstance(recommendation, str) or recommendation not in RECOMMENDATIONS:
        raise InvalidReply('recommendation must be "bullish", "bearish" or "neutral"')
    confidence = _number(data["confidence"])
    if confidence is None or not 0.0 <= confidence <= 1.0:
        raise InvalidReply("confidence must be a number from 0 to 1")
    levels = data["key_levels"]
    if not isinstance(levels, list) or len(levels) > MAX_KEY_LEVELS:
        raise InvalidReply(f"key_levels must be an array of at most {MAX_KEY_LEVELS} numbers")
    numbers = [_number(level) for level in levels]
    if any(n is None or n <= 0 for n in numbers):
        raise InvalidReply("key_levels must hold positive finite numbers")
    return Analysis(
        pattern=pattern.strip(),
        recommendation=recommendation,
        confidence=confidence,
        key_levels=tuple(n for n in numbers if n is not None),
    )


def analysis_to_json(analysis: Analysis, tokens: int | None) -> bytes:
    """The cache value of an analysis (and the tokens it cost)."""
    return orjson.dumps(
        {
            "pattern": analysis.pattern,
            "recommendation": analysis.recommendation,
            "confidence": analysis.confidence,
            "key_levels": list(analysis.key_levels),
            "tokens": tokens,
        }
    )


def analysis_from_json(blob: bytes | str) -> tuple[Analysis, int | None]:
    """The inverse of :func:`analysis_to_json`; raises InvalidReply on a corrupt value."""
    try:
        data = orjson.loads(blob)
    except orjson.JSONDecodeError:
        raise InvalidReply("cached value is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidReply("cached value is not an object")
    tokens = data.pop("tokens", None)
    analysis = parse_reply(orjson.dumps(data).decode())
    known = isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0
    return analysis, tokens if known else None


def make_signal(
    request: SignalRequest,
    analysis: Analysis,
    *,
    source: str,
    latency_ms: int | None = None,
    tokens: int | None = None,
    cached: bool = False,
    degraded: bool = False,
    reason: str = "",
) -> Signal:
    """The signal of ``request`` carrying ``analysis``."""
    c = request.context
    return Signal(
        exchange=c.exchange,
        symbol=c.symbol,
        timeframe=c.timeframe,
        open_time=c.open_time,
        source=source,
        pattern=analysis.pattern,
        recommendation=analysis.recommendation,
        confidence=analysis.confidence,
        key_levels=analysis.key_levels,
        latency_ms=latency_ms,
        tokens=tokens,
        cached=cached,
        degraded=degraded,
        version=request.version,
        reason=reason,
    )


def snapshot_from_context(context: MarketContext) -> rules.IndicatorSnapshot | None:
    """The context's indicator values as the rules read them; None if it carries none."""
    if not context.indicators:
        return None
    # Anything but a finite number (a string, a list, NaN) counts as unknown.
    values = {name: _number(value) for name, value in context.indicators}
    return rules.IndicatorSnapshot(
        rsi=values.get("rsi_14"),
        macd=values.get("macd"),
        macd_signal=values.get("macd_signal"),
        macd_hist=values.get("macd_hist"),
        macd_hist_prev=values.get("macd_hist_prev"),
        bb_middle=values.get("bb_middle"),
        bb_upper=values.get("bb_upper"),
        bb_lower=values.get("bb_lower"),
    )


def rules_analysis(context: MarketContext) -> Analysis:
    """The rules analyser's verdict on a context (indicators as the context carries them)."""
    return rules.analyse(context.bars, snapshot_from_context(context))


def rules_signal(request: SignalRequest) -> Signal:
    """The signal of the rules analyser (no endpoint configured): source ``rules``."""
    return make_signal(request, rules_analysis(request.context), source=RULES_SOURCE)


def degraded_signal(
    request: SignalRequest,
    *,
    source: str,
    reason: str,
    latency_ms: int | None,
    tokens: int | None = None,
) -> Signal:
    """A degraded signal: the rules verdict in the model's slot, with why the model failed."""
    return make_signal(
        request,
        rules_analysis(request.context),
        source=source,
        latency_ms=latency_ms,
        tokens=tokens,
        degraded=True,
        reason=reason,
    )
