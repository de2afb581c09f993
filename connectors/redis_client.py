"""One Redis URL, a single server or a cluster: the client factory of every Redis user.

``REDIS_URL`` (DESIGN.md "Redis") is ``redis://…`` / ``rediss://…`` for one server and
``redis+cluster://host:port`` / ``rediss+cluster://host:port`` for Redis Cluster, naming any
one node (the client asks it for the others). User, password and TLS options are read the
same way for both (redis-py ``from_url``); a cluster URL may name database 0 only.

:func:`open_redis` and :func:`open_async_redis` return redis-py's ``Redis`` or
``RedisCluster`` (blocking or asyncio); :data:`TRANSIENT_ERRORS` is what a caller may retry
(a dropped connection, a failover in progress, a slot that moved).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from connectors.redaction import redact_url

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    import redis.asyncio.cluster as aiocluster

# ``scheme+cluster`` -> the scheme redis-py parses.
CLUSTER_SCHEMES: Final[dict[str, str]] = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

SyncClient: TypeAlias = "redis.Redis | RedisCluster"
AsyncClient: TypeAlias = "aioredis.Redis | aiocluster.RedisCluster"

# Failures that pass: a connection dropped or timed out (a restart, a node killed), the
# cluster voting a replica in (CLUSTERDOWN, TRYAGAIN, an uncovered slot), a slot that moved
# (MOVED/ASK beyond the client's own redirects), a write that reached a demoted primary.
TRANSIENT_ERRORS: Final[tuple[type[BaseException], ...]] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    AskError,  # MovedError is an AskError
    SlotNotCoveredError,
    ReadOnlyError,
)
# Connection errors that no retry mends.
_PERMANENT_CONNECTION_ERRORS: Final = (AuthenticationError, AuthorizationError)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``REDIS_URL``: the URL redis-py reads and whether it names a cluster."""

    url: str
    cluster: bool

    def __repr__(self) -> str:
        return f"RedisTarget({redact_url(self.url)!r}, cluster={self.cluster})"


def parse_redis_url(url: str) -> RedisTarget:
    """``redis+cluster://h:p`` -> ``RedisTarget("redis://h:p", cluster=True)``.

    Any other URL comes back as it is, with ``cluster=False``.
    """
    scheme, separator, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower()) if separator else None
    if plain is None:
        return RedisTarget(url=url, cluster=False)
    return RedisTarget(url=f"{plain}://{rest}", cluster=True)


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    return parse_redis_url(url).cluster


def is_transient(exc: BaseException) -> bool:
    """True if retrying may succeed: one of :data:`TRANSIENT_ERRORS`, but not a refused AUTH."""
    return isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, _PERMANENT_CONNECTION_ERRORS)


def open_redis(url: str, **options: Any) -> SyncClient:
    """A blocking client for ``url``: ``redis.Redis`` or ``redis.cluster.RedisCluster``.

    ``options`` go to redis-py's ``from_url`` (``retry``, ``socket_timeout``, …). Raises
    ``ValueError`` (password redacted) for a URL redis-py cannot read. A cluster client
    connects to the named node at once to learn the slot map.
    """
    target = parse_redis_url(url)
    try:
        if target.cluster:
            return RedisCluster.from_url(target.url, **options)
        return redis.Redis.from_url(target.url, **options)
    except ValueError as exc:
        raise ValueError(f"invalid Redis URL {redact_url(url)}: {_reason(exc)}") from None
    except RedisClusterException as exc:
        if "db" not in str(exc):
            raise  # the node does not answer: a connection problem, not a bad URL
        raise ValueError(f"invalid Redis URL {redact_url(url)}: {_reason(exc)}") from None


def open_async_redis(url: str, **options: Any) -> AsyncClient:
    """An asyncio client for ``url``: ``redis.asyncio.Redis`` or its ``RedisCluster``.

    The cluster client learns the slot map on its first command.
    """
    import redis.asyncio as aioredis
    import redis.asyncio.cluster as aiocluster

    target = parse_redis_url(url)
    try:
        if target.cluster:
            return aiocluster.RedisCluster.from_url(target.url, **options)
        return aioredis.Redis.from_url(target.url, **options)
    except (ValueError, RedisClusterException) as exc:
        raise ValueError(f"invalid Redis URL {redact_url(url)}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """The error text without anything that could carry the URL (redis-py quotes it)."""
    text = str(exc)
    return "a cluster URL may name database 0 only" if "db" in text else type(exc).__name__
