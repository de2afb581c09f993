"""``klineflow bridge`` against local exchange servers, into the real Kafka broker.

Each test runs the real CLI in a subprocess against a fake that speaks the exchange's
protocol, scripts faults (rate-limited REST, a skipped final update, garbage frames, a
shutdown notice, abrupt and graceful disconnects, a silent link, planned reconnects), stops the
bridge with SIGTERM and checks what reached Kafka: every update, in order per series, no bar
missing, nothing produced twice from one WebSocket message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from connectors.exchanges import create_adapter
from connectors.kafka_admin import ensure_topics, read_topic
from connectors.rest_repair import RestKlineClient
from tests.fakes.exchange_servers import FAKES, MINUTE_MS, FakeExchange, ThreadedFake

REPO_ROOT = Path(__file__).resolve().parents[2]
BACKFILL_MINUTES = 3

SCENARIOS = {
    # exchange: (market, symbols, REST rate-limit answer, has a shutdown notice)
    "binance": ("spot", ["BTCUSDT", "ETHUSDT"], 418, True),
    "okx": ("linear", ["BTC-USDT-SWAP", "ETH-USDT-SWAP"], 429, True),
    "bybit": ("spot", ["BTCUSDT", "ETHUSDT"], 200, False),  # 200 + retCode 10006
    # Issue 13: coin-margined markets, whose feeds count contracts.
    "binance-inverse": ("inverse", ["BTCUSD_PERP", "ETHUSD_PERP"], 418, True),
    "bybit-inverse": ("inverse", ["BTCUSD", "ETHUSD"], 200, False),
}


def _stats_lines(log_path: Path, event: str) -> list[dict[str, Any]]:
    pattern = re.compile(rf"event={event} (\{{.*\}})$")
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = pattern.search(line)
        if match:
            found.append(orjson.loads(match.group(1)))
    return found


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _live_connections(fake: FakeExchange) -> list[int]:
    return [conn_id for conn_id, conn in fake.connections.items() if conn.symbols]


def _sent_on(fake: FakeExchange, conn_ids: set[int]) -> int:
    return sum(1 for conn_id, *_ in fake.sent if conn_id in conn_ids)


@pytest.mark.parametrize("exchange", list(SCENARIOS))
def test_bridge_survives_faults_and_loses_no_bar(
    exchange: str, kafka_bootstrap: str, kafka_topics: Any, tmp_path: Path
) -> None:
    market, symbols, limit_status, has_shutdown = SCENARIOS[exchange]
    venue = exchange.partition("-")[0]
    extra: dict[str, Any] = {"tick_interval_s": 0.02}
    if venue != "binance":
        extra["client_idle_timeout_s"] = 1.0  # OKX: 30 s, Bybit: ping timeout; short here
    fake = FAKES[venue](symbols, market=market, **extra)
    log_path = tmp_path / "bridge.log"
    topic_flags = (
        ["--topic", kafka_topics.raw + ".spot", "--linear-topic", kafka_topics.raw]
        if market != "spot"
        else ["--topic", kafka_topics.raw, "--linear-topic", kafka_topics.raw + ".linear"]
    )
    with ThreadedFake(fake) as threaded, log_path.open("w") as log_file:
        command = [
            sys.executable, "-m", "jobs.cli", "bridge",
            "--exchange", venue, "--market", market, "--symbols", ",".join(symbols),
            "--ws-url", fake.ws_base, "--rest-url", fake.rest_base,
            *topic_flags, "--dlq-topic", kafka_topics.dlq,
            "--bootstrap-servers", kafka_bootstrap,
            "--stats-interval", "0.5", "--no-data-timeout", "1.5", "--backoff-base", "0.05",
            "--backoff-cap", "0.5", "--ping-interval", "0.3", "--repair-delay", "0.2",
            "--startup-backfill-minutes", str(BACKFILL_MINUTES), "--overlap-timeout", "3",
        ]  # fmt: skip
        if venue == "binance":
            command += ["--max-connection-age", "2.5"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        bridge = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
        try:
            _run_script(
                threaded,
                fake=fake,
                limit_status=limit_status,
                has_shutdown=has_shutdown,
                bridge=bridge,
                log_path=log_path,
            )
            # Everything sent was read (pause() is a read barrier); wait for repairs to end.
            threaded.call(fake.pause)
            seen_ticks = fake.tick
            reports_before_pause = len(_stats_lines(log_path, "stats"))

            def repaired() -> bool:
                lines = _stats_lines(log_path, "stats")
                return len(lines) > reports_before_pause and (
                    lines[-1]["repair"]["gap_bars_outstanding"] == 0
                    and lines[-1]["repair"]["series_waiting"] == 0
                    and lines[-1]["totals"]["bar_updates"] >= 1
                    and fake.tick == seen_ticks
                )

            _wait(repaired, 30, "gap repair to finish")
        finally:
            bridge.send_signal(signal.SIGTERM)
            try:
                exit_code = bridge.wait(timeout=45)
            except subprocess.TimeoutExpired:
                bridge.kill()
                raise
    log_text = log_path.read_text(errors="replace")
    assert exit_code == 0, log_text[-3000:]
    (final,) = _stats_lines(log_path, "final_stats")
    _check_kafka(
        exchange,
        symbols=symbols,
        fake=fake,
        final=final,
        bootstrap=kafka_bootstrap,
        topics=kafka_topics,
    )


def _run_script(
    threaded: ThreadedFake,
    *,
    fake: FakeExchange,
    limit_status: int,
    has_shutdown: bool,
    bridge: subprocess.Popen[bytes],
    log_path: Path,
) -> None:
    def alive() -> None:
        if bridge.poll() is not None:
            raise AssertionError(log_path.read_text(errors="replace")[-3000:])

    def flowing(min_updates: int = 20) -> None:
        start = len(fake.sent)
        _wait(lambda: (alive(), len(fake.sent) - start >= min_updates)[1], 30, "updates")

    flowing()
    # A rate-limited REST answer, then a skipped final update that must be repaired over REST.
    fake.limit_rest(1, limit_status, "0.5")
    gap_bar = fake.current_bar() + 1
    threaded.call(lambda: _skip(fake, gap_bar))
    _wait(lambda: fake.current_bar() > gap_bar + 2, 20, "the gap bar to pass")
    _wait(
        lambda: (
            any(status != 200 for *_, status in fake.rest_requests)
            and fake.rest_requests[-1][2] == 200
        ),
        20,
        "REST retry after the rate limit",
    )
    threaded.call(fake.send_garbage)
    if has_shutdown:
        noticed = set(threaded.call(fake.send_shutdown_notice))
        _wait(lambda: noticed <= set(fake.closed_connections), 20, "noticed links to close")
        flowing()
    dropped = set(threaded.call(lambda: fake.drop_all(abort=True)))
    _wait(lambda: set(_live_connections(fake)) - dropped, 20, "a reconnect after the abort")
    flowing()
    silenced = set(threaded.call(fake.silence_all))
    _wait(lambda: silenced <= set(fake.closed_connections), 20, "the watchdog to drop silence")
    flowing()
    threaded.call(lambda: fake.drop_all(abort=False))
    flowing(40)


async def _skip(fake: FakeExchange, bar: int) -> None:
    fake.skip_final(0, bar)


def _check_kafka(
    exchange: str,
    *,
    symbols: list[str],
    fake: FakeExchange,
    final: dict[str, Any],
    bootstrap: str,
    topics: Any,
) -> None:
    records = [
        (key, orjson.loads(value)) for key, value in read_topic(bootstrap, topics.raw, timeout_s=30)
    ]
    assert records, "nothing reached Kafka"
    tape = fake.tape
    by_symbol: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    market = SCENARIOS[exchange][0]
    exchange = exchange.partition("-")[0]
    canonical = {
        raw: info.symbol for raw, info in create_adapter(exchange, market, symbols).symbols.items()
    }
    for key, record in records:
        assert key == f"{exchange}:{record['symbol']}:1m".encode()
        assert record["market"] == ("spot" if market == "spot" else "perp")
        assert record["symbol"] == canonical[record["raw_symbol"]]
        by_symbol[symbols.index(record["raw_symbol"])].append(record)

    totals = final["totals"]
    missing_in_progress = 0
    for index in range(len(symbols)):
        series = by_symbol[index]
        live = [r for r in series if r["event_time"] != r["open_time"] + MINUTE_MS]
        repaired = [r for r in series if r["event_time"] == r["open_time"] + MINUTE_MS]
        identities = [
            (tape.bar_of(r["open_time"]), round((r["volume"] - 1.0) / 0.25), r["is_closed"])
            for r in live
        ]
        # Nothing produced twice from one WebSocket message, and in order per series.
        duplicates = [item for item, n in collections.Counter(identities).items() if n > 1]
        assert not duplicates, duplicates
        assert identities == sorted(identities), "live updates out of order"
        # Every update that was sent arrives (an in-progress one may only be dropped as stale
        # when the overlapping link delivered a newer one first).
        sent = {(bar, step) for _, sym, bar, step in fake.sent if sym == index}
        produced = {(bar, step) for bar, step, _ in identities}
        closed_bars = {tape.bar_of(r["open_time"]) for r in series if r["is_closed"]}
        last_step = tape.steps_per_bar - 1
        for bar, step in sent - produced:
            if step == last_step:
                assert bar in closed_bars, f"closed bar {bar} of {symbols[index]} lost"
            else:
                missing_in_progress += 1
        # No bar missing: from the start-up backfill to the last bar the tape closed.
        first_live_bar = min(tape.bar_of(r["open_time"]) for r in live)
        last_bar, last_sent_step = max((bar, step) for bar, step in sent)
        last_closed = last_bar if last_sent_step == last_step else last_bar - 1
        expected = set(range(first_live_bar - BACKFILL_MINUTES, last_closed + 1))
        assert expected - closed_bars == set(), f"{symbols[index]} misses closed bars"
        assert repaired, "no bar came from REST repair"
        for record in repaired:
            assert record["is_closed"] is True
        if exchange == "okx":
            # SWAP: the fake sends contracts in vol and base in volCcy; records carry base.
            assert all(r["volume"] < 10 for r in series)
            assert all(r["trades"] is None for r in series)
        # Every bar in base units whatever the feed counted (contracts on COIN-M/inverse):
        # its implied price lies in its range, and its provenance says where it came from.
        for record in series:
            implied = record["quote_volume"] / record["volume"]
            assert record["low"] * 0.999 <= implied <= record["high"] * 1.001, record
            assert record["provenance"] == ("rest" if record in repaired else "ws")
    assert missing_in_progress <= totals["stale_dropped"]
    # The deliberately skipped final update of symbol 0 came over REST.
    skipped_bars = {bar for _, bar, _ in fake.skipped}
    rest_bars_0 = {
        tape.bar_of(r["open_time"])
        for r in by_symbol[0]
        if r["event_time"] == r["open_time"] + MINUTE_MS
    }
    assert skipped_bars <= rest_bars_0

    letters = [orjson.loads(value) for _, value in read_topic(bootstrap, topics.dlq, timeout_s=10)]
    assert letters and all(letter["stage"] == "bridge" for letter in letters)
    assert any(letter["reason"].startswith("high:") for letter in letters)

    assert totals["malformed"] >= 3
    assert totals["rejected"] >= 1
    assert totals["reconnects"] >= 2
    assert totals["watchdog_timeouts"] >= 1
    assert final["rest"]["rate_limited"] + final["rest"]["banned"] >= 1
    assert final["repair"]["bars_repaired"] >= 1
    assert final["sink"]["failed"] == 0 and final["sink"]["pending"] == 0
    if exchange == "binance":
        assert totals["planned_reconnects"] >= 1 and totals["shutdown_notices"] >= 1
    if exchange == "okx":
        assert totals["shutdown_notices"] >= 1
    if exchange in ("okx", "bybit"):
        assert totals["pings_sent"] >= 1


def test_rest_client_honours_429_and_418_retry_after_and_pages() -> None:
    async def scenario() -> tuple[float, Any, int, list[int]]:
        fake = FAKES["binance"](["BTCUSDT"], first_bar=1500)
        await fake.start(ticking=False)
        try:
            adapter = create_adapter("binance", "spot", ["BTCUSDT"])
            info = adapter.symbols["BTCUSDT"]
            async with aiohttp.ClientSession() as session:
                client = RestKlineClient(adapter, fake.rest_base, session)
                fake.limit_rest(1, 429, "0.4")
                started = time.monotonic()
                start = fake.tape.open_time(100)
                result = await client.fetch_closed(info, start, fake.tape.open_time(1300))
                elapsed = time.monotonic() - started
                fake.limit_rest(1, 418, "0.2")
                await client.fetch_closed(info, start, start + MINUTE_MS)
                statuses = [status for *_, status in fake.rest_requests]
                return elapsed, client.stats, len(result.klines), statuses
        finally:
            await fake.stop()

    elapsed, stats, bars, statuses = asyncio.run(scenario())
    assert bars == 1200  # two pages of at most 1000
    assert elapsed >= 0.4
    assert stats.rate_limited == 1 and stats.banned == 1
    assert statuses == [429, 200, 200, 418, 200]


def test_cli_refuses_unknown_symbols_and_unknown_contract_sizes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jobs.cli import main

    assert main(["bridge", "--exchange", "binance", "--symbols", "BTCUSDT,FOOBAR"]) == 2
    assert "FOOBAR" in capsys.readouterr().err
    # Issue 13: spot and perp bars have their own series keys, so one topic is fine; an
    # unknown contract size is refused at start-up.
    assert main(["bridge", "--exchange", "okx", "--symbols", "BTC-USDT-SWAP"]) == 2
    assert "--market linear" in capsys.readouterr().err
    assert main(["bridge", "--exchange", "okx", "--market", "linear",
                 "--symbols", "PEPE-USDT-SWAP"]) == 2  # fmt: skip
    assert "contract size is not known" in capsys.readouterr().err
    assert main(["bridge", "--exchange", "okx", "--market", "linear", "--symbols",
                 "PEPE-USDT-SWAP", "--contract-size", "PEPE-USDT-SWAP=abc"]) == 2  # fmt: skip
    assert "expected RAW_SYMBOL=<positive number>" in capsys.readouterr().err


# --- several markets of one venue in one process ---------------------------------------------

# exchange: (--market, --symbols, {market: raw symbols its feed serves}, one fake for all
# markets, derivatives on their own topic). OKX serves spot and swaps on one endpoint and
# names the market in the instId; Bybit serves each market on its own path (here: its own
# fake, so each market gets its own URLs) and spells spot and linear BTCUSDT alike.
MULTI_MARKET_SCENARIOS: dict[str, tuple[str, str, dict[str, list[str]], bool, bool]] = {
    "okx": (
        "spot,linear",
        "BTC-USDT,BTC-USDT-SWAP,ETH-USDT-SWAP",
        {"spot": ["BTC-USDT"], "linear": ["BTC-USDT-SWAP", "ETH-USDT-SWAP"]},
        True,
        False,
    ),
    "bybit": (
        "spot,linear",
        "BTCUSDT,linear:ETHUSDT",  # BTCUSDT on both markets, ETHUSDT on linear only
        {"spot": ["BTCUSDT"], "linear": ["BTCUSDT", "ETHUSDT"]},
        False,
        True,
    ),
}


@pytest.mark.parametrize("exchange", list(MULTI_MARKET_SCENARIOS))
def test_one_bridge_follows_spot_and_linear_of_a_venue_and_loses_nothing_at_shutdown(
    exchange: str, kafka_bootstrap: str, kafka_topics: Any, tmp_path: Path
) -> None:
    market_list, symbol_list, served, one_fake, own_topic = MULTI_MARKET_SCENARIOS[exchange]
    linear_topic = kafka_topics.raw + ".linear" if own_topic else kafka_topics.raw
    if own_topic:
        ensure_topics(kafka_bootstrap, [linear_topic], partitions=4)
    extra: dict[str, Any] = {"tick_interval_s": 0.02, "client_idle_timeout_s": 5.0}
    if one_fake:
        shared = FAKES[exchange]([raw for raws in served.values() for raw in raws], **extra)
        fakes = dict.fromkeys(served, shared)
    else:
        fakes = {m: FAKES[exchange](raws, market=m, **extra) for m, raws in served.items()}
    unique_fakes = list(dict.fromkeys(fakes.values()))
    log_path = tmp_path / "bridge.log"
    with contextlib.ExitStack() as stack:
        threaded = {id(fake): stack.enter_context(ThreadedFake(fake)) for fake in unique_fakes}
        log_file = stack.enter_context(log_path.open("w"))
        if one_fake:
            url_flags = ["--ws-url", shared.ws_base, "--rest-url", shared.rest_base]
        else:
            url_flags = [
                "--ws-url", ",".join(f"{m}={fake.ws_base}" for m, fake in fakes.items()),
                "--rest-url", ",".join(f"{m}={fake.rest_base}" for m, fake in fakes.items()),
            ]  # fmt: skip
        topic_flags = ["--topic", kafka_topics.raw]
        if own_topic:
            topic_flags += ["--linear-topic", linear_topic]
        command = [
            sys.executable, "-m", "jobs.cli", "bridge",
            "--exchange", exchange, "--market", market_list, "--symbols", symbol_list,
            *url_flags, *topic_flags, "--dlq-topic", kafka_topics.dlq,
            "--bootstrap-servers", kafka_bootstrap,
            "--stats-interval", "0.5", "--no-data-timeout", "10", "--ping-interval", "0.3",
            "--repair-delay", "0.2", "--startup-backfill-minutes", str(BACKFILL_MINUTES),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        bridge = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
        try:

            def alive() -> None:
                if bridge.poll() is not None:
                    raise AssertionError(log_path.read_text(errors="replace")[-3000:])

            def every_symbol_flows(min_each: int) -> bool:
                alive()
                for market, raws in served.items():
                    fake = fakes[market]
                    for raw in raws:
                        index = fake.tape.raw_symbols.index(raw)
                        if sum(1 for _, sym, *_ in fake.sent if sym == index) < min_each:
                            return False
                return True

            _wait(lambda: every_symbol_flows(15), 30, "updates of every symbol of both markets")
            # Each market on its own connection(s): no link carries spot and linear symbols.
            for market, raws in served.items():
                fake = fakes[market]
                wanted = {fake.tape.raw_symbols.index(raw) for raw in raws}
                links = [conn.symbols for conn in fake.connections.values() if conn.symbols]
                assert wanted in links, (market, links)
                assert all(link <= wanted or link.isdisjoint(wanted) for link in links)
            # A skipped final update of the linear-only symbol: the linear repairer fetches it.
            linear_fake = fakes["linear"]
            gap_index = linear_fake.tape.raw_symbols.index(served["linear"][-1])
            gap_bar = linear_fake.current_bar() + 1
            threaded[id(linear_fake)].call(lambda: _skip_symbol(linear_fake, gap_index, gap_bar))
            _wait(lambda: linear_fake.current_bar() > gap_bar + 2, 20, "the gap bar to pass")
            sent_before = sum(len(fake.sent) for fake in unique_fakes)
            _wait(
                lambda: sum(len(f.sent) for f in unique_fakes) > sent_before + 20,
                20,
                "more updates after the gap",
            )
            # Stop every feed (a read barrier), wait until the gap is repaired, then SIGTERM.
            for fake in unique_fakes:
                threaded[id(fake)].call(fake.pause)
            reports_before_pause = len(_stats_lines(log_path, "stats"))

            def settled() -> bool:
                alive()
                lines = _stats_lines(log_path, "stats")
                return len(lines) > reports_before_pause and (
                    lines[-1]["repair"]["gap_bars_outstanding"] == 0
                    and lines[-1]["repair"]["series_waiting"] == 0
                )

            _wait(settled, 30, "gap repair of both markets to finish")
        finally:
            bridge.send_signal(signal.SIGTERM)
            try:
                exit_code = bridge.wait(timeout=45)
            except subprocess.TimeoutExpired:
                bridge.kill()
                raise
    log_text = log_path.read_text(errors="replace")
    assert exit_code == 0, log_text[-3000:]
    (final,) = _stats_lines(log_path, "final_stats")
    assert final["markets"] == ["spot", "linear"]
    _check_markets_on_kafka(
        exchange,
        served=served,
        fakes=fakes,
        final=final,
        bootstrap=kafka_bootstrap,
        topics={"spot": kafka_topics.raw, "linear": linear_topic},
        dlq_topic=kafka_topics.dlq,
        gap=(served["linear"][-1], gap_bar),
    )


async def _skip_symbol(fake: FakeExchange, symbol_index: int, bar: int) -> None:
    fake.skip_final(symbol_index, bar)


def _check_markets_on_kafka(
    exchange: str,
    *,
    served: dict[str, list[str]],
    fakes: dict[str, FakeExchange],
    final: dict[str, Any],
    bootstrap: str,
    topics: dict[str, str],
    dlq_topic: str,
    gap: tuple[str, int],
) -> None:
    """Every market's bars on its topic with its symbols; every update sent, none twice."""
    records_by_topic = {
        topic: [(key, orjson.loads(value)) for key, value in read_topic(bootstrap, topic)]
        for topic in set(topics.values())
    }
    letters = read_topic(bootstrap, dlq_topic, timeout_s=5)
    record_market = {"spot": "spot", "linear": "perp"}
    expected_symbols: dict[tuple[str, str], str] = {}  # (market field, raw) -> canonical
    for market, raws in served.items():
        adapter = create_adapter(exchange, market, raws)
        for raw, info in adapter.symbols.items():
            expected_symbols[(record_market[market], raw)] = info.symbol
    by_series: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for topic, records in records_by_topic.items():
        for key, record in records:
            identity = (record["market"], record["raw_symbol"])
            assert identity in expected_symbols, record
            assert record["symbol"] == expected_symbols[identity]
            assert key == f"{exchange}:{record['symbol']}:1m".encode()
            market = "spot" if record["market"] == "spot" else "linear"
            assert topic == topics[market], (topic, record)
            by_series[identity].append(record)
    assert set(by_series) == set(expected_symbols), "a series of one market never arrived"
    spot_symbols = {s for (m, _), s in expected_symbols.items() if m == "spot"}
    perp_symbols = {s for (m, _), s in expected_symbols.items() if m == "perp"}
    assert "BTC-USDT" in spot_symbols and "BTC-USDT-PERP" in perp_symbols

    for (market_field, raw), series in by_series.items():
        fake = fakes["spot" if market_field == "spot" else "linear"]
        tape = fake.tape
        index = tape.raw_symbols.index(raw)
        live = [r for r in series if r["provenance"] == "ws"]
        repaired = [r for r in series if r["provenance"] == "rest"]
        assert len(live) + len(repaired) == len(series), "provenance is ws or rest"
        identities = [
            (tape.bar_of(r["open_time"]), round((r["volume"] - 1.0) / 0.25), r["is_closed"])
            for r in live
        ]
        assert len(identities) == len(set(identities)), f"{raw} produced an update twice"
        # Nothing lost: every update the feed sent (all before the pause) is on Kafka.
        sent = {(bar, step) for _, sym, bar, step in fake.sent if sym == index}
        produced = {(bar, step) for bar, step, _ in identities}
        assert sent - produced == set(), f"{market_field} {raw}: updates lost"
        closed_bars = {tape.bar_of(r["open_time"]) for r in series if r["is_closed"]}
        first_live_bar = min(bar for bar, _ in produced)
        last_bar, last_step = max(sent)
        last_closed = last_bar if last_step == tape.steps_per_bar - 1 else last_bar - 1
        expected = set(range(first_live_bar - BACKFILL_MINUTES, last_closed + 1))
        assert expected - closed_bars == set(), f"{market_field} {raw} misses closed bars"
        assert repaired and all(r["is_closed"] for r in repaired)  # start-up backfill, per market
    # The skipped final update came over REST, from the linear market's REST endpoint.
    gap_raw, gap_bar = gap
    linear_fake = fakes["linear"]
    gap_series = by_series[("perp", gap_raw)]
    assert any(
        linear_fake.tape.bar_of(r["open_time"]) == gap_bar and r["provenance"] == "rest"
        for r in gap_series
    )
    if exchange == "bybit":
        assert {query["category"] for _, query, _ in fakes["spot"].rest_requests} == {"spot"}
        assert {query["category"] for _, query, _ in linear_fake.rest_requests} == {"linear"}

    # One stats line: the markets summed, each market's own counters, one sink.
    assert set(final["by_market"]) == {"spot", "linear"}
    for market, counters in final["by_market"].items():
        assert counters["totals"]["bars_produced"] > 0, market
        assert counters["rest"]["requests"] > 0, market
        assert all(name.startswith(f"{exchange}-{market}-") for name in counters["connections"])
    totals = final["totals"]
    assert totals["bars_produced"] == sum(
        counters["totals"]["bars_produced"] for counters in final["by_market"].values()
    )
    # The shared producer's one flush delivered every record of both markets.
    on_kafka = sum(len(records) for records in records_by_topic.values()) + len(letters)
    sink = final["sink"]
    assert sink["failed"] == 0 and sink["pending"] == 0
    assert sink["delivered"] == on_kafka
    assert on_kafka == totals["bars_produced"] + final["repair"]["bars_repaired"] + sum(
        counters["dead_letters"] for counters in final["by_market"].values()
    )
