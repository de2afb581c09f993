"""The engine: one signal per request, under the limits, with retries, cache and statistics."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from connectors.inference.cache import L2Cache, TTLCache
from connectors.inference.limits import CircuitBreaker, RateLimiter
from connectors.inference.settings import InferenceSettings, Secret
from connectors.inference.transport import (
    ChatReply,
    InferenceFailure,
    Transport,
    parse_chat_response,
)
from connectors.retry import Backoff
from udfs.rules import Analysis
from udfs.signals import (
    InvalidReply,
    Signal,
    SignalRequest,
    analysis_from_json,
    analysis_to_json,
    build_messages,
    context_hash,
    degraded_signal,
    make_signal,
    parse_reply,
    repair_messages,
)

log = logging.getLogger(__name__)


CHARS_PER_TOKEN: Final = 4


LATENCY_WINDOW: Final = 4096


@dataclass(slots=True)
class InferenceStats:
    """Counters of one engine; the Flink wrapper exposes them as gauges."""

    signals: int = 0
    http_requests: int = 0
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    invalid_replies: int = 0
    repairs: int = 0
    repaired: int = 0
    degraded: int = 0
    l1_hits: int = 0
    l2_hits: int = 0
    shared_hits: int = 0
    misses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latencies_ms: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    retry_delays_s: deque[float] = field(default_factory=lambda: deque(maxlen=256))

    @property
    def hits(self) -> int:
        """Signals served from a cache (L1, L2 or a shared in-flight call)."""
        return self.l1_hits + self.l2_hits + self.shared_hits

    def hit_rate_percent(self) -> int:
        """Cache hits per lookup, in percent (0 before the first lookup)."""
        lookups = self.hits + self.misses
        return round(100 * self.hits / lookups) if lookups else 0

    def latency_percentile_ms(self, q: float) -> int:
        """The ``q`` quantile (0..1) of recent signal latencies (0 if none yet)."""
        if not self.latencies_ms:
            return 0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def fail(self, kind: str) -> None:
        """Count one failed attempt of ``kind``."""
        self.failures[kind] = self.failures.get(kind, 0) + 1


# --- the engine -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    """Per-signal bookkeeping: tokens used and whether the endpoint was reached at all."""

    tokens: int = 0
    attempted: bool = False
    usage_known: bool = False


class _ModelFailed(Exception):
    def __init__(self, reason: str, *, endpoint_failed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.endpoint_failed = endpoint_failed


class InferenceEngine:
    """One subtask's client: cache -> breaker -> rate limit -> call (+ retries, + repair).

    ``share`` is the number of subtasks splitting the rate budget (the operator's
    parallelism). ``api_key`` None sends no Authorization header (local vLLM / Ollama).
    """

    def __init__(
        self,
        settings: InferenceSettings,
        *,
        api_key: Secret | None,
        transport: Transport,
        l2: L2Cache | None = None,
        share: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if share < 1:
            raise ValueError("share must be >= 1")
        self.settings = settings
        self.endpoint = settings.endpoint
        self.source = settings.model
        self._api_key = api_key
        self.transport = transport
        self.l2 = l2
        self.clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._backoff = Backoff(settings.backoff_base_s, settings.backoff_cap_s)
        self.limiter = RateLimiter(
            settings.requests_per_s / share,
            settings.request_burst / share,
            settings.tokens_per_min / share,
            clock=clock,
            sleep=sleep,
        )
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_open_s, clock)
        self.l1 = TTLCache(settings.cache_size, settings.cache_ttl_s, clock)
        self.stats = InferenceStats()
        self._inflight: dict[str, asyncio.Future[tuple[Analysis, int | None] | None]] = {}

    # -- public -------------------------------------------------------------------------

    async def analyse(self, request: SignalRequest) -> Signal:
        """Exactly one signal for ``request``; endpoint failures give a degraded signal."""
        started = self.clock()
        key = context_hash(request.context, self.settings.model)
        cached = await self._cached(key)
        if cached is not None:
            return self._finish(started, request, cached[0], cached=True)
        shared = self._inflight.get(key)
        if shared is not None:
            result = await asyncio.shield(shared)
            if result is not None:
                self.stats.shared_hits += 1
                return self._finish(started, request, result[0], cached=True)
        self.stats.misses += 1
        future: asyncio.Future[tuple[Analysis, int | None] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._inflight.setdefault(key, future)
        outcome: tuple[Analysis, int | None] | None = None
        try:
            signal, outcome = await self._from_model(started, request, key)
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
            if not future.done():
                future.set_result(outcome)
        return signal

    def degraded(self, request: SignalRequest, reason: str, started: float | None = None) -> Signal:
        """A degraded signal for ``request`` (pure; safe to call from another thread)."""
        self.stats.degraded += 1
        self.stats.signals += 1
        latency = None if started is None else self._elapsed_ms(started)
        return degraded_signal(request, source=self.source, reason=reason, latency_ms=latency)

    async def aclose(self) -> None:
        """Close the HTTP session and the L2 client (inside the running loop)."""
        await self.transport.aclose()
        if self.l2 is not None:
            await self.l2.close()

    # -- internals ----------------------------------------------------------------------

    async def _cached(self, key: str) -> tuple[Analysis, int | None] | None:
        blob = self.l1.get(key)
        if blob is not None:
            self.stats.l1_hits += 1
            return analysis_from_json(blob)
        if self.l2 is None:
            return None
        blob = await self.l2.get(key)
        if blob is None:
            return None
        try:
            value = analysis_from_json(blob)
        except InvalidReply:
            return None  # a corrupt or foreign entry is a miss
        self.stats.l2_hits += 1
        self.l1.put(key, blob)
        return value

    async def _from_model(
        self, started: float, request: SignalRequest, key: str
    ) -> tuple[Signal, tuple[Analysis, int | None] | None]:
        allowed, is_probe = self.breaker.permit()
        if not allowed:
            return self.degraded(request, "breaker_open", started), None
        call = _Call()
        remaining = self.settings.deadline_s - (self.clock() - started)
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                analysis = await self._ask(request, call)
        except TimeoutError:
            # Waiting for the rate budget is not the endpoint's fault; a slow call is.
            if call.attempted:
                self.breaker.record(success=False, is_probe=is_probe)
            elif is_probe:
                self.breaker.probe_in_flight = False
            self.stats.fail("deadline")
            return self._degraded_call(request, "timeout", started, call), None
        except _ModelFailed as failure:
            self.breaker.record(success=not failure.endpoint_failed, is_probe=is_probe)
            return self._degraded_call(request, failure.reason, started, call), None
        except BaseException:
            if is_probe:
                self.breaker.probe_in_flight = False
            raise
        self.breaker.record(success=True, is_probe=is_probe)
        tokens = call.tokens if call.usage_known else None
        blob = analysis_to_json(analysis, tokens)
        self.l1.put(key, blob)
        if self.l2 is not None:
            await self.l2.put(key, blob, self.settings.cache_ttl_s)
        return (
            self._finish(started, request, analysis, cached=False, tokens=tokens),
            (analysis, tokens),
        )

    async def _ask(self, request: SignalRequest, call: _Call) -> Analysis:
        messages = build_messages(request.context)
        reply = await self._complete(messages, call)
        try:
            return parse_reply(reply.content)
        except InvalidReply as invalid:
            self.stats.invalid_replies += 1
            first_reason = invalid.reason
        self.stats.repairs += 1
        repaired = await self._complete(
            repair_messages(messages, reply.content, first_reason), call
        )
        try:
            analysis = parse_reply(repaired.content)
        except InvalidReply:
            self.stats.invalid_replies += 1
            raise _ModelFailed("invalid_reply", endpoint_failed=False) from None
        self.stats.repaired += 1
        return analysis

    async def _complete(self, messages: Sequence[Mapping[str, str]], call: _Call) -> ChatReply:
        body_json: dict[str, Any] = {
            "model": self.settings.model,
            "messages": list(messages),
            "temperature": 0,
            "max_tokens": self.settings.max_tokens,
        }
        if self.settings.json_mode:
            body_json["response_format"] = {"type": "json_object"}
        body = orjson.dumps(body_json)
        estimate = len(body) / CHARS_PER_TOKEN + self.settings.max_tokens
        headers = {"Content-Type": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        last_kind = "unknown"
        for attempt in range(self.settings.max_attempts):
            await self.limiter.acquire(estimate)
            call.attempted = True
            self.stats.http_requests += 1
            try:
                response = await self.transport.post(
                    self.endpoint, body, headers, self.settings.attempt_timeout_s
                )
                reply = parse_chat_response(response, self.settings.backoff_base_s)
            except InferenceFailure as failure:
                if failure.kind.startswith("http_"):
                    self.limiter.settle(estimate, 0)  # refused: no tokens were spent
                self.stats.fail(failure.kind)
                last_kind = failure.kind
                if not failure.retryable:
                    raise _ModelFailed(failure.kind, endpoint_failed=True) from None
                if attempt + 1 >= self.settings.max_attempts:
                    break
                delay = self._backoff.delay(attempt, self._rng.uniform)
                if failure.retry_after_s is not None:
                    self.limiter.block_until(self.clock() + failure.retry_after_s)
                    delay = max(delay, failure.retry_after_s)
                self.stats.retries += 1
                self.stats.retry_delays_s.append(delay)
                log.info(
                    "inference attempt %d/%d failed (%s); retrying in %.3f s",
                    attempt + 1,
                    self.settings.max_attempts,
                    failure.kind,
                    delay,
                )
                await self._sleep(delay)
                continue
            used = reply.total_tokens
            if used is not None:
                call.usage_known = True
                call.tokens += used
                self.limiter.settle(estimate, used)
                self.stats.prompt_tokens += reply.prompt_tokens or 0
                self.stats.completion_tokens += reply.completion_tokens or 0
                self.stats.cost_usd += used * self.settings.price_per_million_tokens / 1e6
            return reply
        log.warning(
            "inference failed after %d attempts (%s); emitting a degraded signal",
            self.settings.max_attempts,
            last_kind,
        )
        raise _ModelFailed(f"retries_exhausted:{last_kind}", endpoint_failed=True)

    def _degraded_call(
        self, request: SignalRequest, reason: str, started: float, call: _Call
    ) -> Signal:
        self.stats.degraded += 1
        self.stats.signals += 1
        return degraded_signal(
            request,
            source=self.source,
            reason=reason,
            latency_ms=self._elapsed_ms(started),
            tokens=call.tokens if call.usage_known else None,
        )

    def _finish(
        self,
        started: float,
        request: SignalRequest,
        analysis: Analysis,
        *,
        cached: bool,
        tokens: int | None = None,
    ) -> Signal:
        latency = self._elapsed_ms(started)
        self.stats.signals += 1
        self.stats.latencies_ms.append(latency)
        return make_signal(
            request,
            analysis,
            source=self.source,
            latency_ms=latency,
            tokens=0 if cached else tokens,
            cached=cached,
        )

    def _elapsed_ms(self, started: float) -> int:
        return max(0, round((self.clock() - started) * 1000))
