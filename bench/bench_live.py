"""Benchmark: live latency from producing an in-progress 1m update to its Redis announcement.

    .venv/bin/python bench/bench_live.py [--rates 2000,5000] [--series 1000] [--duration-s 300]
        [--warmup-s 20] [--sides job,floor] [--job-args '--no-signals ...']

It starts its own Kafka broker and Redis on free loopback ports (like the tests) and then, for
each rate R and each side, on a fresh topic (4 partitions) and DLQ topic:

- ``job``: the unbounded job through its CLI only (``klineflow job run`` with that broker,
  topic, group, a fresh ``chdb://`` directory, that Redis and ``--parallelism 2``, plus
  ``--job-args``), in a process group of its own;
- ``floor``: one bare Python consumer (confluent-kafka if installed, else kafka-python) that
  parses each update with orjson and writes it to Redis the plain way: HSET of the bar hash
  and PUBLISH on its ``kline-updates:`` channel, pipelined per poll batch.

A side is ready when a probe update (series ``PROBE-USDT``, sent once a second) arrives on its
pub/sub channel. Then a producer process sends in-progress updates of the current minute
(open_time = the minute's start, event_time = ingest_time = now, is_closed false) round-robin
over N series at R updates/s (a fixed schedule) for ``--warmup-s`` + ``--duration-s``. Each
update carries its sequence number in ``trades`` (it grows, as a trade count does; volume and
close change too, and event_time grows strictly per series, so the job drops none as stale or
duplicate). A subscriber in this process (``psubscribe("kline-updates:*:1m}")``) records when
each sequence number arrives. Both sides take ``time.time_ns()`` on one clock.

Reported per rate and side, over the updates sent after the warm-up:

- ``latency_ms``: p50/p90/p99/max/mean of arrival - send, over the updates announced
  themselves; ``latency_ms_effective`` over every update, each timed until it or a newer
  update of its series was announced (a job may conflate several updates of one bar into
  the newest; the goals are checked on this one, with ``missing`` <= 1 %);
- ``delivered``: announced / sent, by the end of the drain (at most ``--drain-s`` after the
  last send); ``delivered_in_window``: announced before the last update was sent;
  ``conflated``: not announced but superseded; ``missing``: neither;
- ``lag_growth``: p50 latency (and delivered fraction) of the updates sent in the first and in
  the last minute of the run (a third of the run when it is shorter than 3 minutes): close
  values mean no growing lag; ``timeline`` has the same per tenth of the run;
- ``peak_rss_mb`` and ``peak_pss_mb``: the peak resident (and proportional, shared pages
  split) memory of the side's process tree, sampled once a second (the job: its CLI process,
  the Flink JVM and the Python workers the JVM forks);
- the producer's achieved rate and how far it fell behind its schedule; for the job, the
  records in its DLQ topic; ``job_vs_floor``: the effective percentiles side by side.

JSON goes to stdout and to ``bench/results/bench_live-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import orjson
import redis

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from proctree import tree_memory  # noqa: E402

from connectors.kafka_admin import end_offsets_total, ensure_topics  # noqa: E402
from connectors.kafka_producer import DeliveryCounter, create_producer  # noqa: E402
from connectors.redis_keys import redis_key, update_channel  # noqa: E402
from connectors.redis_store import encode_field  # noqa: E402
from jobs.stack import KafkaBroker, RedisServer, StackConfig, tail_lines  # noqa: E402
from udfs.record import Kline, encode_kline, kline_from_dict, series_key  # noqa: E402

log = logging.getLogger("bench_live")

EXCHANGE: Final = "binance"
TIMEFRAME: Final = "1m"
MINUTE_MS: Final = 60_000
PARTITIONS: Final = 4
PROBE_SYMBOL: Final = "PROBE-USDT"
SUBSCRIBE_PATTERN: Final = "kline-updates:*:1m}"
# The goals of issue 11: p99 at these rates (updates/s), and the job's peak memory.
P99_TARGET_MS: Final[dict[int, float]] = {2000: 50.0, 5000: 100.0}
RSS_TARGET_MB: Final = 3072
POLL_S: Final = 0.2
LOG_TAIL: Final = 60
SIDES: Final = ("job", "floor")
Int64Array = npt.NDArray[np.int64]


# -- Kafka clients: confluent-kafka when installed, else kafka-python -------------------------


def confluent_kafka() -> Any | None:
    """The ``confluent_kafka`` module, or None when it is not installed (the ``bench`` extra)."""
    try:
        return importlib.import_module("confluent_kafka")
    except ModuleNotFoundError:
        return None


class LiveProducer(Protocol):
    """What the benchmark needs of a Kafka producer."""

    library: str

    def send(self, key: bytes, value: bytes) -> None:
        """Queue one record for the topic."""

    def poll(self) -> None:
        """Serve delivery callbacks without blocking."""

    def flush(self, timeout_s: float) -> None:
        """Wait until every queued record is acknowledged (raises if some are not)."""

    def close(self) -> None:
        """Release the client (after :meth:`flush`)."""

    @property
    def failed(self) -> int:
        """Records whose delivery failed."""


class ConfluentProducer:
    """confluent-kafka (librdkafka): acks=all, idempotent, linger 1 ms."""

    library = "confluent-kafka"

    def __init__(self, module: Any, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._failed = 0
        self._producer = module.Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 1,
                "client.id": "bench-live",
            }
        )

    def _on_delivery(self, error: Any, _message: Any) -> None:
        if error is not None:
            self._failed += 1

    def send(self, key: bytes, value: bytes) -> None:
        """Queue one record (serving callbacks when librdkafka's queue is full)."""
        while True:
            try:
                self._producer.produce(self._topic, value, key, on_delivery=self._on_delivery)
                return
            except BufferError:
                self._producer.poll(0.01)

    def poll(self) -> None:
        """Serve delivery callbacks."""
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> None:
        """Wait for every acknowledgement."""
        remaining = int(self._producer.flush(timeout_s))
        if remaining:
            raise RuntimeError(f"{remaining} records not acknowledged within {timeout_s:.0f}s")

    def close(self) -> None:
        """librdkafka's producer is released with the object."""

    @property
    def failed(self) -> int:
        """Failed deliveries."""
        return self._failed


class KafkaPythonProducer:
    """kafka-python through ``connectors.kafka_producer.create_producer``, linger 1 ms."""

    library = "kafka-python"

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._producer = create_producer(bootstrap, linger_ms=1, client_id="bench-live")
        self._counter = DeliveryCounter()

    def send(self, key: bytes, value: bytes) -> None:
        """Queue one record (blocks while too many are unacknowledged)."""
        self._counter.send(self._producer, self._topic, value, key=key)

    def poll(self) -> None:
        """kafka-python serves callbacks in its own I/O thread."""

    def flush(self, timeout_s: float) -> None:
        """Wait for every acknowledgement."""
        self._producer.flush(timeout=timeout_s)
        if self._counter.pending:
            raise RuntimeError(f"{self._counter.pending} records not acknowledged")

    def close(self) -> None:
        """Close the producer."""
        self._producer.close(timeout=10.0)

    @property
    def failed(self) -> int:
        """Failed deliveries."""
        return self._counter.failed


def make_producer(bootstrap: str, topic: str, library: str) -> LiveProducer:
    """A producer of ``library`` (``confluent-kafka`` or ``kafka-python``) for ``topic``."""
    if library == "confluent-kafka":
        module = confluent_kafka()
        if module is None:
            raise RuntimeError("confluent-kafka is not installed (pip install -e '.[bench]')")
        return ConfluentProducer(module, bootstrap, topic)
    return KafkaPythonProducer(bootstrap, topic)


# -- the updates ------------------------------------------------------------------------------


def series_symbol(index: int) -> tuple[str, str]:
    """The canonical and raw symbol of series ``index``: ``L00042-USDT``, ``L00042USDT``."""
    return f"L{index:05d}-USDT", f"L{index:05d}USDT"


@dataclass(slots=True)
class SeriesBar:
    """The developing 1m bar of one series, as the producer last sent it."""

    symbol: str
    raw_symbol: str
    key: bytes
    base: float
    open_time: int = -1
    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    close: float = 0.0
    volume: float = 0.0
    event_time: int = 0


class UpdateFactory:
    """In-progress updates of the current minute; ``trades`` carries the update's id.

    Per series: event_time grows strictly, volume grows and close moves with every update,
    so the job's upsert applies each one (none is stale or a duplicate). A new minute starts
    a new bar at the previous close.
    """

    def __init__(self, series: int, *, first_index: int = 0) -> None:
        self.bars: list[SeriesBar] = []
        for index in range(first_index, first_index + series):
            symbol, raw_symbol = series_symbol(index)
            self.bars.append(
                SeriesBar(
                    symbol=symbol,
                    raw_symbol=raw_symbol,
                    key=series_key(EXCHANGE, symbol, TIMEFRAME).encode(),
                    base=10.0 + index,
                )
            )

    @classmethod
    def probe(cls) -> UpdateFactory:
        """A factory of the one probe series, ``PROBE-USDT``."""
        factory = cls(0)
        factory.bars.append(
            SeriesBar(
                symbol=PROBE_SYMBOL,
                raw_symbol=PROBE_SYMBOL.replace("-", ""),
                key=series_key(EXCHANGE, PROBE_SYMBOL, TIMEFRAME).encode(),
                base=1.0,
            )
        )
        return factory

    def update(self, series: int, update_id: int, now_ms: int) -> tuple[bytes, bytes]:
        """The Kafka key and wire record of update ``update_id`` of series ``series``."""
        bar = self.bars[series]
        event_time = max(now_ms, bar.event_time + 1)
        open_time = event_time - event_time % MINUTE_MS
        close = round(bar.base * (1.0 + ((update_id * 7919) % 2001 - 1000) * 1e-6), 8)
        if open_time != bar.open_time:
            start = bar.close or close
            bar.open_time, bar.open, bar.high, bar.low, bar.volume = (
                open_time,
                start,
                start,
                start,
                0.0,
            )
        bar.close = close
        bar.high = max(bar.high, close)
        bar.low = min(bar.low, close)
        bar.volume = round(bar.volume + 0.5 + (update_id % 10) * 0.1, 8)
        bar.event_time = event_time
        quote_volume = round(bar.volume * close, 8)
        kline = Kline(
            exchange=EXCHANGE,
            symbol=bar.symbol,
            raw_symbol=bar.raw_symbol,
            timeframe=TIMEFRAME,
            open_time=open_time,
            close_time=open_time + MINUTE_MS - 1,
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=close,
            volume=bar.volume,
            quote_volume=quote_volume,
            trades=update_id,
            taker_buy_volume=round(bar.volume / 2, 8),
            taker_buy_quote_volume=round(quote_volume / 2, 8),
            is_closed=False,
            event_time=event_time,
            ingest_time=now_ms,
        )
        return bar.key, encode_kline(kline)


# -- the producer process ---------------------------------------------------------------------


def run_producer(spec: dict[str, Any]) -> dict[str, Any]:
    """Send ``rate * seconds`` updates on a fixed schedule; save their send times (ns).

    Update ``i`` is due at ``start + i / rate``; whatever is due is sent at once, then the
    loop sleeps until the next one is due (pacing, not synchronisation).
    """
    rate: float = spec["rate"]
    series: int = spec["series"]
    total = round(rate * spec["seconds"])
    producer = make_producer(spec["bootstrap"], spec["topic"], spec["library"])
    factory = UpdateFactory(series)
    send_ns = np.zeros(total, dtype=np.int64)
    behind_max_s = 0.0
    started = time.monotonic()
    sent = 0
    while sent < total:
        now = time.monotonic()
        due = min(total, int((now - started) * rate) + 1)
        behind_max_s = max(behind_max_s, now - (started + sent / rate))
        while sent < due:
            now_ns = time.time_ns()
            key, value = factory.update(sent % series, sent, now_ns // 1_000_000)
            send_ns[sent] = now_ns
            producer.send(key, value)
            sent += 1
        producer.poll()
        delay = started + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.monotonic() - started
    producer.flush(60.0)
    producer.close()
    np.save(spec["send_log"], send_ns)
    return {
        "library": producer.library,
        "sent": total,
        "elapsed_s": round(elapsed, 3),
        "achieved_rate": round(total / elapsed, 1),
        "max_behind_schedule_ms": round(behind_max_s * 1000, 1),
        "delivery_failures": producer.failed,
    }


# -- the floor: one bare consumer doing the Redis hash write + publish ------------------------


def _floor_batches_confluent(module: Any, spec: dict[str, Any]) -> Iterator[list[bytes]]:
    consumer = module.Consumer(
        {
            "bootstrap.servers": spec["bootstrap"],
            "group.id": spec["group"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.subscribe([spec["topic"]])
    try:
        while True:
            # poll() returns on the first message; consume(timeout=0) adds what is already
            # fetched (consume() with a timeout would wait for a full batch).
            first = consumer.poll(0.1)
            if first is None:
                yield []
                continue
            batch = []
            for message in [first, *consumer.consume(num_messages=499, timeout=0)]:
                if message.error() is not None:
                    raise RuntimeError(f"consumer error: {message.error()}")
                batch.append(message.value())
            yield batch
    finally:
        consumer.close()


def _floor_batches_kafka_python(spec: dict[str, Any]) -> Iterator[list[bytes]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        spec["topic"],
        bootstrap_servers=spec["bootstrap"],
        group_id=spec["group"],
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_poll_records=500,
    )
    try:
        while True:
            records = consumer.poll(timeout_ms=100)
            yield [record.value for batch in records.values() for record in batch]
    finally:
        consumer.close()


def run_floor(spec: dict[str, Any]) -> None:
    """Consume the topic for ever: per update HSET the bar hash and PUBLISH it, pipelined.

    The hash fields are the record's, encoded like the job's (``encode_field``), plus a
    data-derived ``version`` (``2 * event_time + is_closed``, as the job's upsert gives an
    in-order update); the message is the job's too: the fields plus open_time and version.
    Runs until it is terminated.
    """
    client = redis.Redis.from_url(spec["redis_url"])
    module = confluent_kafka() if spec["library"] == "confluent-kafka" else None
    batches = (
        _floor_batches_confluent(module, spec)
        if module is not None
        else _floor_batches_kafka_python(spec)
    )
    for batch in batches:
        if not batch:
            continue
        pipe = client.pipeline(transaction=False)
        for value in batch:
            data = orjson.loads(value)
            exchange, symbol, timeframe = data["exchange"], data["symbol"], data["timeframe"]
            version = 2 * data["event_time"] + int(data["is_closed"])
            fields = {name: encode_field(item) for name, item in data.items()}
            fields["version"] = str(version)
            fields["bars_present"] = fields["bars_expected"] = "1"
            pipe.hset(redis_key("kline", exchange, symbol, timeframe), mapping=fields)
            pipe.publish(
                update_channel("kline", exchange, symbol, timeframe),
                orjson.dumps({**data, "version": version, "bars_present": 1, "bars_expected": 1}),
            )
        pipe.execute()


# -- the subscriber ---------------------------------------------------------------------------


@dataclass
class Subscriber:
    """Records when each update id arrives on ``kline-updates:*:1m}`` (a thread of ours)."""

    redis_url: str
    capacity: int
    received_ns: Int64Array = field(init=False)
    received: int = 0
    duplicates: int = 0
    unknown: int = 0
    last_arrival: float = 0.0
    subscribed: threading.Event = field(default_factory=threading.Event)
    probe_seen: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.received_ns = np.zeros(self.capacity, dtype=np.int64)

    def run(self, stop: threading.Event) -> None:
        """Listen until ``stop`` is set; any failure is kept in ``error`` for the caller."""
        client = redis.Redis.from_url(self.redis_url)
        pubsub = client.pubsub()
        try:
            pubsub.psubscribe(SUBSCRIBE_PATTERN)
            while not stop.is_set():
                message = pubsub.get_message(timeout=0.1)
                if message is None:
                    continue
                arrived_ns = time.time_ns()
                if message["type"] == "psubscribe":
                    self.subscribed.set()
                elif message["type"] == "pmessage":
                    self._record(orjson.loads(message["data"]), arrived_ns)
        except (redis.RedisError, orjson.JSONDecodeError, KeyError, ValueError) as exc:
            self.error = exc
            self.subscribed.set()
            raise
        finally:
            pubsub.close()
            client.close()

    def _record(self, data: dict[str, Any], arrived_ns: int) -> None:
        if data["symbol"] == PROBE_SYMBOL:
            self.probe_seen.set()
            return
        update_id = int(data["trades"])
        if not 0 <= update_id < self.capacity:
            self.unknown += 1
        elif self.received_ns[update_id]:
            self.duplicates += 1
        else:
            self.received_ns[update_id] = arrived_ns
            self.received += 1
        self.last_arrival = time.monotonic()


@contextlib.contextmanager
def subscribing(redis_url: str, capacity: int, timeout_s: float = 30.0) -> Iterator[Subscriber]:
    """A running :class:`Subscriber`, subscribed before this yields; stopped afterwards."""
    subscriber = Subscriber(redis_url, capacity)
    stop = threading.Event()
    thread = threading.Thread(target=subscriber.run, args=(stop,), name="subscriber", daemon=True)
    thread.start()
    try:
        if not subscriber.subscribed.wait(timeout_s) or subscriber.error is not None:
            raise RuntimeError(f"could not subscribe to {SUBSCRIBE_PATTERN}: {subscriber.error}")
        yield subscriber
    finally:
        stop.set()
        thread.join(timeout=10.0)


# -- memory of a process tree ----------------------------------------------------------------


@dataclass
class MemorySampler:
    """Samples a process tree's memory once a second in a thread and keeps the peaks."""

    root: int
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0

    def run(self, stop: threading.Event) -> None:
        """Sample until ``stop`` is set."""
        while not stop.wait(1.0):
            rss, pss, processes = tree_memory(self.root)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, processes)


@contextlib.contextmanager
def sampling_memory(root: int) -> Iterator[MemorySampler]:
    """A :class:`MemorySampler` of ``root``'s tree running while the block runs."""
    sampler = MemorySampler(root)
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(stop,), name="memory", daemon=True)
    thread.start()
    try:
        yield sampler
    finally:
        stop.set()
        thread.join()


# -- the sides --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """What every run shares: the broker, Redis, the work directory and the options."""

    bootstrap: str
    redis_url: str
    work: Path
    args: argparse.Namespace
    library: str


def side_command(side: str, env: Environment, topic: str, dlq: str, name: str) -> list[str]:
    """The command line of one side: the job's CLI, or this script in its floor role."""
    if side == "job":
        return [
            str(env.args.klineflow),
            "job",
            "run",
            "--bootstrap-servers",
            env.bootstrap,
            "--topic",
            topic,
            "--dlq-topic",
            dlq,
            "--group-id",
            f"bench-live-{name}",
            "--clickhouse-url",
            f"chdb://{env.work / f'chdb-{name}'}",
            "--redis-url",
            env.redis_url,
            "--parallelism",
            str(env.args.parallelism),
            *shlex.split(env.args.job_args),
        ]
    spec = {
        "bootstrap": env.bootstrap,
        "topic": topic,
        "group": f"bench-live-{name}",
        "redis_url": env.redis_url,
        "library": env.library,
    }
    return [sys.executable, str(Path(__file__).resolve()), "--floor", json.dumps(spec)]


def stop_group(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """End the side's process group (we started it as its leader): SIGTERM, then SIGKILL."""
    pgid = process.pid

    def group_gone() -> bool:
        process.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if group_gone():
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while not group_gone() and time.monotonic() < deadline:
            time.sleep(POLL_S)
    if not group_gone():
        raise RuntimeError(f"process group {pgid} survived SIGKILL")
    process.wait(timeout=10.0)


def wait_ready(
    side: str,
    *,
    process: subprocess.Popen[bytes],
    subscriber: Subscriber,
    env: Environment,
    topic: str,
    log_file: Path,
) -> float:
    """Send a probe update once a second until one arrives; returns the seconds it took."""
    producer = make_producer(env.bootstrap, topic, env.library)
    probe = UpdateFactory.probe()
    started = time.monotonic()
    deadline = started + env.args.start_timeout_s
    next_probe = started
    probes = 0
    try:
        while not subscriber.probe_seen.is_set():
            now = time.monotonic()
            if process.poll() is not None:
                raise RuntimeError(
                    f"{side} exited with code {process.returncode} before it was ready:\n"
                    + tail_lines([log_file], LOG_TAIL)
                )
            if subscriber.error is not None:
                raise RuntimeError(f"the subscriber failed: {subscriber.error!r}")
            if now >= deadline:
                raise TimeoutError(
                    f"{side} did not announce a probe within {env.args.start_timeout_s:.0f}s:\n"
                    + tail_lines([log_file], LOG_TAIL)
                )
            if now >= next_probe:
                producer.send(*probe.update(0, probes, time.time_ns() // 1_000_000))
                producer.flush(30.0)
                probes += 1
                next_probe = now + 1.0
            subscriber.probe_seen.wait(POLL_S)
    finally:
        producer.close()
    ready_s = time.monotonic() - started
    log.info("%s ready after %.1fs (%d probes)", side, ready_s, probes)
    return ready_s


def drain(subscriber: Subscriber, expected: int, env: Environment) -> float:
    """Wait until every update is announced or superseded, or arrivals stop.

    Done when the newest update of every series arrived (the older ones are then announced
    or superseded), or nothing arrived for ``--drain-quiet-s``, or ``--drain-s`` passed.
    """
    newest = subscriber.received_ns[max(0, expected - env.args.series) : expected]
    started = time.monotonic()
    deadline = started + env.args.drain_s
    while subscriber.received < expected and np.count_nonzero(newest) < newest.size:
        now = time.monotonic()
        if now >= deadline or now - max(subscriber.last_arrival, started) >= env.args.drain_quiet_s:
            break
        time.sleep(POLL_S)
    return time.monotonic() - started


def measure_side(side: str, rate: int, env: Environment) -> dict[str, Any]:
    """One side at one rate on a fresh topic: start, wait until ready, produce, drain, stop."""
    args = env.args
    name = f"{side}-{rate}-{uuid.uuid4().hex[:6]}"
    topic, dlq = f"live-{name}", f"live-{name}-dlq"
    ensure_topics(env.bootstrap, [topic], partitions=PARTITIONS)
    ensure_topics(env.bootstrap, [dlq], partitions=1)
    with redis.Redis.from_url(env.redis_url) as client:
        client.flushdb()
    seconds = args.warmup_s + args.duration_s
    total = round(rate * seconds)
    send_log = env.work / f"send-{name}.npy"
    log_file = env.work / f"{name}.log"
    command = side_command(side, env, topic, dlq, name)
    log.info("%s at %d updates/s: %s", side, rate, shlex.join(command))
    load_before = os.getloadavg()
    with subscribing(env.redis_url, total) as subscriber, log_file.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sampler: MemorySampler
        try:
            with sampling_memory(process.pid) as sampler:
                ready_s = wait_ready(
                    side,
                    process=process,
                    subscriber=subscriber,
                    env=env,
                    topic=topic,
                    log_file=log_file,
                )
                spec = {
                    "bootstrap": env.bootstrap,
                    "topic": topic,
                    "library": env.library,
                    "rate": rate,
                    "series": args.series,
                    "seconds": seconds,
                    "send_log": str(send_log),
                }
                produced = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--produce", json.dumps(spec)],
                    check=True,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                producer = json.loads(produced.stdout.strip().splitlines()[-1])
                if subscriber.error is not None:
                    raise RuntimeError(f"the subscriber failed: {subscriber.error!r}")
                received_at_end = subscriber.received
                drain_s = drain(subscriber, total, env)
            if process.poll() is not None:
                raise RuntimeError(
                    f"{side} exited with code {process.returncode} during the run:\n"
                    + tail_lines([log_file], LOG_TAIL)
                )
        finally:
            stop_group(process)
        received_ns = subscriber.received_ns.copy()
        duplicates, unknown = subscriber.duplicates, subscriber.unknown
    send_ns = np.load(send_log)
    result: dict[str, Any] = {
        "side": side,
        "ready_s": round(ready_s, 1),
        "producer": producer,
        **analyse(send_ns, received_ns, rate=rate, warmup_s=args.warmup_s, series=args.series),
        "received_when_sending_ended": received_at_end,
        "drain_s": round(drain_s, 1),
        "duplicate_messages": duplicates,
        "unknown_ids": unknown,
        "peak_rss_mb": round(sampler.peak_rss / 2**20),
        "peak_pss_mb": round(sampler.peak_pss / 2**20),
        "peak_processes": sampler.peak_processes,
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    if side == "job":
        result["dlq_records"] = end_offsets_total(env.bootstrap, dlq)
        result["rss_target_mb"] = RSS_TARGET_MB
    p99 = result["latency_ms_effective"]["p99"]
    if rate in P99_TARGET_MS and args.series == 1000 and p99 is not None:
        result["p99_target_ms"] = P99_TARGET_MS[rate]
        result["meets_p99_target"] = p99 <= P99_TARGET_MS[rate] and result["missing"] <= 0.01
    return result


# -- analysis ---------------------------------------------------------------------------------


def latency_stats(latency_ms: npt.NDArray[np.float64]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean of latencies in ms (None for an empty sample)."""
    if latency_ms.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    p50, p90, p99 = np.percentile(latency_ms, [50, 90, 99])
    return {
        "p50": round(float(p50), 2),
        "p90": round(float(p90), 2),
        "p99": round(float(p99), 2),
        "max": round(float(latency_ms.max()), 2),
        "mean": round(float(latency_ms.mean()), 2),
    }


def superseded_arrival(received_ns: Int64Array, series: int) -> Int64Array:
    """Per update id: when Redis first announced it or a newer update of its series (0: never).

    Update ``i`` belongs to series ``i % series`` (the producer goes round-robin). A job may
    conflate: of several updates of one bar waiting in a batch it writes only the newest,
    and the older ones are never announced; their data was superseded when the newer one
    arrived, which is what this gives them.
    """
    never = np.iinfo(np.int64).max
    rows = -(-received_ns.size // series)
    padded = np.full(rows * series, never, dtype=np.int64)
    padded[: received_ns.size] = np.where(received_ns > 0, received_ns, never)
    grid = padded.reshape(rows, series)  # grid[k, s] is update k * series + s
    earliest_later = np.minimum.accumulate(grid[::-1], axis=0)[::-1]
    out = earliest_later.reshape(-1)[: received_ns.size].copy()
    out[out == never] = 0
    return out


def _window(
    send_ns: Int64Array,
    received_ns: Int64Array,
    superseded_ns: Int64Array,
    mask: npt.NDArray[np.bool_],
) -> dict[str, Any]:
    sent, arrived, covered = send_ns[mask], received_ns[mask], superseded_ns[mask]
    if sent.size == 0:
        return {"sent": 0, "delivered": None, "p50_ms": None, "p50_effective_ms": None}
    delivered, seen = arrived > 0, covered > 0
    latency = (arrived[delivered] - sent[delivered]) / 1e6
    effective = (covered[seen] - sent[seen]) / 1e6
    return {
        "sent": int(sent.size),
        "delivered": round(float(delivered.mean()), 4),
        "p50_ms": round(float(np.median(latency)), 2) if latency.size else None,
        "p50_effective_ms": round(float(np.median(effective)), 2) if effective.size else None,
    }


def analyse(
    send_ns: Int64Array, received_ns: Int64Array, *, rate: int, warmup_s: float, series: int
) -> dict[str, Any]:
    """Latency, delivery, lag growth and a timeline over the updates sent after the warm-up.

    ``latency_ms`` is over the updates that were announced themselves;
    ``latency_ms_effective`` over every update that was announced or superseded (see
    :func:`superseded_arrival`), so conflation cannot hide lag: the targets use it.
    """
    received_ns = received_ns[: send_ns.size]
    superseded_ns = superseded_arrival(received_ns, series)
    warm = min(round(rate * warmup_s), send_ns.size)
    sent, arrived, covered = send_ns[warm:], received_ns[warm:], superseded_ns[warm:]
    if sent.size == 0:
        raise ValueError("no updates after the warm-up: raise --duration-s")
    delivered, seen = arrived > 0, covered > 0
    latency = (arrived[delivered] - sent[delivered]) / 1e6
    effective = (covered[seen] - sent[seen]) / 1e6
    first_ns, last_ns = int(sent[0]), int(sent[-1])
    window_s = min(60.0, (last_ns - first_ns) / 1e9 / 3)
    window_ns = int(window_s * 1e9)
    first = _window(sent, arrived, covered, sent < first_ns + window_ns)
    last = _window(sent, arrived, covered, sent >= last_ns - window_ns)
    ratio = (
        round(last["p50_effective_ms"] / first["p50_effective_ms"], 2)
        if first["p50_effective_ms"] and last["p50_effective_ms"] is not None
        else None
    )
    buckets = 10
    bucket_ns = max(1, math.ceil((last_ns - first_ns + 1) / buckets))
    index = (sent - first_ns) // bucket_ns
    timeline = [
        {"from_s": round(b * bucket_ns / 1e9, 1), **_window(sent, arrived, covered, index == b)}
        for b in range(buckets)
    ]
    return {
        "measured_updates": int(sent.size),
        "received": int(delivered.sum()),
        "delivered": round(float(delivered.mean()), 4),
        "delivered_in_window": round(float((delivered & (arrived <= last_ns)).mean()), 4),
        "conflated": round(float((seen & ~delivered).mean()), 4),
        "missing": round(float((~seen).mean()), 4),
        "latency_ms": latency_stats(latency),
        "latency_ms_effective": latency_stats(effective),
        "lag_growth": {
            "window_s": round(window_s, 1),
            "first": first,
            "last": last,
            "last_over_first_p50_effective": ratio,
        },
        "timeline": timeline,
    }


def compare(job: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """The job's effective latency percentiles next to the floor's, and their ratios."""
    out: dict[str, Any] = {}
    for name in ("p50", "p90", "p99", "max"):
        job_ms = job["latency_ms_effective"][name]
        floor_ms = floor["latency_ms_effective"][name]
        out[name] = {
            "job_ms": job_ms,
            "floor_ms": floor_ms,
            "job_over_floor": round(job_ms / floor_ms, 2)
            if job_ms is not None and floor_ms
            else None,
        }
    out["delivered"] = {"job": job["delivered"], "floor": floor["delivered"]}
    return out


# -- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the broker and Redis, measure every rate and side, stop everything."""
    # Imported here, not at the top: bench_pipeline imports PyFlink and the job, which the
    # producer and floor processes (this module in another role) must not pay for.
    from bench_pipeline import free_port

    # The updates must pass the job's validation, or the job dead-letters every one.
    kline_from_dict(orjson.loads(UpdateFactory(1).update(0, 0, time.time_ns() // 1_000_000)[1]))
    library = "confluent-kafka" if confluent_kafka() is not None else "kafka-python"
    if args.kafka_library != "auto":
        library = args.kafka_library
    work = Path(tempfile.mkdtemp(prefix="klineflow-bench-live-"))
    stack = StackConfig(
        home=work / "stack",
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        redis_port=free_port(),
        kafka_libs=PROJECT_ROOT / "build" / "kafka" / "libs",
        kafka_heap="1g",
        stop_with_parent=True,
    )
    broker, redis_server = KafkaBroker(stack), RedisServer(stack)
    started = time.time()
    try:
        broker.start(timeout_s=120.0)
        redis_server.start(timeout_s=120.0)
        env = Environment(broker.bootstrap, redis_server.url, work, args, library)
        rates: list[dict[str, Any]] = []
        for rate in args.rates:
            sides = {side: measure_side(side, rate, env) for side in args.sides}
            entry: dict[str, Any] = {"rate": rate, **sides}
            if "job" in sides and "floor" in sides:
                entry["job_vs_floor"] = compare(sides["job"], sides["floor"])
            rates.append(entry)
        return {
            "benchmark": "live",
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "series": args.series,
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "partitions": PARTITIONS,
            "parallelism": args.parallelism,
            "job_args": args.job_args,
            "kafka_library": library,
            "cpus": os.cpu_count(),
            "rates": rates,
        }
    finally:
        redis_server.stop()
        broker.stop()
        if args.keep_work:
            log.info("work directory kept: %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _sides(text: str) -> list[str]:
    sides = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if not sides or unknown:
        raise argparse.ArgumentTypeError(f"sides are {', '.join(SIDES)}; got {text!r}")
    return list(dict.fromkeys(sides))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rates", type=_int_list, default=[2000, 5000], help="total updates/s, one run each"
    )
    parser.add_argument("--series", type=int, default=1000, help="series updated round-robin")
    parser.add_argument("--duration-s", type=float, default=300.0, help="measured, per run")
    parser.add_argument("--warmup-s", type=float, default=20.0, help="sent first, not measured")
    parser.add_argument(
        "--sides", type=_sides, default=list(SIDES), help="job, floor or job,floor (default)"
    )
    parser.add_argument("--parallelism", type=int, default=2, help="the job's --parallelism")
    parser.add_argument(
        "--job-args",
        default="",
        help="extra flags for `klineflow job run`, one string: --job-args='--no-signals'",
    )
    parser.add_argument(
        "--kafka-library",
        choices=("auto", "confluent-kafka", "kafka-python"),
        default="auto",
        help="producer and floor client (auto: confluent-kafka if installed)",
    )
    parser.add_argument(
        "--start-timeout-s", type=float, default=600.0, help="most waited for a side's probe"
    )
    parser.add_argument("--drain-s", type=float, default=60.0, help="most waited after sending")
    parser.add_argument(
        "--drain-quiet-s", type=float, default=10.0, help="end the drain after this long silent"
    )
    parser.add_argument(
        "--klineflow",
        type=Path,
        default=PROJECT_ROOT / ".venv/bin/klineflow",
        help="the CLI that runs the job",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    parser.add_argument(
        "--keep-work", action="store_true", help="keep the work directory (logs, chdb, send logs)"
    )
    parser.add_argument("--produce", help=argparse.SUPPRESS)  # internal: the producer process
    parser.add_argument("--floor", help=argparse.SUPPRESS)  # internal: the floor consumer
    args = parser.parse_args(argv)
    if args.series < 1 or args.duration_s <= 0 or args.warmup_s < 0:
        parser.error("--series must be >= 1, --duration-s > 0, --warmup-s >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or one of its internal roles) and print JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if args.produce:
        print(json.dumps(run_producer(json.loads(args.produce))))
        return
    if args.floor:
        run_floor(json.loads(args.floor))
        return
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (args.out / f"bench_live-{stamp}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
