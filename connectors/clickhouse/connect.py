"""Entry points: :func:`open_writer` for a URL and :func:`migrate`."""

from __future__ import annotations

import logging
from pathlib import Path

from connectors.clickhouse.chdb import ChdbWriter
from connectors.clickhouse.native import NativeWriter
from connectors.clickhouse.url import ClickHouseTarget, parse_clickhouse_url
from connectors.clickhouse.writer import ClickHouseWriter
from connectors.retry import RetryPolicy

log = logging.getLogger(__name__)


def _as_target(url: str | ClickHouseTarget) -> ClickHouseTarget:
    return url if isinstance(url, ClickHouseTarget) else parse_clickhouse_url(url)


def open_writer(
    url: str | ClickHouseTarget,
    *,
    migrate_schema: bool = True,
    sql_dir: Path | None = None,
    retry: RetryPolicy | None = None,
) -> ClickHouseWriter:
    """Open a writer for ``url``: connect, health-check (``SELECT 1``), migrate if asked.

    ``retry`` applies to the native backend only (chdb errors are local and not retried).
    """
    target = _as_target(url)
    writer: ClickHouseWriter = (
        ChdbWriter(target) if target.backend == "chdb" else NativeWriter(target, retry=retry)
    )
    log.debug("connected to %s", target)
    if migrate_schema:
        try:
            writer.migrate(sql_dir)
        except BaseException:
            writer.close()
            raise
    return writer


def migrate(url: str | ClickHouseTarget, *, sql_dir: Path | None = None) -> list[str]:
    """Apply pending migrations to ``url``; returns the file names applied now."""
    with open_writer(url, migrate_schema=False) as writer:
        return writer.migrate(sql_dir)
