"""Dead letters for ``klines.dlq``: the reason, where it was rejected, and the original bytes.

The envelope is JSON (orjson). ``original`` holds the rejected message as text when it is
valid UTF-8; otherwise ``original_b64`` holds it base64-encoded, so nothing is mangled.

An encoded dead letter is never larger than :data:`MAX_DEAD_LETTER_BYTES` (900 kB, below
Kafka's default 1 MiB message size), whatever the input: JSON escapes a control character to
six bytes (``\\u0001``), so a 200 kB message could otherwise make a 1.2 MB letter that the
topic refuses. An original that does not fit is cut to the longest prefix that does, and the
envelope says so: ``original_truncated: true``, ``original_length`` (bytes of the whole) and
``original_sha256`` (hex SHA-256 of the whole), so the full message can still be identified
(and found again upstream). Reason, stage and key are cut to a few thousand characters.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Final

import orjson

from udfs.record import now_ms

MAX_DEAD_LETTER_BYTES: Final[int] = 900_000
"""The largest encoded dead letter (Kafka's default max.message.bytes is 1 MiB)."""
MAX_REASON_CHARS: Final[int] = 2_000
MAX_STAGE_CHARS: Final[int] = 40
MAX_KEY_CHARS: Final[int] = 300
# Room left for rounding when the truncated original is sized (JSON quotes, a partial char).
_SLACK_BYTES: Final[int] = 64


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected input with a human-readable reason.

    ``stage`` names the step that rejected it (``validate``, ``upsert``, ``replay``, ``bridge``,
    ``rollup``); ``key`` is the series key when it is known. ``original_length`` and
    ``original_sha256`` are only set on a letter read back by :func:`decode_dead_letter` whose
    original was truncated: they describe the whole, ``original`` holds the kept prefix.
    """

    reason: str
    stage: str
    original: bytes
    key: str | None = None
    rejected_at: int = 0
    original_length: int | None = None
    original_sha256: str | None = None

    @property
    def truncated(self) -> bool:
        """Whether ``original`` is only a prefix of the rejected message."""
        return self.original_length is not None

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a dict (see the module docstring); it always encodes within bounds."""
        envelope: dict[str, Any] = {
            "reason": _safe_text(self.reason, MAX_REASON_CHARS),
            "stage": _safe_text(self.stage, MAX_STAGE_CHARS),
            "key": None if self.key is None else _safe_text(self.key, MAX_KEY_CHARS),
            "rejected_at": self.rejected_at or now_ms(),
        }
        original = bytes(self.original)
        try:
            text: str | None = original.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        # Escaping never shrinks a text and base64 grows it by 4/3: an original longer than
        # the limit is cut without trying; a short one is sent whole when it fits.
        if len(original) <= MAX_DEAD_LETTER_BYTES:
            whole = dict(envelope)
            if text is not None:
                whole["original"] = text
            else:
                whole["original_b64"] = base64.b64encode(original).decode("ascii")
            # Cheap bound first: the JSON of a text is at most 6x, base64 4/3 plus padding.
            largest = 6 * len(original) if text is not None else (len(original) + 2) // 3 * 4
            if largest + 4096 <= MAX_DEAD_LETTER_BYTES:
                return whole
            if _encoded_size(whole) <= MAX_DEAD_LETTER_BYTES:
                return whole
        envelope.update(
            original_truncated=True,
            original_length=len(original),
            original_sha256=hashlib.sha256(original).hexdigest(),
        )
        field = "original" if text is not None else "original_b64"
        budget = MAX_DEAD_LETTER_BYTES - _encoded_size({**envelope, field: ""}) - _SLACK_BYTES
        if text is not None:
            envelope["original"] = _text_prefix_within(original, budget)
        else:
            keep = max(0, budget) // 4 * 3
            envelope["original_b64"] = base64.b64encode(original[:keep]).decode("ascii")
        return envelope


def _encoded_size(envelope: dict[str, Any]) -> int:
    return len(orjson.dumps(envelope))


def _safe_text(text: Any, limit: int) -> str:
    """``text`` as a string orjson can encode (lone surrogates escaped), cut to ``limit``."""
    value = text if isinstance(text, str) else str(text)
    value = value[:limit]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]
    return value


def _text_prefix_within(original: bytes, budget: int) -> str:
    """The longest UTF-8 prefix (whole characters) of ``original`` whose JSON string body
    takes at most ``budget`` bytes."""
    keep = min(len(original), max(0, budget))
    while True:
        prefix = original[:keep].decode("utf-8", "ignore")  # drops a cut character only
        size = len(orjson.dumps(prefix)) - 2
        if size <= budget:
            return prefix
        # Escapes made it larger than its bytes: shrink in proportion, always by >= 1 byte.
        keep = min(keep - 1, int(keep * budget / size * 0.99))


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """The wire form of a dead letter: at most :data:`MAX_DEAD_LETTER_BYTES` bytes."""
    return orjson.dumps(letter.to_dict())


def decode_dead_letter(raw: bytes) -> DeadLetter:
    """Read a dead letter back (tests, tooling)."""
    data = orjson.loads(raw)
    if "original_b64" in data:
        original = base64.b64decode(data["original_b64"])
    else:
        original = str(data["original"]).encode("utf-8")
    truncated = bool(data.get("original_truncated"))
    return DeadLetter(
        reason=data["reason"],
        stage=data["stage"],
        original=original,
        key=data.get("key"),
        rejected_at=int(data["rejected_at"]),
        original_length=int(data["original_length"]) if truncated else None,
        original_sha256=str(data["original_sha256"]) if truncated else None,
    )
