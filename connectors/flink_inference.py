"""The async inference operator: one ``InferenceEngine`` per subtask on PyFlink's event loop.

How PyFlink 2.2 runs :class:`InferenceAsyncFunction` (read from
``pyflink/fn_execution/datastream/process/async_function/operation.py``): process mode only;
each subtask's Python worker starts one thread running one asyncio event loop, and every
``async_invoke`` is a coroutine on it (``run_coroutine_threadsafe``). ``capacity`` bounds the
in-flight elements (``process_element`` blocks when the queue is full: backpressure); the
operator's ``timeout`` is a ``threading.Timer`` per element that calls :meth:`timeout` on the
timer thread *without* cancelling the coroutine, and the end of every bundle waits for all
in-flight elements. So the engine keeps its own deadline (shorter than the operator timeout)
and cancels its own work; :meth:`timeout` is only a backstop that emits a degraded signal.
Metrics: counters bound in ``open`` update from the bundle thread only (Beam's metric container
is thread-local), so the engine's statistics are exposed as gauges, which Flink samples at the
end of each bundle.

Requests and signals travel as the series operator's tagged records (``udfs.series.Tag``):
a ``SIGNAL_REQUEST`` in, an encoded element holding its ``SIGNAL`` out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pyflink.datastream import RuntimeContext
from pyflink.datastream.functions import AsyncFunction

from connectors.inference import (
    AiohttpTransport,
    BreakerState,
    InferenceEngine,
    InferenceSettings,
    RedisL2Cache,
    load_api_key,
)
from connectors.private_file import write_private_file
from connectors.redaction import redact_url
from udfs.series import Output, Tag, encode_outputs
from udfs.signals import SignalRequest

_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class InferenceSecrets:
    """The inference API's URL and the L2 cache's Redis URL in full, kept out of the job
    graph like the sinks' (:class:`connectors.flink_sinks.SinkSecrets`): written to a private
    file by the client, read by the workers."""

    url: str | None
    l2_redis_url: str | None

    def __repr__(self) -> str:
        shown = [redact_url(url) if url else url for url in (self.url, self.l2_redis_url)]
        return f"InferenceSecrets(url={shown[0]!r}, l2_redis_url={shown[1]!r})"

    @property
    def needed(self) -> bool:
        """Whether either URL holds a secret (else the redacted URLs are the URLs)."""
        return any(url and redact_url(url) != url for url in (self.url, self.l2_redis_url))

    def redacted(self, settings: InferenceSettings) -> InferenceSettings:
        """``settings`` with these URLs redacted (what the job graph may hold)."""
        return replace(
            settings,
            url=redact_url(self.url) if self.url else self.url,
            l2_redis_url=redact_url(self.l2_redis_url) if self.l2_redis_url else None,
        )

    def write(self, path: Path) -> Path:
        """Write the file (mode 0600, replaced atomically); returns ``path``."""
        return write_private_file(path, json.dumps({"url": self.url, "l2": self.l2_redis_url}))

    @classmethod
    def read(cls, path: str | Path) -> InferenceSecrets:
        """Read a file written by :meth:`write`; ValueError if it is not one."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(url=data["url"], l2_redis_url=data["l2"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read the inference secrets file {path}: {exc}") from None


def inference_function(
    settings: InferenceSettings, secrets_path: Path | None = None
) -> InferenceAsyncFunction:
    """The operator's function for ``settings``, with no password in what gets pickled: when
    a URL holds one, both URLs go to ``secrets_path`` (ValueError if it is None) and the
    function carries the redacted settings and that path."""
    secrets = InferenceSecrets(settings.url, settings.l2_redis_url)
    if not secrets.needed:
        return InferenceAsyncFunction(settings)
    if secrets_path is None:
        raise ValueError("the inference URLs hold a password: give a secrets_path to keep it")
    path = secrets.write(secrets_path).resolve()
    return InferenceAsyncFunction(secrets.redacted(settings), secrets_file=str(path))


class InferenceAsyncFunction(AsyncFunction):
    """One :class:`InferenceEngine` per subtask; every request yields exactly one signal.

    The rate budget is split evenly over the operator's subtasks (``share`` = parallelism).
    The API key is read in ``open`` on the worker (env var or key file), never shipped in the
    job graph; with ``secrets_file`` (see :func:`inference_function`) so are the URLs.
    """

    def __init__(self, settings: InferenceSettings, secrets_file: str | None = None) -> None:
        self.settings = settings
        self.secrets_file = secrets_file

    def worker_settings(self) -> InferenceSettings:
        """The settings to run with: the full URLs from the secrets file if there is one."""
        if self.secrets_file is None:
            return self.settings
        secrets = InferenceSecrets.read(self.secrets_file)
        if secrets.redacted(self.settings) != self.settings:
            raise ValueError(
                f"the inference secrets file {self.secrets_file} is for other URLs than this job's"
            )
        return replace(self.settings, url=secrets.url, l2_redis_url=secrets.l2_redis_url)

    def open(self, runtime_context: RuntimeContext) -> None:
        # Import the HTTP stack now, not inside the first call: a cold first request would
        # reach the server late and bunch up with the next one the rate budget lets out.
        import aiohttp  # noqa: F401

        settings = self.settings = self.worker_settings()
        self.secrets_file = None
        l2 = RedisL2Cache(settings.l2_redis_url) if settings.l2_redis_url else None
        self.engine = InferenceEngine(
            settings,
            api_key=load_api_key(settings.api_key_env, settings.api_key_file),
            transport=AiohttpTransport(),
            l2=l2,
            share=runtime_context.get_number_of_parallel_subtasks(),
        )
        stats = self.engine.stats
        breaker = self.engine.breaker
        metrics = runtime_context.get_metrics_group()
        gauges: dict[str, Any] = {
            "inference_signals": lambda: stats.signals,
            "inference_http_requests": lambda: stats.http_requests,
            "inference_retries": lambda: stats.retries,
            "inference_failed_attempts": lambda: sum(stats.failures.values()),
            "inference_invalid_replies": lambda: stats.invalid_replies,
            "inference_repairs": lambda: stats.repairs,
            "inference_degraded": lambda: stats.degraded,
            "inference_cache_hits": lambda: stats.hits,
            "inference_cache_l1_hits": lambda: stats.l1_hits,
            "inference_cache_l2_hits": lambda: stats.l2_hits,
            "inference_cache_misses": lambda: stats.misses,
            "inference_cache_hit_rate_percent": stats.hit_rate_percent,
            "inference_tokens_prompt": lambda: stats.prompt_tokens,
            "inference_tokens_completion": lambda: stats.completion_tokens,
            "inference_tokens_total": lambda: stats.prompt_tokens + stats.completion_tokens,
            "inference_cost_micro_usd": lambda: round(stats.cost_usd * 1e6),
            "inference_latency_p50_ms": lambda: stats.latency_percentile_ms(0.5),
            "inference_latency_p99_ms": lambda: stats.latency_percentile_ms(0.99),
            "inference_breaker_state": lambda: _BREAKER_GAUGE[breaker.current()],
            "inference_breaker_opened": lambda: breaker.opened_count,
        }
        for name, read in gauges.items():
            metrics.gauge(name, read)

    async def async_invoke(self, value: Output) -> list[bytes]:
        request: SignalRequest = value[1]
        return [encode_outputs([(Tag.SIGNAL, await self.engine.analyse(request))])]

    def timeout(self, value: Output) -> list[bytes]:
        return [encode_outputs([(Tag.SIGNAL, self.engine.degraded(value[1], "operator_timeout"))])]

    def close(self) -> None:
        # PyFlink stops and closes the event loop before calling close(): release the HTTP
        # pool synchronously; the Redis client's sockets go with the process.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.transport.close_sync()
