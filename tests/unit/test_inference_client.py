"""The inference engine's policies with an injected clock, sleep, randomness and transport.

No network here: :class:`FakeTransport` answers from a script on a virtual clock that only
moves when the engine sleeps (or the transport "takes time"), so timings are exact.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson
import pytest

from connectors.inference import (
    BreakerState,
    CircuitBreaker,
    HttpResponse,
    InferenceEngine,
    InferenceFailure,
    InferenceSettings,
    RateLimiter,
    Secret,
    TTLCache,
    load_api_key,
    parse_chat_response,
)
from connectors.retry import Backoff, TokenBucket
from udfs.signals import (
    ContextBar,
    InvalidReply,
    MarketContext,
    SignalRequest,
    build_context,
    context_hash,
    merge_history,
    parse_reply,
)

KEY = "sk-test-SECRET-0123456789"
GOOD = {"pattern": "hammer", "recommendation": "bullish", "confidence": 0.8,
        "key_levels": [100.0, 120.5]}  # fmt: skip


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def chat(content: str, *, usage: tuple[int, int] | None = (100, 20)) -> HttpResponse:
    body: dict[str, object] = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    return HttpResponse(200, {}, orjson.dumps(body))


def good() -> HttpResponse:
    return chat(orjson.dumps(GOOD).decode())


Step = HttpResponse | InferenceFailure | Callable[[], HttpResponse]


@dataclass
class FakeTransport:
    clock: VirtualClock
    steps: list[Step]
    took_s: float = 0.05
    calls: list[tuple[float, dict[str, object], dict[str, str]]] = field(default_factory=list)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> HttpResponse:
        self.calls.append((self.clock.now, orjson.loads(body), dict(headers)))
        step = self.steps.pop(0) if self.steps else good()
        await self.clock.sleep(self.took_s)
        if isinstance(step, InferenceFailure):
            raise step
        return step() if callable(step) else step

    async def aclose(self) -> None:
        return None

    def close_sync(self) -> None:
        return None


def request(close: float = 100.0, version: int = 1, minute: int = 0) -> SignalRequest:
    bars = [ContextBar(1_735_689_600_000 + (minute + i) * 60_000, close - 1, close + 1,
                       close - 2, close + (i % 3) - 1, 5.0) for i in range(5)]  # fmt: skip
    return SignalRequest(build_context("binance", "BTC-USDT", "1m", bars, 30), version)


def engine(
    steps: list[Step], *, clock: VirtualClock | None = None, **overrides: object
) -> tuple[InferenceEngine, FakeTransport, VirtualClock]:
    clock = clock or VirtualClock()
    values: dict[str, object] = {
        "url": "http://127.0.0.1:9/v1",
        "model": "test-model",
        "requests_per_s": 1000.0,
        "backoff_base_s": 0.5,
        "backoff_cap_s": 8.0,
        "deadline_s": 60.0,
        "price_per_million_tokens": 2.0,
    }
    values.update(overrides)
    settings = InferenceSettings(**values)  # type: ignore[arg-type]
    transport = FakeTransport(clock, steps)
    eng = InferenceEngine(settings, api_key=Secret(KEY), transport=transport, clock=clock,
                          sleep=clock.sleep, rng=random.Random(7))  # fmt: skip
    return eng, transport, clock


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


# --- reply validation -----------------------------------------------------------------------


def test_parse_reply_accepts_exact_shape_and_a_code_fence() -> None:
    analysis = parse_reply(orjson.dumps(GOOD).decode())
    assert (analysis.pattern, analysis.recommendation, analysis.confidence) == (
        "hammer", "bullish", 0.8,
    )  # fmt: skip
    assert analysis.key_levels == (100.0, 120.5)
    fenced = "```json\n" + orjson.dumps(GOOD).decode() + "\n```"
    assert parse_reply(fenced) == analysis


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "empty"),
        ('{"pattern": "x", ', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (orjson.dumps({**GOOD, "extra": 1}).decode(), "unexpected key"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "confidence"}).decode(), "missing"),
        (orjson.dumps({**GOOD, "recommendation": "up"}).decode(), "recommendation"),
        (orjson.dumps({**GOOD, "confidence": 1.5}).decode(), "confidence"),
        (orjson.dumps({**GOOD, "confidence": True}).decode(), "confidence"),
        (orjson.dumps({**GOOD, "key_levels": ["100"]}).decode(), "key_levels"),
        (orjson.dumps({**GOOD, "key_levels": list(range(1, 20))}).decode(), "key_levels"),
        (orjson.dumps({**GOOD, "pattern": "  "}).decode(), "pattern"),
    ],
)
def test_parse_reply_rejects_with_a_reason(content: str, reason: str) -> None:
    with pytest.raises(InvalidReply, match=reason):
        parse_reply(content)


def test_parse_chat_response_classifies_statuses() -> None:
    with pytest.raises(InferenceFailure) as too_many:
        parse_chat_response(HttpResponse(429, {"retry-after": "3"}, b"{}"), 1.0)
    assert too_many.value.retryable and too_many.value.retry_after_s == 3.0
    with pytest.raises(InferenceFailure) as no_header:
        parse_chat_response(HttpResponse(429, {}, b"{}"), 1.5)
    assert no_header.value.retry_after_s == 1.5
    for status, retryable in ((500, True), (503, True), (400, False), (401, False)):
        with pytest.raises(InferenceFailure) as failure:
            parse_chat_response(HttpResponse(status, {}, b"{}"), 1.0)
        assert failure.value.retryable is retryable
    with pytest.raises(InferenceFailure, match="bad_body"):
        parse_chat_response(HttpResponse(200, {}, b"<html>"), 1.0)
    reply = parse_chat_response(chat("x", usage=(7, 3)), 1.0)
    assert (reply.content, reply.total_tokens) == ("x", 10)
    assert parse_chat_response(chat("x", usage=None), 1.0).total_tokens is None


# --- context --------------------------------------------------------------------------------


def test_context_hash_depends_on_content_model_and_series_only() -> None:
    a, b = request(), request(version=9)
    assert context_hash(a.context, "m") == context_hash(b.context, "m")  # version not in key
    assert context_hash(a.context, "m") != context_hash(a.context, "other")
    assert context_hash(a.context, "m") != context_hash(request(close=101.0).context, "m")
    moved = MarketContext("okx", "BTC-USDT", "1m", a.context.bars, a.context.indicators,
                          a.context.profile)  # fmt: skip
    assert context_hash(moved, "m") != context_hash(a.context, "m")


def test_merge_history_replaces_corrections_and_bounds_the_state() -> None:
    bars = [ContextBar(t, 1, 2, 0.5, 1.5, 1) for t in range(5)]
    history, upto = merge_history(bars, ContextBar(2, 9, 9, 9, 9, 9), keep=4)
    assert [b.open_time for b in history] == [1, 2, 3, 4]
    assert [b.open_time for b in upto] == [0, 1, 2]
    assert upto[-1].close == 9
    history, upto = merge_history(history, ContextBar(5, 1, 2, 0.5, 1.5, 1), keep=4)
    assert [b.open_time for b in history] == [2, 3, 4, 5] == [b.open_time for b in upto]


# --- policies -------------------------------------------------------------------------------


def test_full_jitter_delays_are_bounded_and_vary() -> None:
    rng = random.Random(1)
    for attempt in range(6):
        ceiling = min(8.0, 0.5 * 2**attempt)
        delays = [Backoff(0.5, 8.0).delay(attempt, rng.uniform) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling * 0.5  # spread over the range, not fixed


def test_token_bucket_and_rate_limiter_space_requests() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(4.0, 1.0, 600_000.0, clock=clock, sleep=clock.sleep)

    async def go() -> list[float]:
        times = []
        for _ in range(9):
            await limiter.acquire(10)
            times.append(clock.now)
        return times

    times = run(go())
    assert isinstance(times, list)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g == pytest.approx(0.25) for g in gaps)


def test_tokens_per_minute_budget_and_settlement() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(1000.0, 10.0, 600.0, clock=clock, sleep=clock.sleep)  # 10 tokens/s

    async def go() -> None:
        await limiter.acquire(300)
        await limiter.acquire(300)
        assert clock.now == pytest.approx(1000.0)  # 600 saved up: both at once
        limiter.settle(300, 500)  # the reply used 200 more than estimated
        await limiter.acquire(100)

    run(go())
    # Balance after the settle: -200; 100 more needed -> 300 tokens at 10/s = 30 s.
    assert clock.now == pytest.approx(1030.0)


def test_retry_after_blocks_the_limiter() -> None:
    bucket = TokenBucket(10.0, 1.0)
    assert bucket.wait_for(1, 0.0) == 0.0
    clock = VirtualClock()
    limiter = RateLimiter(10.0, 1.0, 1e6, clock=clock, sleep=clock.sleep)
    limiter.block_until(clock.now + 5.0)
    run(limiter.acquire(1))
    assert clock.now == pytest.approx(1005.0)


def test_breaker_opens_probes_once_and_closes() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker(3, 30.0, clock)
    for _ in range(3):
        assert breaker.permit() == (True, False)
        breaker.record(success=False, is_probe=False)
    assert breaker.current() is BreakerState.OPEN
    assert breaker.permit() == (False, False)
    clock.now += 30.0
    assert breaker.permit() == (True, True)  # the one probe
    assert breaker.permit() == (False, False)  # nobody else while it runs
    breaker.record(success=False, is_probe=True)
    assert breaker.current() is BreakerState.OPEN and breaker.opened_count == 2
    clock.now += 30.0
    assert breaker.permit() == (True, True)
    breaker.record(success=True, is_probe=True)
    assert breaker.current() is BreakerState.CLOSED


def test_ttl_cache_evicts_lru_and_expires() -> None:
    clock = VirtualClock()
    cache = TTLCache(2, 10.0, clock)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"  # a is now the most recent
    cache.put("c", b"3")
    assert cache.get("b") is None and cache.get("a") == b"1" and cache.get("c") == b"3"
    clock.now += 10.0
    assert cache.get("a") is None and len(cache) == 1


def test_secret_never_shows_and_is_never_pickled(tmp_path: pytest.TempPathFactory) -> None:
    secret = Secret(KEY)
    assert KEY not in repr(secret) and KEY not in str(secret) and KEY not in f"{secret}"
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    key_file = tmp_path / "key"  # type: ignore[operator]
    key_file.write_text(KEY + "\n")
    loaded = load_api_key("KLINEFLOW_TEST_UNSET_VARIABLE", str(key_file))
    assert loaded is not None and loaded.reveal() == KEY
    assert load_api_key("KLINEFLOW_TEST_UNSET_VARIABLE") is None


# --- the engine -----------------------------------------------------------------------------


def test_success_counts_tokens_cost_and_sends_the_key_only_in_the_header() -> None:
    eng, transport, _ = engine([good()])
    signal = run(eng.analyse(request(version=3)))
    assert (signal.source, signal.pattern, signal.recommendation, signal.version) == (  # type: ignore[attr-defined]
        "test-model", "hammer", "bullish", 3,
    )  # fmt: skip
    assert signal.tokens == 120 and not signal.degraded and not signal.cached  # type: ignore[attr-defined]
    assert eng.stats.prompt_tokens == 100 and eng.stats.completion_tokens == 20
    assert eng.stats.cost_usd == pytest.approx(120 * 2.0 / 1e6)
    _, body, headers = transport.calls[0]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in orjson.dumps(body).decode()
    assert body["model"] == "test-model" and body["response_format"] == {"type": "json_object"}


def test_repeated_context_is_served_from_l1_cache() -> None:
    eng, transport, _ = engine([good()])
    first = run(eng.analyse(request(version=1)))
    second = run(eng.analyse(request(version=2)))
    assert len(transport.calls) == 1
    assert not first.cached and second.cached and second.version == 2  # type: ignore[attr-defined]
    assert second.tokens == 0  # type: ignore[attr-defined]
    assert (eng.stats.l1_hits, eng.stats.misses, eng.stats.hit_rate_percent()) == (1, 1, 50)


def test_concurrent_identical_contexts_share_one_call() -> None:
    eng, transport, _ = engine([good()])

    async def go() -> list[object]:
        return list(await asyncio.gather(*(eng.analyse(request(version=v)) for v in range(4))))

    signals = run(go())
    assert len(transport.calls) == 1
    assert sorted(s.cached for s in signals) == [False, True, True, True]  # type: ignore[attr-defined]


class DictL2:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.data[key] = value

    async def close(self) -> None:
        return None


def test_l2_cache_serves_another_engine() -> None:
    shared = DictL2()
    first, _t1, _ = engine([good()])
    first.l2 = shared
    run(first.analyse(request()))
    second, t2, _ = engine([])
    second.l2 = shared
    signal = run(second.analyse(request()))
    assert signal.cached and len(t2.calls) == 0 and second.stats.l2_hits == 1  # type: ignore[attr-defined]
    shared.data[next(iter(shared.data))] = b"garbage"
    third, t3, _ = engine([good()])
    third.l2 = shared
    assert not run(third.analyse(request())).cached  # type: ignore[attr-defined]
    assert len(t3.calls) == 1


def test_retryable_failures_back_off_with_jitter_then_succeed() -> None:
    steps: list[Step] = [
        InferenceFailure("connection:ServerDisconnectedError", retryable=True),
        HttpResponse(503, {}, b""),
        good(),
    ]
    eng, transport, _ = engine(steps, max_attempts=3)
    signal = run(eng.analyse(request()))
    assert not signal.degraded and len(transport.calls) == 3  # type: ignore[attr-defined]
    assert eng.stats.retries == 2
    gaps = [b[0] - a[0] for a, b in zip(transport.calls, transport.calls[1:], strict=False)]
    assert 0.05 <= gaps[0] <= 0.5 + 0.05 and 0.05 <= gaps[1] <= 1.0 + 0.05


def test_retries_are_bounded_and_then_degrade() -> None:
    eng, transport, _ = engine([HttpResponse(500, {}, b"")] * 10, max_attempts=4)
    signal = run(eng.analyse(request(version=5)))
    assert len(transport.calls) == 4
    assert signal.degraded and signal.reason == "retries_exhausted:http_500"  # type: ignore[attr-defined]
    assert signal.source == "test-model" and signal.version == 5  # type: ignore[attr-defined]
    assert signal.recommendation in {"bullish", "bearish", "neutral"}  # type: ignore[attr-defined]


def test_jittered_delays_differ_between_requests() -> None:
    eng, _, _ = engine([HttpResponse(500, {}, b"")] * 40, max_attempts=3, breaker_failures=100)

    async def go() -> None:
        for i in range(10):
            await eng.analyse(request(close=100.0 + i))

    run(go())
    delays = list(eng.stats.retry_delays_s)
    assert len(delays) == 20 and len(set(delays)) == 20
    assert all(0 <= d <= 1.0 for d in delays)


def test_non_retryable_status_is_not_retried() -> None:
    eng, transport, _ = engine([HttpResponse(401, {}, b"")])
    signal = run(eng.analyse(request()))
    assert len(transport.calls) == 1 and signal.reason == "http_401"  # type: ignore[attr-defined]


def test_429_honours_retry_after_for_the_whole_subtask() -> None:
    eng, transport, _ = engine([HttpResponse(429, {"retry-after": "4"}, b""), good()])
    run(eng.analyse(request()))
    (t0, _, _), (t1, _, _) = transport.calls
    assert t1 - t0 >= 4.0


def test_invalid_reply_gets_one_repair_then_degrades() -> None:
    wrong = chat(orjson.dumps({"pattern": "x", "recommendation": "up"}).decode())
    eng, transport, _ = engine([wrong, good()])
    repaired = run(eng.analyse(request()))
    assert not repaired.degraded and eng.stats.repaired == 1  # type: ignore[attr-defined]
    repair_body = transport.calls[1][1]
    roles = [m["role"] for m in repair_body["messages"]]  # type: ignore[index]
    assert roles == ["system", "user", "assistant", "user"]
    assert "missing key(s)" in repair_body["messages"][-1]["content"]  # type: ignore[index]
    assert repaired.tokens == 240  # both calls counted  # type: ignore[attr-defined]

    eng, transport, _ = engine([chat("not json {"), chat("still not json")])
    signal = run(eng.analyse(request(close=50.0)))
    assert len(transport.calls) == 2
    assert signal.degraded and signal.reason == "invalid_reply"  # type: ignore[attr-defined]
    assert eng.breaker.current() is BreakerState.CLOSED  # the endpoint itself is fine


def test_deadline_gives_a_degraded_signal() -> None:
    class Hanging(FakeTransport):
        async def post(
            self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
        ) -> HttpResponse:
            await asyncio.sleep(30)  # real time: asyncio.timeout runs on the loop's clock
            return good()

    settings = InferenceSettings(url="http://127.0.0.1:9/v1", deadline_s=0.2)
    eng = InferenceEngine(settings, api_key=None, transport=Hanging(VirtualClock(), []))
    signal = run(eng.analyse(request()))
    assert signal.degraded and signal.reason == "timeout"  # type: ignore[attr-defined]
    assert 200 <= signal.latency_ms <= 1000  # type: ignore[attr-defined]
    assert eng.breaker.failures == 1  # a call was in flight: the endpoint is to blame


def test_open_breaker_falls_back_to_rules_without_calling() -> None:
    eng, transport, clock = engine([HttpResponse(500, {}, b"")] * 6, max_attempts=1,
                                   breaker_failures=3, breaker_open_s=30.0)  # fmt: skip

    async def go() -> list[object]:
        return [await eng.analyse(request(close=100.0 + i)) for i in range(5)]

    signals = run(go())
    assert len(transport.calls) == 3
    assert [s.reason for s in signals[3:]] == ["breaker_open", "breaker_open"]  # type: ignore[attr-defined]
    clock.now += 31.0
    transport.steps = [good()]
    probe = run(eng.analyse(request(close=200.0)))
    assert not probe.degraded and eng.breaker.current() is BreakerState.CLOSED  # type: ignore[attr-defined]


def test_budget_split_by_share_and_waiting_is_not_a_breaker_failure() -> None:
    clock = VirtualClock()
    eng, transport, _ = engine([], clock=clock, requests_per_s=4.0, deadline_s=100.0)
    eng2 = InferenceEngine(eng.settings, api_key=None, transport=transport, share=2,
                           clock=clock, sleep=clock.sleep)  # fmt: skip

    async def go() -> None:
        for i in range(5):
            await eng2.analyse(request(close=10.0 + i))

    run(go())
    times = [t for t, _, _ in transport.calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.5 - 1e-9 for g in gaps)  # 4 rps split over 2 subtasks
    assert "Authorization" not in transport.calls[0][2]


def test_the_key_is_in_no_log_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    steps: list[Step] = [HttpResponse(500, {}, b"")] * 3 + [HttpResponse(429, {}, b"")]
    eng, _, _ = engine(steps, max_attempts=3, breaker_failures=1)
    run(eng.analyse(request()))
    run(eng.analyse(request(close=1.0)))
    assert caplog.records  # retries and the breaker did log
    assert all(KEY not in record.getMessage() for record in caplog.records)
    assert KEY not in repr(eng.settings) and KEY not in repr(eng._api_key)
