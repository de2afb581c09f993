"""The job's externally visible behaviour, pinned through its outer surface only.

These tests feed Kafka, run the whole job (``jobs.job``: ``run_job`` / ``attach_job`` on a
local mini-cluster, ``JobSettings`` and its pipeline flags) and read what a user sees:
the ClickHouse tables (with ``FINAL``, or without it to count emissions), the Redis keys and
``kline-updates:`` channels, and ``klines.dlq``. They never name an operator, a uid or a
window class, so they hold across a rewrite of the job graph and prove it.

1. ``test_golden_snapshot`` -- a deterministic input (``job_contract_support.golden_input``)
   through the whole job with default settings, compared with
   ``tests/golden/job_contract_snapshot.json``: every table under FINAL with versions,
   every Redis key, every dead letter. Regenerate it (only when a change of behaviour is
   intended, and say so in the commit) with::

       KLINEFLOW_UPDATE_GOLDEN=1 .venv/bin/python -m pytest \\
           tests/integration/test_job_contract.py -k golden

2. The streaming promises, one small focused test each (see each test's docstring).

Redis keys: DESIGN.md spells them with a Redis Cluster hash tag, ``kline:{binance:BTC-USDT:1m}``;
today's code writes ``kline:binance:BTC-USDT:1m`` (no braces, see
``connectors/redis_store.py``). These tests follow the code.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from jobs.config import PipelineConfig
from jobs.stack import RedisServer
from tests.integration.conftest import TopicNames, free_ports, fresh_stack_config
from tests.integration.job_contract_support import (
    BTC,
    DAY,
    ETH,
    GOLDEN_MINUTES,
    GOLDEN_START,
    HOUR,
    HOURLY,
    MINUTE,
    ROLLUP_MINUTES,
    SOL,
    GoldenInput,
    UpdateListener,
    cancel_job,
    clickhouse_snapshot,
    closed_bars,
    contract_settings,
    dead_letters,
    differences,
    dump_golden,
    golden_input,
    iter_rows,
    job_exceptions,
    job_status,
    keep_forever,
    kline_message,
    latest_bar,
    live_kline,
    make_kline,
    now_ms,
    operator_metric,
    produce,
    random_bar,
    redis_snapshot,
    rollup_emissions,
    run_bounded,
    start_job,
    wait_for,
    wait_until_finished,
)


@pytest.fixture
def topics(kafka_bootstrap: str, kafka_topics: TopicNames) -> TopicNames:
    """The test's fresh topics (``kafka_topics``) without time-based retention, because the
    records carry 2025 timestamps (see ``job_contract_support.keep_forever``)."""
    keep_forever(kafka_bootstrap, kafka_topics.raw, kafka_topics.dlq)
    return kafka_topics


GOLDEN_PATH = Path(__file__).resolve().parents[1] / "golden" / "job_contract_snapshot.json"
UPDATE_GOLDEN = os.environ.get("KLINEFLOW_UPDATE_GOLDEN") == "1"
# How long a job may take to start and show its first output. About 20 s on an idle 2-core
# machine; generous, since it costs nothing when the job is quick and the machine is shared.
STARTUP_S = 300.0


# --- 1. the golden snapshot -----------------------------------------------------------------


def test_golden_snapshot(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """The whole job on the golden input ends in exactly the golden tables, keys and letters.

    Default settings (roll-ups 5m..1d, profiles, indicators, rules signals, chdb + Redis),
    parallelism 2, bounded. Run-dependent values are replaced by a marker (see
    ``job_contract_support.RUN_DEPENDENT_COLUMNS``): ``updated_at`` (when the sink wrote),
    ``latency_ms`` (how long a model call took; null for rules) and the dead letters'
    ``rejected_at``; everything else is derived from the data and must match exactly.
    """
    golden = golden_input()
    produce(kafka_bootstrap, topics.raw, golden.messages)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=redis_url,
        name="contract-golden",
        parallelism=2,
    )
    run_bounded(settings)

    snapshot = {
        "clickhouse": clickhouse_snapshot(settings.sinks.clickhouse_url),
        "redis": redis_snapshot(redis_client),
        "dlq": {
            "letters": dead_letters(
                kafka_bootstrap,
                topics.dlq,
                min_messages=len(golden.malformed) + len(golden.late),
            )
        },
    }
    text = dump_golden(snapshot)
    (tmp_path / "snapshot.json").write_text(text)
    if UPDATE_GOLDEN:
        GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN_PATH.write_text(text)
    expected = json.loads(GOLDEN_PATH.read_text())
    actual = json.loads(text)
    found = differences(expected, actual)
    assert not found, (
        f"the job's output differs from {GOLDEN_PATH.name} (actual snapshot: "
        f"{tmp_path / 'snapshot.json'}):\n" + "\n".join(found)
    )
    assert_golden_promises(snapshot, golden, rollup_emissions(settings.sinks.clickhouse_url))


def assert_golden_promises(
    snapshot: dict[str, Any],
    golden: GoldenInput,
    emissions: dict[tuple[str, str, str, int], int],
) -> None:
    """What the golden input promises, checked on the snapshot itself, so that a golden file
    taken on broken code cannot pass unnoticed (each is also a contract of its own)."""
    klines = list(iter_rows(snapshot, "klines"))
    # Only 1m bars are rolled up: the 1h input bar is stored as it came, and nothing of its
    # series exists in any other timeframe.
    hourly = orjson.loads(golden.hourly)
    hourly_rows = [r for r in klines if r["symbol"] == hourly["symbol"]]
    assert [(r["timeframe"], r["open_time"], r["close"], r["version"]) for r in hourly_rows] == [
        ("1h", hourly["open_time"], hourly["close"], 2 * hourly["event_time"] + 1)
    ]
    assert hourly_rows[0]["bars_present"] == hourly_rows[0]["bars_expected"] == 1
    # Every roll-up of the 1m series: closed at the end, bars_expected of its timeframe.
    rollups = [
        r for r in klines if r["timeframe"] in ROLLUP_MINUTES and r["symbol"] != hourly["symbol"]
    ]
    assert {(r["symbol"], r["timeframe"]) for r in rollups} == {
        (s.symbol, tf) for s in (BTC, ETH, SOL) for tf in ROLLUP_MINUTES
    }
    for row in rollups:
        assert row["is_closed"] is True, row
        assert row["bars_expected"] == ROLLUP_MINUTES[row["timeframe"]], row
        assert 1 <= row["bars_present"] <= row["bars_expected"], row
    full_day = next(
        r for r in rollups if r["symbol"] == ETH.symbol and r["timeframe"] == "1d"
        and r["open_time"] == GOLDEN_START + 4 * HOUR
    )  # fmt: skip
    assert full_day["bars_present"] == GOLDEN_MINUTES - 4 * 60

    # Old windows are emitted once under the default live horizon: one row per roll-up bar
    # without FINAL, except the windows holding the correction (re-emitted if they had closed
    # before it came, which depends on how far the other partitions were read).
    correction = orjson.loads(golden.correction)
    corrected = {
        (correction["exchange"], correction["symbol"], tf,
         correction["open_time"] - correction["open_time"] % (minutes * MINUTE))
        for tf, minutes in ROLLUP_MINUTES.items()
    }  # fmt: skip
    assert set(emissions) == {
        (r["exchange"], r["symbol"], r["timeframe"], r["open_time"]) for r in rollups
    } | {(hourly["exchange"], hourly["symbol"], "1h", hourly["open_time"])}
    repeated = {key: n for key, n in emissions.items() if n != 1}
    assert set(repeated) <= corrected and all(n == 2 for n in repeated.values()), repeated

    # One rules signal per closed 15m and 1h bar (roll-ups and the 1h input bar alike), with
    # the bar's version, and none for anything else.
    closed_bars = {
        (r["exchange"], r["symbol"], r["timeframe"], r["open_time"]): r["version"]
        for r in klines
        if r["is_closed"] and r["timeframe"] in ("15m", "1h")
    }
    signals = list(iter_rows(snapshot, "signals"))
    assert {
        (s["exchange"], s["symbol"], s["timeframe"], s["open_time"]): s["version"] for s in signals
    } == closed_bars
    assert len(signals) == len(closed_bars)
    assert {s["source"] for s in signals} == {"rules"}

    # Dead letters: every malformed message with its original bytes (stage validate), and
    # the bar beyond the lateness with its original bytes and a reason starting with "late".
    letters = snapshot["dlq"]["letters"]
    assert len(letters) == len(golden.malformed) + len(golden.late)
    late = [x for x in letters if x["stage"] != "validate"]
    assert [x["original"].encode() for x in late] == golden.late
    assert all(x["reason"].startswith("late") for x in late)
    assert late[0]["key"] == ETH.key()
    originals = sorted(
        x["original"].encode() if "original" in x else base64.b64decode(x["original_b64"])
        for x in letters
        if x["stage"] == "validate"
    )
    assert originals == sorted(golden.malformed)


# --- 2. streaming promises ------------------------------------------------------------------


def test_watermarks_are_per_partition(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """A partition two days ahead in event time does not make the other partitions late.

    Unbounded, default settings. Partition 0 gets an hour of bars two days ahead; once they
    are in Redis (so the job has seen them and made its watermarks), partitions 1-3 get an
    hour of bars each, two days behind. With one watermark per partition (the job takes the
    minimum) nothing is late: no dead letter, and the roll-ups of the lagging series close as
    the lagging partitions' watermarks pass them (the 5m windows up to 00:50 and the 15m
    windows up to 00:30). One watermark over all partitions would already stand two days
    ahead and drop every lagging bar from the roll-ups as late.

    At parallelism 2 the ingest step runs two subtasks for the four source subtasks, and
    each watermark subtask knows from its input channels that two sources feed it (its
    ``watermarkSources`` gauge), so one source heard from late (a restore with a backlog)
    holds the watermark back instead of finding it moved on.
    """
    day = GOLDEN_START - GOLDEN_START % DAY
    ahead = closed_bars(BTC, day + 2 * DAY, 60, seed=1)
    lagging = {1: ETH, 2: SOL, 3: HOURLY}
    behind = {part: closed_bars(series, day, 60, seed=part) for part, series in lagging.items()}
    (rest_port,) = free_ports(1)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=redis_url,
        name="contract-partition-watermarks",
        bounded=False,
        parallelism=2,
        flink_overrides=(
            ("rest.bind-port", str(rest_port)),
            ("metrics.fetcher.update-interval", "500"),
        ),
    )
    client = start_job(settings)
    try:
        job_id = str(client.get_job_id())
        wait_for(
            lambda: operator_metric(rest_port, job_id, "watermarkSources") == [2, 2],
            timeout_s=STARTUP_S,
            what="two sources counted by each watermark subtask",
            client=client,
        )
        produce(kafka_bootstrap, topics.raw, [kline_message(k, partition=0) for k in ahead])
        wait_for(
            lambda: (
                (latest_bar(redis_client, f"kline:{{{BTC.key()}}}") or {}).get("open_time")
                == ahead[-1].open_time
            ),
            timeout_s=STARTUP_S,
            what="the bars of the partition ahead",
            client=client,
        )
        produce(
            kafka_bootstrap,
            topics.raw,
            [kline_message(k, partition=p) for p, bars in behind.items() for k in bars],
        )
        for series in lagging.values():
            for timeframe, closed_count in (("5m", 11), ("15m", 3)):
                key = f"klines:{{{series.key(timeframe)}}}"
                length = ROLLUP_MINUTES[timeframe]
                want = [(day + i * length * MINUTE, True, length) for i in range(closed_count)]

                def closed(key: str = key) -> list[tuple[int, bool, int]]:
                    members = [orjson.loads(m) for m in redis_client.zrange(key, 0, -1)]
                    return [(m["open_time"], m["is_closed"], m["bars_present"]) for m in members]

                wait_for(
                    lambda want=want, closed=closed: closed() == want,
                    timeout_s=60,
                    what=f"the closed {timeframe} roll-ups of {series.symbol}",
                    client=client,
                )
    finally:
        cancel_job(client)
    assert dead_letters(kafka_bootstrap, topics.dlq) == []


def test_idle_partitions_do_not_stall_rollups_and_old_windows_emit_once(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """Unbounded, data on one partition of four: the idle ones do not hold roll-ups back,
    and a replay of old bars emits each roll-up window exactly once, when it closes.

    30 historical minutes (2025) with in-progress updates before each closed bar, default
    live horizon, idleness 1 s. The watermark (newest open time - 60 s) closes the 5m windows
    up to 00:25 and the first 15m window; the window at 00:25 stays open. Without idleness
    the three empty partitions would hold the watermark back forever and nothing would close;
    with early firings for old windows, each window would be announced once per closed 1m
    bar, and the open window would be published too.
    """
    rng = random.Random(3)
    messages = []
    for bar in closed_bars(BTC, GOLDEN_START, 30, seed=4):
        update = make_kline(BTC, bar.open_time, random_bar(BTC, bar.open, rng), closed=False,
                            event_offset_ms=30_000)  # fmt: skip
        messages += [kline_message(update, partition=0), kline_message(bar, partition=0)]
    listener = UpdateListener(redis_url)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=redis_url,
        name="contract-idleness",
        bounded=False,
        pipeline=PipelineConfig(idleness_ms=1_000),
    )
    client = start_job(settings)
    try:
        produce(kafka_bootstrap, topics.raw, messages)
        five = f"kline-updates:{{{BTC.key('5m')}}}"
        closed_windows = [GOLDEN_START + i * 5 * MINUTE for i in range(5)]
        wait_for(
            lambda: {m["open_time"] for m in listener.on(five)} >= set(closed_windows),
            timeout_s=STARTUP_S,
            what="the 5m windows to close",
            client=client,
        )
        quarter = f"kline-updates:{{{BTC.key('15m')}}}"
        wait_for(lambda: listener.on(quarter), timeout_s=30, what="the 15m window", client=client)
        # Every 1m bar is written; the window at 00:25 is still open: nothing of it was
        # published (an early firing would have come before the window at 00:20 closed).
        last = GOLDEN_START + 29 * MINUTE
        wait_for(
            lambda: (
                (latest_bar(redis_client, f"kline:{{{BTC.key()}}}") or {}).get("open_time") == last
            ),
            timeout_s=30,
            what="the last 1m bar",
            client=client,
        )
        announced = listener.on(five)
        assert [(m["open_time"], m["is_closed"], m["bars_present"]) for m in announced] == [
            (t, True, 5) for t in closed_windows
        ]
        assert [(m["open_time"], m["is_closed"]) for m in listener.on(quarter)] == [
            (GOLDEN_START, True)
        ]
        assert (
            latest_bar(redis_client, f"kline:{{{BTC.key('5m')}}}")["open_time"]
            == closed_windows[-1]
        )
        assert redis_client.zcard(f"klines:{{{BTC.key('5m')}}}") == 5
        assert not redis_client.exists(f"kline:{{{BTC.key('4h')}}}", f"kline:{{{BTC.key('1d')}}}")
    finally:
        cancel_job(client)
        listener.close()
    assert dead_letters(kafka_bootstrap, topics.dlq) == []


def test_live_rollups_fire_early_and_close_by_the_wall_clock(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """Live bars (event time now): the developing 5m, 1h and 1d bars are published at once
    (not closed), in-progress updates alone fire nothing by default, and when the input
    stops the window closes by the wall clock ``rollup_idle_close_ms`` after its end.

    The window is the 5m window that ended last before the job starts; the idle close is set
    so that it falls due 50 s after the job is built (if the job takes longer to start, the
    next 5m window, due 5 minutes later). The watermark stays two minutes behind its
    end, so only the wall clock can close it.
    """
    rng = random.Random(5)
    built = now_ms()
    boundary = built - built % (5 * MINUTE)
    first_due = built + 50_000  # time to start the job (about 20 s on an idle machine)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=redis_url,
        name="contract-live",
        bounded=False,
        pipeline=PipelineConfig(rollup_idle_close_ms=first_due - boundary),
    )
    client = start_job(settings)
    try:
        # An in-progress update of another series first: once it is in Redis, the job runs.
        probe = live_kline(ETH, boundary - MINUTE, closed=False, rng=rng)
        produce(kafka_bootstrap, topics.raw, [kline_message(probe, partition=0)])
        wait_for(
            lambda: redis_client.exists(f"kline:{{{ETH.key()}}}"),
            timeout_s=STARTUP_S,
            what="the job to run",
            client=client,
        )
        if now_ms() < first_due - 5_000:
            # The window that ended at the boundary, through its last minute: closes at
            # first_due by the wall clock.
            window_end, minute, due = boundary, boundary - MINUTE, first_due
        else:
            # The job started slowly (a loaded machine): the next window, through its first
            # minute (over by now), closes one window length later.
            window_end, minute, due = boundary + 5 * MINUTE, boundary, first_due + 5 * MINUTE
        assert now_ms() < due - 5_000, "the job started too slowly for the idle close to be seen"
        bar = live_kline(BTC, minute, closed=True, rng=rng)
        produce(kafka_bootstrap, topics.raw, [kline_message(bar, partition=0)])
        developing = {
            tf: wait_for(
                lambda tf=tf: latest_bar(redis_client, f"kline:{{{BTC.key(tf)}}}"),
                timeout_s=30,
                what=f"the developing {tf} bar",
                client=client,
            )
            for tf in ("5m", "1h", "1d")
        }
        for tf, latest in developing.items():
            length = ROLLUP_MINUTES[tf] * MINUTE
            assert (latest["open_time"], latest["is_closed"], latest["bars_present"]) == (
                minute - minute % length,
                False,
                1,
            ), tf
            assert latest["close"] == bar.close
        # The probe's in-progress update fired no roll-up (it came before the closed bar);
        # its window may only have been closed by the wall clock (a slow start, see above).
        probe_five = latest_bar(redis_client, f"kline:{{{ETH.key('5m')}}}")
        assert probe_five is None or (probe_five["is_closed"] and now_ms() >= first_due)

        def closed_five() -> dict[str, Any] | None:
            latest = latest_bar(redis_client, f"kline:{{{BTC.key('5m')}}}")
            return latest if latest and latest["is_closed"] else None

        closed = wait_for(
            closed_five,
            timeout_s=(due - now_ms()) / 1000 + 60,
            what="the idle close of the 5m window",
            client=client,
        )
        assert now_ms() >= due, "closed before its idle close was due"
        assert (closed["open_time"], closed["bars_present"]) == (window_end - 5 * MINUTE, 1)
        assert closed["version"] == developing["5m"]["version"] + 1
        # The probe's window closes the same way, with its in-progress bar.
        probe_closed = wait_for(
            lambda: latest_bar(redis_client, f"kline:{{{ETH.key('5m')}}}"),
            timeout_s=30,
            what="the probe's 5m window",
            client=client,
        )
        assert (probe_closed["is_closed"], probe_closed["bars_present"]) == (True, 1)
    finally:
        cancel_job(client)


def test_emit_in_progress_fires_rollups_on_in_progress_updates(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """``--rollup-emit-in-progress`` (``rollup_emit_in_progress``): an in-progress update of
    the current minute publishes the developing 5m, 1h and 1d bars."""
    from jobs.config import add_job_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    flagged = settings_from_args(parser.parse_args(["--rollup-emit-in-progress"]))
    assert flagged.pipeline.rollup_emit_in_progress is True
    rng = random.Random(6)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=redis_url,
        name="contract-in-progress",
        bounded=False,
        pipeline=flagged.pipeline,
    )
    client = start_job(settings)
    try:
        produced = now_ms()
        current = produced - produced % MINUTE
        update = live_kline(BTC, current, closed=False, rng=rng)
        produce(kafka_bootstrap, topics.raw, [kline_message(update, partition=2)])
        for tf, minutes in (("5m", 5), ("1h", 60), ("1d", 1440)):
            latest = wait_for(
                lambda tf=tf: latest_bar(redis_client, f"kline:{{{BTC.key(tf)}}}"),
                timeout_s=STARTUP_S,
                what=f"the developing {tf} bar",
                client=client,
            )
            length = minutes * MINUTE
            assert (latest["open_time"], latest["is_closed"], latest["bars_present"]) == (
                current - current % length,
                False,
                1,
            ), tf
            assert (latest["close"], latest["volume"]) == (update.close, update.volume)
    finally:
        cancel_job(client)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test only (it gets stopped and started), on a free port."""
    server = RedisServer(fresh_stack_config(tmp_path / "stack"))
    server.start(timeout_s=60)
    try:
        yield server
    finally:
        server.stop()


def test_the_job_recovers_from_a_failure_with_exact_tables(
    tmp_path: Path, kafka_bootstrap: str, topics: TopicNames, own_redis: RedisServer
) -> None:
    """The real job graph fails mid-run and recovers: the final tables, Redis keys and dead
    letters are exactly the golden snapshot of the clean run (which ran at parallelism 2;
    this one runs at 1, so the snapshot is also shown not to depend on the parallelism).

    Once the first bars are in Redis, Redis is stopped: the sinks' retries run out, the job
    fails (seen in the Flink REST API's exception history), and Flink restarts it from its
    last checkpoint (every 500 ms) while Redis is started again on the same port and data.
    Dead letters are at-least-once, so they are compared as a set.
    """
    golden = golden_input()
    produce(kafka_bootstrap, topics.raw, golden.messages)
    (rest_port,) = free_ports(1)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=own_redis.url,
        name="contract-recovery",
        flink_overrides=(
            ("restart-strategy.type", "fixed-delay"),
            # A restarted chdb sink can only open the directory once the failed attempt's
            # Python worker has exited: wait a little before each attempt.
            ("restart-strategy.fixed-delay.attempts", "30"),
            ("restart-strategy.fixed-delay.delay", "5s"),
            ("execution.checkpointing.interval", "500ms"),
            ("execution.checkpointing.min-pause", "0ms"),
            ("rest.bind-port", str(rest_port)),
        ),
    )
    client = start_job(settings)
    job_id = str(client.get_job_id())
    redis_client = redis.Redis.from_url(own_redis.url)
    finished = False
    try:
        wait_for(
            lambda: next(iter(redis_client.scan_iter("kline:*")), None),
            timeout_s=STARTUP_S,
            what="the first bars in Redis",
            client=client,
        )
        own_redis.stop()
        assert job_status(client) in ("RUNNING", "RESTARTING"), "the job ended before the failure"
        wait_for(
            lambda: job_exceptions(rest_port, job_id),
            timeout_s=STARTUP_S,
            what="the job to fail without Redis",
        )
        own_redis.start(timeout_s=60)
        wait_until_finished(client, timeout_s=600)
        finished = True
        snapshot = {
            "clickhouse": clickhouse_snapshot(settings.sinks.clickhouse_url),
            "redis": redis_snapshot(redis_client),
            "dlq": {"letters": distinct(dead_letters(kafka_bootstrap, topics.dlq))},
        }
    finally:
        if not finished:
            cancel_job(client)
        redis_client.close()
    text = dump_golden(snapshot)
    (tmp_path / "snapshot.json").write_text(text)
    found = differences(json.loads(GOLDEN_PATH.read_text()), json.loads(text))
    assert not found, (
        f"after the failure the job's output differs from {GOLDEN_PATH.name} "
        f"(actual: {tmp_path / 'snapshot.json'}):\n" + "\n".join(found)
    )
    assert len(snapshot["dlq"]["letters"]) == len(golden.malformed) + len(golden.late)


def distinct(letters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dead letters without repeats (the DLQ sink is at-least-once across a restart)."""
    unique = {json.dumps(letter, sort_keys=True): letter for letter in letters}
    return [unique[key] for key in sorted(unique)]
