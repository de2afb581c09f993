"""Replay archives into Kafka: valid bars to the raw topic, rejected rows to the DLQ.

Files are read one after the other and each file in order, and every bar of a series goes to
one partition (key = series key) through an idempotent producer, so a series arrives in the
order of its files. A bad row never stops a replay: it is logged with ``file:line`` and the
reason, sent to the DLQ as a :class:`~udfs.dead_letter.DeadLetter` (stage ``replay``, the raw
line as ``original``) and counted. A file that cannot be read is logged and counted, and the
replay goes on with the next file. Delivery failures are counted too; a replay is clean only
when every file was read and every message was acknowledged.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kafka.errors import KafkaError, KafkaTimeoutError
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from connectors.archives import ArchiveError, ArchiveSource, Rejection, iter_source, plan_sources
from connectors.kafka_admin import DEAD_LETTER_TOPIC, TopicError, ensure_topics
from connectors.kafka_producer import DeliveryCounter, create_producer
from udfs.dead_letter import DeadLetter, encode_dead_letter
from udfs.record import Kline, encode_kline, now_ms

log = logging.getLogger(__name__)

RAW_PARTITIONS: Final[int] = 4
DLQ_PARTITIONS: Final[int] = 1
# Rejected rows logged one by one before the log only says how many more there were.
DEFAULT_REPORT_LIMIT: Final[int] = 20
_FLUSH_TIMEOUT_S: Final[float] = 120.0


class ReplayError(RuntimeError):
    """The replay could not run or was cut short: no broker, topics not ready, send timed out."""


@dataclass
class ReplayResult:
    """What a replay did.

    ``produced`` counts bars the broker acknowledged on the raw topic; ``rejected`` counts rows
    that were not valid bars (each sent to the DLQ); ``failed_files`` lists files that could
    not be read (fully); ``delivery_failures`` counts messages (bars or dead letters) the broker
    did not acknowledge.
    """

    produced: int = 0
    rejected: int = 0
    failed_files: list[str] = field(default_factory=list)
    delivery_failures: int = 0
    files: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Every file was read and every message delivered (rejected rows do not count)."""
        return not self.failed_files and not self.delivery_failures

    @property
    def rate(self) -> float:
        """Produced bars per second of wall time."""
        return self.produced / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        """One line for humans: counts, time and rate."""
        parts = [
            f"produced {self.produced:,} bars",
            f"rejected {self.rejected:,} rows",
            f"from {self.files} file(s)",
        ]
        if self.failed_files:
            parts.append(f"{len(self.failed_files)} file(s) FAILED")
        if self.delivery_failures:
            parts.append(f"{self.delivery_failures:,} deliveries FAILED")
        return ", ".join(parts) + f" in {self.elapsed_s:.2f} s ({self.rate:,.0f} bars/s)"


class _Pacer:
    """Sleeps so that no more than ``rate`` messages per second go out (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate_limit must be positive")
        self._interval = 1.0 / rate if rate else 0.0
        self._start = time.monotonic()
        self._count = 0

    def tick(self) -> None:
        if not self._interval:
            return
        self._count += 1
        delay = self._start + self._count * self._interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def replay_files(
    paths: Iterable[str | Path],
    *,
    bootstrap: str,
    topic: str,
    dlq_topic: str,
    exchange: str | None = None,
    symbol: str | None = None,
    timeframe: str | None = None,
    market: str | None = None,
    progress: bool = True,
    rate_limit: float | None = None,
    report_limit: int = DEFAULT_REPORT_LIMIT,
    clock: Callable[[], int] = now_ms,
) -> ReplayResult:
    """Replay CSV/ZIP archives and JSONL files (or directories of them) into Kafka.

    ``exchange``/``symbol``/``timeframe``/``market`` override what archive file names, paths
    and layouts say (they do not apply to JSONL, whose records name their series).
    ``rate_limit`` caps bars per second (e.g. to watch a replay like a live feed). ``clock``
    gives the ``ingest_time`` of archive rows.

    Raises ReplayConfigError (from connectors.archives) before connecting when a file's series
    cannot be determined, and ReplayError when Kafka is unreachable or stops acknowledging.
    """
    started = time.monotonic()
    pacer = _Pacer(rate_limit)
    sources = plan_sources(
        paths, exchange=exchange, symbol=symbol, timeframe=timeframe, market=market
    )
    result = ReplayResult(files=len(sources))
    try:
        ensure_topics(bootstrap, [topic], partitions=RAW_PARTITIONS)
        ensure_topics(bootstrap, [dlq_topic], partitions=DLQ_PARTITIONS,
                      configs=DEAD_LETTER_TOPIC)  # fmt: skip
        producer = create_producer(bootstrap, client_id="klineflow-replay")
    except (KafkaError, TopicError) as exc:
        raise ReplayError(f"Kafka at {bootstrap}: {_describe_kafka_error(exc)}") from exc

    bars = DeliveryCounter()
    letters = DeliveryCounter(max_pending=10_000)
    reporter = _RejectionReporter(report_limit)
    try:
        with _progress_bar(progress) as bar:
            for _, row in merge_by_open_time(sources, clock=clock):
                if isinstance(row, ArchiveError):
                    log.error("cannot read %s: %s", row.path, row.reason)
                    result.failed_files.append(row.path)
                    continue
                if isinstance(row, Kline):
                    # No record timestamp: the broker's CreateTime keeps time-based retention
                    # working. Stamping historical open times would make the broker delete
                    # a replay as soon as it is written (retention looks at record times).
                    bars.send(producer, topic, encode_kline(row), row.series_key.encode())
                else:
                    result.rejected += 1
                    reporter.report(row)
                    letters.send(producer, dlq_topic, _dead_letter(row), _key(row))
                bar.update()
                pacer.tick()
            producer.flush(timeout=_FLUSH_TIMEOUT_S)
    except KafkaError as exc:
        raise ReplayError(f"Kafka at {bootstrap}: {_describe_kafka_error(exc)}") from exc
    finally:
        producer.close(timeout=5)
    reporter.finish()

    result.produced = bars.succeeded
    result.delivery_failures = bars.failed + letters.failed
    for error in (bars.errors + letters.errors)[:3]:
        log.error("delivery failed: %r", error)
    result.elapsed_s = time.monotonic() - started
    return result


ReplayItem = Kline | Rejection | ArchiveError


def merge_by_open_time(
    sources: Sequence[ArchiveSource], *, clock: Callable[[], int] = now_ms
) -> Iterator[tuple[int, ReplayItem]]:
    """All rows of all sources, merged by open time like a live feed would deliver them.

    Archives are per series and per day, so replaying them file by file would send one
    series' whole history before the next one's: downstream, event-time windows would see
    the other series as hopelessly late. Files of one series are chained in name (= date)
    order, and the chains and JSONL files are merged by open_time, so only one file per
    series is open at a time. Rejected rows and read errors keep their place in their file.
    """
    groups: dict[str, list[ArchiveSource]] = {}
    for source in sources:
        groups.setdefault(_series_group(source), []).append(source)
    chains = [_chain(sorted(files, key=lambda s: s.path.name), clock) for files in groups.values()]
    return heapq.merge(*chains, key=lambda item: item[0])


def _series_group(source: ArchiveSource) -> str:
    if source.series is not None:
        return source.series.key
    if source.members:
        return "|".join(sorted({series.key for _, series in source.members}))
    return f"file:{source.path}"


def _chain(
    sources: Sequence[ArchiveSource], clock: Callable[[], int]
) -> Iterator[tuple[int, ReplayItem]]:
    newest_open_time = 0
    for source in sources:
        try:
            for row in iter_source(source, clock=clock):
                if isinstance(row, Kline):
                    newest_open_time = row.open_time
                yield newest_open_time, row
        except ArchiveError as exc:
            yield newest_open_time, exc


def _dead_letter(rejection: Rejection) -> bytes:
    return encode_dead_letter(
        DeadLetter(
            reason=rejection.describe(),
            stage="replay",
            original=rejection.raw,
            key=rejection.key,
        )
    )


def _key(rejection: Rejection) -> bytes | None:
    return rejection.key.encode() if rejection.key else None


def _describe_kafka_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KafkaTimeoutError):
        return f"{text} (is a broker running there? `klineflow stack up` starts one)"
    return text


class _RejectionReporter:
    """Logs the first ``limit`` rejected rows one by one, then only counts them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def report(self, rejection: Rejection) -> None:
        self.count += 1
        if self.count <= self.limit:
            log.warning("rejected %s", rejection.describe())

    def finish(self) -> None:
        if self.count > self.limit:
            log.warning(
                "... and %d more rejected rows (all of them are in the DLQ with the reason)",
                self.count - self.limit,
            )


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[tqdm]:
    """A row counter on stderr; log lines are routed around it while it is shown."""
    with contextlib.ExitStack() as stack:
        if enabled:
            stack.enter_context(logging_redirect_tqdm())
        bar = stack.enter_context(
            tqdm(
                desc="replay",
                unit=" rows",
                unit_scale=True,
                file=sys.stderr,
                disable=not enabled,
                mininterval=0.5,
            )
        )
        yield bar
