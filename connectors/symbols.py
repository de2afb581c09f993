"""Symbol normalisation: each exchange's spelling to the canonical instrument of DESIGN.md.

The canonical symbol names the instrument: ``BTC-USDT`` (spot), ``BTC-USDT-PERP``
(quote-margined perpetual), ``BTC-USD-PERP`` (coin-margined perpetual), ``BTC-USDT-250627``
(dated future, expiry YYMMDD). Spot and the perpetual of one pair therefore never share a
series key.

Binance and Bybit glue base and quote together (``BTCUSDT``), so splitting needs a table of
quote assets; the longest matching quote suffix wins (``BTCFDUSD`` is BTC/FDUSD, not
BTCFD/USD). A symbol whose end is no known quote asset is refused with a clear message,
never guessed (``BTCUSD_PERP`` on a USDT-margined market, for instance). OKX spells
instruments with dashes (``BTC-USDT``, ``BTC-USDT-SWAP``, ``BTC-USD-250627``).

Derivatives carry what converts their volume to the base asset: ``contract_size`` is the base
units per contract of a linear (quote-margined) contract, or the quote (USD) value of an
inverse (coin-margined) one. A contract whose size is not known here is refused when the
adapter starts; ``contract_sizes`` overrides let an operator add one, never a guess.

Multiplied bases (``1000PEPEUSDT`` on the perpetual markets: one unit is 1000 PEPE) keep
their unit in the symbol (``1000PEPE-USDT-PERP``; prices and volumes are per 1000 PEPE) and
carry ``base_multiplier`` = 1000 so a user can join them with another venue's ``PEPE``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

# Quote assets seen on Binance spot and Bybit; extend here when an exchange lists a new one.
QUOTE_ASSETS: Final[tuple[str, ...]] = (
    "USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USDP", "DAI", "PAX", "UST", "USD1",
    "BTC", "ETH", "BNB", "XRP", "DOGE", "TRX", "DOT", "SOL",
    "TRY", "EUR", "EURI", "AEUR", "BRL", "GBP", "AUD", "JPY", "RUB", "UAH", "ZAR", "IDRT",
    "BIDR", "PLN", "RON", "ARS", "MXN", "COP", "CZK", "NGN", "BKRW", "VAI",
)  # fmt: skip
# Quote assets of quote-margined (linear) derivatives, and of coin-margined (inverse) ones.
LINEAR_QUOTES: Final[tuple[str, ...]] = ("USDT", "USDC", "FDUSD", "BUSD")
INVERSE_QUOTES: Final[tuple[str, ...]] = ("USD",)
_QUOTES_LONGEST_FIRST: Final = tuple(sorted(QUOTE_ASSETS, key=len, reverse=True))
# Matched with fullmatch: "$" would also match before a trailing newline ("BTC\n").
_ASSET_RE: Final = re.compile(r"[A-Z0-9]{1,20}")
_EXPIRY_RE: Final = re.compile(r"[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])")
# The unit prefixes of multiplied bases on perpetual markets: 1000PEPE, 10000LADYS, 1MBABYDOGE.
_MULTIPLIED_BASE_RE: Final = re.compile(r"(1000000|100000|10000|1000|100|1M)([A-Z][A-Z0-9]*)")
_MONTHS: Final = {
    "JAN": "01", "FEB": "02", "MAR": "03", "APR": "04", "MAY": "05", "JUN": "06",
    "JUL": "07", "AUG": "08", "SEP": "09", "OCT": "10", "NOV": "11", "DEC": "12",
}  # fmt: skip
# Venue categories an adapter serves: spot, quote-margined and coin-margined derivatives.
MARGINS: Final[tuple[str, ...]] = ("spot", "linear", "inverse")

# Contract sizes (DESIGN.md "Units stay honest"). Binance COIN-M: 100 USD for BTC, 10 USD
# for every other coin. OKX ctVal per underlying (instruments endpoint, 2025): linear in base
# units, inverse in USD. Bybit: a linear contract is one base coin, an inverse one 1 USD.
BINANCE_INVERSE_BTC_USD: Final[float] = 100.0
BINANCE_INVERSE_OTHER_USD: Final[float] = 10.0
OKX_CONTRACT_VALUES: Final[Mapping[str, float]] = {
    "BTC-USDT": 0.01,
    "ETH-USDT": 0.1,
    "SOL-USDT": 1.0,
    "XRP-USDT": 100.0,
    "DOGE-USDT": 1000.0,
    "LTC-USDT": 1.0,
    "BTC-USD": 100.0,
    "ETH-USD": 10.0,
}
BYBIT_LINEAR_CONTRACT: Final[float] = 1.0
BYBIT_INVERSE_CONTRACT_USD: Final[float] = 1.0


class UnknownSymbol(ValueError):
    """A symbol that cannot be mapped to a canonical instrument without guessing."""


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """A market's canonical and exchange-specific names, and how to convert its units.

    ``market`` is the record's (``spot``, ``perp``, ``future``); ``margin`` the venue
    category (``spot``, ``linear``, ``inverse``). ``contract_size``: base units per contract
    (linear) or quote value per contract (inverse); 1 on spot.
    """

    exchange: str
    symbol: str
    raw_symbol: str
    base: str
    quote: str
    market: str = "spot"
    margin: str = "spot"
    base_multiplier: int = 1
    contract_size: float = 1.0


def split_concatenated(raw_symbol: str, quotes: tuple[str, ...] | None = None) -> tuple[str, str]:
    """Split ``BTCUSDT`` into ``("BTC", "USDT")`` using the quote-asset table.

    ``quotes`` narrows the table (a USDT-margined market takes only its quotes).
    """
    upper = raw_symbol.strip().upper()
    allowed = quotes if quotes is not None else QUOTE_ASSETS
    if "-" in upper or "_" in upper or "/" in upper:
        parts = re.split(r"[-_/]", upper)
        if len(parts) == 2 and all(_ASSET_RE.fullmatch(p) for p in parts):
            if parts[1] not in allowed:
                raise UnknownSymbol(
                    f"{raw_symbol!r}: {parts[1]} is not a known quote asset here "
                    f"(known: {', '.join(allowed)})"
                )
            return parts[0], parts[1]
        raise UnknownSymbol(f"{raw_symbol!r}: expected BASEQUOTE or BASE-QUOTE")
    longest_first = _QUOTES_LONGEST_FIRST if quotes is None else sorted(quotes, key=len)[::-1]
    for quote in longest_first:
        if upper.endswith(quote) and len(upper) > len(quote):
            base = upper[: -len(quote)]
            if _ASSET_RE.fullmatch(base):
                return base, quote
    raise UnknownSymbol(
        f"{raw_symbol!r}: no known quote asset at its end (known: {', '.join(allowed)}); "
        "pass it as BASE-QUOTE to say where it splits"
    )


def base_multiplier_of(base: str) -> int:
    """1000 for ``1000PEPE``, 10**6 for ``1MBABYDOGE`` (derivatives' unit prefixes), else 1."""
    match = _MULTIPLIED_BASE_RE.fullmatch(base)
    if match is None:
        return 1
    prefix = match.group(1)
    return 1_000_000 if prefix == "1M" else int(prefix)


def _instrument(base: str, quote: str, market: str, expiry: str = "") -> str:
    if market == "spot":
        return f"{base}-{quote}"
    if market == "perp":
        return f"{base}-{quote}-PERP"
    return f"{base}-{quote}-{expiry}"


def _size(
    exchange: str,
    raw_symbol: str,
    default: float | None,
    overrides: Mapping[str, float] | None,
) -> float:
    size = (overrides or {}).get(raw_symbol, default)
    if size is None:
        raise UnknownSymbol(
            f"{exchange} {raw_symbol!r}: the contract size is not known, so its volume cannot "
            "be converted to the base asset; give it with --contract-size "
            f"{raw_symbol}=<size> (never guessed)"
        )
    if not 0 < size < 1e12:
        raise UnknownSymbol(f"{exchange} {raw_symbol!r}: contract size {size!r} is not positive")
    return float(size)


def binance_symbol(
    raw_symbol: str, margin: str = "spot", contract_sizes: Mapping[str, float] | None = None
) -> SymbolInfo:
    """Binance spot ``BTCUSDT``, USDT-M ``BTCUSDT`` / ``BTCUSDT_250627``, COIN-M
    ``BTCUSD_PERP`` / ``BTCUSD_250627``."""
    upper = raw_symbol.strip().upper()
    if margin == "spot":
        base, quote = split_concatenated(upper)
        return SymbolInfo("binance", f"{base}-{quote}", f"{base}{quote}", base, quote)
    pair, _, suffix = upper.partition("_")
    if margin == "linear":
        if suffix == "PERP":
            raise UnknownSymbol(
                f"{raw_symbol!r}: _PERP names a COIN-M (inverse) contract; a USDT-M perpetual "
                "is spelled BTCUSDT (or use --market inverse)"
            )
        market, expiry = _binance_suffix(raw_symbol, suffix, perp_suffix="")
        base, quote = split_concatenated(pair, LINEAR_QUOTES)
        return SymbolInfo(
            "binance",
            _instrument(base, quote, market, expiry),
            upper,
            base,
            quote,
            market,
            "linear",
            base_multiplier_of(base),
            _size("binance", upper, 1.0, contract_sizes),
        )
    if margin == "inverse":
        if not suffix:
            raise UnknownSymbol(
                f"{raw_symbol!r}: a COIN-M symbol ends in _PERP or _YYMMDD (BTCUSD_PERP)"
            )
        market, expiry = _binance_suffix(raw_symbol, suffix, perp_suffix="PERP")
        base, quote = split_concatenated(pair, INVERSE_QUOTES)
        default = BINANCE_INVERSE_BTC_USD if base == "BTC" else BINANCE_INVERSE_OTHER_USD
        return SymbolInfo(
            "binance",
            _instrument(base, quote, market, expiry),
            upper,
            base,
            quote,
            market,
            "inverse",
            1,
            _size("binance", upper, default, contract_sizes),
        )
    raise UnknownSymbol(f"binance market {margin!r}: expected one of {', '.join(MARGINS)}")


def _binance_suffix(raw_symbol: str, suffix: str, perp_suffix: str) -> tuple[str, str]:
    if suffix == perp_suffix:
        return "perp", ""
    if _EXPIRY_RE.fullmatch(suffix):
        return "future", suffix
    expected = "_PERP or _YYMMDD" if perp_suffix else "nothing or _YYMMDD"
    raise UnknownSymbol(f"{raw_symbol!r}: after the pair expected {expected}")


def bybit_symbol(
    raw_symbol: str, market: str = "spot", contract_sizes: Mapping[str, float] | None = None
) -> SymbolInfo:
    """Bybit v5 spot ``BTCUSDT``; linear ``BTCUSDT``, ``BTCPERP`` (USDC), ``BTCUSDT-27JUN25``,
    ``BTC-27JUN25`` (USDC); inverse ``BTCUSD``. Inverse dated futures (``BTCUSDH25``, no day
    in the name) are refused."""
    if market not in MARGINS:
        raise UnknownSymbol(f"bybit market {market!r}: expected one of {', '.join(MARGINS)}")
    upper = raw_symbol.strip().upper()
    if market == "spot":
        base, quote = split_concatenated(upper)
        return SymbolInfo("bybit", f"{base}-{quote}", f"{base}{quote}", base, quote)
    if market == "inverse":
        if not upper.endswith("USD"):
            raise UnknownSymbol(
                f"{raw_symbol!r}: a Bybit inverse perpetual is BASEUSD (inverse dated futures "
                "such as BTCUSDH25 are not supported)"
            )
        base = upper[: -len("USD")]
        if not _ASSET_RE.fullmatch(base):
            raise UnknownSymbol(f"{raw_symbol!r}: expected BASEUSD")
        size = _size("bybit", upper, BYBIT_INVERSE_CONTRACT_USD, contract_sizes)
        return SymbolInfo(
            "bybit", f"{base}-USD-PERP", upper, base, "USD", "perp", "inverse", 1, size
        )
    size = _size("bybit", upper, BYBIT_LINEAR_CONTRACT, contract_sizes)
    dated = re.fullmatch(r"([A-Z0-9]+)-([0-9]{2})([A-Z]{3})([0-9]{2})", upper)
    if dated is not None:
        pair, day, month, year = dated.groups()
        if month not in _MONTHS:
            raise UnknownSymbol(f"{raw_symbol!r}: {month} is not a month")
        expiry = f"{year}{_MONTHS[month]}{day}"
        base, quote = (
            split_concatenated(pair, LINEAR_QUOTES)
            if pair.endswith(LINEAR_QUOTES)
            else (pair, "USDC")
        )
        if not _ASSET_RE.fullmatch(base) or not _EXPIRY_RE.fullmatch(expiry):
            raise UnknownSymbol(f"{raw_symbol!r}: expected BASEQUOTE-DDMMMYY")
        return SymbolInfo(
            "bybit",
            _instrument(base, quote, "future", expiry),
            upper,
            base,
            quote,
            "future",
            "linear",
            base_multiplier_of(base),
            size,
        )
    if upper.endswith("PERP"):
        base = upper[: -len("PERP")]
        if not _ASSET_RE.fullmatch(base):
            raise UnknownSymbol(f"{raw_symbol!r}: expected BASEPERP (a USDC perpetual)")
        return SymbolInfo(
            "bybit", f"{base}-USDC-PERP", upper, base, "USDC", "perp", "linear",
            base_multiplier_of(base), size,
        )  # fmt: skip
    base, quote = split_concatenated(upper, LINEAR_QUOTES)
    return SymbolInfo(
        "bybit", f"{base}-{quote}-PERP", upper, base, quote, "perp", "linear",
        base_multiplier_of(base), size,
    )  # fmt: skip


def okx_symbol(inst_id: str, contract_sizes: Mapping[str, float] | None = None) -> SymbolInfo:
    """OKX: ``BTC-USDT`` (spot), ``BTC-USDT-SWAP`` / ``BTC-USD-SWAP`` (perpetuals, linear /
    inverse), ``BTC-USDT-250627`` / ``BTC-USD-250627`` (dated futures). ``ctVal`` comes from
    :data:`OKX_CONTRACT_VALUES` or ``contract_sizes``; unknown ones are refused."""
    upper = inst_id.strip().upper()
    parts = upper.split("-")
    if len(parts) == 2 and all(_ASSET_RE.fullmatch(p) for p in parts):
        return SymbolInfo("okx", f"{parts[0]}-{parts[1]}", upper, parts[0], parts[1])
    if len(parts) == 3 and all(_ASSET_RE.fullmatch(p) for p in parts[:2]):
        base, quote, kind = parts
        if kind == "SWAP":
            market, expiry = "perp", ""
        elif _EXPIRY_RE.fullmatch(kind):
            market, expiry = "future", kind
        else:
            raise UnknownSymbol(f"{inst_id!r}: expected -SWAP or -YYMMDD after the pair")
        if quote in INVERSE_QUOTES:
            margin = "inverse"
        elif quote in LINEAR_QUOTES:
            margin = "linear"
        else:
            raise UnknownSymbol(
                f"{inst_id!r}: {quote} is not a known margin asset "
                f"(known: {', '.join(LINEAR_QUOTES + INVERSE_QUOTES)})"
            )
        size = _size("okx", upper, OKX_CONTRACT_VALUES.get(f"{base}-{quote}"), contract_sizes)
        return SymbolInfo(
            "okx", _instrument(base, quote, market, expiry), upper, base, quote, market, margin,
            1, size,
        )  # fmt: skip
    raise UnknownSymbol(f"{inst_id!r}: expected an OKX instId like BTC-USDT or BTC-USDT-SWAP")


def parse_symbol(
    exchange: str,
    raw_symbol: str,
    market: str = "spot",
    contract_sizes: Mapping[str, float] | None = None,
) -> SymbolInfo:
    """Normalise one exchange symbol of venue category ``market`` (spot, linear, inverse);
    raises UnknownSymbol with the reason."""
    if market not in MARGINS:
        raise UnknownSymbol(f"{exchange}: market {market!r} (expected {', '.join(MARGINS)})")
    if exchange == "binance":
        return binance_symbol(raw_symbol, market, contract_sizes)
    if exchange == "bybit":
        return bybit_symbol(raw_symbol, market, contract_sizes)
    if exchange == "okx":
        info = okx_symbol(raw_symbol, contract_sizes)
        if info.margin != market:
            raise UnknownSymbol(f"{raw_symbol!r} is an OKX {info.margin} instrument, not {market}")
        return info
    raise UnknownSymbol(f"unknown exchange {exchange!r}")
