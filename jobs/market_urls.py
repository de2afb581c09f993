"""Endpoint URLs per market for the commands that talk to an exchange (``bridge``, ``backfill``).

A URL setting (``--ws-url``/``--rest-url``, ``BINANCE_REST_URL`` …) holds one URL for every
market or ``MARKET=URL,MARKET=URL`` (the syntax is
:func:`connectors.bridge.markets.parse_market_urls`'s). A market takes its URL from the flag,
else from ``{EXCHANGE}_{KIND}_URL``, else from the exchange adapter's public default; both
commands resolve it here, so one variable set for the bridge serves the backfill too.
"""

from __future__ import annotations

import os
from typing import Final

from connectors.bridge.markets import parse_market_urls

URL_METAVAR: Final[str] = "URL|MARKET=URL,..."


def exchange_env(exchange: str, kind: str) -> str | None:
    """``{EXCHANGE}_{kind}_URL`` from the environment (``BINANCE_REST_URL``), None if unset."""
    value = os.environ.get(env_name(exchange, kind), "").strip()
    return value or None


def env_name(exchange: str, kind: str) -> str:
    """The variable of one exchange's URLs of ``kind`` (``WS``, ``REST``): ``OKX_REST_URL``."""
    return f"{exchange.upper()}_{kind}_URL"


def market_url(
    flag: str | None, flag_name: str, exchange: str, kind: str, market: str
) -> str | None:
    """``market``'s URL from the flag, else from ``{EXCHANGE}_{kind}_URL``; None from neither.

    Either source may be one URL or a per-market list; a list without an entry for
    ``market`` falls through to the next source. Raises
    :class:`~connectors.bridge.markets.MarketSpecError` (naming the flag or the variable)
    for a malformed list.
    """
    from_flag = parse_market_urls(flag, flag_name).for_market(market)
    if from_flag:
        return from_flag
    variable = env_name(exchange, kind)
    return parse_market_urls(exchange_env(exchange, kind), variable).for_market(market)
