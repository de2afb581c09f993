"""Exchange adapters of the ingest bridge: one declarative class per exchange protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from connectors.exchanges.base import ExchangeAdapter, FrameKind, ParsedFrame, RestPage
from connectors.exchanges.binance import BinanceSpot
from connectors.exchanges.bybit import Bybit
from connectors.exchanges.okx import Okx
from connectors.symbols import UnknownSymbol

ADAPTERS: Final[dict[str, type[ExchangeAdapter]]] = {
    "binance": BinanceSpot,
    "okx": Okx,
    "bybit": Bybit,
}


def create_adapter(
    exchange: str,
    market: str,
    raw_symbols: Sequence[str],
    contract_sizes: Mapping[str, float] | None = None,
) -> ExchangeAdapter:
    """The adapter of ``exchange`` for ``market`` (spot, linear, inverse) and ``raw_symbols``.

    ``contract_sizes`` adds or overrides contract sizes by raw symbol.

    Raises UnknownSymbol (with a message fit for an operator) for an unknown exchange, an
    unsupported market or any symbol that cannot be normalised without guessing.
    """
    try:
        adapter_class = ADAPTERS[exchange]
    except KeyError:
        raise UnknownSymbol(
            f"unknown exchange {exchange!r} (expected one of {', '.join(ADAPTERS)})"
        ) from None
    return adapter_class(market, raw_symbols, contract_sizes)


__all__ = [
    "ADAPTERS",
    "BinanceSpot",
    "Bybit",
    "ExchangeAdapter",
    "FrameKind",
    "Okx",
    "ParsedFrame",
    "RestPage",
    "create_adapter",
]
