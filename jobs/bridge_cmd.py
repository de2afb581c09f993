"""``klineflow bridge``: exchange kline WebSockets into Kafka (see :mod:`connectors.bridge`).

One process follows one exchange and one or more of its markets; which symbols each market
follows is :func:`connectors.bridge.markets.symbols_by_market`'s business.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

import orjson

from connectors.bridge.config import BridgeConfig
from connectors.bridge.markets import (
    MARKET_PREFIX_SEPARATOR,
    SELF_DESCRIBING_EXCHANGES,
    MarketSpecError,
    parse_markets,
    symbols_by_market,
)
from jobs.cliutil import default_of, env_flag
from jobs.config import JobSettings
from jobs.market_urls import market_url

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from connectors.exchanges.base import ExchangeAdapter

log = logging.getLogger("klineflow.bridge")

EXCHANGES = ("binance", "okx", "bybit")
# The command line repairs the last hour on start; BridgeConfig (library use, tests) does not.
STARTUP_BACKFILL_MINUTES = 60


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bridge`` command."""
    parser = subparsers.add_parser(
        "bridge",
        help="stream 1m klines of one exchange's markets into Kafka",
        description=(
            "Subscribe to the 1m kline streams of SYMBOLS on one exchange and one or more of its "
            "markets, turn every update into the klines.raw record and produce it keyed per "
            "series; repair gaps over REST. Each market has its own WebSocket connections and "
            "gap repair; all share one Kafka producer and one stats line. The canonical symbol "
            "names the instrument (BTC-USDT, BTC-USDT-PERP, BTC-USD-PERP, BTC-USDT-250627), so "
            "spot and derivatives bars of one pair never share a series key and may share a "
            "topic. Examples: --exchange bybit --market spot,linear --symbols BTCUSDT,ETHUSDT "
            "(both pairs on both markets); --exchange bybit --symbols "
            "BTCUSDT,linear:BTCUSDT,linear:ETHUSDT (spot BTCUSDT, linear BTCUSDT and ETHUSDT); "
            "--exchange okx --market spot,linear --symbols BTC-USDT,BTC-USDT-SWAP (an OKX instId "
            "names its market)."
        ),
    )
    job = JobSettings()  # the bridge feeds the job: its topics and broker by default
    env_flag(
        parser, "--exchange", env="BRIDGE_EXCHANGE", choices=EXCHANGES, help="exchange to read"
    )
    env_flag(
        parser,
        "--symbols",
        env="BRIDGE_SYMBOLS",
        metavar="[MARKET:]SYMBOL,...",
        help="comma-separated exchange symbols, e.g. BTCUSDT,ETHUSDT (OKX: BTC-USDT, "
        "BTC-USDT-SWAP; Binance COIN-M: BTCUSD_PERP), each SYMBOL or MARKET:SYMBOL "
        "(linear:ETHUSDT follows ETHUSDT on linear only). A SYMBOL without a prefix is "
        "followed on every market of --market (Binance/Bybit BTCUSDT names the spot pair and "
        "the perpetual alike); an OKX instId on the market it names, which --market must list. "
        "A symbol whose quote is no known quote asset, one that does not fit its market, or a "
        "contract of unknown size is refused",
    )
    env_flag(
        parser,
        "--market",
        env="BRIDGE_MARKET",
        default="spot",
        metavar="MARKET[,MARKET...]",
        help="the markets of the symbols given without a MARKET: prefix, comma-separated: "
        "spot; linear (quote-margined: Binance USDT-M, OKX USDT/USDC SWAP and futures, "
        "Bybit linear); inverse (coin-margined: Binance COIN-M, OKX USD SWAP, Bybit inverse); "
        "e.g. spot,linear",
    )
    env_flag(
        parser,
        "--contract-size",
        env="BRIDGE_CONTRACT_SIZES",
        default="",
        metavar="RAW=SIZE,...",
        help="contract sizes of derivatives not in the built-in table, comma-separated "
        "(base units per contract for linear, USD per contract for inverse)",
    )
    parser.add_argument(
        "--ws-url",
        default=None,
        metavar="URL|MARKET=URL,...",
        help="WebSocket base URL of every market, or per market (spot=URL,linear=URL; a market "
        "without one falls back to the variable, then the default); a URL without a path "
        "gets the market's path "
        "(env BINANCE_WS_URL / OKX_WS_URL / BYBIT_WS_URL, same syntax; default: the exchange's "
        "public URL of each market)",
    )
    parser.add_argument(
        "--rest-url",
        default=None,
        metavar="URL|MARKET=URL,...",
        help="REST base URL for gap repair, of every market or per market like --ws-url "
        "(env BINANCE_REST_URL / OKX_REST_URL / BYBIT_REST_URL, same syntax; default: the "
        "exchange's public URL of each market)",
    )
    env_flag(
        parser, "--topic", env="KLINES_TOPIC", default=job.klines_topic, help="topic of spot bars"
    )
    env_flag(
        parser,
        "--linear-topic",
        env="KLINES_LINEAR_TOPIC",
        default=None,
        help="topic of derivatives (linear and inverse) bars (default: --topic; their series "
        "keys differ from spot's)",
    )
    env_flag(
        parser,
        "--dlq-topic",
        env="KLINES_DLQ_TOPIC",
        default=job.dlq_topic,
        help="dead-letter topic for updates that fail validation",
    )
    env_flag(
        parser,
        "--bootstrap-servers",
        env="KAFKA_BOOTSTRAP_SERVERS",
        default=job.kafka_bootstrap,
        help="Kafka bootstrap servers",
    )
    env_flag(
        parser,
        "--stats-interval",
        env="BRIDGE_STATS_INTERVAL",
        default=default_of(BridgeConfig, "stats_interval_s"),
        type=_positive_float,
        help="seconds between counter reports",
    )
    env_flag(
        parser,
        "--no-data-timeout",
        env="BRIDGE_NO_DATA_TIMEOUT",
        default=default_of(BridgeConfig, "no_data_timeout_s"),
        type=_positive_float,
        help="reconnect a connection that delivered no kline for this many seconds",
    )
    env_flag(
        parser,
        "--max-connection-age",
        env="BRIDGE_MAX_CONNECTION_AGE",
        default=default_of(BridgeConfig, "max_connection_age_s"),
        type=_positive_float,
        help="seconds after which a connection is replaced with overlap "
        "(default: the exchange's, Binance 23.5 h)",
    )
    env_flag(
        parser,
        "--overlap-timeout",
        env="BRIDGE_OVERLAP_TIMEOUT",
        default=default_of(BridgeConfig, "overlap_timeout_s"),
        type=_positive_float,
        help="seconds a replacement connection may take to deliver data",
    )
    env_flag(
        parser,
        "--backoff-base",
        env="BRIDGE_BACKOFF_BASE",
        default=default_of(BridgeConfig, "backoff_base_s"),
        type=_positive_float,
        help="first reconnect backoff ceiling, seconds",
    )
    env_flag(
        parser,
        "--backoff-cap",
        env="BRIDGE_BACKOFF_CAP",
        default=default_of(BridgeConfig, "backoff_cap_s"),
        type=_positive_float,
        help="largest reconnect backoff, seconds",
    )
    env_flag(
        parser,
        "--backoff-stable",
        env="BRIDGE_BACKOFF_STABLE",
        default=default_of(BridgeConfig, "backoff_stable_s"),
        type=_positive_float,
        help="a connection up this long resets the backoff, seconds",
    )
    env_flag(
        parser,
        "--ping-interval",
        env="BRIDGE_PING_INTERVAL",
        default=default_of(BridgeConfig, "ping_interval_s"),
        type=_positive_float,
        help="override the exchange's application ping interval, seconds",
    )
    env_flag(
        parser,
        "--repair-delay",
        env="BRIDGE_REPAIR_DELAY",
        default=default_of(BridgeConfig, "repair_delay_s"),
        type=_positive_float,
        help="seconds to wait before repairing a new gap over REST",
    )
    env_flag(
        parser,
        "--startup-backfill-minutes",
        env="BRIDGE_STARTUP_BACKFILL_MINUTES",
        default=STARTUP_BACKFILL_MINUTES,
        type=int,
        help="on start, repair this many minutes before each series' first bar",
    )
    env_flag(
        parser,
        "--max-pending",
        env="BRIDGE_MAX_PENDING",
        default=default_of(BridgeConfig, "max_pending"),
        type=int,
        help="records queued or unacknowledged before reading pauses (back-pressure)",
    )
    parser.set_defaults(func=run)


def parse_contract_sizes(text: str) -> dict[str, float]:
    """``--contract-size RAW=SIZE,RAW=SIZE`` to a mapping; UnknownSymbol for a malformed one."""
    from connectors.symbols import UnknownSymbol

    sizes: dict[str, float] = {}
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        raw, sep, text = item.partition("=")
        try:
            size = float(text)
        except ValueError:
            size = float("nan")
        if not sep or not raw.strip() or not 0 < size < 1e12:
            raise UnknownSymbol(f"--contract-size {item!r}: expected RAW_SYMBOL=<positive number>")
        sizes[raw.strip().upper()] = size
    return sizes


def split_symbols(text: str | None) -> list[str]:
    """The non-empty items of a comma-separated ``--symbols`` value."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def run(args: argparse.Namespace) -> int:
    """Validate the settings, then run the bridge until SIGINT/SIGTERM."""
    from connectors.symbols import UnknownSymbol

    if not args.exchange:
        return _refuse("--exchange (or BRIDGE_EXCHANGE) is required")
    items = split_symbols(args.symbols)
    if not items:
        return _refuse("--symbols (or BRIDGE_SYMBOLS) is required, e.g. BTCUSDT,ETHUSDT")
    try:
        contract_sizes = parse_contract_sizes(args.contract_size)
        markets = parse_markets(args.market)
        plan = symbols_by_market(args.exchange, markets, items, contract_sizes)
        adapters = market_adapters(args.exchange, plan, contract_sizes, items)
        configs = [bridge_config(args, adapter) for adapter in adapters]
    except (UnknownSymbol, MarketSpecError) as exc:
        return _refuse(str(exc))
    for adapter, config in zip(adapters, configs, strict=True):
        log.info(
            "event=starting exchange=%s market=%s symbols=%d topic=%s dlq=%s ws=%s rest=%s",
            adapter.name,
            adapter.market,
            len(adapter.symbols),
            config.topic,
            config.dlq_topic,
            adapter.ws_endpoint(config.ws_url),
            config.rest_url,
        )
    markets_run = list(zip(adapters, configs, strict=True))
    return asyncio.run(_run_bridge(markets_run, args.bootstrap_servers))


def market_adapters(
    exchange: str,
    plan: Mapping[str, Sequence[str]],
    contract_sizes: Mapping[str, float],
    items: Sequence[str],
) -> list[ExchangeAdapter]:
    """One adapter per market of ``plan`` (:func:`symbols_by_market` of ``items``).

    With several markets, UnknownSymbol names the market, and says so when a symbol reached
    a market it does not fit because it came without a market prefix.
    """
    from connectors.exchanges import create_adapter
    from connectors.symbols import UnknownSymbol, parse_symbol

    adapters = []
    for market, symbols in plan.items():
        try:
            adapters.append(create_adapter(exchange, market, symbols, contract_sizes))
        except UnknownSymbol as exc:
            if len(plan) == 1 and all(MARKET_PREFIX_SEPARATOR not in item for item in items):
                raise  # one market, no prefixes: the message as it always was
            hint = ""
            for symbol in symbols:
                try:
                    parse_symbol(exchange, symbol, market, contract_sizes)
                except UnknownSymbol:
                    if symbol in items and exchange not in SELF_DESCRIBING_EXCHANGES:
                        hint = (
                            f" ({symbol} has no market prefix, so it is followed on every "
                            f"market of --market; give it as MARKET{MARKET_PREFIX_SEPARATOR}"
                            f"{symbol} to follow it on one)"
                        )
                    break
            raise UnknownSymbol(f"{exchange} {market}: {exc}{hint}") from exc
    return adapters


def bridge_config(args: argparse.Namespace, adapter: ExchangeAdapter) -> BridgeConfig:
    """The settings of ``adapter``'s market from parsed flags (URLs: flag, else env, else the
    exchange's; derivatives to ``--linear-topic`` if given). MarketSpecError for a malformed
    per-market URL list."""
    topic = (args.linear_topic or args.topic) if adapter.market != "spot" else args.topic
    return BridgeConfig(
        ws_url=market_url(args.ws_url, "--ws-url", args.exchange, "WS", adapter.market)
        or adapter.default_ws_url(),
        rest_url=market_url(args.rest_url, "--rest-url", args.exchange, "REST", adapter.market)
        or adapter.default_rest_base(),
        topic=topic,
        dlq_topic=args.dlq_topic,
        stats_interval_s=args.stats_interval,
        no_data_timeout_s=args.no_data_timeout,
        max_connection_age_s=args.max_connection_age,
        overlap_timeout_s=args.overlap_timeout,
        backoff_base_s=args.backoff_base,
        backoff_cap_s=args.backoff_cap,
        backoff_stable_s=args.backoff_stable,
        ping_interval_s=args.ping_interval,
        repair_delay_s=args.repair_delay,
        startup_backfill_minutes=max(0, args.startup_backfill_minutes),
        max_pending=max(2, args.max_pending),
    )


def _refuse(message: str) -> int:
    print(f"klineflow bridge: {message}", file=sys.stderr)
    return 2


async def _run_bridge(
    markets: Sequence[tuple[ExchangeAdapter, BridgeConfig]], bootstrap: str
) -> int:
    """Run one bridge per market around one producer; flush it once on the way out."""
    import aiohttp
    from kafka.errors import KafkaError

    from connectors.bridge import Bridge, BridgeGroup, KafkaSink
    from connectors.kafka_producer import create_producer

    loop = asyncio.get_running_loop()
    try:
        producer = await loop.run_in_executor(None, lambda: create_producer(bootstrap))
    except KafkaError as exc:
        print(f"klineflow bridge: cannot reach Kafka at {bootstrap}: {exc!r}", file=sys.stderr)
        return 1
    max_pending = max(config.max_pending for _, config in markets)
    sink = KafkaSink(producer, max_pending=max_pending)
    sink.start()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with aiohttp.ClientSession() as session:
        runner: Bridge | BridgeGroup
        if len(markets) == 1:
            ((adapter, config),) = markets
            runner = Bridge(adapter, config, sink, session)
        else:
            runner = BridgeGroup(markets, sink, session)
        sink.on_closed_bar_lost = runner.on_closed_bar_lost
        final = await runner.run(stop)
    log.info("event=stopping pending=%d", sink.pending)
    clean = await sink.close(timeout_s=30.0)
    final["sink"] = sink.stats()
    log.info("event=final_stats %s", orjson.dumps(final).decode())
    if not clean:
        log.error("event=unflushed records=%d", sink.pending)
    return 0 if clean else 1
