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

Where each part lives: :mod:`.settings` (settings, the API key), :mod:`.limits` (rate budget,
circuit breaker), :mod:`.cache` (L1 and the Redis L2), :mod:`.transport` (HTTP, reply
parsing) and :mod:`.engine` (:class:`InferenceEngine`, its statistics).
"""

from __future__ import annotations

from connectors.inference.cache import CACHE_KEY_PREFIX, L2Cache, RedisL2Cache, TTLCache
from connectors.inference.engine import (
    CHARS_PER_TOKEN,
    LATENCY_WINDOW,
    InferenceEngine,
    InferenceStats,
)
from connectors.inference.limits import BreakerState, CircuitBreaker, RateLimiter
from connectors.inference.settings import (
    DEFAULT_API_KEY_ENV,
    InferenceSettings,
    Secret,
    load_api_key,
)
from connectors.inference.transport import (
    MAX_RETRY_AFTER_S,
    RETRYABLE_STATUS,
    AiohttpTransport,
    ChatReply,
    HttpResponse,
    InferenceFailure,
    Transport,
    parse_chat_response,
)

__all__ = [
    "CACHE_KEY_PREFIX",
    "CHARS_PER_TOKEN",
    "DEFAULT_API_KEY_ENV",
    "LATENCY_WINDOW",
    "MAX_RETRY_AFTER_S",
    "RETRYABLE_STATUS",
    "AiohttpTransport",
    "BreakerState",
    "ChatReply",
    "CircuitBreaker",
    "HttpResponse",
    "InferenceEngine",
    "InferenceFailure",
    "InferenceSettings",
    "InferenceStats",
    "L2Cache",
    "RateLimiter",
    "RedisL2Cache",
    "Secret",
    "TTLCache",
    "Transport",
    "load_api_key",
    "parse_chat_response",
]
