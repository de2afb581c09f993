"""Fixtures of the chaos suite: the integration suite's real Kafka broker and Redis.

The fixtures are those of ``tests/integration/conftest.py`` (imported, not copied); every
test here is marked ``integration`` (it needs the servers and a Flink mini-cluster). The
long cases are also marked ``chaos``: ``make chaos`` runs them, ``make test`` only the fast
ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.stack import KafkaBroker
from tests.integration.conftest import (  # noqa: F401 - fixtures, used by name
    START_TIMEOUT_S,
    fresh_stack_config,
    kafka_bootstrap,
    kafka_broker,
    kafka_topics,
    redis_client,
    redis_server,
    redis_url,
    stack_config,
)
from tests.integration.test_job_contract import topics  # noqa: F401 - a fixture

CHAOS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from ``tests/chaos`` as ``integration``."""
    for item in items:
        if CHAOS_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A Kafka broker of this test only (it gets killed), on free ports."""
    broker = KafkaBroker(fresh_stack_config(tmp_path / "broker"))
    broker.start(timeout_s=START_TIMEOUT_S)
    try:
        yield broker
    finally:
        broker.stop()
