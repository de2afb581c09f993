"""Redis key and channel names of a series (DESIGN.md "Redis").

The series part of every name is a Redis Cluster hash tag, literal braces included:
``kline:{binance:BTC-USDT:1m}``. Redis Cluster hashes only what is between the first ``{``
and the next ``}``, so every key of one series (``kline:``, ``klines:``, ``vp:``, ``ind:``,
``signal:``) lives in one slot and the compare-and-set script may touch several of them in
one atomic call. The names are the same on a single server, so data moves between the two
without a rename.
"""

from __future__ import annotations


def series_tag(exchange: str, symbol: str, timeframe: str) -> str:
    """``"{exchange:symbol:timeframe}"``, the hash-tagged series part of every name."""
    return "{" + f"{exchange}:{symbol}:{timeframe}" + "}"


def redis_key(kind: str, exchange: str, symbol: str, timeframe: str) -> str:
    """The key of one kind of a series: ``"{kind}:{exchange:symbol:timeframe}"``.

    ``kind`` is a hash kind (``kline``, ``vp``, ``ind``, ``signal``) or a sorted-set prefix
    (``klines``).
    """
    return f"{kind}:{series_tag(exchange, symbol, timeframe)}"


def update_channel(kind: str, exchange: str, symbol: str, timeframe: str) -> str:
    """The pub/sub channel announcing applied updates: ``"{kind}-updates:{series tag}"``."""
    return f"{kind}-updates:{series_tag(exchange, symbol, timeframe)}"
