"""A flood of hostile messages mixed into a good stream, through the running job.

Every hand-listed hostile kind of issue 12 (``tests/unit/hostile_corpus.py``: Unicode digits,
numbers too long or too large, NaN, wrong types, huge strings and arrays...) is put into
every field of a good bar, and garbage bytes and broken JSON are added; those the record
decoder rejects (checked here, message by message) are interleaved at random with the golden
input, plus a copy of a good bar dated ten years ahead (a far-future bar). What must hold:

- zero job restarts (from the Flink REST API while the job runs);
- ClickHouse (FINAL) and Redis exactly the golden snapshot: every good bar stored, and
  the series that received the far-future bar kept updating;
- every hostile message in the DLQ (at least once: the DLQ sink is at-least-once), each
  with a reason, its original kept whole or truncated with the SHA-256 of the whole; no
  other letters than the golden input's own.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import orjson
import redis

from tests.chaos.chaos_support import (
    ChaosFigures,
    assert_golden_outputs,
    finish_counting_restarts,
)
from tests.integration.conftest import TopicNames, free_ports
from tests.integration.job_contract_support import (
    BTC,
    DAY,
    Message,
    cancel_job,
    contract_settings,
    decoded_dead_letters,
    golden_input,
    produce,
    start_job,
)
from tests.unit.hostile_corpus import HAND_LISTED_VALUES, to_json_text
from udfs.record import InvalidKline, decode_kline

GARBAGE: tuple[bytes, ...] = (
    b"",
    b"\xff\xfe\xfd",
    b"null",
    b"[]",
    b"{}",
    b'{"exchange": "binance"',
    b"\x00" * 64,
    b'{"symbol": "BTC-USDT\\n"}',
    b"\xef\xbb\xbf{}",
)


def hostile_messages(template: dict, rng: random.Random) -> list[bytes]:
    """Every hand-listed value in every field of ``template``, and garbage; only messages
    the decoder rejects (a value that happens to be valid in some field is left out)."""
    candidates = list(GARBAGE)
    for field in template:
        for value in HAND_LISTED_VALUES:
            candidates.append(to_json_text({**template, field: value}).encode())
    rng.shuffle(candidates)
    hostile = []
    for raw in candidates:
        try:
            decode_kline(raw)
        except InvalidKline:
            hostile.append(raw)
    return hostile


def test_a_poison_flood_changes_nothing_and_every_pill_is_a_dead_letter(
    tmp_path: Path,
    kafka_bootstrap: str,
    topics: TopicNames,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    rng = random.Random(12)
    golden = golden_input()
    good = list(golden.messages)
    btc = next(m for m in good if m.key == BTC.key().encode())
    template = orjson.loads(btc.value)
    pills = hostile_messages(template, rng)
    far = {**template, "open_time": template["open_time"] + 3650 * DAY,
           "close_time": template["close_time"] + 3650 * DAY}  # fmt: skip
    pills.append(orjson.dumps(far))
    assert len(pills) > 500
    stream = list(good)
    for raw in pills:
        at = rng.randrange(len(stream) + 1)
        neighbour = stream[min(at, len(stream) - 1)]
        key = rng.choice([None, btc.key, b"\xff junk key"])
        stream.insert(at, Message(key, raw, neighbour.timestamp_ms))
    produce(kafka_bootstrap, topics.raw, stream)

    (rest_port,) = free_ports(1)
    settings = contract_settings(
        tmp_path=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        raw_topic=topics.raw,
        dlq_topic=topics.dlq,
        redis_url=redis_url,
        name="chaos-poison-flood",
        flink_overrides=(
            # Restarts allowed, so that one would show (and be counted) instead of failing.
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", "3"),
            ("restart-strategy.fixed-delay.delay", "1s"),
            ("rest.bind-port", str(rest_port)),
        ),
    )
    client = start_job(settings)
    try:
        restarts = finish_counting_restarts(
            client, rest_port, str(client.get_job_id()), timeout_s=900
        )
    except BaseException:
        cancel_job(client)
        raise
    figures = ChaosFigures(case="poison-flood", faults=len(pills), restarts=restarts)
    assert restarts == 0

    letters = decoded_dead_letters(kafka_bootstrap, topics.dlq,
                                   min_messages=len(pills) + len(golden.malformed))  # fmt: skip
    expected_good_letters = set(golden.malformed) | set(golden.late)
    found: dict[str, list[str]] = {}
    for letter in letters:
        assert letter.reason.strip(), letter
        digest = letter.original_sha256 or hashlib.sha256(letter.original).hexdigest()
        found.setdefault(digest, []).append(letter.reason)
    for raw in pills:
        digest = hashlib.sha256(raw).hexdigest()
        assert digest in found, f"no dead letter for hostile message {raw[:120]!r}"
    other = set(found) - {hashlib.sha256(raw).hexdigest() for raw in pills}
    assert other == {hashlib.sha256(raw).hexdigest() for raw in expected_good_letters}
    far_reasons = found[hashlib.sha256(orjson.dumps(far)).hexdigest()]
    assert any("ahead" in reason for reason in far_reasons), far_reasons

    # The good stream's outputs are exactly those of the clean run (the golden letters are
    # checked above, with the hostile ones): compare the tables and Redis.
    assert_golden_outputs(
        tmp_path=tmp_path,
        chdb_url=settings.sinks.clickhouse_url,
        redis_client=redis_client,
        kafka_bootstrap=kafka_bootstrap,
        dlq_topic=topics.dlq,
        figures=figures,
        letters=False,
    )
