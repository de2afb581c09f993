"""The one backoff, retry policy and token bucket of :mod:`connectors.retry`."""

from __future__ import annotations

import asyncio

import pytest

from connectors.retry import (
    Backoff,
    RetriesExhausted,
    RetryPolicy,
    TokenBucket,
    call_with_retries,
)


def test_backoff_jitter_spans_from_min_fraction_to_the_capped_ceiling() -> None:
    seen: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        seen.append((low, high))
        return high

    assert [Backoff(0.5, 4.0).delay(n, record) for n in range(5)] == [0.5, 1, 2, 4, 4]
    assert seen[0] == (0.0, 0.5)  # full jitter by default
    seen.clear()
    Backoff(0.2, 5.0, min_fraction=0.5).delay(1, record)
    assert seen == [(0.2, 0.4)]
    assert Backoff(0.5, 30.0, min_fraction=1.0).delay(3, record) == 4.0  # no jitter, no draw
    assert seen == [(0.2, 0.4)]
    assert Backoff().ceiling(10_000) == 60.0  # no float overflow


def test_retry_policy_keeps_its_half_jitter_delays() -> None:
    policy = RetryPolicy(attempts=5, base_delay_s=0.1, max_delay_s=0.25)
    assert policy.delay(1, lambda low, high: low) == pytest.approx(0.05)
    assert policy.delay(2, lambda low, high: high) == pytest.approx(0.2)
    assert policy.delay(9, lambda low, high: high) == pytest.approx(0.25)


def test_exhausted_retries_raise_the_given_error() -> None:
    def always_fails() -> None:
        raise OSError("refused\nstack trace")

    policy = RetryPolicy(attempts=2, base_delay_s=0.01)
    with pytest.raises(RetriesExhausted, match=r"ping failed 2 times.*OSError: refused$"):
        call_with_retries(always_fails, retry_on=(OSError,), is_transient=bool, policy=policy,
                          describe="ping", sleep=lambda seconds: None)  # fmt: skip


def test_token_bucket_acquire_waits_for_its_reservation() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(rate_per_s=4.0, burst=1.0)

    async def go() -> None:
        for _ in range(3):
            await bucket.acquire(lambda: now[0], sleep)

    asyncio.run(go())
    assert slept == [pytest.approx(0.25), pytest.approx(0.25)]  # 4 per second
    bucket.block_until(10.0)
    assert bucket.wait_for(1.0, 1.0) == pytest.approx(9.0)
