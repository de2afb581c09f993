"""The sinks' batch (``connectors.flink_sinks.SinkBuffer``): when it flushes, what it keeps."""

from __future__ import annotations

import pytest

from connectors.flink_sinks import SinkBuffer


class Clock:
    """A clock the test moves (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_counts_from_the_oldest_row_not_the_last_flush() -> None:
    clock = Clock()
    buffer = SinkBuffer(batch_rows=100, flush_ms=4_000, clock=clock)
    clock.now += 60  # a quiet minute: the first row after it must not go out alone
    buffer.add("a", 1)
    assert not buffer.should_flush()
    assert buffer.wait_left_ms() == 4_000
    clock.now += 3.0
    buffer.add("b", 2)
    assert not buffer.should_flush()
    assert buffer.wait_left_ms() == 1_000
    clock.now += 1.0
    assert buffer.should_flush()
    assert buffer.wait_left_ms() == 0
    assert buffer.take() == [1, 2]
    assert not buffer.should_flush() and buffer.wait_left_ms() == 0
    clock.now += 10
    buffer.add("a", 3)  # the new batch's clock starts at its own first row
    assert not buffer.should_flush()


def test_a_full_batch_flushes_at_once() -> None:
    buffer = SinkBuffer(batch_rows=2, flush_ms=60_000, clock=Clock())
    buffer.add("a", 1)
    assert not buffer.should_flush()
    buffer.add("a", 2)
    assert buffer.should_flush()


def test_restored_rows_start_the_batch_clock_and_block_clearing() -> None:
    clock = Clock()
    buffer = SinkBuffer(batch_rows=100, flush_ms=1_000, clock=clock)
    assert buffer.needs_adoption("k")
    clock.now += 30
    buffer.adopt("k", [7, 8])
    assert not buffer.needs_adoption("k")
    assert not buffer.can_clear("k") and "k" in buffer.dirty_keys
    assert buffer.wait_left_ms() == 1_000
    clock.now += 1.0
    assert buffer.should_flush()
    assert buffer.take() == [7, 8]
    assert buffer.can_clear("k")
    buffer.cleared("k")
    assert "k" not in buffer.dirty_keys


def test_a_key_is_newly_dirty_once_until_cleared() -> None:
    buffer = SinkBuffer(batch_rows=100, flush_ms=1_000, clock=Clock())
    assert buffer.add("k", 1) is True
    assert buffer.add("k", 2) is False
    buffer.take()
    buffer.cleared("k")
    assert buffer.add("k", 3) is True


@pytest.mark.parametrize(("rows", "ms"), [(0, 10), (1, -1)])
def test_sizes_are_checked(rows: int, ms: int) -> None:
    with pytest.raises(ValueError):
        SinkBuffer(batch_rows=rows, flush_ms=ms)


def test_flush_ms_0_makes_any_row_due_and_only_size_fills_it() -> None:
    buffer = SinkBuffer(batch_rows=2, flush_ms=0, clock=Clock())
    assert not buffer.should_flush()
    buffer.add("a", 1)
    assert buffer.should_flush() and not buffer.full()
    buffer.add("a", 2)
    assert buffer.full()


def test_a_key_timer_waits_for_its_batch_instead_of_flushing_it_early() -> None:
    clock = Clock()
    buffer = SinkBuffer(batch_rows=100, flush_ms=1_000, clock=clock)
    buffer.add("b", 2)
    clock.now += 0.25
    buffer.add("a", 3)  # "a" and "b" are in a batch 250 ms old
    assert buffer.timer_wait_ms("a") == 750
    assert buffer.timer_wait_ms("b") == 750
    clock.now += 0.75
    assert buffer.should_flush()


def test_keys_of_a_batch_written_in_the_background_stay_uncleared_until_it_lands() -> None:
    clock = Clock()
    buffer = SinkBuffer(batch_rows=100, flush_ms=1_000, clock=clock)
    buffer.add("a", 1)
    buffer.add("b", 2)
    assert buffer.take(in_flight=True) == [1, 2]
    assert not buffer.can_clear("a") and not buffer.can_clear("b")
    assert buffer.timer_wait_ms("a") == 1_000  # being written: look again a flush later
    buffer.add("b", 3)  # "b" is in the next batch too
    buffer.landed()
    assert buffer.can_clear("a")
    assert not buffer.can_clear("b")
    clock.now += 0.5
    assert buffer.timer_wait_ms("b") == 500
    assert buffer.take() == [3]  # written in the foreground: nothing stays in flight
    assert buffer.can_clear("b")
