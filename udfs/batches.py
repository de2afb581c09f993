"""The batches ``connectors.flink_topology.batch_records`` packs: records, length-prefixed.

The Java operator (``jvm/io/klineflow/flink/RecordBatcher.java``) writes each record as its
length (4 bytes, big-endian) then its bytes; :func:`pack_batch` is the same layout in Python
(for tests and tools).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

_LENGTH_BYTES: Final = 4


class MalformedBatch(ValueError):
    """A batch whose framing is cut short (never made by the job's own batcher)."""


def pack_batch(records: Iterable[bytes]) -> bytes:
    """Records -> one batch, as the Java batcher packs them."""
    return b"".join(len(record).to_bytes(_LENGTH_BYTES, "big") + record for record in records)


def unpack_batch(batch: bytes) -> list[bytes]:
    """The records of one batch, in order."""
    view = memoryview(batch)
    records: list[bytes] = []
    position = 0
    end = len(view)
    while position < end:
        start = position + _LENGTH_BYTES
        stop = start + int.from_bytes(view[position:start], "big")
        if stop > end:
            raise MalformedBatch(f"a record at byte {position} runs past the batch's end ({end})")
        records.append(bytes(view[start:stop]))
        position = stop
    return records
