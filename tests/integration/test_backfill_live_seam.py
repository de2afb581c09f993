"""The hand-over from ``klineflow backfill`` to ``klineflow bridge`` at the present minute.

Issue 13 asks that a backfill reaching the present produce closed bars only and hand over to
the live bridge "without dropping or duplicating the boundary minute", on every venue (binance,
okx, bybit), spot and perpetuals. The test runs both commands on one fake and one tape, into
one fresh Kafka topic, for each venue and market of :data:`VENUES` (spot of all three, and the
quote-margined perpetuals: Binance USDT-M, OKX USDT SWAP, Bybit linear):

1. The fake is stopped inside bar ``B`` (two in-progress updates of it are behind it, so its
   REST answer lists ``B`` with in-progress values, as each venue lists the minute in
   progress). ``klineflow backfill --since B-90`` without ``--until`` (up to now) runs
   in-process. Each venue tells its open bar its own way, and the backfill's clock is chosen
   so that only that way can tell it (the tape's 2024 minutes are all past by the machine's
   clock): Binance's row has only a close time, so the clock is the fake's virtual one (the
   middle of ``B``); OKX's row has ``confirm`` (``"0"`` for ``B``), so the clock is the
   machine's; Bybit's row has neither, but ``B`` is the newest row of the answer, so the clock
   runs 5 s past ``B``'s end (a machine clock a little ahead of the exchange's).
2. ``klineflow bridge`` (a subprocess) connects while the tape is still stopped; then the tape
   goes on, so the live feed delivers the rest of ``B`` (the boundary minute: open while the
   backfill ran, closed later by the live feed) and the minutes after it.

The contract, from ``connectors/backfill.py`` and ``connectors/bridge/tracker.py``: the backfill
never emits a bar the exchange still has open, so ``B`` comes from the WebSocket only, and
every minute from the backfill's start to the last minute the live side closed has a closed bar.
A minute may legitimately be produced by both sides: the bridge's start-up backfill
(``--startup-backfill-minutes``, 60 by default) re-fetches the minutes before its first live bar
over REST, which the backfill had already produced; the design accepts that ("bars produced
twice are harmless, since the job's upsert keeps one bar per minute and version"). Such copies
must be identical (same values, same event time, both ``rest``), so there is exactly one
distinct closed bar per (series, open_time). With the start-up backfill off, the topic holds
exactly one closed record per minute.

Values are the tape's final ones in the venue's units: OKX and Bybit give no trade count and
no taker volumes (null in the record), a perpetual's volume is the base volume (OKX: ``volCcy``,
Bybit linear: contracts of one base unit), so a bar of either side equals the tape's bar.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import connectors.rest_repair
from connectors.backfill import ProgressFile, progress_key
from connectors.exchanges import create_adapter
from connectors.kafka_admin import read_topic
from connectors.rest_repair import RestKlineClient
from jobs.cli import main as klineflow_main
from tests.fakes.exchange_servers import FAKES, MINUTE_MS, FakeExchange, Tape, ThreadedFake
from udfs.record import Kline, decode_kline

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Venue:
    """One exchange and market of the seam test, and the raw symbols its fake serves."""

    exchange: str
    market: str
    raw_symbols: tuple[str, ...]
    # The backfill's clock against the exchange's (the middle of the boundary bar), in ms;
    # None: the machine's own clock (two years after the tape's minutes).
    clock_offset_ms: int | None = 0
    # Binance gives a trade count and taker volumes; OKX and Bybit do not (null).
    trades_and_taker: bool = False

    @property
    def id(self) -> str:
        """The test id: ``exchange-market``."""
        return f"{self.exchange}-{self.market}"


# Binance's row tells the open bar only by its close time against the clock: the backfill
# keeps the exchange's. OKX's ``confirm`` needs no clock: the machine's (far off) is used.
# Bybit's newest row is the open one: a clock 5 s past the boundary minute's end (a machine
# clock running ahead of Bybit's at the turn of the minute) must not make it closed.
BYBIT_CLOCK_AHEAD_MS = MINUTE_MS // 2 + 5_000
VENUES = [
    Venue("binance", "spot", ("BTCUSDT", "ETHUSDT"), trades_and_taker=True),
    Venue("binance", "linear", ("BTCUSDT", "ETHUSDT"), trades_and_taker=True),
    Venue("okx", "spot", ("BTC-USDT", "ETH-USDT"), clock_offset_ms=None),
    Venue("okx", "linear", ("BTC-USDT-SWAP", "ETH-USDT-SWAP"), clock_offset_ms=None),
    Venue("bybit", "spot", ("BTCUSDT", "ETHUSDT"), clock_offset_ms=BYBIT_CLOCK_AHEAD_MS),
    Venue("bybit", "linear", ("BTCUSDT", "ETHUSDT"), clock_offset_ms=BYBIT_CLOCK_AHEAD_MS),
]
FIRST_BAR = 500
BACKFILL_MINUTES_BEFORE_BOUNDARY = 90
# In-progress updates of the boundary bar sent before the backfill runs (to no one).
BOUNDARY_STEP = 2
LIVE_BARS_AFTER_BOUNDARY = 20
WAIT_TIMEOUT_S = 30.0

SeriesMinute = tuple[str, int]  # (series key, open time)


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    """Poll ``condition`` until it holds; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _stats_lines(log_path: Path, event: str) -> list[dict[str, Any]]:
    """The bridge's ``event=<event> {json}`` log lines, decoded."""
    pattern = re.compile(rf"event={event} (\{{.*\}})$")
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = pattern.search(line)
        if match:
            found.append(orjson.loads(match.group(1)))
    return found


def _virtual_clock_client(fake: FakeExchange, offset_ms: int) -> type[RestKlineClient]:
    """A :class:`RestKlineClient` whose wall clock is the fake's (the middle of its open bar)
    plus ``offset_ms``."""

    def fake_now_ms() -> int:
        return fake.tape.open_time(fake.current_bar()) + MINUTE_MS // 2 + offset_ms

    class VirtualClockRestKlineClient(RestKlineClient):
        """The real client, asking the fake's virtual clock which bar is still open."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("wall_ms", fake_now_ms)
            super().__init__(*args, **kwargs)

    return VirtualClockRestKlineClient


def _stop_inside_boundary_bar(threaded: ThreadedFake, fake: FakeExchange) -> int:
    """Stop the tape, then step it to update ``BOUNDARY_STEP`` of a bar; returns that bar."""
    threaded.call(fake.pause)
    while fake.tape.position(fake.tick)[1] != BOUNDARY_STEP:
        threaded.call(fake.advance)
    return fake.current_bar()


def _market_values(bar: Kline) -> tuple[Any, ...]:
    """What must agree between two copies of one closed minute."""
    return (*bar.values_fingerprint(), bar.is_closed, bar.event_time)


def _assert_is_tape_final(bar: Kline, venue: Venue, tape: Tape, symbol_index: int) -> None:
    """``bar`` carries the tape's final values of its minute (never an in-progress update),
    null where ``venue`` does not give a value."""
    final = tape.final(symbol_index, tape.bar_of(bar.open_time))
    given = venue.trades_and_taker
    expected = (final.open, final.high, final.low, final.close, final.volume,
                final.quote_volume, final.trades if given else None,
                final.taker_buy_volume if given else None,
                final.taker_buy_quote_volume if given else None)  # fmt: skip
    assert bar.is_closed
    assert bar.values_fingerprint() == expected, (bar, final)


def _run_bridge_until_live_bars_closed(
    threaded: ThreadedFake,
    fake: FakeExchange,
    venue: Venue,
    *,
    boundary_bar: int,
    startup_backfill_minutes: int,
    bootstrap: str,
    topics: Any,
    log_path: Path,
) -> dict[str, Any]:
    """Run the bridge from the stopped tape until ``LIVE_BARS_AFTER_BOUNDARY`` more bars
    closed and its repairs are done; returns its ``final_stats``."""
    command = [
        sys.executable, "-m", "jobs.cli", "bridge",
        "--exchange", venue.exchange, "--market", venue.market,
        "--symbols", ",".join(venue.raw_symbols),
        "--ws-url", fake.ws_base, "--rest-url", fake.rest_base,
        "--topic", topics.raw, "--linear-topic", topics.raw,
        "--dlq-topic", topics.dlq, "--bootstrap-servers", bootstrap,
        "--stats-interval", "0.5", "--no-data-timeout", "10", "--repair-delay", "0.2",
        "--startup-backfill-minutes", str(startup_backfill_minutes),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    all_symbols = set(range(len(venue.raw_symbols)))
    with log_path.open("w") as log_file:
        bridge = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
        try:

            def alive() -> bool:
                if bridge.poll() is not None:
                    raise AssertionError(log_path.read_text(errors="replace")[-3000:])
                return True

            def subscribed() -> bool:
                followed = [conn.symbols for conn in list(fake.connections.values())]
                return alive() and all_symbols <= set().union(*followed)

            _wait(subscribed, "the bridge to subscribe to every symbol")
            assert fake.current_bar() == boundary_bar  # nothing of the bar was sent yet
            threaded.call(fake.resume)
            _wait(
                lambda: alive() and fake.current_bar() > boundary_bar + LIVE_BARS_AFTER_BOUNDARY,
                "the live feed to close the bars after the boundary",
            )
            threaded.call(fake.pause)  # a read barrier: the bridge has read every update sent
            reports_before_pause = len(_stats_lines(log_path, "stats"))

            def repaired() -> bool:
                lines = _stats_lines(log_path, "stats")
                return (
                    alive()
                    and len(lines) > reports_before_pause
                    and lines[-1]["repair"]["gap_bars_outstanding"] == 0
                    and lines[-1]["repair"]["series_waiting"] == 0
                )

            _wait(repaired, "the bridge's repairs to finish")
        finally:
            bridge.send_signal(signal.SIGTERM)
            try:
                exit_code = bridge.wait(timeout=45)
            except subprocess.TimeoutExpired:
                bridge.kill()
                raise
    assert exit_code == 0, log_path.read_text(errors="replace")[-3000:]
    (final,) = _stats_lines(log_path, "final_stats")
    return final


def _last_closed_bar_sent(fake: FakeExchange, symbol_index: int) -> int:
    """The last bar whose final update the live feed sent for ``symbol_index``."""
    last_step = fake.tape.steps_per_bar - 1
    return max(bar for _, sym, bar, step in fake.sent if sym == symbol_index and step == last_step)


@pytest.mark.parametrize(
    "startup_backfill_minutes", [0, 60], ids=["no-startup-backfill", "default-startup-backfill"]
)
@pytest.mark.parametrize("venue", VENUES, ids=[venue.id for venue in VENUES])
def test_backfill_then_bridge_closes_every_minute_once_across_the_boundary(
    venue: Venue,
    startup_backfill_minutes: int,
    kafka_bootstrap: str,
    kafka_topics: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Backfill up to the open bar, then the bridge: every minute closed, none differently twice.

    Minutes before the boundary are ``rest`` (the backfill, and with the start-up backfill
    on, identical ``rest`` copies of its last minutes from the bridge); the boundary minute
    and every later one are ``ws``, closed exactly once, with the tape's final values.
    """
    exchange, raw_symbols = venue.exchange, list(venue.raw_symbols)
    fake = FAKES[exchange](raw_symbols, market=venue.market, first_bar=FIRST_BAR,
                           tick_interval_s=0.02)  # fmt: skip
    tape = fake.tape
    adapter = create_adapter(exchange, venue.market, raw_symbols)
    index_of_series = {
        f"{exchange}:{adapter.symbols[raw].symbol}:1m": index
        for index, raw in enumerate(raw_symbols)
    }
    if venue.clock_offset_ms is not None:
        monkeypatch.setattr(connectors.rest_repair, "RestKlineClient",
                            _virtual_clock_client(fake, venue.clock_offset_ms))  # fmt: skip
    with ThreadedFake(fake) as threaded:
        boundary_bar = _stop_inside_boundary_bar(threaded, fake)
        first_bar = boundary_bar - BACKFILL_MINUTES_BEFORE_BOUNDARY
        backfill_exit = klineflow_main([
            "backfill", "--exchange", exchange, "--market", venue.market,
            "--symbols", ",".join(raw_symbols), "--since", str(tape.open_time(first_bar)),
            "--rest-url", fake.rest_base, "--topic", kafka_topics.raw,
            "--linear-topic", kafka_topics.raw,
            "--dlq-topic", kafka_topics.dlq, "--bootstrap-servers", kafka_bootstrap,
            "--progress-file", str(tmp_path / "progress.json"),
        ])  # fmt: skip
        backfill_output = capsys.readouterr().out
        assert backfill_exit == 0, backfill_output
        assert backfill_output.count("1 still open") == len(raw_symbols), backfill_output
        # The progress stops at the boundary minute: a later run fetches it again.
        progress = ProgressFile(tmp_path / "progress.json")
        assert {progress.next_start(progress_key(exchange, adapter.market, raw))
                for raw in raw_symbols} == {tape.open_time(boundary_bar)}  # fmt: skip
        backfilled = [decode_kline(value) for _, value in read_topic(
            kafka_bootstrap, kafka_topics.raw, min_messages=1)]  # fmt: skip
        final_stats = _run_bridge_until_live_bars_closed(
            threaded,
            fake,
            venue,
            boundary_bar=boundary_bar,
            startup_backfill_minutes=startup_backfill_minutes,
            bootstrap=kafka_bootstrap,
            topics=kafka_topics,
            log_path=tmp_path / "bridge.log",
        )
    assert final_stats["sink"]["failed"] == 0 and final_stats["sink"]["pending"] == 0
    everything = [decode_kline(value) for _, value in read_topic(
        kafka_bootstrap, kafka_topics.raw, min_messages=len(backfilled) + 1)]  # fmt: skip
    # One series lives on one partition, whose order is kept: each series' first records
    # are the backfill's, the rest the bridge's.
    backfilled_per_series = collections.Counter(bar.series_key for bar in backfilled)
    seen_per_series: collections.Counter[str] = collections.Counter()
    from_bridge: list[Kline] = []
    for bar in everything:
        seen_per_series[bar.series_key] += 1
        if seen_per_series[bar.series_key] > backfilled_per_series[bar.series_key]:
            from_bridge.append(bar)
    assert len(everything) == len(backfilled) + len(from_bridge)
    assert set(index_of_series) == {bar.series_key for bar in everything}
    markets = {info.market for info in adapter.symbols.values()}  # spot, perp
    assert {bar.market for bar in everything} == markets

    # The backfill: every minute before the boundary once, closed, rest, final values; not
    # the boundary minute, which was still open (its REST row had in-progress values).
    backfilled_minutes = collections.Counter((bar.series_key, bar.open_time) for bar in backfilled)
    assert backfilled_minutes == collections.Counter({
        (series, tape.open_time(bar)): 1
        for series in index_of_series for bar in range(first_bar, boundary_bar)
    })  # fmt: skip
    for bar in backfilled:
        assert bar.provenance == "rest"
        _assert_is_tape_final(bar, venue, tape, index_of_series[bar.series_key])

    # The bridge: live minutes from the boundary on; REST only for its start-up window.
    bridge_closed = [bar for bar in from_bridge if bar.is_closed]
    for bar in from_bridge:
        if bar.provenance == "rest":
            assert bar.is_closed
            assert (tape.open_time(boundary_bar) - startup_backfill_minutes * MINUTE_MS
                    <= bar.open_time < tape.open_time(boundary_bar)), bar  # fmt: skip
        else:
            assert bar.provenance == "ws", bar
            assert bar.open_time >= tape.open_time(boundary_bar), bar
    if startup_backfill_minutes:
        assert any(bar.provenance == "rest" for bar in from_bridge), "no start-up backfill"
    else:
        assert all(bar.provenance == "ws" for bar in from_bridge)

    # Across both producers: every minute from the backfill's start to the last one the live
    # feed closed has a closed bar; copies of one minute are identical; the boundary minute
    # and every later one are closed exactly once, live, with the tape's final values.
    closed_copies: dict[SeriesMinute, list[Kline]] = collections.defaultdict(list)
    for bar in [*backfilled, *bridge_closed]:
        closed_copies[(bar.series_key, bar.open_time)].append(bar)
    for series, index in index_of_series.items():
        last_closed = _last_closed_bar_sent(fake, index)
        assert last_closed >= boundary_bar + LIVE_BARS_AFTER_BOUNDARY
        expected_minutes = {tape.open_time(bar) for bar in range(first_bar, last_closed + 1)}
        minutes = {open_time for key, open_time in closed_copies if key == series}
        assert expected_minutes - minutes == set(), f"{series}: minutes missing"
        assert {m for m in minutes if m >= tape.open_time(first_bar)} == expected_minutes
        for open_time in sorted(minutes):
            copies = closed_copies[(series, open_time)]
            _assert_is_tape_final(copies[0], venue, tape, index)
            assert len({_market_values(copy) for copy in copies}) == 1, copies
            if open_time >= tape.open_time(boundary_bar):
                assert [copy.provenance for copy in copies] == ["ws"], copies
            else:
                assert {copy.provenance for copy in copies} == {"rest"}, copies
                if not startup_backfill_minutes:
                    assert len(copies) == 1, copies
        boundary_copies = closed_copies[(series, tape.open_time(boundary_bar))]
        assert len(boundary_copies) == 1 and boundary_copies[0].provenance == "ws"
        live = sum(1 for minute in minutes if minute >= tape.open_time(boundary_bar))
        rest_copies = sum(1 for bar in bridge_closed
                          if bar.series_key == series and bar.provenance == "rest")  # fmt: skip
        print(  # shown with -s: what each venue's seam delivered
            f"seam {venue.id} {series}: backfilled {backfilled_per_series[series]} minutes, "
            f"live {live} minutes, boundary minute from {boundary_copies[0].provenance}, "
            f"start-up REST copies {rest_copies}, missing {len(expected_minutes - minutes)}"
        )
    assert read_topic(kafka_bootstrap, kafka_topics.dlq) == []
