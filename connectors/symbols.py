"""Symbol normalisation: each exchange's spelling to the canonical ``BASE-QUOTE``.

Binance and Bybit glue base and quote together (``BTCUSDT``), so splitting needs a table of
quote assets; the longest matching quote suffix wins (``BTCFDUSD`` is BTC/FDUSD, not
BTCFD/USD). OKX spells instruments with dashes (``BTC-USDT``, ``BTC-USDT-SWAP``). A symbol
that cannot be split unambiguously is refused with a clear message, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Quote assets seen on Binance spot and Bybit; extend here when an exchange lists a new one.
QUOTE_ASSETS: Final[tuple[str, ...]] = (
    "USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USDP", "DAI", "PAX", "UST", "USD1",
    "BTC", "ETH", "BNB", "XRP", "DOGE", "TRX", "DOT", "SOL",
    "TRY", "EUR", "EURI", "AEUR", "BRL", "GBP", "AUD", "JPY", "RUB", "UAH", "ZAR", "IDRT",
    "BIDR", "PLN", "RON", "ARS", "MXN", "COP", "CZK", "NGN", "BKRW", "VAI",
)  # fmt: skip
_QUOTES_LONGEST_FIRST: Final = tuple(sorted(QUOTE_ASSETS, key=len, reverse=True))
# Matched with fullmatch: "$" would also match before a trailing newline ("BTC\n").
_ASSET_RE: Final = re.compile(r"[A-Z0-9]{1,20}")


class UnknownSymbol(ValueError):
    """A symbol that cannot be mapped to ``BASE-QUOTE`` without guessing."""


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """A market's canonical and exchange-specific names.

    ``market`` is ``spot`` or ``linear`` (USDT/USDC-margined perpetual or future).
    """

    exchange: str
    symbol: str
    raw_symbol: str
    base: str
    quote: str
    market: str = "spot"


def split_concatenated(raw_symbol: str) -> tuple[str, str]:
    """Split ``BTCUSDT`` into ``("BTC", "USDT")`` using the quote-asset table."""
    upper = raw_symbol.strip().upper()
    if "-" in upper or "_" in upper or "/" in upper:
        parts = re.split(r"[-_/]", upper)
        if len(parts) == 2 and all(_ASSET_RE.fullmatch(p) for p in parts):
            return parts[0], parts[1]
        raise UnknownSymbol(f"{raw_symbol!r}: expected BASEQUOTE or BASE-QUOTE")
    for quote in _QUOTES_LONGEST_FIRST:
        if upper.endswith(quote) and len(upper) > len(quote):
            base = upper[: -len(quote)]
            if _ASSET_RE.fullmatch(base):
                return base, quote
    raise UnknownSymbol(
        f"{raw_symbol!r}: no known quote asset at its end (known: {', '.join(QUOTE_ASSETS)}); "
        "pass it as BASE-QUOTE to say where it splits"
    )


def binance_symbol(raw_symbol: str) -> SymbolInfo:
    """Binance spot: ``BTCUSDT`` (or ``BTC-USDT`` given by a person) to BTC-USDT."""
    base, quote = split_concatenated(raw_symbol)
    return SymbolInfo("binance", f"{base}-{quote}", f"{base}{quote}", base, quote)


def bybit_symbol(raw_symbol: str, market: str = "spot") -> SymbolInfo:
    """Bybit v5 spot or linear: ``BTCUSDT`` to BTC-USDT. Dated futures are refused."""
    if market not in ("spot", "linear"):
        raise UnknownSymbol(f"bybit market {market!r}: expected spot or linear")
    upper = raw_symbol.strip().upper()
    if upper.endswith("PERP"):
        base = upper[: -len("PERP")]
        if not _ASSET_RE.fullmatch(base) or market != "linear":
            raise UnknownSymbol(f"{raw_symbol!r}: a USDC perpetual exists only on linear")
        return SymbolInfo("bybit", f"{base}-USDC", upper, base, "USDC", market)
    if re.search(r"-[0-9]{2}[A-Z]{3}[0-9]{2}\Z", upper):
        raise UnknownSymbol(f"{raw_symbol!r}: dated futures are not supported")
    base, quote = split_concatenated(upper)
    return SymbolInfo("bybit", f"{base}-{quote}", f"{base}{quote}", base, quote, market)


def okx_symbol(inst_id: str) -> SymbolInfo:
    """OKX: ``BTC-USDT`` (spot) or ``BTC-USDT-SWAP`` (linear perpetual) to BTC-USDT.

    Inverse (coin-margined) swaps and dated futures are refused.
    """
    upper = inst_id.strip().upper()
    parts = upper.split("-")
    if len(parts) == 2 and all(_ASSET_RE.fullmatch(p) for p in parts):
        return SymbolInfo("okx", f"{parts[0]}-{parts[1]}", upper, parts[0], parts[1])
    if len(parts) == 3 and parts[2] == "SWAP" and all(_ASSET_RE.fullmatch(p) for p in parts[:2]):
        if parts[1] == "USD":
            raise UnknownSymbol(f"{inst_id!r}: inverse (coin-margined) swaps are not supported")
        return SymbolInfo("okx", f"{parts[0]}-{parts[1]}", upper, parts[0], parts[1], "linear")
    raise UnknownSymbol(f"{inst_id!r}: expected an OKX instId like BTC-USDT or BTC-USDT-SWAP")


def parse_symbol(exchange: str, raw_symbol: str, market: str = "spot") -> SymbolInfo:
    """Normalise one exchange symbol; raises UnknownSymbol with the reason."""
    if exchange == "binance":
        if market != "spot":
            raise UnknownSymbol("binance: only the spot market is supported")
        return binance_symbol(raw_symbol)
    if exchange == "bybit":
        return bybit_symbol(raw_symbol, market)
    if exchange == "okx":
        info = okx_symbol(raw_symbol)
        if info.market != market:
            raise UnknownSymbol(f"{raw_symbol!r} is an OKX {info.market} instrument, not {market}")
        return info
    raise UnknownSymbol(f"unknown exchange {exchange!r}")
