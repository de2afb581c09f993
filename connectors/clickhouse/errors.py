"""The errors of the ClickHouse writers (one base class, :class:`ClickHouseError`)."""

from __future__ import annotations


class ClickHouseError(RuntimeError):
    """Base class of every error this module raises about ClickHouse."""


class BackendUnavailable(ClickHouseError):
    """The Python package a backend needs is not installed (the message says what to install)."""


class ClickHouseQueryError(ClickHouseError):
    """ClickHouse rejected a statement (syntax, types, missing table, ...)."""


class ClickHouseUnavailable(ClickHouseError):
    """The server could not be reached or kept failing transiently through every retry."""


class SchemaVersionError(ClickHouseError):
    """The database's recorded schema is newer than the newest migration this code knows."""


class MigrationError(ClickHouseError):
    """The migration files themselves are unusable (bad name, duplicate version)."""
