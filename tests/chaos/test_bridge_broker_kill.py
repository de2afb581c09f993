"""The Kafka broker SIGKILLed under a running ``klineflow bridge``: bounded memory, the bridge
resumes by itself, and after gap repair no closed bar is missing (issue 12, Deliver 7).

The real bridge CLI runs in a subprocess against a local Binance fake
(``tests/fakes/exchange_servers.py``: its WebSocket for the live stream, its REST endpoint
for gap repair) that streams four symbols' 1m klines in virtual time (a bar closes every
few hundredths of a second), into a Kafka broker of this test only. Once records flow, the
broker's JVM is SIGKILLed and stays down for the outage while the fake keeps ticking, so
hundreds of bars close during it; then it is started again on the same port and data
directory. What must hold:

- **bounded memory**: the bridge's sink holds at most ``--max-pending`` records queued or
  unacknowledged (``connectors/bridge/kafka_sink.py``); past that it stops reading the
  WebSocket (back-pressure), the no-data watchdog closes the link, and what the exchange sent
  meanwhile is fetched over REST later. Its RSS (``/proc/<pid>/status`` VmRSS), sampled
  through the outage and the recovery, stays below its pre-kill peak plus a ceiling derived
  from ``--max-pending`` (:data:`PER_PENDING_RECORD_BYTES` per record, plus
  :data:`FIXED_SLACK_BYTES`), and it is flat once the bound is reached;
- **it resumes by itself**: the same process (same pid and start time, still alive) delivers
  live bars again after the broker is back;
- **no closed bar missing**: for every symbol and every minute the fake's tape closed from
  the start of the stream to its end, the topic holds a closed bar equal to the tape's
  (market values; ``event_time``/``ingest_time``/``provenance`` say where a copy came from).
  Copies of one bar are allowed (the producer retries, a lost acknowledgement hands a
  delivered bar to the repairer again; see ``connectors/bridge/__init__.py``), but only if
  identical: the Flink upsert keeps one and a closed bar is final.

The issue's range for the outage is 30-120 s, and both ends run (``make chaos``; about 1 and
2.5 minutes). In the 120 s case records outlive the producer's ``delivery_timeout_ms``
(120 s): kafka-python 3.0.12 expires the batches it was retrying and its idempotent producer
never sends again (it drops its producer id and never asks for a new one), so the sink
replaces the producer and sends what the old one left unacknowledged again
(``connectors/bridge/kafka_sink.py``). That case also checks that a replacement happened and
that nothing failed for good. Every case ends with SIGTERM and exit code 0.

A last case sends SIGTERM while the broker is still down and the sink is full: the bridge
must end within its close budget rather than wait for Kafka.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from connectors.kafka_admin import DEAD_LETTER_TOPIC, ensure_topics, read_topic
from connectors.kafka_producer import producer_config
from jobs.stack import KafkaBroker
from tests.fakes.exchange_servers import BinanceFake, FakeExchange, TapeUpdate, ThreadedFake
from tests.integration.conftest import START_TIMEOUT_S

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

REPO_ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
# One tick sends one update of every symbol; a bar is 5 ticks (4 updates + the closed one).
TICK_INTERVAL_S = 0.01
STARTUP_BACKFILL_MINUTES = 3
# The sink's bound, small so that the outage fills it within seconds.
MAX_PENDING = 1_000
# Memory ceiling during the outage, over the bridge's pre-kill peak RSS: each pending record
# holds its encoded value twice (the sink's queued item, kept by the delivery errback, and
# kafka-python's batch buffer), its delivery future with callbacks and, for a closed bar,
# the Kline handed to the repairer on failure: about 3-4 KiB; 16 KiB leaves room for
# allocator overhead. The fixed slack covers the REST pages of the repair (about 1,000 bars
# per symbol in memory at once), kafka-python's reconnect attempts and fragmentation.
# Measured (30 s outage): 72.9 MiB before the kill, 84.5 MiB peak until repairs were done.
PER_PENDING_RECORD_BYTES = 16 * 1024
FIXED_SLACK_BYTES = 32 * 1024 * 1024
RSS_CEILING_BYTES = MAX_PENDING * PER_PENDING_RECORD_BYTES + FIXED_SLACK_BYTES
# Once the bound is reached (a third into the outage) RSS is flat: it may grow this much
# more at most (a sink without a bound would grow by ~1 MiB per second here).
PLATEAU_SLACK_BYTES = 8 * 1024 * 1024
RSS_SAMPLE_INTERVAL_S = 0.2
# Live bars to stream after the bridge resumed, before the final read barrier.
BARS_AFTER_RESUME = 20
# The bridge's producer setting (connectors/kafka_producer.py): an outage longer than this
# outlives the records that were in flight when the broker died.
DELIVERY_TIMEOUT_MS = producer_config("127.0.0.1:9092")["delivery_timeout_ms"]
MIB = 1024 * 1024
STATS_PATTERN = re.compile(r"event=(stats|final_stats) (\{.*\})$")


@dataclass
class BrokerKillFigures:
    """What one broker-kill run did and what came of it (printed as one JSON line)."""

    case: str
    faults: int = 0
    outage_s: float = 0.0
    bars_expected: int = 0
    bars_stored: int = 0
    bars_missing: int = 0
    bars_wrong: int = 0
    duplicate_copies: int = 0
    bars_closed_during_outage: int = 0
    bars_repaired: int = 0
    delivery_failures: int = 0
    closed_bars_lost_to_repair: int = 0
    records_expired: int = 0
    records_resent: int = 0
    producer_replacements: int = 0
    backpressure_waits: int = 0
    max_pending: int = MAX_PENDING
    peak_pending_seen: int = 0
    rss_before_peak_mib: float = 0.0
    rss_during_peak_mib: float = 0.0
    rss_ceiling_mib: float = 0.0
    rss_plateau_growth_mib: float = 0.0
    broker_restart_s: float = 0.0
    resume_s: float = 0.0
    repair_s: float = 0.0
    stop_s: float = 0.0
    missing_sample: list[str] = field(default_factory=list)

    def report(self) -> None:
        """Print the figures (``pytest -s`` or ``make chaos`` shows them)."""
        print("chaos:", json.dumps(asdict(self), sort_keys=True))


# --- the bridge process ----------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid`` (``VmRSS`` of ``/proc/<pid>/status``), in bytes."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def start_ticks(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (tells a restarted process apart)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[19])


class BridgeUnderTest:
    """The ``klineflow bridge`` subprocess: liveness, RSS samples and its stats lines.

    The log is read incrementally; every ``event=stats {json}`` line is kept in order with
    the monotonic time it was first seen.
    """

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.pid = process.pid
        self.log_path = log_path
        self.started_ticks = start_ticks(self.pid)
        self.stats: list[tuple[float, dict[str, Any]]] = []
        self.final: dict[str, Any] | None = None
        self.rss: list[tuple[float, int]] = []
        self._offset = 0
        self._partial = b""

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the bridge's log (for failure messages)."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def check_alive(self) -> None:
        """Fail with the log's tail if the bridge process has ended."""
        if self.process.poll() is not None:
            raise AssertionError(
                f"the bridge exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def sample(self) -> None:
        """Check it is alive, record its RSS and read new stats lines."""
        self.check_alive()
        self.rss.append((time.monotonic(), rss_bytes(self.pid)))
        self.refresh()

    def refresh(self) -> None:
        """Read the log lines written since the last call."""
        with self.log_path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        now = time.monotonic()
        for raw in lines:
            match = STATS_PATTERN.search(raw.decode(errors="replace"))
            if match is None:
                continue
            payload = orjson.loads(match.group(2))
            if match.group(1) == "stats":
                self.stats.append((now, payload))
            else:
                self.final = payload

    def latest(self) -> dict[str, Any] | None:
        """The newest stats line, if any."""
        return self.stats[-1][1] if self.stats else None

    def stats_since(self, since: float) -> list[dict[str, Any]]:
        """Stats lines first seen at or after the monotonic time ``since``."""
        return [payload for seen, payload in self.stats if seen >= since]

    def rss_between(self, start: float, end: float) -> list[int]:
        """RSS samples taken in ``[start, end]``."""
        return [rss for seen, rss in self.rss if start <= seen <= end]

    def wait(self, condition: Callable[[], bool], *, timeout_s: float, what: str) -> float:
        """Sample until ``condition()`` holds; returns when it did (monotonic); fail after
        ``timeout_s`` with the log's tail."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.sample()
            if condition():
                return time.monotonic()
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}:\n{self.log_tail()}"
                )
            time.sleep(RSS_SAMPLE_INTERVAL_S)

    def stop(self) -> int:
        """SIGTERM and wait for the exit code; SIGKILL if it does not end in 45 s (the code
        is then -9: the caller's assertion on it fails, after any earlier failure)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        self.refresh()
        return code


def start_bridge(
    fake: FakeExchange, *, bootstrap: str, topic: str, dlq: str, log_file: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``klineflow bridge`` (the real CLI) against ``fake``, producing to ``bootstrap``."""
    command = [
        sys.executable, "-m", "jobs.cli", "bridge",
        "--exchange", "binance", "--market", "spot", "--symbols", ",".join(SYMBOLS),
        "--ws-url", fake.ws_base, "--rest-url", fake.rest_base,
        "--topic", topic, "--dlq-topic", dlq, "--bootstrap-servers", bootstrap,
        "--stats-interval", "0.5", "--no-data-timeout", "1.5", "--backoff-base", "0.05",
        "--backoff-cap", "0.5", "--repair-delay", "0.2",
        "--startup-backfill-minutes", str(STARTUP_BACKFILL_MINUTES),
        "--max-pending", str(MAX_PENDING),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env
    )


# --- the tape and the topic ------------------------------------------------------------------


def market_values(update: TapeUpdate) -> tuple[Any, ...]:
    """The market values of a tape bar, in ``Kline.values_fingerprint`` order."""
    return (update.open, update.high, update.low, update.close, update.volume,
            update.quote_volume, update.trades, update.taker_buy_volume,
            update.taker_buy_quote_volume)  # fmt: skip


def record_values(record: dict[str, Any]) -> tuple[Any, ...]:
    """The market values of a record from the topic, in the same order."""
    return tuple(
        record[name]
        for name in ("open", "high", "low", "close", "volume", "quote_volume", "trades",
                     "taker_buy_volume", "taker_buy_quote_volume")
    )  # fmt: skip


def last_closed_bar(fake: FakeExchange, tick: int) -> int:
    """The last bar the tape closed with its ``tick - 1``-th update."""
    bar, step = fake.tape.position(tick - 1)
    return bar if step == fake.tape.steps_per_bar - 1 else bar - 1


def bars_closed_between(fake: FakeExchange, first_tick: int, end_tick: int) -> int:
    """How many bars of one symbol closed with a tick in ``[first_tick, end_tick)``."""
    steps = fake.tape.steps_per_bar
    return sum(1 for tick in range(first_tick, end_tick) if tick % steps == steps - 1)


def check_topic(
    fake: FakeExchange, *, bootstrap: str, topic: str, end_tick: int, figures: BrokerKillFigures
) -> None:
    """Every closed bar of the tape, from its first bar to the last it closed, is on the
    topic, equal to the tape; copies of a bar are identical. Fills in the bar figures."""
    tape = fake.tape
    records = read_topic(bootstrap, topic, timeout_s=120)
    assert records, "nothing reached Kafka"
    closed: dict[tuple[int, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for key, value in records:
        record = orjson.loads(value)
        assert key == f"binance:{record['symbol']}:1m".encode(), (key, record)
        if record["is_closed"]:
            index = SYMBOLS.index(record["raw_symbol"])
            closed[(index, tape.bar_of(record["open_time"]))].append(record)
    expected = [
        (index, bar)
        for index in range(len(SYMBOLS))
        for bar in range(tape.first_bar, last_closed_bar(fake, end_tick) + 1)
    ]
    missing = [item for item in expected if item not in closed]
    wrong = [
        (index, bar, record["provenance"])
        for (index, bar), copies in closed.items()
        for record in copies
        if record_values(record) != market_values(tape.final(index, bar))
    ]
    figures.bars_expected = len(expected)
    figures.bars_stored = len(expected) - len(missing)
    figures.bars_missing = len(missing)
    figures.bars_wrong = len(wrong)
    figures.duplicate_copies = sum(len(copies) - 1 for copies in closed.values())
    figures.missing_sample = [f"{SYMBOLS[index]}@bar{bar}" for index, bar in missing[:10]]
    figures.report()
    assert not wrong, f"closed bars unlike the tape (symbol, bar, provenance): {wrong[:10]}"
    assert not missing, (
        f"{len(missing)} of {len(expected)} closed bars missing, e.g. {figures.missing_sample}"
    )


# --- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outage_s",
    [
        # The range is 30-120 s (see the docstring).
        pytest.param(30.0, id="outage-30s"),
        pytest.param(120.0, id="outage-120s"),
    ],
)
def test_a_broker_sigkill_under_the_bridge_keeps_memory_bounded_and_loses_no_closed_bar(
    outage_s: float, tmp_path: Path, own_broker: KafkaBroker
) -> None:
    bootstrap = own_broker.bootstrap
    topic, dlq = "klines-raw-broker-kill", "klines-dlq-broker-kill"
    ensure_topics(bootstrap, [topic], partitions=4)
    ensure_topics(bootstrap, [dlq], partitions=1, configs=DEAD_LETTER_TOPIC)
    figures = BrokerKillFigures(case=f"bridge-broker-kill-{outage_s:.0f}s", outage_s=outage_s)
    fake = BinanceFake(SYMBOLS, tick_interval_s=TICK_INTERVAL_S)
    # The tape starts once the bridge has subscribed: every bar it closes is expected on Kafka.
    fake.paused.set()
    log_path = tmp_path / "bridge.log"
    with ThreadedFake(fake) as threaded, log_path.open("wb") as log_file:
        bridge = BridgeUnderTest(
            start_bridge(fake, bootstrap=bootstrap, topic=topic, dlq=dlq, log_file=log_file),
            log_path,
        )
        try:
            all_symbols = set(range(len(SYMBOLS)))
            bridge.wait(
                lambda: any(c.symbols == all_symbols for c in list(fake.connections.values())),
                timeout_s=90,
                what="the bridge to subscribe to every symbol",
            )
            threaded.call(fake.resume)

            # Records flow: the broker acknowledged a few times the sink's bound.
            def delivered(at_least: int) -> bool:
                latest = bridge.latest()
                return latest is not None and latest["sink"]["delivered"] >= at_least

            flowing_at = bridge.wait(
                lambda: delivered(3 * MAX_PENDING), timeout_s=90, what="records to flow"
            )
            rss_before = max(bridge.rss_between(0.0, flowing_at))

            # The fault: SIGKILL of the broker's JVM, down for the outage while the tape ticks.
            broker_pid = own_broker.status().pid
            assert broker_pid is not None
            kill_tick = fake.tick
            os.kill(broker_pid, signal.SIGKILL)
            killed_at = time.monotonic()
            figures.faults = 1
            bridge.wait(lambda: not own_broker.status().running, timeout_s=30, what="the kill")
            while time.monotonic() < killed_at + outage_s:  # the outage itself
                bridge.sample()
                time.sleep(RSS_SAMPLE_INTERVAL_S)
            outage_end = time.monotonic()
            restart_tick = fake.tick
            outage_stats = bridge.stats_since(killed_at)
            own_broker.start(timeout_s=START_TIMEOUT_S)
            broker_up = time.monotonic()
            figures.broker_restart_s = round(broker_up - outage_end, 1)
            figures.bars_closed_during_outage = len(SYMBOLS) * bars_closed_between(
                fake, kill_tick, restart_tick
            )

            # It resumes by itself: new live updates handled and new records acknowledged.
            at_restart = bridge.latest()
            assert at_restart is not None
            updates_then = at_restart["totals"]["bar_updates"]
            delivered_then = at_restart["sink"]["delivered"]

            def resumed() -> bool:
                latest = bridge.latest()
                return latest is not None and (
                    latest["totals"]["bar_updates"] >= updates_then + 50
                    and latest["sink"]["delivered"] >= delivered_then + 50
                )

            resumed_at = bridge.wait(resumed, timeout_s=120, what="the bridge to resume")
            figures.resume_s = round(resumed_at - broker_up, 1)
            bridge.check_alive()
            assert start_ticks(bridge.pid) == bridge.started_ticks, "the bridge was restarted"
            resume_bar = fake.current_bar()
            bridge.wait(
                lambda: fake.current_bar() >= resume_bar + BARS_AFTER_RESUME,
                timeout_s=60,
                what="live bars after the resume",
            )

            # Stop the tape (a read barrier: the bridge has read all it was sent) and wait
            # until every gap is repaired and every record acknowledged (two reports running).
            threaded.call(fake.pause)
            end_tick = fake.tick
            paused_at = time.monotonic()

            def settled() -> bool:
                lines = bridge.stats_since(paused_at)[-2:]
                return len(lines) == 2 and all(
                    line["repair"]["gap_bars_outstanding"] == 0
                    and line["repair"]["series_waiting"] == 0
                    and line["sink"]["pending"] == 0
                    for line in lines
                )

            settled_at = bridge.wait(settled, timeout_s=180, what="gap repair to finish")
            figures.repair_s = round(settled_at - resumed_at, 1)
            bridge.check_alive()
        except BaseException:
            figures.report()  # how far it got
            raise
        finally:
            stop_started = time.monotonic()
            exit_code = bridge.stop()
            figures.stop_s = round(time.monotonic() - stop_started, 1)
    assert exit_code == 0, bridge.log_tail()
    final = bridge.final
    assert final is not None, "no final_stats line"

    sink = final["sink"]
    figures.bars_repaired = final["repair"]["bars_repaired"]
    figures.delivery_failures = sink["failed"]
    figures.closed_bars_lost_to_repair = sink["closed_bars_lost_to_repair"]
    figures.records_expired = sink["expired_and_resent"]
    figures.records_resent = sink["resent"]
    figures.producer_replacements = sink["producer_replacements"]
    figures.backpressure_waits = max(
        (line["sink"]["backpressure_waits"] for line in outage_stats), default=0
    )
    figures.peak_pending_seen = max((line["sink"]["pending"] for line in outage_stats), default=0)
    figures.rss_before_peak_mib = round(rss_before / MIB, 1)
    fault_window = bridge.rss_between(killed_at, settled_at)
    figures.rss_during_peak_mib = round(max(fault_window) / MIB, 1)
    figures.rss_ceiling_mib = round((rss_before + RSS_CEILING_BYTES) / MIB, 1)
    plateau_start = killed_at + outage_s / 3
    at_plateau = bridge.rss_between(plateau_start, outage_end)
    figures.rss_plateau_growth_mib = round((max(at_plateau) - at_plateau[0]) / MIB, 1)

    check_topic(fake, bootstrap=bootstrap, topic=topic, end_tick=end_tick, figures=figures)

    # The outage did what it should: bars closed during it, the sink's bound was reached.
    assert figures.bars_closed_during_outage > 0
    assert figures.backpressure_waits > 0, "the sink's bound was never reached in the outage"
    assert figures.peak_pending_seen <= MAX_PENDING
    assert figures.bars_repaired > 0, "no closed bar came from gap repair"
    # Memory stayed bounded: below the ceiling from the kill until repairs were done, and
    # flat once the bound was reached.
    assert max(fault_window) <= rss_before + RSS_CEILING_BYTES, figures
    assert max(at_plateau) - at_plateau[0] <= PLATEAU_SLACK_BYTES, figures
    assert sink["pending"] == 0
    if outage_s * 1000 > DELIVERY_TIMEOUT_MS:
        # Records outlived the producer: it was replaced and they were sent again, none
        # failed for good.
        assert figures.producer_replacements >= 1, figures
        assert figures.records_resent > 0, figures
        assert figures.delivery_failures == 0, figures


def test_sigterm_while_the_broker_is_down_and_the_sink_is_full_ends_the_bridge(
    tmp_path: Path, own_broker: KafkaBroker
) -> None:
    """SIGTERM with Kafka away and ``--max-pending`` reached: the connections blocked on
    back-pressure are cancelled, the sink flushes for its budget (30 s, ``jobs/bridge_cmd``)
    and force-closes the producer. Exit code 1 with ``event=unflushed records=N``: the
    records it held were not delivered (closed bars among them come back with the next
    start's backfill); never a hang that needs SIGKILL."""
    bootstrap = own_broker.bootstrap
    topic, dlq = "klines-raw-broker-down-stop", "klines-dlq-broker-down-stop"
    ensure_topics(bootstrap, [topic], partitions=4)
    ensure_topics(bootstrap, [dlq], partitions=1, configs=DEAD_LETTER_TOPIC)
    fake = BinanceFake(SYMBOLS, tick_interval_s=TICK_INTERVAL_S)
    log_path = tmp_path / "bridge.log"
    with ThreadedFake(fake), log_path.open("wb") as log_file:
        bridge = BridgeUnderTest(
            start_bridge(fake, bootstrap=bootstrap, topic=topic, dlq=dlq, log_file=log_file),
            log_path,
        )
        try:

            def sink_value(name: str) -> int:
                latest = bridge.latest()
                return 0 if latest is None else int(latest["sink"][name])

            bridge.wait(
                lambda: sink_value("delivered") >= 2 * MAX_PENDING,
                timeout_s=90,
                what="records to flow",
            )
            broker_pid = own_broker.status().pid
            assert broker_pid is not None
            os.kill(broker_pid, signal.SIGKILL)
            bridge.wait(
                lambda: sink_value("pending") >= MAX_PENDING,
                timeout_s=60,
                what="the sink's bound (back-pressure)",
            )
            pending = sink_value("pending")
        finally:
            stop_started = time.monotonic()
            exit_code = bridge.stop()
            stop_s = time.monotonic() - stop_started
    figures = {
        "case": "bridge-sigterm-broker-down",
        "pending_at_sigterm": pending,
        "stop_s": round(stop_s, 1),
        "exit_code": exit_code,
    }
    print("chaos:", json.dumps(figures, sort_keys=True))
    tail = bridge.log_tail()
    assert exit_code in (0, 1), f"the bridge did not end on SIGTERM ({figures}):\n{tail}"
    assert bridge.final is not None, "no final_stats line"
    if exit_code == 1:
        assert "event=unflushed records=" in tail, tail
