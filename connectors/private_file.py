"""A file only its owner can read, replaced atomically (secrets handed to Flink workers)."""

from __future__ import annotations

import os
from pathlib import Path


def write_private_file(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600, replacing it atomically; returns ``path``.

    The file is created 0600 before anything is written to it, so the text is never readable
    by others, not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return path


__all__ = ["write_private_file"]
