"""The job's settings: one typed, frozen object, read from flags that fall back to env vars.

Relative paths (the chdb directory, checkpoints) are resolved against the project root at
construction, because the Flink Python workers run with another working directory.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from connectors.clickhouse import DEFAULT_URL
from connectors.redaction import redacted_repr
from jobs.cliutil import env_bool_flag, env_flag
from jobs.signals import SignalConfig, add_signal_arguments, signal_config_from_args
from udfs.analytics import DEFAULT_PROFILE_TIMEFRAMES
from udfs.rollup import (
    DEFAULT_ROLLUP_TIMEFRAMES,
    parse_rollup_timeframes,
    validate_rollup_timeframes,
)
from udfs.volume_profile import DEFAULT_MAX_ROWS, DEFAULT_ROWS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = PROJECT_ROOT / ".klineflow"
DEFAULT_CLICKHOUSE_URL = DEFAULT_URL


def resolve_clickhouse_url(url: str) -> str:
    """Make a relative ``chdb://`` path absolute (against the project root)."""
    if url.startswith("chdb://") and not url.startswith("chdb:///"):
        return f"chdb://{(PROJECT_ROOT / url[len('chdb://') :]).resolve()}"
    return url


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """What the pure pipeline (``build_pipeline``) needs: event-time and upsert behaviour."""

    max_out_of_orderness_ms: int = 60_000
    idleness_ms: int = 60_000
    allowed_lateness_ms: int = 3_600_000
    # Parallelism of the Kafka source and its batcher. The job sets it to the topic's
    # partition count so that each subtask reads one partition and the watermarks are per
    # partition; ingest runs at the smaller of it and the job's parallelism (None: the job's
    # parallelism for both).
    source_parallelism: int | None = None
    # Roll-ups of 1m bars (udfs/rollup.py); an empty tuple turns them off.
    rollup_timeframes: tuple[str, ...] = DEFAULT_ROLLUP_TIMEFRAMES
    # Re-emit the open roll-up bar on in-progress 1m updates too, not only on closed 1m bars.
    rollup_emit_in_progress: bool = False
    # Close a live roll-up window this long after its end by the wall clock when no
    # watermark has come (all input stopped); 0 turns the fallback off.
    rollup_idle_close_ms: int = 180_000
    # Live (early) emissions only for windows whose end is at most this far behind the wall
    # clock; older windows (replays, backfills) emit once when closed, then on corrections.
    # Negative: every window fires early, however old its data.
    rollup_live_horizon_ms: int = 3_600_000
    # Drop the state of an instrument that has had no input for this long by the wall clock
    # once none of its windows is left to fire (udfs/flink/series_function.py); 0: never.
    # A day: far beyond the allowed lateness and every window's idle close, so only series
    # that stopped (delisted, renamed, a producer's made-up symbols) are dropped.
    series_ttl_ms: int = 86_400_000
    # Kafka messages travel to the first Python step in batches of up to this many records
    # or bytes, each sent at most source_batch_ms after its first record arrived
    # (connectors.flink_topology.batch_records): PyFlink charges per element, so a replay
    # is processed a group of bars at a time, and a live bar waits at most that long.
    source_batch_records: int = 1_000
    source_batch_bytes: int = 1_048_576
    source_batch_ms: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.series_ttl_ms, bool) or self.series_ttl_ms < 0:
            raise ValueError(f"series_ttl_ms must be >= 0 (0: never), got {self.series_ttl_ms!r}")
        for name in ("source_batch_records", "source_batch_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if isinstance(self.source_batch_ms, bool) or self.source_batch_ms < 0:
            raise ValueError(f"source_batch_ms must be >= 0, got {self.source_batch_ms!r}")


@dataclass(frozen=True, slots=True)
class AnalyticsConfig:
    """Volume profiles and indicators (``jobs.analytics``); see ``add_job_arguments``.

    ``profile_timeframes`` are the profile windows over the 1m bars (empty: no profiles);
    ``profile_rows`` equal-width rows per profile, or rows of ``profile_row_size`` aligned to
    its multiples when that is set (at most ``profile_max_rows``); ``indicators`` turns RSI,
    MACD and Bollinger bands on the closed bars of every timeframe on or off.
    """

    profile_timeframes: tuple[str, ...] = DEFAULT_PROFILE_TIMEFRAMES
    profile_rows: int = DEFAULT_ROWS
    profile_row_size: float | None = None
    profile_max_rows: int = DEFAULT_MAX_ROWS
    indicators: bool = True

    def __post_init__(self) -> None:
        try:
            validate_rollup_timeframes(self.profile_timeframes)
        except ValueError as exc:
            raise ValueError(f"profile timeframes: {exc}") from None
        if isinstance(self.profile_rows, bool) or self.profile_rows < 1:
            raise ValueError(f"profile_rows must be >= 1, got {self.profile_rows!r}")
        if self.profile_max_rows < 1:
            raise ValueError(f"profile_max_rows must be >= 1, got {self.profile_max_rows!r}")
        size = self.profile_row_size
        if size is not None and not (size > 0 and size != float("inf")):
            raise ValueError(f"profile_row_size must be a finite number > 0, got {size!r}")

    @property
    def enabled(self) -> bool:
        """Whether the job computes anything analytic at all."""
        return bool(self.profile_timeframes) or self.indicators


def parse_profile_timeframes(text: str) -> tuple[str, ...]:
    """``"15m,1h"`` -> ``("15m", "1h")``; ``"none"`` (or empty) -> ``()``: no profiles."""
    try:
        return parse_rollup_timeframes(text)
    except ValueError as exc:
        raise ValueError(str(exc).replace("roll-up", "profile")) from None


def parse_row_size(text: str) -> float | None:
    """A profile row size: a finite number > 0, or ``none``/empty for equal-width rows."""
    cleaned = text.strip().lower()
    if cleaned in ("", "none", "off"):
        return None
    size = float(cleaned)
    if not (size > 0 and size != float("inf")):
        raise ValueError(f"row size must be a finite number > 0, got {text!r}")
    return size


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """How the sinks batch: ClickHouse by size and time, Redis per update in short batches."""

    clickhouse_url: str = DEFAULT_CLICKHOUSE_URL
    clickhouse_batch_rows: int = 10_000
    clickhouse_flush_ms: int = 1_000
    # How long a sink waits for a ClickHouse server or Redis that is down (a write retried, or
    # the connection of a restarted sink) before the task fails and Flink restarts it from
    # the last checkpoint, the unwritten rows kept in state. Keep it below the checkpoint
    # timeout (2 min): a checkpoint waits behind a sink that waits.
    clickhouse_retry_s: float = 60.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_batch_rows: int = 500
    # Live state: 0 writes each Python bundle's rows at its end (python.fn-execution.bundle.time
    # after its first row at most), so an update reaches Redis within a few ms of the job; > 0
    # holds a row until the batch's oldest has waited that long (a processing-time timer).
    redis_flush_ms: int = 0
    redis_recent_bars: int = 500
    redis_ttl_s: int | None = None
    # Announce each applied update on the series' pub/sub channel (kline-updates:...).
    redis_publish: bool = True

    def __repr__(self) -> str:
        """The fields, with the passwords of the ClickHouse and Redis URLs as ``***``."""
        return redacted_repr(self)


@dataclass(frozen=True, slots=True)
class JobSettings:
    """Everything ``klineflow job run|submit`` needs; see ``add_job_arguments`` for the flags."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    klines_topic: str = "klines.raw"
    dlq_topic: str = "klines.dlq"
    consumer_group: str = "klineflow-job"
    bounded: bool = False
    parallelism: int | None = None
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sinks: SinkConfig = field(default_factory=SinkConfig)
    signals: SignalConfig = field(default_factory=SignalConfig)
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    flink_conf_dir: Path = PROJECT_ROOT / "flink-conf"
    flink_jars_dir: Path = PROJECT_ROOT / "build" / "flink-jars"
    checkpoint_dir: Path = STATE_DIR / "checkpoints"
    job_name: str = "klineflow"
    # Flink settings over flink-conf/config.yaml and BOUNDED_RUN_SETTINGS (--flink-option).
    flink_overrides: tuple[tuple[str, str], ...] = ()
    # -Xmx of the JVM a local run starts (its mini-cluster: the hashmap state backend keeps
    # every series' state on this heap); "" = the JVM's own default, a quarter of the RAM,
    # which G1 fills with garbage before it collects (README: "A local run caps its JVM heap").
    local_heap: str = "1g"

    def __repr__(self) -> str:
        """The fields (nested settings included), every URL password shown as ``***``."""
        return redacted_repr(self)

    def with_overrides(self, **changes: Any) -> JobSettings:
        """A copy with some fields replaced (tests use it for fresh topics and paths)."""
        return replace(self, **changes)


def parse_heap_size(text: str) -> str:
    """``--local-heap``: a JVM heap size such as ``1g`` or ``1536m``; '' or ``0``: the
    JVM's default (``0`` so that the environment variable can say it too)."""
    value = text.strip().lower()
    if value in ("", "0"):
        return ""
    if not re.fullmatch(r"[1-9][0-9]*[kmg]?", value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a JVM heap size (e.g. 1g, 1536m; 0 for the JVM's default)"
        )
    return value


def parse_flink_options(text: str) -> tuple[tuple[str, str], ...]:
    """``--flink-option``: comma-separated ``KEY=VALUE`` Flink settings ('' = none)."""
    options: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, equals, value = item.partition("=")
        if not equals or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(
                f"{item!r} is not KEY=VALUE (e.g. python.fn-execution.bundle.size=100)"
            )
        options.append((key.strip(), value.strip()))
    return tuple(options)


def format_flink_options(options: tuple[tuple[str, str], ...]) -> str:
    """The inverse of :func:`parse_flink_options`."""
    return ",".join(f"{key}={value}" for key, value in options)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's flags; each falls back to an environment variable named in --help.

    Every default is the one of :class:`JobSettings` (and the settings it nests), so that
    parsing no flags gives ``JobSettings()``; the boolean switches are off by default and
    each names the non-default behaviour.
    """
    job = JobSettings()
    pipeline, sinks, analytics = job.pipeline, job.sinks, job.analytics
    env_flag(
        parser,
        "--bootstrap-servers",
        env="KAFKA_BOOTSTRAP_SERVERS",
        default=job.kafka_bootstrap,
        help="Kafka bootstrap servers",
    )
    env_flag(
        parser,
        "--topic",
        env="KLINES_TOPIC",
        default=job.klines_topic,
        help="input topic of raw 1m klines",
    )
    env_flag(
        parser,
        "--dlq-topic",
        env="KLINES_DLQ_TOPIC",
        default=job.dlq_topic,
        help="dead-letter topic for rejected input",
    )
    env_flag(
        parser,
        "--group-id",
        env="KLINEFLOW_GROUP_ID",
        default=job.consumer_group,
        help="Kafka consumer group (offsets are committed on checkpoints)",
    )
    env_flag(
        parser,
        "--clickhouse-url",
        env="CLICKHOUSE_URL",
        default=sinks.clickhouse_url,
        help="chdb:///path (embedded) or clickhouse://user:pass@host:9000/crypto_kline",
        secret=True,
    )
    env_flag(
        parser,
        "--redis-url",
        env="REDIS_URL",
        default=sinks.redis_url,
        help="Redis for live state: redis://, rediss://, or redis+cluster://host:port (a cluster)",
        secret=True,
    )
    env_flag(
        parser,
        "--parallelism",
        env="KLINEFLOW_PARALLELISM",
        type=int,
        default=job.parallelism,
        help="job parallelism (default: flink-conf/config.yaml)",
    )
    env_flag(
        parser,
        "--max-out-of-orderness-ms",
        env="KLINEFLOW_MAX_OUT_OF_ORDERNESS_MS",
        type=int,
        default=pipeline.max_out_of_orderness_ms,
        help="watermark bound on out-of-order bars",
    )
    env_flag(
        parser,
        "--idleness-ms",
        env="KLINEFLOW_IDLENESS_MS",
        type=int,
        default=pipeline.idleness_ms,
        help="a partition silent this long stops holding the watermark back",
    )
    env_flag(
        parser,
        "--allowed-lateness-ms",
        env="KLINEFLOW_ALLOWED_LATENESS_MS",
        type=int,
        default=pipeline.allowed_lateness_ms,
        help="how long after its close a bar may still change",
    )
    env_flag(
        parser,
        "--rollup-timeframes",
        env="KLINEFLOW_ROLLUP_TIMEFRAMES",
        type=parse_rollup_timeframes,
        default=",".join(pipeline.rollup_timeframes),
        help="roll-ups of 1m bars, comma separated; 'none' turns them off",
    )
    env_bool_flag(
        parser,
        "--rollup-emit-in-progress",
        env="KLINEFLOW_ROLLUP_EMIT_IN_PROGRESS",
        help="re-emit open roll-up bars on in-progress 1m updates, not only on closed ones",
    )
    env_flag(
        parser,
        "--rollup-idle-close-ms",
        env="KLINEFLOW_ROLLUP_IDLE_CLOSE_MS",
        type=int,
        default=pipeline.rollup_idle_close_ms,
        help="close a live roll-up window this long after its end if no watermark came (0: off)",
    )
    env_flag(
        parser,
        "--rollup-live-horizon-ms",
        env="KLINEFLOW_ROLLUP_LIVE_HORIZON_MS",
        type=int,
        default=pipeline.rollup_live_horizon_ms,
        help="re-emit open roll-up and profile windows only if they ended at most this long "
        "ago by the wall clock, so replays emit each window once (-1: always)",
    )
    env_flag(
        parser,
        "--series-ttl-ms",
        env="KLINEFLOW_SERIES_TTL_MS",
        type=int,
        default=pipeline.series_ttl_ms,
        help="drop the state of a series silent this long by the wall clock, once its windows "
        "are done (0: never)",
    )
    env_flag(
        parser,
        "--source-batch-records",
        env="KLINEFLOW_SOURCE_BATCH_RECORDS",
        type=int,
        default=pipeline.source_batch_records,
        help="Kafka messages per batch into the first Python step (1: one at a time)",
    )
    env_flag(
        parser,
        "--source-batch-bytes",
        env="KLINEFLOW_SOURCE_BATCH_BYTES",
        type=int,
        default=pipeline.source_batch_bytes,
        help="at most this many bytes of messages per batch",
    )
    env_flag(
        parser,
        "--source-batch-ms",
        env="KLINEFLOW_SOURCE_BATCH_MS",
        type=int,
        default=pipeline.source_batch_ms,
        help="send a batch at most this long after its first message arrived (0: at once)",
    )
    env_flag(
        parser,
        "--profile-timeframes",
        env="KLINEFLOW_PROFILE_TIMEFRAMES",
        type=parse_profile_timeframes,
        default=",".join(analytics.profile_timeframes),
        help="volume profile windows over the 1m bars, comma separated; 'none' turns them off",
    )
    env_flag(
        parser,
        "--profile-rows",
        env="KLINEFLOW_PROFILE_ROWS",
        type=int,
        default=analytics.profile_rows,
        help="equal-width price rows per volume profile",
    )
    env_flag(
        parser,
        "--profile-row-size",
        env="KLINEFLOW_PROFILE_ROW_SIZE",
        type=parse_row_size,
        default=analytics.profile_row_size,
        help="fixed price height of a profile row (rows aligned to its multiples) instead of "
        "--profile-rows",
    )
    env_flag(
        parser,
        "--profile-max-rows",
        env="KLINEFLOW_PROFILE_MAX_ROWS",
        type=int,
        default=analytics.profile_max_rows,
        help="with --profile-row-size: at most this many rows (the size is scaled up to fit)",
    )
    env_bool_flag(
        parser,
        "--no-indicators",
        env="KLINEFLOW_NO_INDICATORS",
        help="do not compute RSI 14, MACD 12/26/9 and Bollinger 20/2 on closed bars",
    )
    env_flag(
        parser,
        "--clickhouse-batch-rows",
        env="KLINEFLOW_CLICKHOUSE_BATCH_ROWS",
        type=int,
        default=sinks.clickhouse_batch_rows,
        help="ClickHouse insert batch size",
    )
    env_flag(
        parser,
        "--clickhouse-flush-ms",
        env="KLINEFLOW_CLICKHOUSE_FLUSH_MS",
        type=int,
        default=sinks.clickhouse_flush_ms,
        help="flush ClickHouse at least this often",
    )
    env_flag(
        parser,
        "--clickhouse-retry-s",
        env="KLINEFLOW_CLICKHOUSE_RETRY_S",
        type=float,
        default=sinks.clickhouse_retry_s,
        help="wait this long for a ClickHouse server or Redis that is down (writes retried, "
        "input backpressured) before the task fails and Flink restarts it",
    )
    env_flag(
        parser,
        "--redis-batch-rows",
        env="KLINEFLOW_REDIS_BATCH_ROWS",
        type=int,
        default=sinks.redis_batch_rows,
        help="Redis pipeline batch size",
    )
    env_flag(
        parser,
        "--redis-flush-ms",
        env="KLINEFLOW_REDIS_FLUSH_MS",
        type=int,
        default=sinks.redis_flush_ms,
        help="hold Redis rows until the oldest has waited this long (0: write them at the "
        "end of each Python bundle)",
    )
    env_flag(
        parser,
        "--redis-recent-bars",
        env="KLINEFLOW_REDIS_RECENT_BARS",
        type=int,
        default=sinks.redis_recent_bars,
        help="bars kept per series in the klines: sorted set",
    )
    env_flag(
        parser,
        "--redis-ttl-s",
        env="KLINEFLOW_REDIS_TTL_S",
        type=int,
        default=sinks.redis_ttl_s,
        help="TTL of the Redis keys (default: no expiry)",
    )
    env_bool_flag(
        parser,
        "--no-redis-publish",
        env="KLINEFLOW_NO_REDIS_PUBLISH",
        help="do not announce updates on the kline-updates:{series} pub/sub channels",
    )
    add_signal_arguments(parser)
    env_flag(
        parser,
        "--flink-conf-dir",
        env="KLINEFLOW_FLINK_CONF_DIR",
        type=Path,
        default=job.flink_conf_dir,
        help="directory of the Flink config.yaml the job runs with",
    )
    env_flag(
        parser,
        "--flink-option",
        env="KLINEFLOW_FLINK_OPTIONS",
        type=parse_flink_options,
        default=job.flink_overrides,
        metavar="KEY=VALUE,...",
        help="Flink settings that win over config.yaml and the bounded-run settings, "
        "comma-separated (e.g. python.fn-execution.bundle.size=100); a value holding a comma "
        "belongs in --flink-conf-dir's config.yaml",
    )
    env_flag(
        parser,
        "--local-heap",
        env="KLINEFLOW_LOCAL_HEAP",
        type=parse_heap_size,
        default=job.local_heap,
        help="JVM heap (-Xmx) of a local run's mini-cluster, which holds the job's keyed "
        "state: raise it for many more series; 0 = the JVM's default (a quarter of the "
        "RAM); a JVM_ARGS that sets -Xmx wins; `job submit` uses the cluster's memory "
        "settings instead",
    )
    env_flag(
        parser,
        "--checkpoint-dir",
        env="KLINEFLOW_CHECKPOINT_DIR",
        type=Path,
        default=job.checkpoint_dir,
        help="where the job's checkpoints go (a path every TaskManager can reach)",
    )
    env_bool_flag(
        parser,
        "--bounded",
        env="KLINEFLOW_BOUNDED",
        help="read the topic up to its current end, then finish",
    )


def settings_from_args(args: argparse.Namespace) -> JobSettings:
    """Build the frozen settings from parsed flags."""
    return JobSettings(
        kafka_bootstrap=args.bootstrap_servers,
        klines_topic=args.topic,
        dlq_topic=args.dlq_topic,
        consumer_group=args.group_id,
        bounded=args.bounded,
        parallelism=args.parallelism,
        flink_conf_dir=Path(args.flink_conf_dir).resolve(),
        checkpoint_dir=Path(args.checkpoint_dir).resolve(),
        flink_overrides=tuple(args.flink_option),
        local_heap=args.local_heap,
        pipeline=PipelineConfig(
            max_out_of_orderness_ms=args.max_out_of_orderness_ms,
            idleness_ms=args.idleness_ms,
            allowed_lateness_ms=args.allowed_lateness_ms,
            rollup_timeframes=tuple(args.rollup_timeframes),
            rollup_emit_in_progress=args.rollup_emit_in_progress,
            rollup_idle_close_ms=args.rollup_idle_close_ms,
            rollup_live_horizon_ms=args.rollup_live_horizon_ms,
            series_ttl_ms=args.series_ttl_ms,
            source_batch_records=args.source_batch_records,
            source_batch_bytes=args.source_batch_bytes,
            source_batch_ms=args.source_batch_ms,
        ),
        sinks=SinkConfig(
            clickhouse_url=resolve_clickhouse_url(args.clickhouse_url),
            clickhouse_batch_rows=args.clickhouse_batch_rows,
            clickhouse_flush_ms=args.clickhouse_flush_ms,
            clickhouse_retry_s=args.clickhouse_retry_s,
            redis_url=args.redis_url,
            redis_batch_rows=args.redis_batch_rows,
            redis_flush_ms=args.redis_flush_ms,
            redis_recent_bars=args.redis_recent_bars,
            redis_ttl_s=args.redis_ttl_s,
            redis_publish=not args.no_redis_publish,
        ),
        signals=signal_config_from_args(args, redis_url=args.redis_url),
        analytics=AnalyticsConfig(
            profile_timeframes=tuple(args.profile_timeframes),
            profile_rows=args.profile_rows,
            profile_row_size=args.profile_row_size,
            profile_max_rows=args.profile_max_rows,
            indicators=not args.no_indicators,
        ),
    )
