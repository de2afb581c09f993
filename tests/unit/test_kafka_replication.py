"""How many copies a topic keeps, by broker count."""

from __future__ import annotations

import pytest

from connectors.kafka_replication import replication_for


@pytest.mark.parametrize(
    ("brokers", "expected"), [(0, (1, 1)), (1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))]
)
def test_three_copies_two_in_sync_from_three_brokers(
    brokers: int, expected: tuple[int, int]
) -> None:
    assert replication_for(brokers) == expected
