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

import json
import os
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import TopicNames
from tests.integration.job_contract_support import (
    clickhouse_snapshot,
    contract_settings,
    dead_letters,
    differences,
    dump_golden,
    golden_input,
    keep_forever,
    produce,
    redis_snapshot,
    run_bounded,
)


@pytest.fixture
def topics(kafka_bootstrap: str, kafka_topics: TopicNames) -> TopicNames:
    """The test's fresh topics (``kafka_topics``) without time-based retention, because the
    records carry 2025 timestamps (see ``job_contract_support.keep_forever``)."""
    keep_forever(kafka_bootstrap, kafka_topics.raw, kafka_topics.dlq)
    return kafka_topics


GOLDEN_PATH = Path(__file__).resolve().parents[1] / "golden" / "job_contract_snapshot.json"
UPDATE_GOLDEN = os.environ.get("KLINEFLOW_UPDATE_GOLDEN") == "1"


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
    # The golden file itself must hold what the input promises.
    letters = snapshot["dlq"]["letters"]
    assert len(letters) == len(golden.malformed) + len(golden.late)
    assert {"validate", "upsert"} == {letter["stage"] for letter in letters}
