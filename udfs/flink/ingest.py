"""Raw Kafka bytes -> ``Row(key, Kline)``, or ``Row("", dead letter)``; and their event time.

The first Python step of the job. It validates each message (``udfs.record``) and emits
the bar with the key the series operator is keyed by (``udfs.series.instrument_key``), so
the keyed exchange that follows is made by Flink itself from the row's first field
(``connectors.flink.topology.key_by_first_field``) with no Python key-extraction step. A
rejected message becomes an encoded dead letter under the key ``""``: it travels the same
stream, which keeps this function to one consumer, so PyFlink chains it with its timestamp
extraction into one Python operator.
"""

from __future__ import annotations

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
# Output type of ``IngestFunction``: the key and the payload (a Kline or dead-letter bytes).
KEYED_ROW_TYPE: Final = Types.ROW([Types.STRING(), Types.PICKLED_BYTE_ARRAY()])


def _original_bytes(value: Any) -> bytes:
    # Kafka delivers bytes; ``from_collection`` in tests can only carry str.
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogatepass")
    return bytes(value)


class IngestFunction(ProcessFunction):
    """Bytes from Kafka -> ``Row(instrument key, Kline)``; invalid -> ``Row("", letter)``."""

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
        yield Row(instrument_key(kline), kline)


class BarOpenTimeAssigner(TimestampAssigner):
    """Event time of a bar is its open time; a dead letter has none (it moves no watermark)."""

    def extract_timestamp(self, value: Row, record_timestamp: int) -> int:
        payload = value[1]
        return payload.open_time if isinstance(payload, Kline) else NO_EVENT_TIME
