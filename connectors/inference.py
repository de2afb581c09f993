"""The inference client: OpenAI-compatible chat completions under a rate budget, with retries
(exponential backoff, full jitter), a circuit breaker, a two-level cache and cost accounting.

:class:`InferenceEngine` turns a :class:`udfs.signals.SignalRequest` into exactly one
:class:`udfs.signals.Signal` and never raises for a failure of the endpoint: a timeout, an open
breaker, exhausted retries or an invalid reply (after one repair attempt) give a *degraded*
signal (the rules verdict, ``degraded=True`` and a ``reason``). Only programming errors raise.

Everything that waits or draws randomness takes it injected (``clock``, ``sleep``, ``rng``,
the HTTP ``transport``), so the unit tests drive the policies deterministically; the Flink
wrapper (``udfs.inference_functions``) runs one engine per subtask on PyFlink's event loop.

Budget sharing: one engine per parallel subtask, each with ``1 / share`` of the requests-per-
second and tokens-per-minute budget (``share`` = the operator's parallelism), so the operator
as a whole stays within the configured limits without a coordination round trip per request.
A 429's ``Retry-After`` pauses the subtask that received it.

Secrets: the API key is held in a :class:`Secret` (``repr`` shows ``***``, pickling refused),
goes only into the ``Authorization`` header, and no log line or exception message here
contains a header, a request body or an exception's own text from the HTTP stack.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from connectors.retry import Backoff, TokenBucket, parse_retry_after
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

DEFAULT_API_KEY_ENV: Final = "INFERENCE_API_KEY"
CACHE_KEY_PREFIX: Final = "inference-cache:"
CHARS_PER_TOKEN: Final = 4
RETRYABLE_STATUS: Final = frozenset({408, 409, 425, 429})
LATENCY_WINDOW: Final = 4096


# --- settings and secrets -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    """How the operator talks to the endpoint. ``url`` None means: the rules analyser only.

    The API key is not a setting: it is read where the engine runs, from the environment
    variable ``api_key_env`` or from ``api_key_file`` (see :func:`load_api_key`).
    """

    url: str | None = field(default=None, repr=False)  # may carry credentials
    model: str = "gpt-4o-mini"
    api_key_env: str = DEFAULT_API_KEY_ENV
    api_key_file: str | None = None
    requests_per_s: float = 2.0
    request_burst: float = 1.0
    tokens_per_min: float = 100_000.0
    max_tokens: int = 300
    attempt_timeout_s: float = 10.0
    deadline_s: float = 25.0
    max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    breaker_failures: int = 5
    breaker_open_s: float = 30.0
    cache_size: int = 10_000
    cache_ttl_s: float = 6 * 3600.0
    l2_redis_url: str | None = field(default=None, repr=False)  # may carry a password
    price_per_million_tokens: float = 0.0
    json_mode: bool = True

    def __post_init__(self) -> None:
        if self.requests_per_s <= 0 or self.tokens_per_min <= 0:
            raise ValueError("requests_per_s and tokens_per_min must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.deadline_s <= 0 or self.attempt_timeout_s <= 0:
            raise ValueError("deadline_s and attempt_timeout_s must be positive")

    @property
    def endpoint(self) -> str:
        """The chat-completions URL: ``url`` if it names it, else ``url/chat/completions``."""
        if self.url is None:
            raise ValueError("no inference URL configured")
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


class Secret:
    """A string that never shows itself: ``repr``/``str`` give ``***``, pickling is refused."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value (for the Authorization header only)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is never pickled")


def load_api_key(env_name: str = DEFAULT_API_KEY_ENV, key_file: str | None = None) -> Secret | None:
    """The API key from ``key_file`` (if given) else the environment; None if neither has one.

    A missing or unreadable file raises OSError naming the path, never the content.
    """
    if key_file:
        text = Path(key_file).read_text(encoding="utf-8").strip()
        return Secret(text) if text else None
    value = os.environ.get(env_name, "").strip()
    return Secret(value) if value else None


# --- rate limiting --------------------------------------------------------------------------


class RateLimiter:
    """Requests-per-second and tokens-per-minute buckets, FIFO, honouring ``Retry-After``.

    :meth:`acquire` waits until one request and the estimated tokens fit both buckets and takes
    them; a waiter that is cancelled (its deadline passed) takes nothing. :meth:`settle` books
    the difference between the estimate and the tokens the reply actually used.
    """

    def __init__(
        self,
        requests_per_s: float,
        request_burst: float,
        tokens_per_min: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.requests = TokenBucket(requests_per_s, max(1.0, request_burst))
        self.tokens = TokenBucket(tokens_per_min / 60.0, tokens_per_min)
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()

    def wait_time(self, token_estimate: float, now: float) -> float:
        """Seconds until a request of ``token_estimate`` tokens may go out (0: now)."""
        return max(
            self.requests.wait_for(1.0, now),
            self.tokens.wait_for(token_estimate, now),
        )

    async def acquire(self, token_estimate: float) -> None:
        """Wait for the budget of one request of about ``token_estimate`` tokens and take it."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = self.wait_time(token_estimate, now)
                if wait <= 0:
                    self.requests.take(1.0, now)
                    self.tokens.take(min(token_estimate, self.tokens.burst), now)
                    return
                await self._sleep(wait)

    def settle(self, estimated: float, actual: float) -> None:
        """Book ``actual - estimated`` more tokens (a refund when negative)."""
        self.tokens.take(actual - min(estimated, self.tokens.burst), self._clock())

    def block_until(self, until: float) -> None:
        """Let no request out before ``until`` (monotonic seconds); never shortens a block."""
        self.requests.block_until(until)


# --- circuit breaker ------------------------------------------------------------------------


class BreakerState(Enum):
    """Closed: calls flow. Open: no calls until the cool-down ends. Half-open: one probe."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failed calls; probes after ``open_s``.

    :meth:`permit` says whether a call may go out (and whether it is the probe); the caller
    reports the outcome with :meth:`record`. In half-open state exactly one probe is in
    flight: success closes the breaker, failure opens it for another ``open_s``.
    """

    failure_threshold: int
    open_s: float
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    opened_count: int = 0

    def current(self) -> BreakerState:
        """The state now (an open breaker whose cool-down ended reports half-open)."""
        if self.state is BreakerState.OPEN and self.clock() - self.opened_at >= self.open_s:
            self.state = BreakerState.HALF_OPEN
            self.probe_in_flight = False
        return self.state

    def permit(self) -> tuple[bool, bool]:
        """``(allowed, is_probe)`` for a call about to start."""
        state = self.current()
        if state is BreakerState.CLOSED:
            return True, False
        if state is BreakerState.HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True, True
        return False, False

    def record(self, *, success: bool, is_probe: bool) -> None:
        """Report the outcome of a permitted call."""
        if self.state is BreakerState.HALF_OPEN:
            if not is_probe:
                return
            self.probe_in_flight = False
            if success:
                self._close()
            else:
                self._open()
            return
        if self.state is BreakerState.OPEN:
            return  # a call started before the breaker opened: its outcome is stale
        if success:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.failure_threshold:
            self._open()

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = self.clock()
        self.opened_count += 1
        self.failures = 0
        log.warning("inference circuit breaker opened for %.1f s", self.open_s)

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        log.info("inference circuit breaker closed again")


# --- caches ---------------------------------------------------------------------------------


class TTLCache:
    """In-process LRU cache with a time-to-live per entry (L1)."""

    def __init__(
        self, max_size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_size < 1 or ttl_s <= 0:
            raise ValueError("max_size must be >= 1 and ttl_s > 0")
        self.max_size = max_size
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        """The value of a live entry (refreshing its LRU position), else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        """Store ``value``; evicts the least recently used entry beyond ``max_size``."""
        self._entries[key] = (self._clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class L2Cache(Protocol):
    """A shared cache (Redis): failures are misses, never errors."""

    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...
    async def close(self) -> None: ...


class RedisL2Cache:
    """L2 cache in Redis (``inference-cache:{hash}`` strings with a TTL), via redis.asyncio.

    Redis being down makes every lookup a miss (counted in ``errors``); it never fails a call.
    """

    def __init__(self, url: str, *, op_timeout_s: float = 0.5) -> None:
        import redis.asyncio as aioredis

        from connectors.redis_store import redact_url

        self.redacted_url = redact_url(url)
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s
        )
        self.errors = 0

    async def get(self, key: str) -> bytes | None:
        import redis

        try:
            value = await self._client.get(CACHE_KEY_PREFIX + key)
        except (redis.RedisError, OSError) as exc:
            self._failed("get", exc)
            return None
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        import redis

        try:
            await self._client.set(CACHE_KEY_PREFIX + key, value, px=max(1, int(ttl_s * 1000)))
        except (redis.RedisError, OSError) as exc:
            self._failed("set", exc)

    async def close(self) -> None:
        await self._client.aclose()

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning(
                "inference L2 cache at %s: %s failed (%s); treated as a miss (%d errors)",
                self.redacted_url,
                operation,
                type(exc).__name__,
                self.errors,
            )


# --- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """Status, headers (lower-case names) and body of one HTTP exchange."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class InferenceFailure(Exception):
    """A failed attempt. ``kind`` is short and safe to log (no URL, header or body)."""

    def __init__(self, kind: str, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Transport(Protocol):
    """Posts a JSON body; raises InferenceFailure on timeouts and connection errors."""

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> HttpResponse: ...

    async def aclose(self) -> None: ...

    def close_sync(self) -> None: ...


class AiohttpTransport:
    """:class:`Transport` over one aiohttp session, created on first use in the running loop."""

    def __init__(self, max_connections: int = 100) -> None:
        self.max_connections = max_connections
        self._session: Any = None

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> HttpResponse:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                raise_for_status=False,
            )
        try:
            async with self._session.post(
                url,
                data=body,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                payload = await response.read()
                return HttpResponse(
                    response.status,
                    {name.lower(): value for name, value in response.headers.items()},
                    payload,
                )
        except TimeoutError:
            raise InferenceFailure("attempt_timeout", retryable=True) from None
        except aiohttp.ClientError as exc:
            # The exception's text can name the URL; only its type is reported.
            raise InferenceFailure(f"connection:{type(exc).__name__}", retryable=True) from None

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def close_sync(self) -> None:
        """Release the session when its event loop is already gone (operator shutdown)."""
        session, self._session = self._session, None
        if session is None:
            return
        connector = session.connector
        session.detach()
        if connector is not None:
            # aiohttp's own synchronous close: marks the pool closed and skips socket I/O
            # when the loop has been closed already.
            connector._close()


@dataclass(frozen=True, slots=True)
class ChatReply:
    """The first choice's text and the usage the endpoint reported."""

    content: str
    prompt_tokens: int | None
    completion_tokens: int | None

    @property
    def total_tokens(self) -> int | None:
        """prompt + completion tokens, None if the endpoint reported no usage."""
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


# The longest pause a 429's Retry-After may impose on the whole engine.
MAX_RETRY_AFTER_S: Final = 300.0


def _usage_value(usage: Mapping[str, Any], name: str) -> int | None:
    value = usage.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def parse_chat_response(response: HttpResponse, default_retry_s: float) -> ChatReply:
    """A chat-completions HTTP response -> ChatReply, or InferenceFailure saying why not.

    429 and 5xx (and 408/409/425) are retryable, 429 with its ``Retry-After`` (seconds);
    other 4xx are not. A 200 whose body is not a chat completion is retryable (``bad_body``).
    """
    status = response.status
    if status == 429:
        # A hostile or broken header ("1e999") must not block the limiter for ever.
        retry_after = min(
            parse_retry_after(response.headers.get("retry-after"), default_retry_s),
            MAX_RETRY_AFTER_S,
        )
        raise InferenceFailure("http_429", retryable=True, retry_after_s=retry_after)
    if status >= 500 or status in RETRYABLE_STATUS:
        raise InferenceFailure(f"http_{status}", retryable=True)
    if status != 200:
        raise InferenceFailure(f"http_{status}", retryable=False)
    try:
        data = orjson.loads(response.body)
        content = data["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise InferenceFailure("bad_body", retryable=True) from None
    usage = data.get("usage") if isinstance(data, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    return ChatReply(
        content=content if isinstance(content, str) else "",
        prompt_tokens=_usage_value(usage, "prompt_tokens"),
        completion_tokens=_usage_value(usage, "completion_tokens"),
    )


# --- statistics -----------------------------------------------------------------------------


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
