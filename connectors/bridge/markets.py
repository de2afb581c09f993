"""Which markets one bridge process follows, with which symbols and endpoints.

One process follows one exchange and one or more of its venue categories (markets):
``spot``, ``linear`` (quote-margined derivatives) and ``inverse`` (coin-margined). Each market
gets its own adapter, connections and gap repairer (see :mod:`.group`); this module turns the
command line's words into the per-market plan, refusing anything it would have to guess:

- ``markets``: the markets a symbol *without* a market prefix is followed on, ``spot`` or
  ``spot,linear``.
- ``symbols``: ``SYMBOL`` or ``MARKET:SYMBOL``. ``linear:ETHUSDT`` follows ETHUSDT on linear
  only. A plain Binance or Bybit symbol is followed on every listed market, because the same
  spelling names the spot pair and the perpetual (``BTCUSDT``). An OKX instId names exactly one
  market (``BTC-USDT`` spot, ``BTC-USDT-SWAP`` linear, ``BTC-USD-SWAP`` inverse), so a plain
  OKX symbol is followed on that market, which must be listed; a prefix that disagrees with
  the instrument is refused.
- endpoint URLs: one URL for every market, or ``MARKET=URL,MARKET=URL`` (Binance serves spot
  and futures on different hosts); a market without an entry falls back to the next source.

Every refusal raises :class:`MarketSpecError` (or the adapter's
:class:`~connectors.symbols.UnknownSymbol`) with a message for an operator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from connectors.symbols import MARGINS, okx_symbol

# The venue categories a bridge follows (the adapters' ``market``), in the order they run.
MARKETS: Final[tuple[str, ...]] = MARGINS
MARKET_PREFIX_SEPARATOR: Final[str] = ":"
MARKET_HELP: Final[str] = "spot, linear (quote-margined), inverse (coin-margined)"
# Exchanges whose symbol spelling names the market by itself.
SELF_DESCRIBING_EXCHANGES: Final[frozenset[str]] = frozenset({"okx"})
_URL_ENTRY_SPLIT: Final = re.compile(r",(?=(?:{})=)".format("|".join(MARKETS)))


class MarketSpecError(ValueError):
    """A market list, symbol list or per-market value that names no market or is ambiguous."""


def _known_market(market: str, where: str) -> str:
    if market not in MARKETS:
        raise MarketSpecError(f"{where}: unknown market {market!r} (expected one of {MARKET_HELP})")
    return market


def parse_markets(text: str | None) -> tuple[str, ...]:
    """``"spot,linear"`` -> ``("spot", "linear")``; refuses an empty, unknown or repeated one."""
    markets = [item.strip().lower() for item in (text or "").split(",") if item.strip()]
    if not markets:
        raise MarketSpecError(f"--market: no market given (expected one or more of {MARKET_HELP})")
    for market in markets:
        _known_market(market, "--market")
        if markets.count(market) > 1:
            raise MarketSpecError(f"--market: {market} given twice")
    return tuple(markets)


def _split_prefix(item: str) -> tuple[str | None, str]:
    """``("linear", "ETHUSDT")`` for ``linear:ETHUSDT``, ``(None, item)`` without a prefix."""
    if MARKET_PREFIX_SEPARATOR not in item:
        return None, item
    prefix, _, symbol = item.partition(MARKET_PREFIX_SEPARATOR)
    prefix, symbol = prefix.strip().lower(), symbol.strip()
    if not prefix or not symbol or MARKET_PREFIX_SEPARATOR in symbol:
        raise MarketSpecError(f"--symbols {item!r}: expected SYMBOL or MARKET:SYMBOL")
    return _known_market(prefix, f"--symbols {item!r}"), symbol


def symbols_by_market(
    exchange: str,
    markets: Sequence[str],
    items: Sequence[str],
    contract_sizes: Mapping[str, float] | None = None,
) -> dict[str, list[str]]:
    """The raw symbols to follow per market, markets in :data:`MARKETS` order.

    ``markets`` are where plain items go (see the module docstring), ``items`` the
    ``--symbols`` entries. ``contract_sizes`` only matter for telling an OKX instrument's
    market (an unknown contract is refused here as it would be by the adapter).
    """
    chosen: dict[str, list[str]] = {}
    for item in items:
        prefix, symbol = _split_prefix(item)
        if exchange in SELF_DESCRIBING_EXCHANGES:
            targets = [_okx_market(item, prefix, symbol, markets, contract_sizes)]
        elif prefix is not None:
            targets = [prefix]
        else:
            targets = list(markets)
        for market in targets:
            listed = chosen.setdefault(market, [])
            if symbol.upper() in (known.upper() for known in listed):
                raise MarketSpecError(f"{exchange} {market}: symbol {symbol!r} given twice")
            listed.append(symbol)
    if not chosen:
        raise MarketSpecError("--symbols: no symbol given, e.g. BTCUSDT,ETHUSDT")
    return {market: chosen[market] for market in MARKETS if market in chosen}


def _okx_market(
    item: str,
    prefix: str | None,
    inst_id: str,
    markets: Sequence[str],
    contract_sizes: Mapping[str, float] | None,
) -> str:
    """The market an OKX instId names; refuses a prefix or market list that disagrees."""
    market = okx_symbol(inst_id, contract_sizes).margin
    if prefix is not None and prefix != market:
        raise MarketSpecError(
            f"--symbols {item!r}: {inst_id} is an OKX {market} instrument, not {prefix} "
            f"(give it as {market}{MARKET_PREFIX_SEPARATOR}{inst_id}, or without a prefix)"
        )
    if prefix is None and market not in markets:
        others = ",".join(dict.fromkeys([*markets, market]))
        raise MarketSpecError(
            f"{inst_id!r} is an OKX {market} instrument, and --market is {','.join(markets)} "
            f"(use --market {market} for this instrument, --market {others} to follow every "
            f"market named, or give it as {market}{MARKET_PREFIX_SEPARATOR}{inst_id})"
        )
    return market


@dataclass(frozen=True, slots=True)
class MarketUrls:
    """One endpoint setting: a URL for every market and/or URLs of named markets."""

    every: str | None = None
    by_market: Mapping[str, str] = field(default_factory=dict)

    def for_market(self, market: str) -> str | None:
        """The URL this setting gives ``market``, None when it gives none."""
        return self.by_market.get(market, self.every)


def parse_market_urls(text: str | None, source: str) -> MarketUrls:
    """``URL`` (every market) or ``MARKET=URL,MARKET=URL`` (commas inside a URL stay).

    ``source`` names the flag or variable in refusals. Entries of markets the process does
    not follow are allowed (one variable may serve several bridge processes).
    """
    value = (text or "").strip()
    if not value:
        return MarketUrls()
    if not any(value.startswith(f"{market}=") for market in MARKETS):
        return MarketUrls(every=value)
    by_market: dict[str, str] = {}
    for entry in _URL_ENTRY_SPLIT.split(value):
        market, _, url = entry.partition("=")
        url = url.strip()
        if not url:
            raise MarketSpecError(f"{source} {entry!r}: expected MARKET=URL")
        if market in by_market:
            raise MarketSpecError(f"{source}: {market} given twice")
        by_market[market] = url
    return MarketUrls(by_market=by_market)
