"""``klineflow db migrate|status``: the ClickHouse schema (``sql/*.sql``) of a CLICKHOUSE_URL."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from connectors.clickhouse import DEFAULT_URL
from jobs.cliutil import env_flag


def register(subparsers: Any) -> None:
    """Add the ``db`` command with its ``migrate`` and ``status`` actions."""
    parser = subparsers.add_parser(
        "db",
        help="ClickHouse schema: apply migrations, show the schema version",
        description="Manage the ClickHouse schema of klineflow (database crypto_kline).",
    )
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)

    migrate = actions.add_parser(
        "migrate",
        help="apply the sql/NNN_*.sql files not yet applied (idempotent)",
        description=(
            "Create database crypto_kline and its tables, applying each sql/NNN_*.sql file "
            "once and recording it in crypto_kline.schema_migrations. Refuses to touch a "
            "database whose recorded schema is newer than this klineflow."
        ),
    )
    _add_common(migrate)
    migrate.set_defaults(func=run_migrate)

    status = actions.add_parser(
        "status", help="show the recorded schema version and the row count of each table"
    )
    _add_common(status)
    status.set_defaults(func=run_status)


def _add_common(parser: argparse.ArgumentParser) -> None:
    env_flag(
        parser,
        "--clickhouse-url",
        env="CLICKHOUSE_URL",
        default=DEFAULT_URL,
        help="chdb:///path (embedded) or clickhouse://user:pass@host:9000/crypto_kline",
    )
    parser.add_argument(
        "--sql-dir",
        type=Path,
        default=None,
        help="folder of NNN_*.sql migration files (default: the repository's sql/)",
    )


def run_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations and say what was applied."""
    from connectors.clickhouse import ClickHouseError, open_writer

    try:
        with open_writer(args.clickhouse_url, migrate_schema=False) as writer:
            applied = writer.migrate(args.sql_dir)
            version = writer.schema_version()
            target = writer.target
    except (ClickHouseError, ValueError) as exc:
        print(f"klineflow db migrate: {exc}", file=sys.stderr)
        return 1
    if applied:
        print(f"applied {', '.join(applied)} to {target}; schema version {version}")
    else:
        print(f"{target} is up to date; schema version {version}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    """Print the schema version and the deduplicated row count of every table."""
    from connectors.clickhouse import ClickHouseError, load_migrations, open_writer

    try:
        newest = load_migrations(args.sql_dir)[-1].version
        with open_writer(args.clickhouse_url, migrate_schema=False) as writer:
            version = writer.schema_version()
            counts = writer.table_counts() if version else {}
            target = writer.target
    except (ClickHouseError, ValueError) as exc:
        print(f"klineflow db status: {exc}", file=sys.stderr)
        return 1
    pending = "" if version >= newest else f" (migrations up to {newest} pending)"
    print(f"{target}: schema version {version}{pending}")
    for table, count in counts.items():
        print(f"  {table:<16} {count:>12} rows")
    return 0
