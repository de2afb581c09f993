"""The signals of closed bars: their settings, their flags, and the inference operator.

The series operator (``udfs.series``) turns every closed bar version of the configured
timeframes into exactly one signal: the rules analyser's, or, with ``config.inference.url``
set, a request that :func:`with_inference` sends to the model through PyFlink's async
operator. The store sink writes them to ClickHouse ``signals`` and Redis ``signal:``.

Python async functions need PyFlink's *process* execution mode (thread mode refuses them):
``flink-conf/config.yaml`` sets ``python.execution-mode: process``.

This module imports PyFlink only inside its functions, so ``jobs.config`` can import
:class:`SignalConfig` cheaply.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from connectors.inference import InferenceSettings
from udfs.record import TIMEFRAME_MS

if TYPE_CHECKING:
    from pyflink.datastream import DataStream

DEFAULT_TIMEFRAMES = ("15m", "1h")


@dataclass(frozen=True, slots=True)
class SignalConfig:
    """The signals branch: which bars, how much context, how the operator calls the model.

    ``timeout_ms`` is the async operator's per-element timeout; the engine's own deadline is
    derived from it (:meth:`engine_settings`) so the engine answers (degraded if need be)
    before Flink's backstop fires.
    """

    enabled: bool = True
    timeframes: tuple[str, ...] = DEFAULT_TIMEFRAMES
    prompt_bars: int = 30
    history_bars: int = 100
    capacity: int = 100
    timeout_ms: int = 30_000
    inference: InferenceSettings = field(default_factory=InferenceSettings)

    def __post_init__(self) -> None:
        unknown = [tf for tf in self.timeframes if tf not in TIMEFRAME_MS]
        if unknown or not self.timeframes:
            raise ValueError(f"signal timeframes must be some of {', '.join(TIMEFRAME_MS)}")
        if self.prompt_bars < 1 or self.capacity < 1 or self.timeout_ms < 100:
            raise ValueError("prompt_bars and capacity must be >= 1, timeout_ms >= 100")

    def engine_settings(self) -> InferenceSettings:
        """The inference settings, the deadline 10 % (>= 0.5 s, <= half) under the timeout."""
        timeout_s = self.timeout_ms / 1000
        margin = min(max(0.5, timeout_s * 0.1), timeout_s * 0.5)
        return replace(
            self.inference, deadline_s=min(self.inference.deadline_s, timeout_s - margin)
        )


def with_inference(
    records: DataStream, config: SignalConfig, *, secrets_path: Path | None = None
) -> DataStream:
    """The series operator's elements with each ``SIGNAL_REQUEST`` answered by the model.

    The requests go through :class:`connectors.flink_inference.InferenceAsyncFunction` on
    ``AsyncDataStream.unordered_wait`` (bounded ``capacity``, a per-element timeout) and come
    back as ``SIGNAL`` records, exactly one per request; everything else passes as is.
    URLs with a password travel to the workers in ``secrets_path``, not in the job graph
    (``connectors.flink_inference.inference_function``).
    The requests stay in the subtask of the series operator that made them (forward), so the
    requests of one series share one engine's in-flight and cache deduplication.
    """
    from pyflink.common import Time, Types
    from pyflink.datastream.async_data_stream import AsyncDataStream

    from connectors.flink_inference import inference_function
    from jobs.pipeline import SignalRequestsOf, WithoutSignalRequests

    encoded = Types.PRIMITIVE_ARRAY(Types.BYTE())
    requests = records.flat_map(SignalRequestsOf(), output_type=Types.PICKLED_BYTE_ARRAY())
    others = records.flat_map(WithoutSignalRequests(), output_type=encoded)
    signals = (
        AsyncDataStream.unordered_wait(
            requests.name("signal-requests").uid("signal-requests"),
            inference_function(config.engine_settings(), secrets_path),
            Time.milliseconds(config.timeout_ms),
            capacity=config.capacity,
            output_type=encoded,
        )
        .name("signal-inference")
        .uid("signal-inference")
    )
    return others.name("series-records").uid("series-records").union(signals)


def parse_signal_timeframes(text: str) -> tuple[str, ...]:
    """``"15m,1h"`` -> ``("15m", "1h")``; raises ValueError for an unknown timeframe."""
    timeframes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [tf for tf in timeframes if tf not in TIMEFRAME_MS]
    if unknown or not timeframes:
        raise ValueError(f"unknown signal timeframe(s) {unknown} (use {', '.join(TIMEFRAME_MS)})")
    return timeframes


def add_signal_arguments(parser: argparse.ArgumentParser) -> None:
    """The signals branch's flags (each falls back to an env var named in --help).

    The API key has no flag: it comes from ``INFERENCE_API_KEY`` or ``--inference-api-key-file``
    and is read by the operator where it runs. Every default is the one of :class:`SignalConfig`.
    """
    from jobs.cliutil import env_bool_flag, env_flag

    defaults = SignalConfig()
    inference = defaults.inference
    env_bool_flag(
        parser,
        "--no-signals",
        env="KLINEFLOW_NO_SIGNALS",
        help="do not analyse closed bars (no signals branch)",
    )
    env_flag(
        parser,
        "--signal-timeframes",
        env="KLINEFLOW_SIGNAL_TIMEFRAMES",
        type=parse_signal_timeframes,
        default=defaults.timeframes,
        help="timeframes whose closed bars get a signal, comma separated",
    )
    env_flag(
        parser,
        "--inference-url",
        env="INFERENCE_URL",
        default=inference.url,
        help="OpenAI-compatible base URL (…/v1) or chat-completions URL; unset: rules analyser",
        secret=True,
    )
    env_flag(
        parser,
        "--inference-model",
        env="INFERENCE_MODEL",
        default=inference.model,
        help="model name sent to the endpoint (and the signals' source)",
    )
    env_flag(
        parser,
        "--inference-api-key-file",
        env="INFERENCE_API_KEY_FILE",
        default=inference.api_key_file,
        help="file holding the API key (else env INFERENCE_API_KEY); the key is never logged",
    )
    env_flag(
        parser,
        "--inference-rps",
        env="KLINEFLOW_INFERENCE_RPS",
        type=float,
        default=inference.requests_per_s,
        help="requests per second, for the whole operator (split over its subtasks)",
    )
    env_flag(
        parser,
        "--inference-tpm",
        env="KLINEFLOW_INFERENCE_TPM",
        type=float,
        default=inference.tokens_per_min,
        help="tokens per minute, for the whole operator (split over its subtasks)",
    )
    env_flag(
        parser,
        "--inference-price-per-million",
        env="KLINEFLOW_INFERENCE_PRICE_PER_MILLION",
        type=float,
        default=inference.price_per_million_tokens,
        help="price in USD per million tokens, for the cost metric",
    )
    env_flag(
        parser,
        "--inference-timeout-ms",
        env="KLINEFLOW_INFERENCE_TIMEOUT_MS",
        type=int,
        default=defaults.timeout_ms,
        help="per-bar timeout of the async operator (a degraded signal after it)",
    )
    env_flag(
        parser,
        "--inference-capacity",
        env="KLINEFLOW_INFERENCE_CAPACITY",
        type=int,
        default=defaults.capacity,
        help="bars in flight per async operator subtask",
    )


def signal_config_from_args(args: argparse.Namespace, *, redis_url: str | None) -> SignalConfig:
    """The SignalConfig of parsed flags; ``redis_url`` is the L2 cache (None: L1 only)."""
    return SignalConfig(
        enabled=not args.no_signals,
        timeframes=tuple(args.signal_timeframes),
        capacity=args.inference_capacity,
        timeout_ms=args.inference_timeout_ms,
        inference=InferenceSettings(
            url=args.inference_url or None,
            model=args.inference_model,
            api_key_file=args.inference_api_key_file or None,
            requests_per_s=args.inference_rps,
            tokens_per_min=args.inference_tpm,
            price_per_million_tokens=args.inference_price_per_million,
            l2_redis_url=redis_url,
        ),
    )
