"""A local OpenAI-compatible chat-completions server with scripted behaviour (tests, benchmarks).

``ChatServer`` listens on 127.0.0.1 (a free port) in a background thread and answers
``POST /v1/chat/completions`` over HTTP/1.1 with keep-alive. Each request is answered by a
:class:`Behaviour` chosen by the ``script`` (a function of the :class:`ChatRequest`): a valid
reply, a slow one, 429 with ``Retry-After``, a 5xx, malformed JSON, valid JSON of the wrong
shape, or a connection reset. Every request is recorded (arrival time on the monotonic clock,
whether the Authorization header carried the expected key, the body) so tests can measure the
request rate the server saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

VALID_REPLY: dict[str, Any] = {
    "pattern": "fake_pattern",
    "recommendation": "bullish",
    "confidence": 0.7,
    "key_levels": [100.0, 110.0],
}


@dataclass(frozen=True)
class Behaviour:
    """How to answer one request. ``kind``: ok, status, malformed, wrong_shape, reset."""

    kind: str = "ok"
    delay_s: float = 0.0
    status: int = 200
    retry_after: str | None = None
    usage: bool = True


def ok(delay_s: float = 0.0, *, usage: bool = True) -> Behaviour:
    """A valid reply (after ``delay_s``)."""
    return Behaviour("ok", delay_s=delay_s, usage=usage)


def slow(delay_s: float) -> Behaviour:
    """A valid reply after ``delay_s`` seconds."""
    return Behaviour("ok", delay_s=delay_s)


def status(code: int, retry_after: str | None = None) -> Behaviour:
    """An HTTP error status (429 with ``retry_after`` seconds, 500, 401, ...)."""
    return Behaviour("status", status=code, retry_after=retry_after)


def malformed() -> Behaviour:
    """A 200 whose message content is not JSON."""
    return Behaviour("malformed")


def wrong_shape() -> Behaviour:
    """A 200 whose content is JSON of the wrong shape."""
    return Behaviour("wrong_shape")


def reset() -> Behaviour:
    """Close the connection without answering."""
    return Behaviour("reset")


@dataclass
class ChatRequest:
    """One request as the server saw it."""

    number: int
    arrived_at: float  # time.monotonic()
    authorized: bool
    authorization_present: bool
    body: dict[str, Any]
    behaviour: Behaviour = field(default_factory=Behaviour)

    @property
    def is_repair(self) -> bool:
        """A repair attempt carries the model's previous (invalid) reply."""
        return any(m.get("role") == "assistant" for m in self.body.get("messages", []))

    @property
    def user_content(self) -> str:
        """The first user message (the context JSON)."""
        for message in self.body.get("messages", []):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return ""


Script = Callable[[ChatRequest], Behaviour]


def sequence(behaviours: Sequence[Behaviour], then: Behaviour | None = None) -> Script:
    """Answer request *n* (0-based, arrival order) with ``behaviours[n]``, later ones ``then``."""
    fallback = then or ok()

    def script(request: ChatRequest) -> Behaviour:
        if request.number < len(behaviours):
            return behaviours[request.number]
        return fallback

    return script


def _reply_body(behaviour: Behaviour, request_body: bytes) -> bytes:
    if behaviour.kind == "malformed":
        content = '{"pattern": "doji", "recommendation": '
    elif behaviour.kind == "wrong_shape":
        content = orjson.dumps({"pattern": "doji", "recommendation": "up", "score": 2}).decode()
    else:
        content = orjson.dumps(VALID_REPLY).decode()
    payload: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content},
             "finish_reason": "stop"}
        ],
    }  # fmt: skip
    if behaviour.usage:
        prompt_tokens = max(1, len(request_body) // 4)
        payload["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 20,
            "total_tokens": prompt_tokens + 20,
        }
    return orjson.dumps(payload)


class ChatServer:
    """The scripted server; use as a context manager or call ``start``/``stop``."""

    def __init__(self, script: Script | None = None, *, api_key: str | None = None) -> None:
        self.script: Script = script or (lambda _request: ok())
        self.api_key = api_key
        self.requests: list[ChatRequest] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL (``.../v1``) to give as INFERENCE_URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ChatServer:
        """Start serving in a daemon thread; returns once the port is bound."""
        self._thread = threading.Thread(target=self._run, name="chat-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("chat server did not start")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, float]:
        """Requests so far and the first / last arrival (``time.monotonic``, system-wide)."""
        with self._lock:
            arrivals = [r.arrived_at for r in self.requests]
        return {
            "requests": len(arrivals),
            "first_arrival": min(arrivals, default=0.0),
            "last_arrival": max(arrivals, default=0.0),
        }

    def recorded(self) -> list[ChatRequest]:
        """A snapshot of the requests so far, in arrival order."""
        with self._lock:
            return list(self.requests)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=2048)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(RuntimeError):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if not await self._answer(lines[0], headers, body, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            return  # the server is stopping
        finally:
            writer.close()

    async def _answer(
        self, request_line: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        method, _, rest = request_line.partition(" ")
        path = rest.split(" ", 1)[0]
        if method == "GET" and path == "/stats":
            await self._send(writer, 200, orjson.dumps(self.stats()), {})
            return True
        if method != "POST" or not path.endswith("/chat/completions"):
            await self._send(writer, 404, b'{"error": "not found"}', {})
            return True
        auth = headers.get("authorization")
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = {}
        with self._lock:
            request = ChatRequest(
                number=len(self.requests),
                arrived_at=time.monotonic(),
                authorized=self.api_key is None or auth == f"Bearer {self.api_key}",
                authorization_present=auth is not None,
                body=parsed if isinstance(parsed, dict) else {},
            )
            self.requests.append(request)
        behaviour = self.script(request)
        request.behaviour = behaviour
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.kind == "reset":
            writer.transport.abort()
            return False
        if not request.authorized:
            await self._send(writer, 401, b'{"error": {"message": "invalid api key"}}', {})
            return True
        if behaviour.kind == "status":
            extra = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
            await self._send(writer, behaviour.status, b'{"error": {"message": "scripted"}}',
                             extra)  # fmt: skip
            return True
        await self._send(writer, 200, _reply_body(behaviour, body), {})
        return True

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, code: int, payload: bytes, extra: dict[str, str]
    ) -> None:
        reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
        head = [f"HTTP/1.1 {code} {reason.get(code, 'Error')}",
                "Content-Type: application/json", f"Content-Length: {len(payload)}",
                "Connection: keep-alive"]  # fmt: skip
        head.extend(f"{name}: {value}" for name, value in extra.items())
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()


def max_requests_in_window(arrivals: Sequence[float], window_s: float) -> int:
    """The most requests that arrived within any span of ``window_s`` seconds."""
    times = sorted(arrivals)
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.fakes.chat_server --delay-ms 50``: serve valid replies until killed.

    Prints the base URL on the first line of stdout (benchmarks run the server in its own
    process so it does not share the interpreter with the client under test).
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    server = ChatServer(lambda _request: ok(args.delay_ms / 1000)).start()
    print(server.url, flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        server.stop()


if __name__ == "__main__":
    main()
