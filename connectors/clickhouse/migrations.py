"""Schema migrations: the numbered ``sql/*.sql`` files and the tables they create."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from connectors.clickhouse.errors import MigrationError
from connectors.clickhouse.rows import split_sql_statements
from connectors.clickhouse.url import PROJECT_ROOT

DEFAULT_SQL_DIR: Final = PROJECT_ROOT / "sql"
DATA_TABLES: Final[tuple[str, ...]] = ("klines", "volume_profile", "indicators", "signals")
MIGRATIONS_TABLE: Final = "schema_migrations"
_MIGRATION_NAME_RE: Final = re.compile(r"^(\d+)_[A-Za-z0-9_.-]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``sql/NNN_name.sql`` file."""

    version: int
    name: str
    checksum: str
    sql: str

    @property
    def statements(self) -> list[str]:
        """The file's statements, comments dropped."""
        return split_sql_statements(self.sql)


def load_migrations(sql_dir: Path | None = None) -> list[Migration]:
    """The migration files of ``sql_dir`` (default: the repository's ``sql/``) by version."""
    directory = Path(sql_dir) if sql_dir is not None else DEFAULT_SQL_DIR
    if not directory.is_dir():
        raise MigrationError(f"migration folder {directory} does not exist")
    migrations: list[Migration] = []
    seen: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME_RE.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name!r} is not named NNN_description.sql")
        version = int(match.group(1))
        if version in seen:
            raise MigrationError(
                f"migration version {version} appears twice: {seen[version]}, {path.name}"
            )
        seen[version] = path.name
        data = path.read_bytes()
        migrations.append(
            Migration(
                version=version,
                name=path.name,
                checksum=hashlib.sha256(data).hexdigest(),
                sql=data.decode("utf-8"),
            )
        )
    if not migrations:
        raise MigrationError(f"no migration files (NNN_name.sql) in {directory}")
    return sorted(migrations, key=lambda migration: migration.version)
