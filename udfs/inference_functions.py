"""Thin PyFlink wrappers of the signals branch: closed-bar filter, per-series context state,
the async inference function, the rules map and the signals sink.

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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pyflink.common import Types
from pyflink.datastream import (
    FilterFunction,
    KeyedProcessFunction,
    MapFunction,
    RuntimeContext,
)
from pyflink.datastream.functions import AsyncFunction
from pyflink.datastream.state import ValueStateDescriptor

from connectors.flink_sinks import BatchingSinkFunction
from connectors.inference import (
    AiohttpTransport,
    BreakerState,
    InferenceEngine,
    InferenceSettings,
    RedisL2Cache,
    load_api_key,
)
from jobs.config import SinkConfig
from udfs.record import VersionedBar
from udfs.signals import (
    ContextBar,
    Signal,
    SignalRequest,
    build_context,
    context_bar,
    merge_history,
    rules_signal,
)

_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class ClosedBarFilter(FilterFunction):
    """Keeps closed bars of the configured timeframes."""

    def __init__(self, timeframes: Sequence[str]) -> None:
        self.timeframes = frozenset(timeframes)

    def filter(self, value: VersionedBar) -> bool:
        return value.kline.is_closed and value.kline.timeframe in self.timeframes


class SignalContextFunction(KeyedProcessFunction):
    """Keyed by series: keeps the last ``history_bars`` closed bars and emits one
    :class:`SignalRequest` per closed bar (version) with its context.

    A correction of an older bar is analysed with the bars up to it; indicators are computed
    over the whole kept history, the prompt carries the newest ``prompt_bars``.
    """

    def __init__(self, prompt_bars: int, history_bars: int) -> None:
        self.prompt_bars = prompt_bars
        self.history_bars = max(history_bars, prompt_bars)

    def open(self, runtime_context: RuntimeContext) -> None:
        self.history = runtime_context.get_state(
            ValueStateDescriptor("signal-history", Types.PICKLED_BYTE_ARRAY())
        )
        self.requests = runtime_context.get_metrics_group().counter("signal_requests")

    def process_element(
        self, value: VersionedBar, ctx: KeyedProcessFunction.Context
    ) -> Iterator[SignalRequest]:
        kline = value.kline
        stored: list[ContextBar] = self.history.value() or []
        history, upto = merge_history(stored, context_bar(kline), self.history_bars)
        self.history.update(history)
        self.requests.inc()
        yield SignalRequest(
            build_context(kline.exchange, kline.symbol, kline.timeframe, upto, self.prompt_bars),
            value.version,
        )


class RulesSignalFunction(MapFunction):
    """The rules analyser (no inference URL configured)."""

    def open(self, runtime_context: RuntimeContext) -> None:
        self.signals = runtime_context.get_metrics_group().counter("signals_rules")

    def map(self, value: SignalRequest) -> Signal:
        self.signals.inc()
        return rules_signal(value)


class InferenceAsyncFunction(AsyncFunction):
    """One :class:`InferenceEngine` per subtask; every request yields exactly one signal.

    The rate budget is split evenly over the operator's subtasks (``share`` = parallelism).
    The API key is read in ``open`` on the worker (env var or key file), never shipped in the
    job graph.
    """

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        # Import the HTTP stack now, not inside the first call: a cold first request would
        # reach the server late and bunch up with the next one the rate budget lets out.
        import aiohttp  # noqa: F401

        settings = self.settings
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

    async def async_invoke(self, value: SignalRequest) -> list[Signal]:
        return [await self.engine.analyse(value)]

    def timeout(self, value: SignalRequest) -> list[Signal]:
        return [self.engine.degraded(value, "operator_timeout")]

    def close(self) -> None:
        # PyFlink stops and closes the event loop before calling close(): release the HTTP
        # pool synchronously; the Redis client's sockets go with the process.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.transport.close_sync()


class SignalSink(BatchingSinkFunction):
    """Signals into ClickHouse ``signals`` (``insert_rows``) and Redis ``signal:`` hashes
    (compare-and-set on ``(open_time, version)``, so an older signal never replaces a newer one).
    """

    def __init__(self, config: SinkConfig) -> None:
        super().__init__(min(config.clickhouse_batch_rows, 1000), config.clickhouse_flush_ms)
        self.clickhouse_url = config.clickhouse_url
        self.redis_url = config.redis_url
        self.ttl_s = config.redis_ttl_s

    def connect(self) -> None:
        from connectors.clickhouse import open_writer
        from connectors.redis_store import RedisBarWriter

        self.clickhouse = open_writer(self.clickhouse_url, migrate_schema=True)
        self.redis = RedisBarWriter(self.redis_url, ttl_s=self.ttl_s)

    def write_batch(self, batch: Sequence[Signal]) -> int:
        from connectors.redis_store import CasItem

        written = self.clickhouse.insert_rows("signals", [signal.row() for signal in batch])
        self.redis.write_hashes(
            "signal",
            [
                CasItem(s.exchange, s.symbol, s.timeframe, s.open_time, s.version, s.hash_fields())
                for s in batch
            ],
        )
        return written

    def disconnect(self) -> None:
        for name in ("clickhouse", "redis"):
            writer = getattr(self, name, None)
            if writer is not None:
                writer.close()
