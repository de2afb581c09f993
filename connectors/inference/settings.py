"""The inference engine's settings and its API key (a :class:`Secret` that never shows)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

DEFAULT_API_KEY_ENV: Final = "INFERENCE_API_KEY"


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    """How the operator talks to the endpoint. ``url`` None means: the rules analyser only.

    The API key is not a setting: it is read where the engine runs, from the environment
    variable ``api_key_env`` or from ``api_key_file`` (see :func:`load_api_key`).
    """

    url: str | None = field(default=None, repr=False)  # may carry credentials
    model: str = "gpt-4o-mini"
    api_key_env: str = DEFAULT_API_KEY_ENV
    api_key_file: str | None = None
    requests_per_s: float = 2.0
    request_burst: float = 1.0
    tokens_per_min: float = 100_000.0
    max_tokens: int = 300
    attempt_timeout_s: float = 10.0
    deadline_s: float = 25.0
    max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    breaker_failures: int = 5
    breaker_open_s: float = 30.0
    cache_size: int = 10_000
    cache_ttl_s: float = 6 * 3600.0
    l2_redis_url: str | None = field(default=None, repr=False)  # may carry a password
    price_per_million_tokens: float = 0.0
    json_mode: bool = True

    def __post_init__(self) -> None:
        if self.requests_per_s <= 0 or self.tokens_per_min <= 0:
            raise ValueError("requests_per_s and tokens_per_min must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.deadline_s <= 0 or self.attempt_timeout_s <= 0:
            raise ValueError("deadline_s and attempt_timeout_s must be positive")

    @property
    def endpoint(self) -> str:
        """The chat-completions URL: ``url`` if it names it, else ``url/chat/completions``."""
        if self.url is None:
            raise ValueError("no inference URL configured")
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


class Secret:
    """A string that never shows itself: ``repr``/``str`` give ``***``, pickling is refused."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value (for the Authorization header only)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is never pickled")


def load_api_key(env_name: str = DEFAULT_API_KEY_ENV, key_file: str | None = None) -> Secret | None:
    """The API key from ``key_file`` (if given) else the environment; None if neither has one.

    A missing or unreadable file raises OSError naming the path, never the content.
    """
    if key_file:
        text = Path(key_file).read_text(encoding="utf-8").strip()
        return Secret(text) if text else None
    value = os.environ.get(env_name, "").strip()
    return Secret(value) if value else None
