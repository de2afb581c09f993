"""The ingest bridge runtime: exchange WebSockets -> DESIGN.md records -> Kafka, unattended.

Pieces, from the wire inwards:

- :class:`ShardSupervisor` keeps one logical connection (up to ``max_streams_per_connection``
  symbols) alive forever: reconnects with exponential backoff and full jitter (reset after a
  stable period), a no-data watchdog, application pings, and a *planned* reconnect before the
  exchange's connection-age limit or after a shutdown notice, where the replacement is opened
  and must deliver data before the old connection is closed (both run meanwhile, so nothing
  is missed).
- :class:`SeriesTracker` decides, per series, whether an update is new (produce), a duplicate
  or stale (drop) — so overlapping connections never produce one exchange message twice — and
  keeps the ranges of closed bars that were never produced (gaps).
- :class:`GapRepairer` fetches gaps over REST (rate limited, honouring 429/418 and
  Retry-After) and produces the bars that are still missing.
- :class:`KafkaSink` produces from a dedicated thread with a bounded number of
  unacknowledged records (the event loop awaits when Kafka is slow or down: memory is
  bounded). When the producer gives up on records for a transient reason (an outage longer
  than ``delivery_timeout_ms``) or stops answering, it replaces the producer and sends what
  was not acknowledged again; records refused for good are counted, and closed bars among
  them go back to the repairer.
- :class:`Bridge` wires them for one market, prints counters periodically and on exit.
- :class:`BridgeGroup` runs one :class:`Bridge` per market of one exchange (spot and
  perpetuals side by side) around one shared sink, with one stats line.

Duplicates downstream: a REST-repaired bar can duplicate a WebSocket bar only across a bridge
restart (start-up backfill) or a lost delivery acknowledgement, and a record the sink sends
again after replacing its producer is written twice if the old one had delivered it after all
(identical bytes). The Flink upsert keeps one bar per (series, open_time): exact duplicates
are dropped and a closed bar is final, so replaying a closed bar changes nothing.

Where each piece lives: :mod:`.connection` (:class:`Connection`, :class:`ShardSupervisor`),
:mod:`.tracker` (:class:`SeriesTracker`), :mod:`.repair` (:class:`GapRepairer`),
:mod:`.kafka_sink` (:class:`KafkaSink`), :mod:`.config` (:class:`BridgeConfig`),
:mod:`.stats` (counters, :func:`lag_summary`, :class:`LogSampler`), :mod:`.runtime`
(:class:`Bridge`), :mod:`.group` (:class:`BridgeGroup`) and :mod:`.markets` (which markets,
symbols and endpoint URLs a process follows, from the command line's words). The names below
are loaded on first use, so that the command line can read :class:`BridgeConfig`'s defaults
without importing aiohttp and kafka-python.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connectors.bridge.config import BridgeConfig
    from connectors.bridge.connection import Connection, ShardSupervisor
    from connectors.bridge.group import BridgeGroup
    from connectors.bridge.kafka_sink import KafkaSink, RecordSink
    from connectors.bridge.repair import GapRepairer
    from connectors.bridge.runtime import Bridge
    from connectors.bridge.stats import (
        ConnectionStats,
        LogSampler,
        RepairStats,
        lag_summary,
        wall_ms,
    )
    from connectors.bridge.tracker import SeriesState, SeriesTracker, Verdict

# Each public name and the submodule that defines it.
_SUBMODULE: dict[str, str] = {
    "BridgeConfig": "config",
    "Connection": "connection",
    "ShardSupervisor": "connection",
    "KafkaSink": "kafka_sink",
    "RecordSink": "kafka_sink",
    "GapRepairer": "repair",
    "Bridge": "runtime",
    "BridgeGroup": "group",
    "ConnectionStats": "stats",
    "LogSampler": "stats",
    "RepairStats": "stats",
    "lag_summary": "stats",
    "wall_ms": "stats",
    "SeriesState": "tracker",
    "SeriesTracker": "tracker",
    "Verdict": "tracker",
}
__all__ = [
    "Bridge",
    "BridgeConfig",
    "BridgeGroup",
    "Connection",
    "ConnectionStats",
    "GapRepairer",
    "KafkaSink",
    "LogSampler",
    "RecordSink",
    "RepairStats",
    "SeriesState",
    "SeriesTracker",
    "ShardSupervisor",
    "Verdict",
    "lag_summary",
    "wall_ms",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use (PEP 562)."""
    submodule = _SUBMODULE.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value
