"""The engine's two-level cache: an in-process TTL cache and an optional Redis L2."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol

log = logging.getLogger(__name__)


CACHE_KEY_PREFIX: Final = "inference-cache:"


class TTLCache:
    """In-process LRU cache with a time-to-live per entry (L1)."""

    def __init__(
        self, max_size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_size < 1 or ttl_s <= 0:
            raise ValueError("max_size must be >= 1 and ttl_s > 0")
        self.max_size = max_size
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        """The value of a live entry (refreshing its LRU position), else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        """Store ``value``; evicts the least recently used entry beyond ``max_size``."""
        self._entries[key] = (self._clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class L2Cache(Protocol):
    """A shared cache (Redis): failures are misses, never errors."""

    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...
    async def close(self) -> None: ...


class RedisL2Cache:
    """L2 cache in Redis (``inference-cache:<sha256>`` strings with a TTL), via redis.asyncio.

    ``url`` names one server or a cluster (``redis+cluster://host:port``,
    :mod:`connectors.redis_client`); every operation touches one key, so the entries spread
    over all cluster slots. Redis being down (or a cluster failing over) makes every lookup
    a miss (counted in ``errors``); it never fails a call.
    """

    def __init__(self, url: str, *, op_timeout_s: float = 0.5) -> None:
        from connectors.redaction import redact_url
        from connectors.redis_client import open_async_redis

        self.redacted_url = redact_url(url)
        self._client = open_async_redis(
            url, socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s
        )
        self.errors = 0

    def __repr__(self) -> str:
        return f"RedisL2Cache({self.redacted_url!r})"

    async def get(self, key: str) -> bytes | None:
        import redis
        from redis.exceptions import RedisClusterException

        try:
            value = await self._client.get(CACHE_KEY_PREFIX + key)
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            self._failed("get", exc)
            return None
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        import redis
        from redis.exceptions import RedisClusterException

        try:
            await self._client.set(CACHE_KEY_PREFIX + key, value, px=max(1, int(ttl_s * 1000)))
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            self._failed("set", exc)

    async def close(self) -> None:
        await self._client.aclose()

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning(
                "inference L2 cache at %s: %s failed (%s); treated as a miss (%d errors)",
                self.redacted_url,
                operation,
                type(exc).__name__,
                self.errors,
            )
