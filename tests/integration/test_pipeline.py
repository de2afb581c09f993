"""build_pipeline on a mini-cluster: fed by from_collection, read by execute_and_collect."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pyflink.common import Configuration, Types
from pyflink.datastream import StreamExecutionEnvironment

from jobs.config import JobSettings, PipelineConfig
from jobs.job import local_configuration
from jobs.pipeline import build_pipeline
from udfs.dead_letter import decode_dead_letter
from udfs.record import Kline, VersionedBar, encode_kline

OPEN = 1_735_689_600_000


def kline(minute: int, close: float, event_offset: int, *, closed: bool = False) -> Kline:
    open_time = OPEN + minute * 60_000
    return Kline(
        "bybit", "SOL-USDT", "SOLUSDT", "1m", open_time, open_time + 59_999,
        200.0, 210.0, 190.0, close, 3.0, 600.0, None, None, None,
        closed, open_time + event_offset, open_time + event_offset + 3,
    )  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamExecutionEnvironment]:
    settings = JobSettings(checkpoint_dir=tmp_path_factory.mktemp("checkpoints"))
    configuration = Configuration()
    for key, value in local_configuration(settings).items():
        configuration.set_string(key, value)
    configuration.set_string("restart-strategy.type", "none")
    environment = StreamExecutionEnvironment.get_execution_environment(configuration)
    environment.set_parallelism(1)
    yield environment


def _tag_bar(bar: VersionedBar) -> tuple[str, Any]:
    return ("bar", bar)


def _tag_letter(letter: bytes) -> tuple[str, Any]:
    return ("dead", bytes(letter))


def run_pipeline(env: StreamExecutionEnvironment, messages: list[str]) -> list[tuple[str, Any]]:
    raw = env.from_collection(messages, type_info=Types.STRING())
    streams = build_pipeline(raw, PipelineConfig())
    tagged = streams.bars.map(_tag_bar, output_type=Types.PICKLED_BYTE_ARRAY()).union(
        streams.dead_letters.map(_tag_letter, output_type=Types.PICKLED_BYTE_ARRAY())
    )
    with tagged.execute_and_collect("test-pipeline") as results:
        return list(results)


def test_pipeline_emits_each_newer_update_once_and_rejects_bad_input(
    env: StreamExecutionEnvironment,
) -> None:
    updates = [
        kline(0, 201.0, 10_000),
        kline(0, 202.0, 20_000),
        kline(0, 201.5, 15_000),  # stale
        kline(0, 202.0, 20_000),  # duplicate
        kline(0, 203.0, 59_999, closed=True),
        kline(0, 204.0, 30_000),  # in progress after the close
        kline(0, 203.0, 59_999, closed=True),  # closed again
        kline(1, 205.0, 5_000),  # still open at the end
    ]
    messages = [encode_kline(k).decode() for k in updates]
    messages.insert(3, '{"exchange": "bybit"}')
    messages.insert(6, "[1, 2, 3]")

    results = run_pipeline(env, messages)

    # Only the 1m upsert here; roll-ups of these bars are tested in test_rollups.py.
    bars = [value for tag, value in results if tag == "bar" and value.kline.timeframe == "1m"]
    assert [(b.kline.open_time, b.kline.close, b.kline.is_closed) for b in bars] == [
        (OPEN, 201.0, False),
        (OPEN, 202.0, False),
        (OPEN, 203.0, True),
        (OPEN + 60_000, 205.0, False),
    ]
    minute_zero = [b.version for b in bars if b.kline.open_time == OPEN]
    assert minute_zero == sorted(set(minute_zero))
    letters = [decode_dead_letter(value) for tag, value in results if tag == "dead"]
    assert sorted(letter.original for letter in letters) == sorted(
        [b'{"exchange": "bybit"}', b"[1, 2, 3]"]
    )
    reasons = " | ".join(letter.reason for letter in letters)
    assert "missing field(s): symbol" in reasons
    assert "expected a JSON object, got list" in reasons
