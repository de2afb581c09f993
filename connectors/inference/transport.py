"""HTTP for the engine: the transport protocol, its aiohttp implementation and the parsing
of chat-completion answers into replies or typed failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from connectors.retry import parse_retry_after

RETRYABLE_STATUS: Final = frozenset({408, 409, 425, 429})


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """Status, headers (lower-case names) and body of one HTTP exchange."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class InferenceFailure(Exception):
    """A failed attempt. ``kind`` is short and safe to log (no URL, header or body)."""

    def __init__(self, kind: str, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Transport(Protocol):
    """Posts a JSON body; raises InferenceFailure on timeouts and connection errors."""

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> HttpResponse: ...

    async def aclose(self) -> None: ...

    def close_sync(self) -> None: ...


class AiohttpTransport:
    """:class:`Transport` over one aiohttp session, created on first use in the running loop."""

    def __init__(self, max_connections: int = 100) -> None:
        self.max_connections = max_connections
        self._session: Any = None

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> HttpResponse:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                raise_for_status=False,
            )
        try:
            async with self._session.post(
                url,
                data=body,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                payload = await response.read()
                return HttpResponse(
                    response.status,
                    {name.lower(): value for name, value in response.headers.items()},
                    payload,
                )
        except TimeoutError:
            raise InferenceFailure("attempt_timeout", retryable=True) from None
        except aiohttp.ClientError as exc:
            # The exception's text can name the URL; only its type is reported.
            raise InferenceFailure(f"connection:{type(exc).__name__}", retryable=True) from None

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def close_sync(self) -> None:
        """Release the session when its event loop is already gone (operator shutdown)."""
        session, self._session = self._session, None
        if session is None:
            return
        connector = session.connector
        session.detach()
        if connector is not None:
            # aiohttp's own synchronous close: marks the pool closed and skips socket I/O
            # when the loop has been closed already.
            connector._close()


@dataclass(frozen=True, slots=True)
class ChatReply:
    """The first choice's text and the usage the endpoint reported."""

    content: str
    prompt_tokens: int | None
    completion_tokens: int | None

    @property
    def total_tokens(self) -> int | None:
        """prompt + completion tokens, None if the endpoint reported no usage."""
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


# The longest pause a 429's Retry-After may impose on the whole engine.
MAX_RETRY_AFTER_S: Final = 300.0


def _usage_value(usage: Mapping[str, Any], name: str) -> int | None:
    value = usage.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def parse_chat_response(response: HttpResponse, default_retry_s: float) -> ChatReply:
    """A chat-completions HTTP response -> ChatReply, or InferenceFailure saying why not.

    429 and 5xx (and 408/409/425) are retryable, 429 with its ``Retry-After`` (seconds);
    other 4xx are not. A 200 whose body is not a chat completion is retryable (``bad_body``).
    """
    status = response.status
    if status == 429:
        # A hostile or broken header ("1e999") must not block the limiter for ever.
        retry_after = min(
            parse_retry_after(response.headers.get("retry-after"), default_retry_s),
            MAX_RETRY_AFTER_S,
        )
        raise InferenceFailure("http_429", retryable=True, retry_after_s=retry_after)
    if status >= 500 or status in RETRYABLE_STATUS:
        raise InferenceFailure(f"http_{status}", retryable=True)
    if status != 200:
        raise InferenceFailure(f"http_{status}", retryable=False)
    try:
        data = orjson.loads(response.body)
        content = data["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise InferenceFailure("bad_body", retryable=True) from None
    usage = data.get("usage") if isinstance(data, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    return ChatReply(
        content=content if isinstance(content, str) else "",
        prompt_tokens=_usage_value(usage, "prompt_tokens"),
        completion_tokens=_usage_value(usage, "completion_tokens"),
    )
