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


# klineflow's own URL options (taken out before redis-py reads the URL).
REPLICA_ACKS_OPTION: Final = "replica_acks"
REPLICA_ACK_TIMEOUT_OPTION: Final = "replica_ack_timeout_ms"
DEFAULT_REPLICA_ACK_TIMEOUT_MS: Final = 500


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``REDIS_URL``: the URL redis-py reads, whether it names a cluster, and how
    many replicas must acknowledge a write before the writer counts it as done.

    ``replica_acks`` (URL option ``replica_acks=N``, default 0) makes the writer end each
    primary's share of a batch with ``WAIT N replica_ack_timeout_ms`` and send again what
    fewer replicas acknowledged: replication is asynchronous, so without it a primary killed
    between answering and forwarding a write takes the write with it.
    """

    url: str
    cluster: bool
    replica_acks: int = 0
    replica_ack_timeout_ms: int = DEFAULT_REPLICA_ACK_TIMEOUT_MS

    def __repr__(self) -> str:
        return (
            f"RedisTarget({redact_url(self.url)!r}, cluster={self.cluster}, "
            f"replica_acks={self.replica_acks})"
        )


def parse_redis_url(url: str) -> RedisTarget:
    """``redis+cluster://h:p`` -> ``RedisTarget("redis://h:p", cluster=True)``.

    Any other scheme stays as it is, with ``cluster=False``. The options ``replica_acks``
    and ``replica_ack_timeout_ms`` (non-negative integers) are taken out of the query.
    """
    url, ours = _take_options(url, (REPLICA_ACKS_OPTION, REPLICA_ACK_TIMEOUT_OPTION))
    acks = _option_int(url, ours, REPLICA_ACKS_OPTION, 0)
    timeout_ms = _option_int(url, ours, REPLICA_ACK_TIMEOUT_OPTION, DEFAULT_REPLICA_ACK_TIMEOUT_MS)
    scheme, separator, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower()) if separator else None
    if plain is not None:
        url = f"{plain}://{rest}"
    return RedisTarget(url, plain is not None, acks, timeout_ms)


def _take_options(url: str, names: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``url`` without the query options ``names`` (others kept byte for byte), and theirs."""
    base, separator, query = url.partition("?")
    if not separator:
        return url, {}
    kept, taken = [], {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name in names:
            taken[name] = value
        elif part:
            kept.append(part)
    return (f"{base}?{'&'.join(kept)}" if kept else base), taken


def _option_int(url: str, options: dict[str, str], name: str, default: int) -> int:
    text = options.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"invalid Redis URL {redact_url(url)}: {name} must be an integer >= 0")
    return int(text)


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
