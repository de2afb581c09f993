"""Helpers of ``test_job_contract.py``: deterministic input, running the job, and snapshots.

Everything here talks to the job only through its outer surface: Kafka topics in, the
ClickHouse tables (read with ``FINAL``), the Redis keys and channels and ``klines.dlq`` out,
and ``jobs.job`` (``prepare_services``, ``create_environment``, ``attach_job``) with
``JobSettings`` to run it. Nothing here knows how the job graph is built, so the tests stay
valid when the graph is rewritten.

Values are chosen so that every sum the job computes is exact in float64 whatever order it
adds in: prices are multiples of 1/4 (or 1/64), volumes multiples of 1/256 with few
significant bits. A rewrite that adds the same bars in another order therefore produces the
very same roll-up sums, and the golden snapshot can compare them exactly.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import orjson
import redis

from connectors.clickhouse import ClickHouseUnavailable, ClickHouseWriter, open_writer
from connectors.kafka_admin import admin_client, read_topic
from connectors.kafka_producer import create_producer
from jobs.config import JobSettings, PipelineConfig, SinkConfig
from udfs.dead_letter import decode_dead_letter
from udfs.record import STRING_FIELDS, Kline, encode_kline

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# The Kafka topic of every test has this many partitions (the ``kafka_topics`` fixture).
PARTITIONS = 4
# Marks a value that legitimately differs between runs (wall-clock time of a write).
RUN_DEPENDENT = "<run-dependent>"
# The roll-up timeframes of the default settings, with their length in minutes.
ROLLUP_MINUTES: Mapping[str, int] = {"5m": 5, "15m": 15, "1h": 60, "4h": 240, "1d": 1440}
CLICKHOUSE_TABLES = ("klines", "volume_profile", "indicators", "signals")
# Each table's key under FINAL (its ORDER BY), used to sort snapshots.
TABLE_KEYS: Mapping[str, tuple[str, ...]] = {
    "klines": ("exchange", "symbol", "timeframe", "open_time"),
    "volume_profile": ("exchange", "symbol", "timeframe", "window_start"),
    "indicators": ("exchange", "symbol", "timeframe", "open_time"),
    "signals": ("exchange", "symbol", "timeframe", "open_time", "source"),
}
# Run-dependent columns: ``updated_at`` is when the sink wrote the row (wall clock) and
# ``latency_ms`` how long a model call took (null for the rules analyser, which makes none).
RUN_DEPENDENT_COLUMNS = frozenset({"updated_at", "latency_ms"})


@dataclass(frozen=True)
class Message:
    """One Kafka record: key, value, partition (None: the producer's partitioner), timestamp."""

    key: bytes | None
    value: bytes
    timestamp_ms: int
    partition: int | None = None


def kline_message(kline: Kline, *, partition: int | None = None) -> Message:
    """A bar as the bridge and replay send it: keyed by its series, stamped with open_time."""
    return Message(
        kline.series_key.encode(), encode_kline(kline), kline.open_time, partition=partition
    )


def keep_forever(bootstrap: str, *topics: str) -> None:
    """Turn time-based retention off on ``topics``.

    The tests stamp records with the bars' open times (2025) and the job's dead letters
    inherit those timestamps; with the broker's default retention (7 days, checked every
    5 minutes) such segments are deleted as soon as they roll, which happens on the next
    append. Without this, input and dead letters vanish while a test runs.
    """
    from kafka.admin import ConfigResource, ConfigResourceType

    with admin_client(bootstrap) as admin:
        admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "-1"})
                for topic in topics
            ]
        )


def produce(bootstrap: str, topic: str, messages: Sequence[Message]) -> None:
    """Send ``messages`` in order with the project's producer settings and wait for acks."""
    producer = create_producer(bootstrap)
    try:
        for message in messages:
            producer.send(
                topic,
                key=message.key,
                value=message.value,
                partition=message.partition,
                timestamp_ms=message.timestamp_ms,
            )
        producer.flush(timeout=60)
    finally:
        producer.close()


# --- bars ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """A 1m series of the input: where it trades, its price level and which fields it has."""

    exchange: str
    symbol: str
    raw_symbol: str
    price: float
    tick: float
    has_quote: bool = True

    def key(self, timeframe: str = "1m") -> str:
        """The series key ``exchange:symbol:timeframe`` (Kafka key, Redis key suffix)."""
        return f"{self.exchange}:{self.symbol}:{timeframe}"


BTC = Series("binance", "BTC-USDT", "BTCUSDT", 94_000.0, 0.25)
ETH = Series("binance", "ETH-USDT", "ETHUSDT", 3_300.0, 0.25)
SOL = Series("okx", "SOL-USDT", "SOL-USDT", 190.0, 1 / 64, has_quote=False)


@dataclass(frozen=True)
class BarValues:
    """The market values of one 1m bar (exactly representable, see the module docstring)."""

    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int


def random_bar(series: Series, level: float, rng: random.Random) -> BarValues:
    """A valid bar around ``level`` whose prices are multiples of the series' tick."""
    tick = series.tick
    open_ = level
    close = level + rng.randint(-40, 40) * tick
    return BarValues(
        open=open_,
        high=max(open_, close) + rng.randint(0, 20) * tick,
        low=min(open_, close) - rng.randint(0, 20) * tick,
        close=close,
        volume=rng.randint(1, 12_800) / 256,
        trades=rng.randint(1, 900),
    )


def make_kline(
    series: Series,
    open_time: int,
    values: BarValues,
    *,
    closed: bool,
    event_offset_ms: int,
    timeframe: str = "1m",
    length_ms: int = MINUTE,
) -> Kline:
    """A bar of ``series``; quote and taker volumes follow from volume and close."""
    quote = series.has_quote
    taker = values.volume * 3 / 8
    return Kline(
        exchange=series.exchange,
        symbol=series.symbol,
        raw_symbol=series.raw_symbol,
        timeframe=timeframe,
        open_time=open_time,
        close_time=open_time + length_ms - 1,
        open=values.open,
        high=values.high,
        low=values.low,
        close=values.close,
        volume=values.volume,
        quote_volume=values.volume * values.close if quote else None,
        trades=values.trades if quote else None,
        taker_buy_volume=taker if quote else None,
        taker_buy_quote_volume=taker * values.close if quote else None,
        is_closed=closed,
        event_time=open_time + event_offset_ms,
        ingest_time=open_time + event_offset_ms + 25,
    )


def developing(series: Series, values: BarValues, quarter: int, rng: random.Random) -> BarValues:
    """An in-progress snapshot ``quarter``/4 into the minute (volume a quarter multiple)."""
    tick = series.tick
    span = round((values.high - values.low) / tick)
    close = values.low + rng.randint(0, span) * tick
    return BarValues(
        open=values.open,
        high=max(values.open, close),
        low=min(values.open, close),
        close=close,
        volume=values.volume * quarter / 4,
        trades=values.trades * quarter // 4,
    )


def closed_bars(series: Series, start: int, minutes: int, seed: int) -> list[Kline]:
    """``minutes`` clean, in-order closed 1m bars of ``series`` from ``start``."""
    rng = random.Random(seed)
    level = series.price
    bars: list[Kline] = []
    for minute in range(minutes):
        values = random_bar(series, level, rng)
        level = values.close
        bars.append(
            make_kline(series, start + minute * MINUTE, values, closed=True, event_offset_ms=59_999)
        )
    return bars


# --- the golden input ---------------------------------------------------------------------

# 2025-01-01T20:00Z .. 2025-01-02T16:00Z: 20 hours across midnight, so the first 1d window
# (4 hours of bars) closes by the watermark in mid-stream and the second (16 hours) at the
# end of the input, like every last window of each timeframe (the end is 4h-aligned). Two
# full days would say no more and make the golden file three times as large.
GOLDEN_START = 1_735_761_600_000
GOLDEN_MINUTES = 20 * 60
GOLDEN_END = GOLDEN_START + GOLDEN_MINUTES * MINUTE
GOLDEN_SEED = 20_250_101
HOURLY = Series("bybit", "XRP-USDT", "XRPUSDT", 2.25, 1 / 64, has_quote=False)


@dataclass
class GoldenInput:
    """The golden input in production order and what the test knows about it."""

    messages: list[Message] = field(default_factory=list)
    # Bars that the upsert must turn into a ``late`` dead letter (its original bytes).
    late: list[bytes] = field(default_factory=list)
    # Malformed messages (the validate stage's dead letters).
    malformed: list[bytes] = field(default_factory=list)
    # The correction of a closed bar inside the lateness and the 1h input bar (their bytes).
    correction: bytes = b""
    hourly: bytes = b""


def _series_stream(
    series: Series, rng: random.Random, *, minutes: int, skip: frozenset[int], open_last: bool
) -> list[tuple[float, Kline]]:
    """Updates of one series with their arrival sort key (ms).

    Per minute: sometimes 1-3 in-progress updates first (in a shuffled order, so some are
    stale), then the closed bar; sometimes the closed bar twice (a duplicate) or an
    in-progress update after it (dropped). Now and then a closed bar arrives after the next
    minute's closed bar (65 s later than usual: out of order, inside the 60 s watermark
    bound, since watermarks trail the newest open time). ``open_last``: the last minute
    never closes.
    """
    level = series.price
    stream: list[tuple[float, Kline]] = []
    for minute in range(minutes):
        values = random_bar(series, level, rng)
        level = values.close
        if minute in skip:
            continue
        open_time = GOLDEN_START + minute * MINUTE
        last = minute == minutes - 1
        updates = 3 if last and open_last else rng.choice((0, 0, 0, 1, 2, 3))
        steps = list(range(1, updates + 1))
        rng.shuffle(steps)
        for position, step in enumerate(steps):
            partial = developing(series, values, step, rng)
            kline = make_kline(series, open_time, partial, closed=False,
                               event_offset_ms=15_000 * step)  # fmt: skip
            stream.append((open_time + 15_000 * (position + 1), kline))
        if last and open_last:
            continue
        closed = make_kline(series, open_time, values, closed=True, event_offset_ms=59_999)
        delay = 65_000 if rng.random() < 0.05 and not last else 0
        stream.append((open_time + 59_999 + delay, closed))
        roll = rng.random()
        if roll < 0.05:
            stream.append((open_time + 59_999.5 + delay, closed))  # duplicate
        elif roll < 0.08 and steps:
            again = make_kline(series, open_time, developing(series, values, 1, rng),
                               closed=False, event_offset_ms=20_000)  # fmt: skip
            stream.append((open_time + 59_999.7 + delay, again))  # after the close: dropped
    return stream


def golden_input(seed: int = GOLDEN_SEED, minutes: int = GOLDEN_MINUTES) -> GoldenInput:
    """The deterministic input of the golden test (same seed and minutes, same bytes).

    Three spot series on two exchanges (``binance:BTC-USDT`` and ``binance:ETH-USDT`` with
    quote and taker volumes, ``okx:SOL-USDT`` without, with a 90-minute hole and random
    missing minutes), 28 hours of 1m bars, plus:

    - the last BTC minute stays open (only in-progress updates);
    - at the very end, a correction of a closed BTC bar 20 minutes back (inside the 1 h
      allowed lateness): higher high, more volume, a later event time. It lies in the
      penultimate 15m window, so whether that window closed before it came or not, every
      final result is the same (the final windows close only at the end of input);
    - at the very end, a closed ETH bar 3 hours back (beyond the lateness): a ``late``
      dead letter of the upsert, judged against the series' own newest bar;
    - one 1h bar of ``bybit:XRP-USDT`` (another timeframe: stored, never rolled up);
    - malformed messages (validate-stage dead letters).
    """
    assert minutes % 60 == 0 and minutes >= 240, "the input ends on an hour, after 4 hours"
    end = GOLDEN_START + minutes * MINUTE
    rng = random.Random(seed)
    sol_skip = frozenset(range(300, 390)) | frozenset(
        m for m in range(minutes - 2) if rng.random() < 0.03
    )
    keyed: list[tuple[float, Message]] = []
    for series, skip, open_last in ((BTC, frozenset(), True), (ETH, frozenset(), False),
                                    (SOL, sol_skip, False)):  # fmt: skip
        stream = _series_stream(series, rng, minutes=minutes, skip=skip, open_last=open_last)
        for sort_key, kline in stream:
            keyed.append((sort_key, kline_message(kline)))
    golden = GoldenInput()

    corrected_time = end - 20 * MINUTE
    original = next(
        m for _, m in keyed
        if m.key == BTC.key().encode() and orjson.loads(m.value)["open_time"] == corrected_time
        and orjson.loads(m.value)["is_closed"]
    )  # fmt: skip
    data = orjson.loads(original.value)
    values = BarValues(
        open=data["open"],
        high=data["high"] + 1_880.0,
        low=data["low"],
        close=data["close"],
        volume=data["volume"] + 5.5,
        trades=data["trades"] + 7,
    )
    correction = make_kline(BTC, corrected_time, values, closed=True, event_offset_ms=10 * MINUTE)
    keyed.append((end + 1.0, kline_message(correction)))
    golden.correction = encode_kline(correction)

    late_time = end - 3 * HOUR
    late_values = random_bar(ETH, ETH.price, rng)
    late = make_kline(ETH, late_time, late_values, closed=True, event_offset_ms=3 * HOUR)
    keyed.append((end + 2.0, kline_message(late)))
    golden.late.append(encode_kline(late))

    hourly_open = GOLDEN_START + (minutes // 120) * HOUR
    hourly = make_kline(HOURLY, hourly_open, random_bar(HOURLY, HOURLY.price, rng), closed=True,
                        event_offset_ms=HOUR - 1, timeframe="1h", length_ms=HOUR)  # fmt: skip
    keyed.append((hourly_open + HOUR, kline_message(hourly)))
    golden.hourly = encode_kline(hourly)

    good = orjson.loads(keyed[len(keyed) // 2][1].value)
    good_key = f"{good['exchange']}:{good['symbol']}:{good['timeframe']}".encode()
    malformed: list[tuple[bytes | None, bytes]] = [
        (None, b"this is not json"),
        (None, b"\xff\xfe\x00 binary garbage"),
        (good_key, orjson.dumps({**good, "volume": -1.0})),
        (b"kraken:" + good_key.split(b":", 1)[1], orjson.dumps({**good, "exchange": "kraken"})),
        (good_key, orjson.dumps({k: v for k, v in good.items() if k != "close"})),
        (good_key, orjson.dumps({**good, "open_time": good["open_time"] + 30_000})),
    ]
    for index, (key, value) in enumerate(malformed):
        at = GOLDEN_START + (index * 3 + 1) * HOUR + 7_000
        keyed.append((at, Message(key, value, at)))
        golden.malformed.append(value)

    keyed.sort(key=lambda item: item[0])
    golden.messages = [message for _, message in keyed]
    return golden


# --- running the job ----------------------------------------------------------------------


def contract_settings(
    *,
    tmp_path: Path,
    kafka_bootstrap: str,
    raw_topic: str,
    dlq_topic: str,
    redis_url: str,
    name: str,
    bounded: bool = True,
    parallelism: int = 1,
    pipeline: PipelineConfig | None = None,
    sinks: Mapping[str, Any] | None = None,
    flink_overrides: Sequence[tuple[str, str]] = (),
    **changes: Any,
) -> JobSettings:
    """Default job settings on the test's topics, chdb directory and Redis; no restarts.

    ``pipeline`` replaces the pipeline settings; ``sinks`` overrides fields of the sink
    settings; ``changes`` other ``JobSettings`` fields.
    """
    sink_config = SinkConfig(
        clickhouse_url=f"chdb://{tmp_path / 'chdb'}", redis_url=redis_url, **dict(sinks or {})
    )
    return JobSettings(
        kafka_bootstrap=kafka_bootstrap,
        klines_topic=raw_topic,
        dlq_topic=dlq_topic,
        consumer_group=f"contract-{raw_topic}",
        bounded=bounded,
        parallelism=parallelism,
        pipeline=pipeline or PipelineConfig(),
        sinks=sink_config,
        checkpoint_dir=tmp_path / "checkpoints",
        job_name=name,
        flink_overrides=(
            ("restart-strategy.type", "none"),
            ("rest.port", "0"),
            *flink_overrides,
        ),
        **changes,
    )


def run_bounded(settings: JobSettings) -> None:
    """Run the whole job on ``settings`` (bounded) to its end: ``jobs.job.run_job``, which
    builds the graph with ``attach_job`` on a local mini-cluster."""
    from jobs.job import run_job

    assert settings.bounded
    run_job(settings)


def start_job(settings: JobSettings) -> Any:
    """Start the whole job asynchronously (``attach_job`` on a mini-cluster); returns Flink's
    ``JobClient``. The source parallelism is the partition count, as ``run_job`` sets it."""
    from jobs.job import attach_job, create_environment, prepare_services

    if settings.pipeline.source_parallelism is None:
        settings = settings.with_overrides(
            pipeline=replace(settings.pipeline, source_parallelism=PARTITIONS)
        )
    prepare_services(settings)
    env = create_environment(settings)
    attach_job(env, settings)
    return env.execute_async(settings.job_name)


def cancel_job(client: Any) -> None:
    """Cancel a job started with :func:`start_job` and wait until it is gone (a job that has
    already ended, and its mini-cluster with it, is left alone)."""
    try:
        client.cancel().result()
    except Exception:  # noqa: BLE001 - the job (and its mini-cluster) may be gone already
        return


def job_status(client: Any) -> str:
    """The job's status name (``RUNNING``, ``FAILED``, ...)."""
    return str(client.get_job_status().result().name)


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout_s: float,
    what: str,
    client: Any = None,
    interval_s: float = 0.2,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``.

    With ``client`` the job is watched too: a failed job fails the wait at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if client is not None:
            status = job_status(client)
            assert status not in ("FAILED", "CANCELED", "FINISHED"), (
                f"job is {status} while waiting for {what}"
            )
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(interval_s)


def open_released(chdb_url: str, timeout_s: float = 60.0) -> ClickHouseWriter:
    """Open chdb once the job's Python worker has let go of the directory."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return open_writer(chdb_url, migrate_schema=False)
        except ClickHouseUnavailable:
            assert time.monotonic() < deadline, "the job's worker still holds chdb"
            time.sleep(0.2)


# --- reading the outputs ------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A ClickHouse value as JSON: times as epoch ms, tuples as lists."""
    if isinstance(value, dt.datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def table_rows(writer: ClickHouseWriter, table: str, *, final: bool = True) -> list[dict[str, Any]]:
    """Every row of ``crypto_kline.{table}`` (with ``FINAL`` unless told), sorted by its key;
    run-dependent columns replaced by :data:`RUN_DEPENDENT` (null stays null)."""
    order = ", ".join(TABLE_KEYS[table]) + ", version"
    rows = writer.query(
        f"SELECT * FROM crypto_kline.{table} {'FINAL' if final else ''} ORDER BY {order}"
    )
    plain: list[dict[str, Any]] = []
    for row in rows:
        item = {name: _plain(value) for name, value in row.items()}
        for name in RUN_DEPENDENT_COLUMNS & item.keys():
            if item[name] is not None:
                item[name] = RUN_DEPENDENT
        plain.append(item)
    return plain


def clickhouse_snapshot(chdb_url: str) -> dict[str, dict[str, Any]]:
    """Every data table read with ``FINAL``, columnar (see :func:`columnar`)."""
    with open_released(chdb_url) as writer:
        return {table: columnar(table_rows(writer, table)) for table in CLICKHOUSE_TABLES}


def redis_snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every key of the database: hashes as dicts, sorted sets as ``[member, score]`` lists.

    ``latency_ms`` in ``signal:`` hashes is run-dependent when not null (see
    :data:`RUN_DEPENDENT_COLUMNS`).
    """
    snapshot: dict[str, Any] = {}
    for raw_key in sorted(cast(list[bytes], list(client.scan_iter(count=1000)))):
        key = raw_key.decode()
        kind = client.type(raw_key).decode()
        if kind == "hash":
            stored = cast(dict[bytes, bytes], client.hgetall(raw_key))
            fields = {name.decode(): value.decode() for name, value in sorted(stored.items())}
            if fields.get("latency_ms", "null") != "null":
                fields["latency_ms"] = RUN_DEPENDENT
            snapshot[key] = {"type": kind, "value": fields}
        elif kind == "zset":
            members = client.zrange(raw_key, 0, -1, withscores=True)
            snapshot[key] = {
                "type": kind,
                "value": [[orjson.loads(member), score] for member, score in members],
            }
        else:
            snapshot[key] = {"type": kind, "value": RUN_DEPENDENT}
    return snapshot


def dead_letters(bootstrap: str, topic: str, *, min_messages: int = 0) -> list[dict[str, Any]]:
    """Every record of the DLQ decoded, ``rejected_at`` (wall clock) dropped, sorted."""
    letters = []
    for _, value in read_topic(bootstrap, topic, min_messages=min_messages, timeout_s=30):
        letter = decode_dead_letter(value)
        try:
            original: dict[str, str] = {"original": letter.original.decode("utf-8")}
        except UnicodeDecodeError:
            original = {"original_b64": base64.b64encode(letter.original).decode("ascii")}
        letters.append({"reason": letter.reason, "stage": letter.stage, "key": letter.key,
                        **original})  # fmt: skip
    return sorted(letters, key=lambda item: json.dumps(item, sort_keys=True))


def decoded_dead_letters(bootstrap: str, topic: str, *, min_messages: int = 0) -> list[Any]:
    """The DLQ's records as ``DeadLetter`` objects (original bytes and all)."""
    return [
        decode_dead_letter(value)
        for _, value in read_topic(bootstrap, topic, min_messages=min_messages, timeout_s=30)
    ]


# --- golden files ---------------------------------------------------------------------------


def columnar(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows of equal keys as ``{"columns": [...], "rows": [[...], ...]}`` (half the size)."""
    columns = list(rows[0]) if rows else []
    return {"columns": columns, "rows": [[row[name] for name in columns] for row in rows]}


def dump_golden(snapshot: Mapping[str, Any]) -> str:
    """The snapshot as JSON with one table row, Redis key or dead letter per line."""
    lines = ["{"]
    sections = list(snapshot.items())
    for s_index, (section, content) in enumerate(sections):
        lines.append(f"  {json.dumps(section)}: {{")
        items = list(content.items())
        for i_index, (name, value) in enumerate(items):
            comma = "," if i_index < len(items) - 1 else ""
            if isinstance(value, dict) and set(value) == {"columns", "rows"}:
                lines.append(f"    {json.dumps(name)}: {{")
                lines.append(f'      "columns": {json.dumps(value["columns"])},')
                lines.append('      "rows": [')
                rows = value["rows"]
                for r_index, row in enumerate(rows):
                    row_comma = "," if r_index < len(rows) - 1 else ""
                    lines.append("        " + json.dumps(row) + row_comma)
                lines.append("      ]")
                lines.append(f"    }}{comma}")
            elif isinstance(value, list):
                lines.append(f"    {json.dumps(name)}: [")
                for r_index, row in enumerate(value):
                    row_comma = "," if r_index < len(value) - 1 else ""
                    lines.append("      " + json.dumps(row, sort_keys=True) + row_comma)
                lines.append(f"    ]{comma}")
            else:
                lines.append(f"    {json.dumps(name)}: {json.dumps(value, sort_keys=True)}{comma}")
        lines.append("  }" + ("," if s_index < len(sections) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def differences(expected: Any, actual: Any, path: str = "", limit: int = 12) -> list[str]:
    """Human-readable differences between two JSON values (at most ``limit``)."""
    found: list[str] = []

    def walk(want: Any, got: Any, where: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(want, dict) and isinstance(got, dict):
            for key in sorted(want.keys() | got.keys()):
                if key not in got:
                    found.append(f"{where}/{key}: missing (expected {str(want[key])[:200]})")
                elif key not in want:
                    found.append(f"{where}/{key}: unexpected {str(got[key])[:200]}")
                else:
                    walk(want[key], got[key], f"{where}/{key}")
        elif isinstance(want, list) and isinstance(got, list):
            if len(want) != len(got):
                found.append(f"{where}: {len(got)} items, expected {len(want)}")
                if all(isinstance(item, list) for item in (*want, *got)):
                    found.extend(_row_set_differences(want, got, where))
                    return  # positional differences after a missing row say nothing more
            for index, (w, g) in enumerate(zip(want, got, strict=False)):
                walk(w, g, f"{where}[{index}]")
        elif want != got or type(want) is not type(got):
            found.append(f"{where}: {got!r} != expected {want!r}")

    walk(expected, actual, path)
    return found


def _row_set_differences(want: list[Any], got: list[Any], where: str, shown: int = 3) -> list[str]:
    """Which rows of a table are missing or unexpected, as runs of keys (the leading
    non-numeric columns, then the first number: e.g. series, timeframe, open time)."""

    def key(row: list[Any]) -> tuple[Any, ...]:
        for index, value in enumerate(row):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return tuple(row[: index + 1])
        return tuple(row)

    wanted = Counter(json.dumps(row) for row in want)
    found_rows = Counter(json.dumps(row) for row in got)
    lines = []
    for label, extra in (("missing", wanted - found_rows), ("unexpected", found_rows - wanted)):
        if not extra:
            continue
        by_group: dict[tuple[Any, ...], list[Any]] = {}
        for text in extra.elements():
            row_key = key(json.loads(text))
            by_group.setdefault(row_key[:-1], []).append(row_key[-1])
        for group, values in sorted(by_group.items(), key=lambda item: str(item[0]))[:shown]:
            lines.append(f"{where}: {len(values)} rows {label} for {list(group)}, "
                         f"from {min(values)} to {max(values)}")  # fmt: skip
        if len(by_group) > shown:
            lines.append(f"{where}: ... and {len(by_group) - shown} more groups {label}")
    return lines


def iter_rows(snapshot: Mapping[str, Any], table: str) -> Iterator[dict[str, Any]]:
    """The rows of one ClickHouse table of a snapshot, as dicts."""
    content = snapshot["clickhouse"][table]
    for row in content["rows"]:
        yield dict(zip(content["columns"], row, strict=True))


def rollup_emissions(chdb_url: str) -> dict[tuple[str, str, str, int], int]:
    """How many rows each roll-up bar has *without* ``FINAL`` (one per emission written).

    A background merge can only lower a count, so ``== 1`` may pass where an emission was
    doubled and merged away, but it never fails on a job that emitted once.
    """
    with open_released(chdb_url) as writer:
        rows = writer.query(
            "SELECT exchange, symbol, timeframe, toUnixTimestamp64Milli(open_time) AS t, "
            "count() AS n FROM crypto_kline.klines WHERE timeframe != '1m' "
            "GROUP BY exchange, symbol, timeframe, t"
        )
    return {(r["exchange"], r["symbol"], r["timeframe"], int(r["t"])): int(r["n"]) for r in rows}


class UpdateListener:
    """Collects the ``kline-updates:*`` pub/sub messages of a Redis database as they come."""

    def __init__(self, url: str, pattern: str = "kline-updates:*") -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(pattern)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        # The subscription is only active once Redis confirmed it.
        wait_for(self._confirmed, timeout_s=10, what="the pub/sub subscription")

    def _confirmed(self) -> bool:
        return bool(self.pubsub.subscribed)

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        """Every message received so far: ``(channel, decoded message)``."""
        while True:
            message = self.pubsub.get_message(timeout=0.01)
            if message is None:
                return self.messages
            if message["type"] == "pmessage":
                self.messages.append((message["channel"].decode(), orjson.loads(message["data"])))

    def on(self, channel: str) -> list[dict[str, Any]]:
        """The messages received on one channel."""
        return [data for name, data in self.drain() if name == channel]

    def close(self) -> None:
        """Unsubscribe and close the connection."""
        self.pubsub.close()
        self.client.close()


def latest_bar(client: redis.Redis, key: str) -> dict[str, Any] | None:
    """A ``kline:`` hash decoded (JSON literals to values, strings kept), or None."""
    stored = cast(dict[bytes, bytes], client.hgetall(key))
    if not stored:
        return None
    return {
        name.decode(): value.decode() if name.decode() in STRING_FIELDS else orjson.loads(value)
        for name, value in stored.items()
    }


def now_ms() -> int:
    """The wall clock in epoch ms."""
    return time.time_ns() // 1_000_000


def live_kline(series: Series, open_time: int, *, closed: bool, rng: random.Random) -> Kline:
    """A bar of ``series`` whose event and ingest time are now (the live case)."""
    values = random_bar(series, series.price, rng)
    return make_kline(series, open_time, values, closed=closed,
                      event_offset_ms=now_ms() - open_time)  # fmt: skip


def rest_json(rest_port: int, path: str) -> Any:
    """One Flink REST API answer (None if the cluster does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}{path}", timeout=5) as answer:
            return json.loads(answer.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def operator_metric(rest_port: int, job_id: str, name: str, *, vertex: str = "") -> list[int]:
    """One metric of the job's operators from the Flink REST API, a value per subtask that
    shows it, over the vertices whose name starts with ``vertex`` (every vertex if empty);
    an empty list while the REST API or the metric is not there yet."""
    job = rest_json(rest_port, f"/jobs/{job_id}") or {}
    values: list[int] = []
    for found in job.get("vertices", []):
        if not str(found.get("name", "")).startswith(vertex):
            continue
        base = f"/jobs/{job_id}/vertices/{found['id']}/metrics"
        ids = [item["id"] for item in rest_json(rest_port, base) or [] if
               str(item.get("id", "")).endswith(f".{name}")]  # fmt: skip
        if ids:
            answer = rest_json(rest_port, f"{base}?get={','.join(sorted(ids))}") or []
            values += [int(float(item["value"])) for item in answer]
    return values


def job_exceptions(rest_port: int, job_id: str) -> list[dict[str, Any]]:
    """The job's exception history from the Flink REST API (``/jobs/:id/exceptions``)."""
    body = rest_json(rest_port, f"/jobs/{job_id}/exceptions") or {}
    return list(body.get("exceptionHistory", {}).get("entries", []))


def wait_until_finished(client: Any, *, timeout_s: float) -> None:
    """Wait until a bounded job started with :func:`start_job` has finished; fail if it
    failed or is still running after ``timeout_s`` (then it is cancelled).

    A finished job's mini-cluster is shut down, so this waits on the execution result.
    """
    result = client.get_job_execution_result()
    deadline = time.monotonic() + timeout_s
    while not result.done():
        if time.monotonic() >= deadline:
            cancel_job(client)
            raise AssertionError(f"the job is still running after {timeout_s:.0f}s")
        time.sleep(0.2)
    result.result()  # raises if the job failed
