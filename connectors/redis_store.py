"""Redis live state: the newest bar and the recent bars of each series (DESIGN.md "Redis").

Keys, per series ``{exchange}:{symbol}:{timeframe}``:

- ``kline:...`` -- hash, the newest bar: every record field plus ``version``,
  ``bars_present`` and ``bars_expected``. Strings are stored as they are; every other value
  as its JSON literal (``42000.5``, ``true``, ``null``), see :func:`encode_field`.
- ``klines:...`` -- sorted set, score ``open_time``, member the bar as JSON (``version``
  first), capped at the newest ``recent_bars`` bars.
- ``vp:...``, ``ind:...``, ``signal:...`` -- hashes written through :meth:`write_hashes`.
- pub/sub channel ``{kind}-updates:...`` (``kline-updates:binance:BTC-USDT:1m``) -- one
  JSON message per applied update (the hash fields, ``open_time`` and ``version``); stale
  or repeated updates announce nothing (see :func:`update_channel`).

Every write goes through one Lua script (``connectors/lua/cas_upsert.lua``): an atomic
compare-and-set on ``(open_time, version)``, so an older update never replaces newer data,
whatever order updates arrive in and however many writers race.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, cast

import orjson
import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from connectors.redaction import redact_url
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


def series_suffix(exchange: str, symbol: str, timeframe: str) -> str:
    """``"{exchange}:{symbol}:{timeframe}"``, the series part of every key."""
    return f"{exchange}:{symbol}:{timeframe}"


def update_channel(kind: str, exchange: str, symbol: str, timeframe: str) -> str:
    """The pub/sub channel announcing applied updates: ``"{kind}-updates:{series}"``."""
    return f"{kind}-updates:{series_suffix(exchange, symbol, timeframe)}"


def update_message(item: CasItem) -> bytes:
    """What an applied update publishes: the hash fields plus ``open_time`` and ``version``."""
    return orjson.dumps({**item.fields, "open_time": item.open_time, "version": item.version})


def encode_field(value: Any) -> str:
    """A hash field value: strings as they are, anything else as its JSON literal."""
    if isinstance(value, str):
        return value
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


def bar_member(bar: VersionedBar) -> bytes:
    """The sorted-set member of a bar: JSON with ``version`` first (the script reads it)."""
    fields = bar_fields(bar)
    return orjson.dumps({"version": fields.pop("version"), **fields})


def decode_bar_hash(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A ``kline:`` hash (HGETALL) back to typed values."""
    return decode_hash(raw, _BAR_STRING_FIELDS)


@dataclass(frozen=True, slots=True)
class CasItem:
    """One versioned update of the ``{kind}:{exchange}:{symbol}:{timeframe}`` hash.

    ``open_time`` and ``version`` (non-negative integers) order updates; ``fields`` is the
    hash content (``open_time`` and ``version`` are stored too). ``recent_member`` also puts
    the item into the kind's sorted set of recent items (kinds in ``RECENT_KINDS`` only).
    """

    exchange: str
    symbol: str
    timeframe: str
    open_time: int
    version: int
    fields: Mapping[str, Any]
    recent_member: bytes | None = None


def _check_order_value(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return str(value)


class RedisBarWriter:
    """Writes bars (and later profiles, indicators, signals) to Redis with CAS semantics.

    ``recent_bars`` caps each ``klines:`` sorted set; ``ttl_s`` (None = never) expires
    keys that stop being updated; ``publish`` announces applied updates on
    :func:`update_channel`. AUTH (``redis://user:pass@host``) and TLS (``rediss://``, with
    ``ssl_cert_reqs``/``ssl_ca_certs`` options) come from the URL (redis-py ``from_url``);
    the password never reaches logs or error messages. Connects and PINGs on construction;
    a dropped connection is retried ``reconnect_retries`` times with exponential backoff and
    jitter (up to ``reconnect_cap_s`` between tries), so a Redis restart only delays writes.
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
    ) -> None:
        if recent_bars < 1:
            raise ValueError("recent_bars must be >= 1")
        if ttl_s is not None and ttl_s < 1:
            raise ValueError("ttl_s must be >= 1 second or None")
        self.redacted_url = redact_url(url)
        self.recent_bars = recent_bars
        self.ttl_s = ttl_s
        self.publish = publish
        try:
            self._client: redis.Redis | None = redis.Redis.from_url(
                url,
                retry=Retry(
                    ExponentialWithJitterBackoff(cap=reconnect_cap_s, base=0.05),
                    retries=reconnect_retries,
                ),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                health_check_interval=30,
            )
        except ValueError:
            raise ValueError(f"invalid Redis URL {self.redacted_url}") from None
        try:
            self._client.ping()
            self._sha: str = str(self._client.script_load(CAS_SCRIPT))
        except redis.RedisError as exc:
            self.close()
            raise redis.ConnectionError(
                f"Redis at {self.redacted_url} is not usable: {type(exc).__name__}: {exc}"
            ) from None
        log.debug("connected to Redis at %s", self.redacted_url)

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
        items = [
            CasItem(
                exchange=bar.kline.exchange,
                symbol=bar.kline.symbol,
                timeframe=bar.kline.timeframe,
                open_time=bar.kline.open_time,
                version=bar.version,
                fields=bar_fields(bar),
                recent_member=bar_member(bar),
            )
            for bar in newest.values()
        ]
        return self.write_hashes("kline", items)

    def write_hashes(self, kind: str, items: Sequence[CasItem]) -> int:
        """CAS-write items to ``{kind}:...`` hashes (and sorted sets).

        ``kind`` is one of ``kline``, ``vp``, ``ind``, ``signal``. One EVALSHA per series,
        carrying all its items in ``(open_time, version)`` order (the script applies them
        one after another), pipelined; the script is reloaded once if Redis lost it (restart,
        SCRIPT FLUSH). Returns the number of distinct keys whose content changed (a stale or
        equal update changes nothing; a bar that falls outside the sorted-set cap does not
        count).
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
        key = f"kline:{series_suffix(exchange, symbol, timeframe)}"
        raw = cast(dict[bytes, bytes], self._require_client().hgetall(key))
        return decode_bar_hash(raw) if raw else None

    def read_recent_bars(self, exchange: str, symbol: str, timeframe: str) -> list[dict[str, Any]]:
        """The ``klines:`` sorted set of a series, oldest first, decoded from JSON."""
        key = f"klines:{series_suffix(exchange, symbol, timeframe)}"
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

    def _require_client(self) -> redis.Redis:
        if self._client is None:
            raise redis.ConnectionError(f"writer for {self.redacted_url} is closed")
        return self._client

    def _script_call(self, kind: str, items: Sequence[CasItem]) -> tuple[list[str], list[Any]]:
        """Keys and arguments of one script call for the items of one series."""
        first = items[0]
        suffix = series_suffix(first.exchange, first.symbol, first.timeframe)
        keys = [f"{kind}:{suffix}"]
        recent_prefix = RECENT_KINDS.get(kind)
        if any(item.recent_member is not None for item in items):
            if recent_prefix is None:
                raise ValueError(f"hash kind {kind!r} keeps no sorted set of recent items")
            keys.append(f"{recent_prefix}:{suffix}")
        channel = (
            update_channel(kind, first.exchange, first.symbol, first.timeframe)
            if self.publish
            else ""
        )
        args: list[Any] = [self.recent_bars, self.ttl_s or 0, channel]
        ordered = sorted(items, key=lambda item: (item.open_time, item.version))
        for item in ordered:
            args += [
                _check_order_value("open_time", item.open_time),
                _check_order_value("version", item.version),
                item.recent_member if item.recent_member is not None else b"",
                update_message(item) if self.publish else b"",
                len(item.fields),
            ]
            for name, value in item.fields.items():
                args.append(name)
                args.append(encode_field(value))
        return keys, args

    def _run(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        client = self._require_client()
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            try:
                return pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                log.info("Redis at %s lost the CAS script; loading it again", self.redacted_url)
                self._sha = str(client.script_load(CAS_SCRIPT))
        raise AssertionError("unreachable")
