"""Raw Kafka bytes -> ``Row(key, encoded bar)``, or ``Row("", dead letter)``; and event time.

The first Python step of the job. It validates each message (``udfs.record``) and emits
the bar with the key the series operator is keyed by (``udfs.series.instrument_key``), so
the keyed exchange that follows is made by Flink itself from the row's first field
(``connectors.flink.topology.key_by_first_field``) with no Python key-extraction step. A
rejected message becomes an encoded dead letter under the key ``""``: it travels the same
stream, which keeps this function to one consumer, so PyFlink chains it with its timestamp
extraction into one Python operator.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any, Final

from pyflink.common import Row, Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import ProcessFunction, RuntimeContext

from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.record import InvalidKline, Kline, decode_kline
from udfs.series import instrument_key

# The key of dead letters (rejected input has no trustworthy instrument).
DEAD_LETTER_KEY: Final = ""
# The event time given to a dead letter: it never moves a watermark.
NO_EVENT_TIME: Final = -(2**63)
# Output type of ``IngestFunction``: the key and the payload (an encoded bar, or a dead letter
# under DEAD_LETTER_KEY).
KEYED_ROW_TYPE: Final = Types.ROW([Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
_OPEN_TIME_BYTES: Final = 8


def encode_bar(kline: Kline) -> bytes:
    """A validated bar as the ingest step ships it: its open time (8 bytes, big-endian, so
    the timestamp extraction need not unpickle it) and the pickled Kline (the C pickler:
    PyFlink's coder for Python objects would use cloudpickle's, three times slower)."""
    return kline.open_time.to_bytes(_OPEN_TIME_BYTES, "big", signed=True) + pickle.dumps(
        kline, protocol=pickle.HIGHEST_PROTOCOL
    )


def decode_bar(payload: bytes) -> Kline:
    """The Kline of :func:`encode_bar` (only ever fed the job's own elements)."""
    kline: Kline = pickle.loads(memoryview(payload)[_OPEN_TIME_BYTES:])
    return kline


def encoded_open_time(payload: bytes) -> int:
    """The open time of an encoded bar, without unpickling it."""
    return int.from_bytes(payload[:_OPEN_TIME_BYTES], "big", signed=True)


def _original_bytes(value: Any) -> bytes:
    # Kafka delivers bytes; ``from_collection`` in tests can only carry str.
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogatepass")
    return bytes(value)


class IngestFunction(ProcessFunction):
    """Bytes from Kafka -> ``Row(instrument key, encoded bar)``; invalid -> ``Row("", letter)``."""

    def open(self, runtime_context: RuntimeContext) -> None:
        metrics = runtime_context.get_metrics_group()
        self.records_in = metrics.counter("records_in")
        self.records_rejected = metrics.counter("records_rejected")

    def process_element(self, value: Any, ctx: ProcessFunction.Context) -> Iterator[Row]:
        self.records_in.inc()
        try:
            kline = decode_kline(value)
        except InvalidKline as exc:
            self.records_rejected.inc()
            letter = DeadLetter(
                reason=exc.reason, stage="validate", original=_original_bytes(value)
            )
            yield Row(DEAD_LETTER_KEY, encode_dead_letter(letter))
            return
        yield Row(instrument_key(kline), encode_bar(kline))


class BarOpenTimeAssigner(TimestampAssigner):
    """Event time of a bar is its open time; a dead letter has none (it moves no watermark)."""

    def extract_timestamp(self, value: Row, record_timestamp: int) -> int:
        if value[0] == DEAD_LETTER_KEY:
            return NO_EVENT_TIME
        return encoded_open_time(value[1])
