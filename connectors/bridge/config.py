"""Settings of the bridge of one market of one exchange."""

from __future__ import annotations

from dataclasses import dataclass

from connectors.redaction import redacted_repr


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Settings of the bridge of one exchange market (a process following several markets
    has one per market: their endpoints and topics differ)."""

    ws_url: str
    rest_url: str
    topic: str
    dlq_topic: str
    stats_interval_s: float = 60.0
    no_data_timeout_s: float = 90.0
    connect_timeout_s: float = 15.0
    # Planned reconnect before the exchange's limit; None: the adapter's own value.
    max_connection_age_s: float | None = None
    # How long a replacement connection may take to deliver data before it is given up.
    overlap_timeout_s: float = 30.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    backoff_stable_s: float = 60.0
    # Override of the adapter's ping timers (tests).
    ping_interval_s: float | None = None
    # Wait before repairing a new gap, so a closed bar still in flight can fill it first.
    repair_delay_s: float = 2.0
    repair_concurrency: int = 2
    startup_backfill_minutes: int = 0
    max_pending: int = 20_000

    def __repr__(self) -> str:
        """The settings; a password or token in the WebSocket or REST URL shows as ``***``."""
        return redacted_repr(self)
