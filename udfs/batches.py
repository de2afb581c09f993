"""The batches ``connectors.flink_topology.batch_records`` packs: a source, then records.

The Java operator (``jvm/io/klineflow/flink/RecordBatcher.java``) writes the index of its
source subtask (4 bytes, big-endian), then each record as its length (4 bytes, big-endian)
and its bytes; a batch without records announces its source. :func:`pack_batch` is the same
layout in Python (for tests and tools).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

_LENGTH_BYTES: Final = 4


class MalformedBatch(ValueError):
    """A batch whose framing is cut short (never made by the job's own batcher)."""


def pack_batch(records: Iterable[bytes], source: int = 0) -> bytes:
    """Records of source subtask ``source`` -> one batch, as the Java batcher packs them."""
    return source.to_bytes(_LENGTH_BYTES, "big") + b"".join(
        len(record).to_bytes(_LENGTH_BYTES, "big") + record for record in records
    )


# Set in the source index of the batch that ends a bounded input (RecordBatcher.END_OF_SOURCE).
_END_OF_SOURCE: Final = 0x80000000


def batch_source(batch: bytes) -> tuple[int, bool]:
    """The index of the source subtask whose records ``batch`` holds, and whether the batch
    says that source has ended (no records then)."""
    if len(batch) < _LENGTH_BYTES:
        raise MalformedBatch(f"a batch of {len(batch)} bytes has no source")
    header = int.from_bytes(batch[:_LENGTH_BYTES], "big")
    return header & ~_END_OF_SOURCE, bool(header & _END_OF_SOURCE)


def unpack_batch(batch: bytes) -> list[bytes]:
    """The records of one batch, in order."""
    view = memoryview(batch)
    records: list[bytes] = []
    if len(view) < _LENGTH_BYTES:
        raise MalformedBatch(f"a batch of {len(view)} bytes has no source")
    position = _LENGTH_BYTES
    end = len(view)
    while position < end:
        start = position + _LENGTH_BYTES
        stop = start + int.from_bytes(view[position:start], "big")
        if stop > end:
            raise MalformedBatch(f"a record at byte {position} runs past the batch's end ({end})")
        records.append(bytes(view[start:stop]))
        position = stop
    return records
