"""Dead letters for ``klines.dlq``: the reason, where it was rejected, and the original bytes.

The envelope is JSON (orjson). ``original`` holds the rejected message as text when it is
valid UTF-8; otherwise ``original_b64`` holds it base64-encoded, so nothing is ever lost or
mangled.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from udfs.record import now_ms


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected input with a human-readable reason.

    ``stage`` names the step that rejected it (``validate``, ``upsert``, ``replay``, ``bridge``,
    ``rollup``); ``key`` is the series key when it is known.
    """

    reason: str
    stage: str
    original: bytes
    key: str | None = None
    rejected_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a dict (see the module docstring)."""
        envelope: dict[str, Any] = {
            "reason": self.reason,
            "stage": self.stage,
            "key": self.key,
            "rejected_at": self.rejected_at or now_ms(),
        }
        try:
            envelope["original"] = self.original.decode("utf-8")
        except UnicodeDecodeError:
            envelope["original_b64"] = base64.b64encode(self.original).decode("ascii")
        return envelope


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """The wire form of a dead letter."""
    return orjson.dumps(letter.to_dict())


def decode_dead_letter(raw: bytes) -> DeadLetter:
    """Read a dead letter back (tests, tooling)."""
    data = orjson.loads(raw)
    if "original_b64" in data:
        original = base64.b64decode(data["original_b64"])
    else:
        original = str(data["original"]).encode("utf-8")
    return DeadLetter(
        reason=data["reason"],
        stage=data["stage"],
        original=original,
        key=data.get("key"),
        rejected_at=int(data["rejected_at"]),
    )
