"""Batches into the ingest step: the framing the Java batcher writes, and the grouping by
instrument that the ingest step does with a batch (hostile messages included)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.hostile_corpus import HOSTILE_SETTINGS, WIRE_RECORD, damaged_texts
from udfs.batches import MalformedBatch, batch_source, pack_batch, unpack_batch
from udfs.flink.ingest import (
    BATCH_END_KEY,
    DEAD_LETTER_KEY,
    END_OF_SOURCE_TIME,
    NO_EVENT_TIME,
    IngestFunction,
    decode_bars,
    encode_bars,
    encoded_open_time,
    group_by_instrument,
)
from udfs.record import InvalidKline, decode_kline
from udfs.series import instrument_key


@given(st.lists(st.binary(max_size=300), max_size=50))
def test_unpack_returns_the_packed_records_in_order(records: list[bytes]) -> None:
    assert unpack_batch(pack_batch(records)) == records


def test_the_layout_is_a_big_endian_length_before_each_record() -> None:
    # What jvm/io/klineflow/flink/RecordBatcher.java writes.
    assert pack_batch([b"ab", b"", b"\x00" * 256], source=3) == (
        b"\x00\x00\x00\x03"  # the source subtask
        + b"\x00\x00\x00\x02ab"
        + b"\x00\x00\x00\x00"
        + b"\x00\x00\x01\x00"
        + b"\x00" * 256
    )


def test_a_batch_names_its_source_and_may_hold_no_records() -> None:
    assert batch_source(pack_batch([b"x"], source=7)) == (7, False)
    assert batch_source(b"\x80\x00\x00\x02") == (2, True)  # source 2 has ended
    assert unpack_batch(pack_batch([], source=2)) == []
    with pytest.raises(MalformedBatch):
        unpack_batch(b"\x00\x00")


@pytest.mark.parametrize("cut", [1, 3, 5, 8])
def test_a_cut_batch_is_refused(cut: int) -> None:
    batch = pack_batch([b"hello", b"world"])
    with pytest.raises(MalformedBatch):
        unpack_batch(batch[:-cut])


def _message(symbol: str, minute: int) -> bytes:
    record = dict(WIRE_RECORD, symbol=symbol, raw_symbol=symbol.replace("-", ""))
    record["open_time"] += minute * 60_000
    record["close_time"] += minute * 60_000
    record["event_time"] += minute * 60_000
    record["ingest_time"] += minute * 60_000
    return orjson.dumps(record)


def test_bars_are_grouped_by_instrument_in_arrival_order() -> None:
    messages = [
        _message(symbol, minute) for minute in range(3) for symbol in ("BTC-USDT", "ETH-USDT")
    ]
    messages.insert(2, b"not json")
    groups, letters = group_by_instrument(messages)
    assert [letter.original for letter in letters] == [b"not json"]
    assert list(groups) == ["binance:BTC-USDT", "binance:ETH-USDT"]
    for key, klines in groups.items():
        assert all(instrument_key(kline) == key for kline in klines)
        assert [kline.open_time for kline in klines] == sorted(kline.open_time for kline in klines)
        assert len(klines) == 3
    encoded = encode_bars(groups["binance:BTC-USDT"])
    assert decode_bars(encoded) == groups["binance:BTC-USDT"]
    assert encoded_open_time(encoded) == max(k.open_time for k in groups["binance:BTC-USDT"])


class _Count:
    """What IngestFunction counts with (a Flink counter outside a job)."""

    def __init__(self) -> None:
        self.count = 0

    def inc(self, n: int = 1) -> None:
        self.count += n


def _ingest_rows(batch: bytes) -> list[tuple[str, bytes, int, int]]:
    ingest = IngestFunction()
    ingest.records_in = ingest.records_rejected = ingest.batches_in = _Count()
    return [tuple(row) for row in ingest.process_element(batch, None)]  # type: ignore[arg-type, misc]


def test_ingest_ends_the_rows_of_each_batch_with_a_batch_end_row() -> None:
    messages = [_message("BTC-USDT", 0), b"not json", _message("ETH-USDT", 1)]
    rows = _ingest_rows(pack_batch(messages, source=2))
    keys = [row[0] for row in rows]
    assert keys == [DEAD_LETTER_KEY, "binance:BTC-USDT", "binance:ETH-USDT", BATCH_END_KEY]
    assert all(row[2] == 2 for row in rows)
    assert [row[3] for row in rows] == [
        NO_EVENT_TIME,
        encoded_open_time(rows[1][1]),
        encoded_open_time(rows[2][1]),
        NO_EVENT_TIME,
    ]
    # A batch without records only announces its source; the end-of-source batch ends it.
    assert _ingest_rows(pack_batch([], source=1)) == [(BATCH_END_KEY, b"", 1, NO_EVENT_TIME)]
    assert _ingest_rows(b"\x80\x00\x00\x01") == [(BATCH_END_KEY, b"", 1, END_OF_SOURCE_TIME)]


@HOSTILE_SETTINGS
@given(st.lists(st.one_of(damaged_texts(WIRE_RECORD), st.binary(max_size=200)), max_size=20))
def test_every_hostile_message_is_either_a_bar_or_a_dead_letter(
    messages: list[str | bytes],
) -> None:
    wire = [m.encode("utf-8", "surrogatepass") if isinstance(m, str) else m for m in messages]
    groups, letters = group_by_instrument(unpack_batch(pack_batch(wire)))
    accepted: dict[str, list[object]] = {}
    rejected = []
    for message in wire:
        try:
            kline = decode_kline(message)
        except InvalidKline:
            rejected.append(message)
        else:
            accepted.setdefault(instrument_key(kline), []).append(kline)
    assert groups == accepted
    assert [letter.original for letter in letters] == rejected
    assert all(letter.reason and letter.stage == "validate" for letter in letters)
