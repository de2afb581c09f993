"""Benchmark of the ingest bridge: throughput per core and ingest lag at a fixed rate.

A local Binance-protocol server (a separate process, so its CPU is not counted) pushes
combined-stream kline updates with ``E`` = the wall-clock send time:

1. ``max``: as fast as it can for ``--seconds``; reports messages/s and messages per CPU
   second of the bridge process (all its threads: "per core").
2. ``rate``: ``--rate`` messages/s (default 5,000); reports p50/p99/max of
   ``ingest_time - event_time`` measured by the bridge.

Records go to Kafka when ``--bootstrap-servers`` is given (acks=all, idempotent producer of
``connectors.kafka_producer``), else to a sink that only counts them (the bridge's own cost).
Prints one JSON object.

    python -m bench.bench_bridge [--bootstrap-servers 127.0.0.1:9092 --topic bench.klines]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from connectors.bridge import Bridge, BridgeConfig, KafkaSink, lag_summary  # noqa: E402
from connectors.exchanges import create_adapter  # noqa: E402
from udfs.record import Kline  # noqa: E402

MINUTE_MS = 60_000


# --- the server (child process) ---------------------------------------------------------------


def _frame(symbol: str, open_time: int, volume: float, event_time: int) -> str:
    return orjson.dumps(
        {
            "stream": f"{symbol.lower()}@kline_1m",
            "data": {
                "e": "kline",
                "E": event_time,
                "s": symbol,
                "k": {
                    "t": open_time, "T": open_time + MINUTE_MS - 1, "s": symbol, "i": "1m",
                    "f": 1, "L": 2, "o": "100.0", "c": "100.5", "h": "101.0", "l": "99.5",
                    "v": repr(volume), "n": 2, "x": False, "q": repr(volume * 100.0),
                    "V": repr(volume / 2), "Q": repr(volume * 50.0), "B": "0",
                },
            },
        }
    ).decode()  # fmt: skip


async def _serve(rate: float, symbols: list[str]) -> None:
    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sequence = 0
        batch = 50
        started = time.monotonic()
        sent = 0
        while not ws.closed:
            now_ms = time.time_ns() // 1_000_000
            open_time = now_ms - now_ms % MINUTE_MS
            try:
                for _ in range(batch):
                    symbol = symbols[sequence % len(symbols)]
                    sequence += 1
                    await ws.send_str(_frame(symbol, open_time, 1.0 + sequence * 1e-6, now_ms))
            except aiohttp.ClientConnectionResetError:
                break  # the bridge went away: the run is over
            sent += batch
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            else:
                await asyncio.sleep(0)
        return ws

    async def klines(request: web.Request) -> web.Response:
        return web.Response(body=b"[]", content_type="application/json")

    app = web.Application()
    app.add_routes([web.get("/stream", stream), web.get("/api/v3/klines", klines)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    print(port, flush=True)
    await asyncio.Event().wait()


# --- the bridge side ---------------------------------------------------------------------------


class CountingSink:
    """A sink that only counts (measures the bridge without Kafka)."""

    def __init__(self) -> None:
        self.records = 0

    async def send(self, topic: str, key: bytes, value: bytes, closed_bar: Kline | None) -> None:
        """Count one record."""
        self.records += 1

    def healthy(self) -> bool:
        """Always."""
        return True

    def stats(self) -> dict[str, Any]:
        """The count."""
        return {"delivered": self.records}


async def _measure(
    port: int, symbols: list[str], seconds: float, bootstrap: str | None, topic: str
) -> dict[str, Any]:
    adapter = create_adapter("binance", "spot", symbols)
    config = BridgeConfig(
        ws_url=f"ws://127.0.0.1:{port}",
        rest_url=f"http://127.0.0.1:{port}",
        topic=topic,
        dlq_topic=topic + ".dlq",
        stats_interval_s=3600,
        no_data_timeout_s=30,
    )
    sink: Any
    if bootstrap:
        from connectors.kafka_producer import create_producer

        sink = KafkaSink(create_producer(bootstrap), max_pending=20_000)
        sink.start()
    else:
        sink = CountingSink()
    async with aiohttp.ClientSession() as session:
        bridge = Bridge(adapter, config, sink, session, stats_printer=lambda stats: None)
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        shard_stats = bridge.shards[0].stats
        while shard_stats.messages < 1000:  # warm up: connected and flowing
            await asyncio.sleep(0.05)
        shard_stats.lag_ms.clear()
        messages_before = shard_stats.messages
        cpu_before = time.process_time()
        wall_before = time.monotonic()
        await asyncio.sleep(seconds)
        messages = shard_stats.messages - messages_before
        cpu = time.process_time() - cpu_before
        wall = time.monotonic() - wall_before
        lag = lag_summary(list(shard_stats.lag_ms))
        stop.set()
        await task
    if bootstrap:
        await sink.close()
    return {
        "messages": messages,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "messages_per_s": round(messages / wall),
        "messages_per_cpu_s": round(messages / cpu) if cpu else None,
        "lag_ms": lag,
        "sink": sink.stats(),
    }


def _run(rate: float, symbols: list[str], seconds: float, bootstrap: str | None, topic: str) -> Any:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--rate", str(rate), "--symbols", str(len(symbols))],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        return asyncio.run(_measure(port, symbols, seconds, bootstrap, topic))
    finally:
        server.terminate()
        server.wait(timeout=10)


def _symbols(count: int) -> list[str]:
    return [f"S{number}USDT" for number in range(count)]


def main() -> None:
    """Run both measurements and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=5000.0, help="messages/s of the lag run")
    parser.add_argument("--symbols", type=int, default=100, help="streams on the connection")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("BENCH_KAFKA"))
    parser.add_argument("--topic", default="bench.klines")
    args = parser.parse_args()
    symbols = _symbols(args.symbols)
    if args.serve:
        asyncio.run(_serve(args.rate, symbols))
        return
    result = {
        "sink": "kafka" if args.bootstrap_servers else "counting (no Kafka)",
        "symbols": args.symbols,
        "cpus": os.cpu_count(),
        "max_throughput": _run(0, symbols, args.seconds, args.bootstrap_servers, args.topic),
        f"at_{int(args.rate)}_per_s": _run(
            args.rate, symbols, args.seconds, args.bootstrap_servers, args.topic
        ),
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
