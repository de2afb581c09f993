"""The signals branch against a scripted chat-completions server, on a Flink mini-cluster.

- ``test_engine_handles_every_scripted_fault``: the engine with its real aiohttp transport
  against the loopback server (no JVM): slow replies, 429 + Retry-After, 500, malformed JSON,
  valid JSON of the wrong shape, connection resets, and the breaker.
- ``test_async_operator_one_signal_per_bar_under_faults``: ``with_inference`` on a
  mini-cluster (parallelism 2) fed with the series operator's signal requests: exactly one
  signal per bar version, the request rate at the server within the configured budget,
  bounded retries with varying delays, a repeated context served from cache, timeouts
  degraded, and the API key in no log line.
- ``test_job_writes_rules_signals_to_clickhouse_and_redis``: the whole job (Kafka in, chdb and
  Redis out) with no inference URL: the rules analyser's signals land in both stores.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from pyflink.common import Configuration, Types
from pyflink.datastream import StreamExecutionEnvironment

from connectors.clickhouse import open_writer
from connectors.inference import (
    AiohttpTransport,
    BreakerState,
    InferenceEngine,
    InferenceSettings,
    Secret,
)
from connectors.kafka_producer import create_producer
from connectors.redis_store import decode_hash
from jobs.config import JobSettings, PipelineConfig, SinkConfig
from jobs.job import local_configuration, run_job
from jobs.pipeline import PayloadsOf
from jobs.signals import SignalConfig, with_inference
from tests.fakes.chat_server import (
    Behaviour,
    ChatRequest,
    ChatServer,
    malformed,
    ok,
    reset,
    sequence,
    slow,
    status,
    wrong_shape,
)
from tests.integration.conftest import TopicNames
from udfs.record import Kline, VersionedBar, decode_kline, encode_kline
from udfs.series import Tag, encode_outputs
from udfs.signals import ContextBar, Signal, SignalRequest, build_context, context_bar

API_KEY = "sk-klineflow-TEST-7f3a9c0e5b1d"
START = 1_735_689_600_000
PYFLINK_LOG_DIR = Path(__import__("pyflink").__file__).parent / "log"


def kline(symbol: str, minute: int, *, price: float = 100.0, closed: bool = True) -> Kline:
    open_time = START + minute * 60_000
    close = price + (minute % 5) - 2
    return Kline(
        "binance", symbol, symbol.replace("-", ""), "1m", open_time, open_time + 59_999,
        price, max(price, close) + 1.0, min(price, close) - 1.0, close, 3.0 + minute, None,
        None, None, None, closed, open_time + 59_999, open_time + 60_010,
    )  # fmt: skip


def encode_request(bar: VersionedBar, history: list[Kline]) -> str:
    """A signal request as text (from_collection cannot carry Python objects)."""
    return orjson.dumps({"version": bar.version, "bars": [k.to_dict() for k in history]}).decode()


def request_symbol(text: str) -> str:
    """The series of an encoded request."""
    return str(orjson.loads(text)["bars"][0]["symbol"])


def decode_request(text: str) -> bytes:
    """The element the series operator would emit for a closed bar: its request, with its context
    (the series' closed bars up to it, as ``SignalContext`` keeps them) and version."""
    data = orjson.loads(text)
    history = [decode_kline(orjson.dumps(k)) for k in data["bars"]]
    newest = history[-1]
    context = build_context(newest.exchange, newest.symbol, newest.timeframe,
                            [context_bar(k) for k in history], 30)  # fmt: skip
    return encode_outputs([(Tag.SIGNAL_REQUEST, SignalRequest(context, data["version"]))])


def first_bar(request: ChatRequest) -> bool:
    return bool(request.user_content) and orjson.loads(request.user_content)[
        "bar_open_time"
    ].endswith("T00:00:00Z")


def symbol_of(request: ChatRequest) -> str:
    return (
        str(orjson.loads(request.user_content)["series"]).split(":")[1]
        if request.user_content
        else ""
    )


# --- the engine against the server, no JVM --------------------------------------------------


def engine_request(close: float) -> SignalRequest:
    bars = [ContextBar(START + i * 60_000, close, close + 1, close - 1, close + 0.5, 2.0)
            for i in range(3)]  # fmt: skip
    return SignalRequest(build_context("okx", "ETH-USDT", "1m", bars, 30), 1)


def test_engine_handles_every_scripted_fault() -> None:
    script = sequence(
        [
            slow(2.0), ok(),  # 1: the first attempt times out, the retry answers
            status(429, retry_after="1"), ok(),  # 2: waits for Retry-After
            status(500), status(500), status(500),  # 3: bounded: degraded after 3 attempts
            malformed(), ok(),  # 4: repaired
            wrong_shape(), wrong_shape(),  # 5: degraded after one repair
            reset(), ok(),  # 6: connection reset, retried
            status(503), status(503), status(503),  # 7, 8: two failures open the breaker
        ],
        then=status(503),
    )  # fmt: skip
    settings = InferenceSettings(
        url=None, model="m", attempt_timeout_s=0.5, deadline_s=10.0, max_attempts=3,
        backoff_base_s=0.05, backoff_cap_s=0.2, breaker_failures=2, breaker_open_s=60.0,
        requests_per_s=100.0,
    )  # fmt: skip

    async def go(url: str) -> list[Signal]:
        from dataclasses import replace

        eng = InferenceEngine(replace(settings, url=url), api_key=Secret(API_KEY),
                              transport=AiohttpTransport())  # fmt: skip
        try:
            out = [await eng.analyse(engine_request(100.0 + i)) for i in range(9)]
            assert eng.breaker.current() is BreakerState.OPEN
            return out
        finally:
            await eng.aclose()

    with ChatServer(script, api_key=API_KEY) as server:
        signals = asyncio.run(go(server.url))
        seen = server.recorded()
    reasons = [s.reason for s in signals]
    assert reasons == [
        "", "", "retries_exhausted:http_500", "", "invalid_reply", "",
        "retries_exhausted:http_503", "retries_exhausted:http_503", "breaker_open",
    ]  # fmt: skip
    assert [s.degraded for s in signals] == [bool(r) for r in reasons]
    assert len(seen) == 19  # the breaker stopped the calls: nothing for the 9th signal
    assert all(r.authorized for r in seen)
    after_429 = seen[3].arrived_at - seen[2].arrived_at
    assert after_429 >= 1.0  # Retry-After honoured
    assert [r.is_repair for r in seen[7:11]] == [False, True, False, True]
    assert signals[3].tokens is not None and signals[3].tokens > 0


# --- the async operator on a mini-cluster ---------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamExecutionEnvironment]:
    settings = JobSettings(checkpoint_dir=tmp_path_factory.mktemp("checkpoints"))
    configuration = Configuration()
    for key, value in local_configuration(settings).items():
        configuration.set_string(key, value)
    configuration.set_string("restart-strategy.type", "none")
    # execute_and_collect chains the collected stream's Python operators a second time, and
    # the copies of uid'd operators collide with the originals: run them unchained here.
    configuration.set_string("python.operator-chaining.enabled", "false")
    environment = StreamExecutionEnvironment.get_execution_environment(configuration)
    environment.set_parallelism(2)
    yield environment


RATE = 10.0  # requests per second for the whole operator
SLOW_SYMBOL = "SLOW-USDT"  # always slower than the operator's timeout
FLAKY_SYMBOL = "FLAKY-USDT"  # 500 forever: bounded retries
FIXED_SYMBOLS = ("RATE-USDT", "BAD-USDT", "RESET-USDT", "SHAPE-USDT")


def operator_script() -> tuple[object, dict[str, int]]:
    firsts: dict[str, int] = defaultdict(int)

    def script(request: ChatRequest) -> Behaviour:
        symbol = symbol_of(request)
        firsts[symbol] += 1
        n = firsts[symbol]
        if symbol == SLOW_SYMBOL:
            return slow(30.0)
        if symbol == FLAKY_SYMBOL:
            return status(500)
        if n == 1 and symbol == "RATE-USDT":
            return status(429, retry_after="1")
        if n == 1 and symbol == "BAD-USDT":
            return malformed()
        if n == 1 and symbol == "RESET-USDT":
            return reset()
        if symbol == "SHAPE-USDT" and first_bar(request):
            return wrong_shape()  # the first bar's context, and its repair
        return ok(0.02)

    return script, firsts


def test_async_operator_one_signal_per_bar_under_faults(
    env: StreamExecutionEnvironment, tmp_path: Path
) -> None:
    key_file = tmp_path / "inference.key"
    key_file.write_text(API_KEY + "\n")
    bars: list[VersionedBar] = []
    for symbol in ("AAA-USDT", "BBB-USDT", "CCC-USDT", *FIXED_SYMBOLS):
        bars += [VersionedBar(kline(symbol, m), 1) for m in range(4)]
    bars += [VersionedBar(kline(FLAKY_SYMBOL, m), 1) for m in range(3)]
    bars.append(VersionedBar(kline(SLOW_SYMBOL, 0), 1))
    # A bar re-emitted with the same values (version 2): a repeated context -> cache. (A
    # one-bar series, so its context does not depend on the order bars arrive in.)
    bars += [VersionedBar(kline("REPEAT-USDT", 0), 1), VersionedBar(kline("REPEAT-USDT", 0), 2)]
    # Which bars get a request (closed bars of the signal timeframes) is the series
    # operator's decision, tested with the whole job below and in test_job_contract.py.
    expected = Counter((b.kline.symbol, b.kline.open_time, b.version) for b in bars)
    requests = [
        encode_request(b, [o.kline for o in bars if o.kline.symbol == b.kline.symbol
                           and o.kline.open_time <= b.kline.open_time and o.version == 1])
        for b in bars
    ]  # fmt: skip
    config = SignalConfig(
        timeframes=("1m",),
        capacity=50,
        timeout_ms=7_000,
        inference=InferenceSettings(
            url=None, model="fake-model", api_key_env="KLINEFLOW_TEST_NO_SUCH_VAR",
            api_key_file=str(key_file), requests_per_s=RATE, attempt_timeout_s=2.0,
            max_attempts=3, backoff_base_s=0.2, backoff_cap_s=1.0, breaker_failures=100,
        ),
    )  # fmt: skip
    script, _ = operator_script()
    log_marks = {p: p.stat().st_size for p in PYFLINK_LOG_DIR.glob("*.log")}
    with ChatServer(script, api_key=API_KEY) as server:  # type: ignore[arg-type]
        from dataclasses import replace

        config = replace(config, inference=replace(config.inference, url=server.url))
        # The series operator's requests of one series leave from one subtask (forward to
        # the async operator), so its in-flight and L1 cache dedupe apply: key them likewise.
        stream = (
            env.from_collection(requests, type_info=Types.STRING())
            .key_by(request_symbol, key_type=Types.STRING())
            .map(decode_request, output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()))
        )
        started = time.monotonic()
        answered = with_inference(stream, config).flat_map(
            PayloadsOf(Tag.SIGNAL), output_type=Types.PICKLED_BYTE_ARRAY()
        )
        with answered.execute_and_collect("test-signals") as results:
            signals: list[Signal] = list(results)
        elapsed = time.monotonic() - started
        seen = server.recorded()

    # Exactly one signal per closed 1m bar version.
    assert Counter((s.symbol, s.open_time, s.version) for s in signals) == expected
    by_symbol: dict[str, list[Signal]] = defaultdict(list)
    for s in signals:
        by_symbol[s.symbol].append(s)
    assert all(r.authorized for r in seen), "the key from the key file reached the server"

    # The timeout never fails the job: a degraded signal.
    # Which limit ends it first is a race: three 2 s attempts (jittered backoffs between them,
    # possibly ~0) against the engine's 6.3 s deadline; either way it ends degraded, in time.
    (slow_signal,) = by_symbol[SLOW_SYMBOL]
    assert slow_signal.degraded and slow_signal.reason in {
        "timeout",
        "operator_timeout",
        "retries_exhausted:attempt_timeout",
    }, slow_signal.reason
    # Bounded retries with varying delays, then degraded.
    flaky_reasons = [s.reason for s in by_symbol[FLAKY_SYMBOL]]
    assert flaky_reasons == ["retries_exhausted:http_500"] * 3, flaky_reasons
    flaky = defaultdict(list)
    for r in seen:
        if symbol_of(r) == FLAKY_SYMBOL:
            flaky[r.user_content].append(r.arrived_at)
    assert sorted(len(times) for times in flaky.values()) == [3, 3, 3]
    # Retry gaps at the server also wait for rate tokens (the bucket's period rounds them),
    # so the jitter is checked on the delays the engine drew: see the log below.
    # Repaired, reset and 429'd contexts succeed; the wrong shape twice is degraded.
    for symbol in ("RATE-USDT", "BAD-USDT", "RESET-USDT"):
        assert not any(s.degraded for s in by_symbol[symbol]), symbol
    shape = sorted(by_symbol["SHAPE-USDT"], key=lambda s: s.open_time)
    assert shape[0].degraded and shape[0].reason == "invalid_reply"
    # The repeated context came from the cache, without a second request.
    repeated = by_symbol["REPEAT-USDT"]
    assert sorted((s.version, s.cached) for s in repeated) in (
        [(1, False), (2, True)], [(1, True), (2, False)],
    ), repeated  # fmt: skip
    assert sum(1 for r in seen if symbol_of(r) == "REPEAT-USDT") == 1
    # The request rate at the server stays within the budget (token bucket: burst 1 per
    # subtask, so any span holds at most rate * span + parallelism requests). The allowance
    # covers the time between taking a token and the request's arrival, which on a loaded
    # 2-core machine reaches ~150 ms for a first request (connection set-up); an unlimited
    # operator would still break the bound many times over (30+ requests within a few ms).
    arrivals = sorted(r.arrived_at for r in seen)
    for i in range(len(arrivals)):
        for j in range(i + 1, len(arrivals)):
            span = arrivals[j] - arrivals[i]
            assert j - i + 1 <= RATE * (span + 0.25) + 2, (i, j, span)
    assert len(arrivals) >= 30
    assert elapsed < 60
    print(f"signals={len(signals)} requests={len(seen)} elapsed={elapsed:.1f}s")

    # The key appears in no log line (Flink's and the Python workers' logs), though the
    # workers did log this run's retries there.
    new_log = b""
    for path, offset in log_marks.items():
        with path.open("rb") as handle:
            handle.seek(offset)
            new_log += handle.read()
    assert b"inference attempt 1/3 failed (http_500)" in new_log
    retries = re.findall(
        rb"attempt (\d+)/\d+ failed \(http_500\); retrying in ([0-9.]+) s", new_log
    )
    drawn_by_attempt: dict[int, list[float]] = defaultdict(list)
    for attempt, delay in retries:
        drawn_by_attempt[int(attempt)].append(float(delay))
    drawn = [d for delays in drawn_by_attempt.values() for d in delays]
    assert len(drawn) >= 6, drawn  # 3 flaky contexts x 2 retries
    assert all(0.0 <= d <= 1.0 for d in drawn), drawn  # within [0, min(cap, base * 2**n)]
    # Full jitter: the contexts' delays after the same attempt differ (a plain exponential
    # backoff would give them all the same delay; equal ms draws for all three: ~1e-4).
    for attempt, delays in drawn_by_attempt.items():
        assert len(delays) >= 3 and len(set(delays)) > 1, (attempt, delays)
    assert API_KEY.encode() not in new_log
    for path in PYFLINK_LOG_DIR.glob("*.log"):
        if path not in log_marks:
            assert API_KEY.encode() not in path.read_bytes(), path
    assert all(API_KEY not in repr(s) for s in signals)


# --- the whole job, rules mode --------------------------------------------------------------


def test_job_writes_rules_signals_to_clickhouse_and_redis(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    minutes = 25
    klines = [kline(symbol, m, price=price) for symbol, price in (("BTC-USDT", 90_000.0),
              ("ETH-USDT", 3_000.0)) for m in range(minutes)]  # fmt: skip
    producer = create_producer(kafka_bootstrap)
    try:
        for k in klines:
            producer.send(kafka_topics.raw, key=k.series_key.encode(), value=encode_kline(k))
        producer.flush(timeout=30)
    finally:
        producer.close()
    settings = JobSettings(
        kafka_bootstrap=kafka_bootstrap,
        klines_topic=kafka_topics.raw,
        dlq_topic=kafka_topics.dlq,
        consumer_group=f"test-{kafka_topics.raw}",
        bounded=True,
        parallelism=2,
        pipeline=PipelineConfig(idleness_ms=5_000, rollup_timeframes=()),
        sinks=SinkConfig(clickhouse_url=f"chdb://{tmp_path / 'chdb'}", redis_url=redis_url),
        signals=SignalConfig(timeframes=("1m",)),
        checkpoint_dir=tmp_path / "checkpoints",
        job_name="test-signals-job",
        flink_overrides=(("restart-strategy.type", "none"),),
    )
    run_job(settings)

    with open_writer(settings.sinks.clickhouse_url) as writer:
        rows = writer.query(
            "SELECT symbol, open_time, source, pattern, recommendation, confidence, "
            "key_levels, latency_ms, tokens, cached, degraded, version "
            "FROM crypto_kline.signals FINAL ORDER BY symbol, open_time"
        )
    assert len(rows) == 2 * minutes
    assert {r["source"] for r in rows} == {"rules"}
    assert all(r["recommendation"] in {"bullish", "bearish", "neutral"} for r in rows)
    assert all(r["latency_ms"] is None and r["tokens"] is None for r in rows)
    assert all(not r["degraded"] and not r["cached"] for r in rows)
    assert any(r["pattern"] != "none" for r in rows)
    for symbol in ("BTC-USDT", "ETH-USDT"):
        raw = redis_client.hgetall(f"signal:{{binance:{symbol}:1m}}")
        stored = decode_hash(raw, frozenset({"exchange", "symbol", "timeframe", "source",
                                             "pattern", "recommendation", "reason"}))  # fmt: skip
        assert stored["open_time"] == START + (minutes - 1) * 60_000
        assert stored["source"] == "rules" and stored["degraded"] is False
        last = [r for r in rows if r["symbol"] == symbol][-1]
        assert stored["pattern"] == last["pattern"]
        assert stored["key_levels"] == list(last["key_levels"])
