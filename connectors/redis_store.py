"""Redis live state: the newest bar and the recent bars of each series (DESIGN.md "Redis").

Keys, per series, carry the series as a Redis Cluster hash tag (``connectors/redis_keys.py``),
``{exchange:symbol:timeframe}`` with literal braces, on a single server too:

- ``kline:{...}`` -- hash, the newest bar: every record field plus ``version``,
  ``bars_present`` and ``bars_expected``. Strings are stored as they are; every other value
  as its JSON literal (``42000.5``, ``true``, ``null``), see :func:`encode_field`.
- ``klines:{...}`` -- sorted set, score ``open_time``, member the bar as JSON (``version``
  first), capped at the newest ``recent_bars`` bars.
- ``vp:{...}``, ``ind:{...}``, ``signal:{...}`` -- hashes written through :meth:`write_hashes`.
- pub/sub channel ``{kind}-updates:{...}`` (``kline-updates:{binance:BTC-USDT:1m}``) -- one
  JSON message per applied update (the hash fields, ``open_time`` and ``version``); stale
  or repeated updates announce nothing (see :func:`update_channel`).

Every write goes through one Lua script (``connectors/lua/cas_upsert.lua``): an atomic
compare-and-set on ``(open_time, version)``, so an older update never replaces newer data,
whatever order updates arrive in and however many writers race. All keys of one call belong
to one series, so to one cluster slot: the script stays one atomic call on Redis Cluster.

``REDIS_URL`` may name a cluster (``redis+cluster://host:port``, ``connectors/redis_client.py``):
the pipeline is then split per primary by redis-py and sent to all of them at once. Every
call whose answer is not a confirmed result (a dropped connection, a failover, MOVED/ASK
beyond the client's redirects, a script the new primary lacks) is sent again until it is
confirmed or ``retry_s`` has passed; the CAS makes a repeated call harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, cast

import orjson
import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException
from redis.retry import Retry

from connectors.redaction import redact_url
from connectors.redis_client import SyncClient, is_transient, open_redis, parse_redis_url
from connectors.redis_keys import redis_key, update_channel
from connectors.retry import Backoff, Outage, describe_error
from udfs.record import FIELDS, STRING_FIELDS, VersionedBar

log = logging.getLogger(__name__)

CAS_SCRIPT: Final[str] = (Path(__file__).resolve().parent / "lua" / "cas_upsert.lua").read_text(
    encoding="utf-8"
)
# Hash kinds and, where a kind keeps recent items too, the prefix of its sorted set.
HASH_KINDS: Final[frozenset[str]] = frozenset({"kline", "vp", "ind", "signal"})
RECENT_KINDS: Final[Mapping[str, str]] = {"kline": "klines"}
BAR_HASH_FIELDS: Final[tuple[str, ...]] = (*FIELDS, "version", "bars_present", "bars_expected")
_BAR_STRING_FIELDS: Final = STRING_FIELDS
# Commands per pipeline round trip: bounds the memory of one huge batch.
_PIPELINE_CHUNK: Final = 1000


class RedisUnavailable(redis.ConnectionError):
    """Redis stayed unreachable for longer than the writer waits (``retry_s`` for a write,
    ``connect_wait_s`` at the start); the message is one line naming the server (password
    redacted), how long it was down and the last error. A ``ConnectionError``, like the
    errors it ends."""


class UnconfirmedWrite(redis.ConnectionError):
    """Fewer replicas than ``replica_acks`` acknowledged a write in time: it is sent again.

    A ``ConnectionError`` so that every caller treats it as transient.
    """


# Cluster nodes: redis-py tries a node once more, then this writer's own retries take over
# (with a fresh slot map), so a dead primary does not hold a batch in per-node retries.
_CLUSTER_NODE_RETRIES: Final = 1
_CLUSTER_SOCKET_TIMEOUT_S: Final = 30.0
_CLUSTER_CONNECT_TIMEOUT_S: Final = 5.0


def update_message(item: CasItem) -> bytes:
    """What an applied update publishes: the hash fields plus ``open_time`` and ``version``."""
    return orjson.dumps({**item.fields, "open_time": item.open_time, "version": item.version})


def encode_field(value: Any) -> str:
    """A hash field value: strings as they are, anything else as its JSON literal."""
    kind = type(value)
    if kind is str:
        return cast(str, value)
    if kind is int:  # the JSON literal of an int is its decimal form
        return str(value)
    if value is None:
        return "null"
    return orjson.dumps(value).decode()


def decode_field(raw: bytes | str, *, is_string: bool) -> Any:
    """The inverse of :func:`encode_field` for a field known to hold a string or not."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    return text if is_string else orjson.loads(text)


def decode_hash(raw: Mapping[Any, Any], string_fields: frozenset[str]) -> dict[str, Any]:
    """A hash read with HGETALL, decoded with :func:`decode_field` (bytes or str keys)."""
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        decoded[name] = decode_field(value, is_string=name in string_fields)
    return decoded


def bar_fields(bar: VersionedBar) -> dict[str, Any]:
    """The bar as a flat dict: the record fields, then version, bars_present, bars_expected."""
    fields = bar.kline.to_dict()
    fields["version"] = bar.version
    fields["bars_present"] = bar.bars_present
    fields["bars_expected"] = bar.bars_expected
    return fields


def bar_member(bar: VersionedBar, fields: Mapping[str, Any] | None = None) -> bytes:
    """The sorted-set member of a bar: JSON with ``version`` first (the script reads it).

    ``fields``: the bar's :func:`bar_fields` when the caller has them already.
    """
    flat = dict(fields) if fields is not None else bar_fields(bar)
    return orjson.dumps({"version": flat.pop("version"), **flat})


def decode_bar_hash(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A ``kline:`` hash (HGETALL) back to typed values."""
    return decode_hash(raw, _BAR_STRING_FIELDS)


@dataclass(frozen=True, slots=True)
class CasItem:
    """One versioned update of the ``{kind}:{exchange}:{symbol}:{timeframe}`` hash.

    ``open_time`` and ``version`` (non-negative integers) order updates; ``fields`` is the
    hash content (``open_time`` and ``version`` are stored too). ``recent_member`` also puts
    the item into the kind's sorted set of recent items (kinds in ``RECENT_KINDS`` only).
    ``message`` is what an applied update publishes when the caller has it already (it must
    hold what :func:`update_message` would); None = built from the fields.
    """

    exchange: str
    symbol: str
    timeframe: str
    open_time: int
    version: int
    fields: Mapping[str, Any]
    recent_member: bytes | None = None
    message: bytes | None = None


def _check_order_value(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return str(value)


class RedisBarWriter:
    """Writes bars (and later profiles, indicators, signals) to Redis with CAS semantics.

    ``recent_bars`` caps each ``klines:`` sorted set; ``ttl_s`` (None = never) expires
    keys that stop being updated; ``publish`` announces applied updates on
    :func:`update_channel`. ``url`` names one server (``redis://``, ``rediss://``) or a
    cluster (``redis+cluster://``, ``rediss+cluster://``, any one node). AUTH
    (``redis://user:pass@host``) and TLS (``rediss://``, with ``ssl_cert_reqs``/``ssl_ca_certs``
    options) come from the URL (redis-py ``from_url``); the password never reaches logs or
    error messages. Connects and PINGs on construction. On one server a dropped connection
    is retried ``reconnect_retries`` times with exponential backoff and jitter (up to
    ``reconnect_cap_s`` between tries); beyond that, and on a cluster, a call that is not
    confirmed is sent again with the same backoff until ``retry_s`` has passed (then the
    error is raised), so a restart or a failover only delays writes. With the URL option
    ``replica_acks=N`` a write is confirmed only once N replicas acknowledged it (WAIT, see
    :class:`connectors.redis_client.RedisTarget`).
    """

    def __init__(
        self,
        url: str,
        *,
        recent_bars: int = 500,
        ttl_s: int | None = None,
        publish: bool = True,
        reconnect_retries: int = 10,
        reconnect_cap_s: float = 2.0,
        retry_s: float = 60.0,
        connect_wait_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if recent_bars < 1:
            raise ValueError("recent_bars must be >= 1")
        if ttl_s is not None and ttl_s < 1:
            raise ValueError("ttl_s must be >= 1 second or None")
        self.redacted_url = redact_url(url)
        target = parse_redis_url(url)
        self.cluster = target.cluster
        self.replica_acks = target.replica_acks
        self.replica_ack_timeout_ms = target.replica_ack_timeout_ms
        self.recent_bars = recent_bars
        self.ttl_s = ttl_s
        self.publish = publish
        self.retry_s = retry_s
        self._backoff = Backoff(base_s=0.05, cap_s=reconnect_cap_s)
        self._sleep = sleep
        self._clock = clock
        self._outage = Outage("Redis", self.redacted_url, clock=clock)
        self._client: SyncClient | None = None
        backoff = ExponentialWithJitterBackoff(cap=reconnect_cap_s, base=0.05)
        options: dict[str, Any]
        if self.cluster:
            options = {
                "retry": Retry(backoff, retries=_CLUSTER_NODE_RETRIES),
                "socket_timeout": _CLUSTER_SOCKET_TIMEOUT_S,
                "socket_connect_timeout": _CLUSTER_CONNECT_TIMEOUT_S,
            }
        else:
            options = {
                "retry": Retry(backoff, retries=reconnect_retries),
                "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
                "health_check_interval": 30,
            }
        self._sha: str = self._connect(url, options, connect_wait_s)
        log.debug("connected to Redis at %s", self.redacted_url)

    def _connect(self, url: str, options: Mapping[str, Any], wait_s: float) -> str:
        """Open the client, PING and load the script; a server that does not answer
        (transiently) is tried again with backoff for up to ``wait_s`` seconds. Returns the
        script's SHA1; raises ``redis.ConnectionError`` (one line, password redacted)."""
        failures = 0
        while True:
            try:
                self._client = open_redis(url, **options)
                self._client.ping()
                sha = self._load_script()
            except (redis.RedisError, RedisClusterException) as exc:
                self.close()
                waited = self._outage.down_for()
                if is_transient(exc) and waited < wait_s:
                    self._outage.failed(exc, budget_s=wait_s)
                    self._sleep(min(self._backoff.delay(failures), max(0.0, wait_s - waited)))
                    failures += 1
                    continue
                if self._outage.down:  # waited: "Redis at <url> has been unreachable for ..."
                    raise RedisUnavailable(self._outage.give_up(exc)) from None
                raise redis.ConnectionError(
                    f"Redis at {self.redacted_url} is not usable: {type(exc).__name__}: "
                    f"{redact_url(str(exc))}"
                ) from None
            self._outage.recovered()
            return sha

    def write_bars(self, bars: Sequence[VersionedBar]) -> int:
        """Write bars to ``kline:`` and ``klines:``; returns how many distinct keys changed.

        Of several updates of one bar in the batch only the highest version is sent.
        """
        newest: dict[tuple[str, int], VersionedBar] = {}
        for bar in bars:
            key = (bar.kline.series_key, bar.kline.open_time)
            kept = newest.get(key)
            if kept is None or bar.version >= kept.version:
                newest[key] = bar
        items = []
        for bar in newest.values():
            fields = bar_fields(bar)
            member = bar_member(bar, fields)
            items.append(
                CasItem(
                    exchange=bar.kline.exchange,
                    symbol=bar.kline.symbol,
                    timeframe=bar.kline.timeframe,
                    open_time=bar.kline.open_time,
                    version=bar.version,
                    fields=fields,
                    recent_member=member,
                    # The member holds every hash field, open_time and version: the message.
                    message=member,
                )
            )
        return self.write_hashes("kline", items)

    def write_hashes(self, kind: str, items: Sequence[CasItem]) -> int:
        """CAS-write items to ``{kind}:...`` hashes (and sorted sets).

        ``kind`` is one of ``kline``, ``vp``, ``ind``, ``signal``. One EVALSHA per series,
        carrying all its items in ``(open_time, version)`` order (the script applies them
        one after another), pipelined (per primary on a cluster); the script is loaded again
        if Redis lost it (restart, failover, SCRIPT FLUSH), and unconfirmed calls are sent
        again (see :meth:`_run`). Returns the number of distinct keys whose content changed
        (a stale or equal update changes nothing; a bar that falls outside the sorted-set cap
        does not count; a call sent again after a lost answer may count a change it made the
        first time as none).
        """
        if kind not in HASH_KINDS:
            raise ValueError(f"unknown hash kind {kind!r} (expected {sorted(HASH_KINDS)})")
        by_series: dict[tuple[str, str, str], list[CasItem]] = {}
        for item in items:
            by_series.setdefault((item.exchange, item.symbol, item.timeframe), []).append(item)
        calls = [self._script_call(kind, series) for series in by_series.values()]
        changed: set[str] = set()
        for start in range(0, len(calls), _PIPELINE_CHUNK):
            chunk = calls[start : start + _PIPELINE_CHUNK]
            for (keys, _args), mask in zip(chunk, self._run(chunk), strict=True):
                changed.update(key for bit, key in enumerate(keys) if int(mask) & (1 << bit))
        return len(changed)

    def read_latest_bar(self, exchange: str, symbol: str, timeframe: str) -> dict[str, Any] | None:
        """The ``kline:`` hash of a series decoded to typed values, or None."""
        key = redis_key("kline", exchange, symbol, timeframe)
        raw = cast(dict[bytes, bytes], self._require_client().hgetall(key))
        return decode_bar_hash(raw) if raw else None

    def read_recent_bars(self, exchange: str, symbol: str, timeframe: str) -> list[dict[str, Any]]:
        """The ``klines:`` sorted set of a series, oldest first, decoded from JSON."""
        key = redis_key("klines", exchange, symbol, timeframe)
        members = cast(list[bytes], self._require_client().zrange(key, 0, -1))
        return [orjson.loads(member) for member in members]

    def close(self) -> None:
        """Close the connection pool. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisBarWriter({self.redacted_url!r}, recent_bars={self.recent_bars})"

    def _require_client(self) -> SyncClient:
        if self._client is None:
            raise redis.ConnectionError(f"writer for {self.redacted_url} is closed")
        return self._client

    def _script_call(self, kind: str, items: Sequence[CasItem]) -> tuple[list[str], list[Any]]:
        """Keys and arguments of one script call for the items of one series."""
        first = items[0]
        series = (first.exchange, first.symbol, first.timeframe)
        # Every key of the call shares the series hash tag: one slot, one atomic script.
        keys = [redis_key(kind, *series)]
        recent_prefix = RECENT_KINDS.get(kind)
        if any(item.recent_member is not None for item in items):
            if recent_prefix is None:
                raise ValueError(f"hash kind {kind!r} keeps no sorted set of recent items")
            keys.append(redis_key(recent_prefix, *series))
        channel = (
            update_channel(kind, first.exchange, first.symbol, first.timeframe)
            if self.publish
            else ""
        )
        args: list[Any] = [self.recent_bars, self.ttl_s or 0, channel]
        ordered = sorted(items, key=lambda item: (item.open_time, item.version))
        newest = len(ordered) - 1
        for position, item in enumerate(ordered):
            message = b""
            if self.publish:
                message = item.message if item.message is not None else update_message(item)
            # Only the newest item's fields can end up in the hash (the items are in order,
            # so when any of them is applied the newest is too): the others carry none.
            fields = item.fields if position == newest else {}
            args += [
                _check_order_value("open_time", item.open_time),
                _check_order_value("version", item.version),
                item.recent_member if item.recent_member is not None else b"",
                message,
                len(fields),
            ]
            for name, value in fields.items():
                args.append(name)
                args.append(encode_field(value))
        return keys, args

    def _queue_waits(
        self, client: SyncClient, pipe: Any, first_keys: Sequence[str]
    ) -> list[list[int]]:
        """With ``replica_acks``, queue one WAIT per primary after its calls; the positions
        (in ``first_keys``) of the calls each WAIT covers. On a cluster the WAIT goes to the
        node the client routes the calls to, so it runs on the connection that wrote them."""
        if not self.replica_acks or not first_keys:
            return []
        wait = ("WAIT", self.replica_acks, self.replica_ack_timeout_ms)
        if not isinstance(client, RedisCluster):
            pipe.execute_command(*wait)
            return [list(range(len(first_keys)))]
        groups: dict[str, tuple[Any, list[int]]] = {}
        for position, key in enumerate(first_keys):
            node = client.get_node_from_key(key)
            groups.setdefault(node.name, (node, []))[1].append(position)
        for node, _ in groups.values():
            pipe.execute_command(*wait, target_nodes=node)
        return [positions for _, positions in groups.values()]

    def _apply_waits(
        self, results: list[Any], calls: int, waits: Sequence[Sequence[int]]
    ) -> list[Any]:
        """The calls' results, each covered by a WAIT that fell short turned into an error."""
        answers, acks = list(results[:calls]), results[calls:]
        for positions, acked in zip(waits, acks, strict=True):
            if isinstance(acked, int) and acked >= self.replica_acks:
                continue
            short = UnconfirmedWrite(
                f"{acked!r} of {self.replica_acks} replicas acknowledged within "
                f"{self.replica_ack_timeout_ms} ms"
            )
            for position in positions:
                if not isinstance(answers[position], BaseException):
                    answers[position] = short
        return answers

    def _load_script(self) -> str:
        """SCRIPT LOAD the CAS script (on a cluster: on every primary); returns its SHA1."""
        return str(self._require_client().script_load(CAS_SCRIPT))

    def _run(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """The answers of ``calls`` (one EVALSHA each), every one of them confirmed.

        The calls go in one pipeline (on a cluster redis-py splits it per primary, sends to
        all, then follows MOVED/ASK one call at a time). A call that fails transiently
        (:func:`connectors.redis_client.is_transient`), or with NOSCRIPT (a restarted or
        newly promoted primary that never saw the script), is sent again, alone with the
        other failed ones, after a backoff, until ``retry_s`` has passed; any other error
        is raised at once. Calls already answered are not sent again.
        """
        answers: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        failures = 0
        started = self._clock()
        while True:
            client = self._require_client()
            pipe = client.pipeline(transaction=False)
            for index in pending:
                keys, args = calls[index]
                # ``execute_command``: redis-py's cluster pipeline refuses its ``evalsha``
                # method (because of NOSCRIPT), which is handled here.
                pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
            waits: list[list[int]] = []
            try:
                waits = self._queue_waits(client, pipe, [calls[index][0][0] for index in pending])
                results: list[Any] = pipe.execute(raise_on_error=False)
            except (redis.RedisError, RedisClusterException) as exc:
                if not is_transient(exc):
                    raise
                results = [exc] * (len(pending) + len(waits))
            results = self._apply_waits(results, len(pending), waits)
            retry: list[int] = []
            reload_script = False
            last_error: BaseException | None = None
            for index, result in zip(pending, results, strict=True):
                if isinstance(result, NoScriptError):
                    reload_script = True
                    retry.append(index)
                elif isinstance(result, BaseException):
                    if not is_transient(result):
                        raise result
                    last_error = result
                    retry.append(index)
                else:
                    answers[index] = result
            if not retry:
                self._outage.recovered()
                return answers
            if last_error is not None:
                elapsed = self._outage.failed(last_error, budget_s=self.retry_s)
                if elapsed >= self.retry_s:
                    raise RedisUnavailable(self._outage.give_up(last_error)) from last_error
                delay = self._backoff.delay(failures)
                failures += 1
                log.debug(
                    "Redis at %s: %d of %d calls unconfirmed (%s); again in %.2fs",
                    self.redacted_url,
                    len(retry),
                    len(calls),
                    describe_error(last_error),
                    delay,
                )
                self._sleep(delay)
            if reload_script:
                log.info("Redis at %s lost the CAS script; loading it again", self.redacted_url)
                try:
                    self._sha = self._load_script()
                except (redis.RedisError, RedisClusterException) as exc:
                    if not is_transient(exc) or self._clock() - started >= self.retry_s:
                        raise
            pending = retry
