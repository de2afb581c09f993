"""The bench topic: N closed 1m bars over S series, produced once, and the windows they make.

The bars are ``jobs.sample_data.iter_bench_klines`` (seeded, realistic prices, every bar
closed, S series x N/S consecutive minutes interleaved minute by minute like a live feed),
in the wire format (``udfs.record.encode_kline``), keyed ``{exchange}:{symbol}:1m`` with the
Kafka record timestamp = open_time (quix-streams windows on it). The topic is created fresh
with ``retention.ms = -1``: with the stack's 7-day retention the broker would delete records
stamped with 2025 times. Produced with the project's own producer (kafka-python, acks=all,
idempotent, zstd) and its delivery counter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kafka.admin import NewTopic

from connectors.kafka_admin import admin_client, ensure_topics
from connectors.kafka_producer import DeliveryCounter, create_producer
from jobs.sample_data import iter_bench_klines
from peers.common import ROLLUP_TIMEFRAMES, timeframe_ms
from udfs.record import encode_kline

_MINUTE_MS = 60_000
_FLUSH_TIMEOUT_S = 300.0


@dataclass
class Produced:
    """What went to the topic: bars acknowledged, first/last open time of each series."""

    bars: int = 0
    failed: int = 0
    seconds: float = 0.0
    series: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # first, last, count

    def windows(self, timeframe: str) -> int:
        """How many ``timeframe`` windows the bars fall into (all series)."""
        length = timeframe_ms(timeframe)
        return sum(last // length - first // length + 1 for first, last, _ in self.series.values())

    def expected_windows(self) -> dict[str, int]:
        """``windows`` of every roll-up timeframe."""
        return {timeframe: self.windows(timeframe) for timeframe in ROLLUP_TIMEFRAMES}

    def consecutive(self) -> bool:
        """Every series has one bar per minute from its first to its last (no gap, no dup)."""
        return all(
            count == (last - first) // _MINUTE_MS + 1 for first, last, count in self.series.values()
        )


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` and no retention limit; it must not exist yet."""
    with admin_client(bootstrap) as admin:
        admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs={"retention.ms": "-1"},
                )
            ]
        )
    ensure_topics(bootstrap, [topic], partitions=partitions)


def produce_bars(bootstrap: str, topic: str, bars: int, series: int) -> Produced:
    """Produce ``bars`` closed 1m bars over ``series`` series to ``topic``."""
    produced = Produced()
    started = time.monotonic()
    producer = create_producer(bootstrap, client_id="klineflow-bench-peers")
    counter = DeliveryCounter()
    try:
        for kline in iter_bench_klines(bars, series):
            if counter.pending >= counter.max_pending:
                counter.wait_below(max(1, counter.max_pending // 2))
            key = kline.series_key
            future = producer.send(
                topic, value=encode_kline(kline), key=key.encode(), timestamp_ms=kline.open_time
            )
            counter.track(future)
            first, _last, count = produced.series.get(key, (kline.open_time, 0, 0))
            produced.series[key] = (first, kline.open_time, count + 1)
        producer.flush(timeout=_FLUSH_TIMEOUT_S)
    finally:
        producer.close(timeout=5)
    produced.bars, produced.failed = counter.succeeded, counter.failed
    produced.seconds = time.monotonic() - started
    return produced
