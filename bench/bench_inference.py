"""Benchmark of the inference operator against a local chat-completions server (50 ms replies).

The server (``tests.fakes.chat_server``) runs in its own process. Two measurements, each at
capacity 100 and 1,000 (in-flight requests), every request a distinct context (no cache hits)
and the rate budget out of the way:

1. ``engine``: :class:`connectors.inference.InferenceEngine` alone in one asyncio loop (what
   one subtask's event loop does), ``capacity`` coroutines in flight.
2. ``flink``: ``jobs.signals.build_signals`` on a local mini-cluster (parallelism 1, process
   mode), fed with closed 1m bars by ``from_collection``; throughput is measured at the server
   (first to last request of the run, plus one reply), so the job's start-up is not counted.

For each: signals/s, and p50/p99 of the signal's ``latency_ms`` (time inside the operator from
the start of ``async_invoke``) and of the overhead over the server's 50 ms. Prints JSON.

    python -m bench.bench_inference [--requests 3000] [--flink-requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from connectors.inference import (  # noqa: E402
    AiohttpTransport,
    InferenceEngine,
    InferenceSettings,
)
from udfs.record import Kline, encode_kline  # noqa: E402
from udfs.signals import ContextBar, Signal, SignalRequest, build_context  # noqa: E402

SERVER_DELAY_MS = 50.0
START = 1_735_689_600_000


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(signals: list[Signal], seconds: float) -> dict[str, Any]:
    """Throughput and latency figures of one run."""
    latencies = [float(s.latency_ms or 0) for s in signals]
    degraded = sum(1 for s in signals if s.degraded)
    return {
        "signals": len(signals),
        "degraded": degraded,
        "seconds": round(seconds, 3),
        "signals_per_s": round(len(signals) / seconds, 1),
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p99_ms": percentile(latencies, 0.99),
        "added_p50_ms": round(percentile(latencies, 0.5) - SERVER_DELAY_MS, 1),
        "added_p99_ms": round(percentile(latencies, 0.99) - SERVER_DELAY_MS, 1),
    }


def settings(url: str, capacity: int) -> InferenceSettings:
    """Limits far above what the run needs: the benchmark measures the operator itself."""
    return InferenceSettings(
        url=url,
        model="bench-model",
        requests_per_s=1e6,
        request_burst=1e6,
        tokens_per_min=1e12,
        deadline_s=60.0,
        attempt_timeout_s=30.0,
        cache_size=max(1, capacity),
    )


def engine_request(i: int) -> SignalRequest:
    bars = [ContextBar(START + (i + k) * 60_000, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 3.0)
            for k in range(30)]  # fmt: skip
    return SignalRequest(build_context("binance", "BTC-USDT", "1m", bars, 30), 1)


async def run_engine(url: str, capacity: int, count: int) -> dict[str, Any]:
    engine = InferenceEngine(settings(url, capacity), api_key=None, transport=AiohttpTransport(
        max_connections=capacity))  # fmt: skip
    gate = asyncio.Semaphore(capacity)

    async def one(i: int) -> Signal:
        async with gate:
            return await engine.analyse(engine_request(i))

    await asyncio.gather(*(one(-k - 1) for k in range(min(capacity, 50))))  # warm-up
    started = time.perf_counter()
    signals = await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - started
    await engine.aclose()
    return summary(list(signals), elapsed)


def bench_kline(i: int) -> Kline:
    symbol = f"S{i % 50}-USDT"
    open_time = START + (i // 50) * 60_000
    price = 100.0 + i % 7
    return Kline("binance", symbol, symbol.replace("-", ""), "1m", open_time, open_time + 59_999,
                 price, price + 1, price - 1, price + 0.5, 2.0 + i, None, None, None, None,
                 True, open_time + 59_999, open_time + 60_000)  # fmt: skip


def server_stats(url: str) -> dict[str, float]:
    """The fake server's request count and first / last arrival (monotonic clock)."""
    import urllib.request

    base = url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{base}/stats", timeout=5) as response:
        stats: dict[str, float] = orjson.loads(response.read())
    return stats


def run_flink(url: str, capacity: int, count: int) -> dict[str, Any]:
    from pyflink.common import Configuration, Types
    from pyflink.datastream import StreamExecutionEnvironment

    from jobs.config import JobSettings, PipelineConfig
    from jobs.job import local_configuration
    from jobs.pipeline import PayloadsOf, build_pipeline
    from jobs.signals import SignalConfig, with_inference
    from udfs.series import Tag

    with tempfile.TemporaryDirectory() as checkpoints:
        configuration = Configuration()
        job = JobSettings(checkpoint_dir=Path(checkpoints))
        for key, value in local_configuration(job).items():
            configuration.set_string(key, value)
        configuration.set_string("restart-strategy.type", "none")
        env = StreamExecutionEnvironment.get_execution_environment(configuration)
        env.set_parallelism(1)
        config = SignalConfig(timeframes=("1m",), capacity=capacity, timeout_ms=60_000,
                              inference=settings(url, capacity))  # fmt: skip
        raw = env.from_collection(
            [encode_kline(bench_kline(i)).decode() for i in range(count)], type_info=Types.STRING()
        )
        streams = build_pipeline(raw, PipelineConfig(rollup_timeframes=()), signals=config)
        before = server_stats(url)
        answered = with_inference(streams.records, config).flat_map(
            PayloadsOf(Tag.SIGNAL), output_type=Types.PICKLED_BYTE_ARRAY()
        )
        with answered.execute_and_collect(f"bench-{capacity}") as results:
            signals: list[Signal] = list(results)
        after = server_stats(url)
    # Collected results arrive in batches, so the operator's pace is measured at the server:
    # from the first request of this run to the last one, plus one reply.
    requests = after["requests"] - before["requests"]
    first = after["first_arrival"] if before["requests"] == 0 else None
    if first is None:
        raise RuntimeError("run the Flink measurements on a fresh server")
    span = after["last_arrival"] - first + SERVER_DELAY_MS / 1000
    result = summary(signals, span)
    result["server_requests"] = requests
    return result


def start_server() -> tuple[subprocess.Popen[str], str]:
    """The fake server in its own process, and its base URL."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.chat_server", "--delay-ms", str(SERVER_DELAY_MS)],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def stop_server(server: subprocess.Popen[str]) -> None:
    """Close the server's stdin (it exits) and wait for it."""
    if server.stdin is not None:
        server.stdin.close()
    server.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="engine requests per run")
    parser.add_argument("--flink-requests", type=int, default=3000, help="bars per Flink run")
    parser.add_argument("--skip-flink", action="store_true")
    args = parser.parse_args(argv)
    server, url = start_server()
    try:
        result: dict[str, Any] = {"server_delay_ms": SERVER_DELAY_MS, "engine": {}, "flink": {}}
        for capacity in (100, 1000):
            result["engine"][str(capacity)] = asyncio.run(run_engine(url, capacity, args.requests))
    finally:
        stop_server(server)
    if not args.skip_flink:
        for capacity in (100, 1000):
            server, url = start_server()
            try:
                result["flink"][str(capacity)] = run_flink(url, capacity, args.flink_requests)
            finally:
                stop_server(server)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
