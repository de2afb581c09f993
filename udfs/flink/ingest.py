"""Batches of raw Kafka messages -> ``Row(key, encoded bars, source, event time)``.

The first Python step of the job. It receives the messages of one source subtask in batches
(``connectors.flink_topology.batch_records`` packs them in Java, ``udfs.batches`` reads
them), validates each message (``udfs.record``) and emits, per batch, one row for each
instrument with that instrument's bars in their order of arrival, under the key the series
operator is keyed by (``udfs.series.instrument_key``). So the keyed exchange that follows is
made by Flink itself from the row's first field (``connectors.flink_topology
.key_by_first_field``) with no Python key-extraction step, and every later Python operator
pays PyFlink's per-element cost once per group of bars instead of once per bar. A rejected
message becomes an encoded dead letter under the key ``""``: it travels the same stream,
which keeps this function to one consumer.

Each row also names the source subtask its batch came from and its event time, for the
Java operator that follows (``connectors.flink_topology.source_watermarks``), which makes
the watermarks per source subtask, as if this step ran at the source's parallelism. A
group's event time is the latest open time among its bars (the watermark then reaches the
series operator after the whole group, as it would after its last bar); a dead letter has
none. The rows of each batch end with ``Row(BATCH_END_KEY, b"", source, NO_EVENT_TIME)``,
where the Java operator emits the watermark the batch has moved (so it does not depend on
read speed alone); a batch without records is that row alone, which announces the source
before its first bars; at the end of a bounded input, ``Row(BATCH_END_KEY, b"", source,
END_OF_SOURCE_TIME)`` says the source has ended.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Final

from pyflink.common import Row, Types
from pyflink.datastream import ProcessFunction, RuntimeContext

from udfs.batches import batch_source, unpack_batch
from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.record import InvalidKline, Kline, decode_kline
from udfs.series import instrument_key

# The key of dead letters (rejected input has no trustworthy instrument).
DEAD_LETTER_KEY: Final = ""
# The key of the row that ends each batch's rows (no instrument key can be it).
BATCH_END_KEY: Final = "\x00batch-end"
# The event time given to a dead letter: it never moves a watermark.
NO_EVENT_TIME: Final = -(2**63)
# The event time of the row that says a source has ended (a bounded input).
END_OF_SOURCE_TIME: Final = 2**63 - 1
# Output type of ``IngestFunction``: the key, the payload (encoded bars, or a dead letter
# under DEAD_LETTER_KEY), the source subtask and the event time.
INGEST_ROW_TYPE: Final = Types.ROW(
    [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.INT(), Types.LONG()]
)
# What the watermark operator passes on to the series operator: the key and the payload.
KEYED_ROW_TYPE: Final = Types.ROW([Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
_OPEN_TIME_BYTES: Final = 8


def encode_bars(klines: list[Kline]) -> bytes:
    """Validated bars of one instrument as the ingest step ships them: the latest open time
    (8 bytes, big-endian, so the timestamp extraction need not unpickle them) and the
    pickled list (the C pickler: PyFlink's coder for Python objects would use cloudpickle's,
    three times slower)."""
    latest = max(kline.open_time for kline in klines)
    return latest.to_bytes(_OPEN_TIME_BYTES, "big", signed=True) + pickle.dumps(
        klines, protocol=pickle.HIGHEST_PROTOCOL
    )


def decode_bars(payload: bytes) -> list[Kline]:
    """The Klines of :func:`encode_bars` (only ever fed the job's own elements)."""
    klines: list[Kline] = pickle.loads(memoryview(payload)[_OPEN_TIME_BYTES:])
    return klines


def encoded_open_time(payload: bytes) -> int:
    """The latest open time of encoded bars, without unpickling them."""
    return int.from_bytes(payload[:_OPEN_TIME_BYTES], "big", signed=True)


def group_by_instrument(
    messages: list[bytes],
) -> tuple[dict[str, list[Kline]], list[DeadLetter]]:
    """Validate ``messages``: the valid bars by instrument key (each instrument's in their
    order of arrival) and a dead letter for each invalid message, in order."""
    groups: dict[str, list[Kline]] = {}
    letters: list[DeadLetter] = []
    for message in messages:
        try:
            kline = decode_kline(message)
        except InvalidKline as exc:
            letters.append(DeadLetter(reason=exc.reason, stage="validate", original=message))
            continue
        key = instrument_key(kline)
        group = groups.get(key)
        if group is None:
            groups[key] = [kline]
        else:
            group.append(kline)
    return groups, letters


class IngestFunction(ProcessFunction):
    """A batch of Kafka messages -> one ``Row(instrument key, encoded bars, source, event
    time)`` per instrument in it; each invalid message -> ``Row("", dead letter, source,
    NO_EVENT_TIME)``; after them ``Row(BATCH_END_KEY, b"", source, NO_EVENT_TIME)`` (alone
    for a batch without messages; with ``END_OF_SOURCE_TIME`` at a source's end)."""

    def open(self, runtime_context: RuntimeContext) -> None:
        metrics = runtime_context.get_metrics_group()
        self.records_in = metrics.counter("records_in")
        self.records_rejected = metrics.counter("records_rejected")
        self.batches_in = metrics.counter("batches_in")

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator[Row]:
        source, ended = batch_source(value)
        messages = unpack_batch(value)
        if not messages:
            yield Row(BATCH_END_KEY, b"", source, END_OF_SOURCE_TIME if ended else NO_EVENT_TIME)
            return
        self.batches_in.inc()
        self.records_in.inc(len(messages))
        groups, letters = group_by_instrument(messages)
        for letter in letters:
            self.records_rejected.inc()
            yield Row(DEAD_LETTER_KEY, encode_dead_letter(letter), source, NO_EVENT_TIME)
        for key, klines in groups.items():
            payload = encode_bars(klines)
            yield Row(key, payload, source, encoded_open_time(payload))
        yield Row(BATCH_END_KEY, b"", source, NO_EVENT_TIME)
