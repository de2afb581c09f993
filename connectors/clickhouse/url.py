"""ClickHouse URLs: ``chdb://`` (embedded) and ``clickhouse://`` (a server) parsed into a
:class:`ClickHouseTarget` whose password never shows.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

log = logging.getLogger(__name__)


DATABASE: Final = "crypto_kline"
DEFAULT_URL: Final = "chdb://.klineflow/chdb"
NATIVE_DEFAULT_PORT: Final = 9000
NATIVE_DEFAULT_SECURE_PORT: Final = 9440
# The repository (the package is installed editable): sql/ lives here, and relative chdb
# paths resolve against it, as jobs.config does, so every process names the same directory.
PROJECT_ROOT: Final = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class ClickHouseTarget:
    """Where ClickHouse data lives, parsed from a ``CLICKHOUSE_URL``.

    ``backend`` is ``"chdb"`` (``path`` is the absolute data directory) or ``"native"``
    (``host``/``port``/``user``/``password``/``secure``). ``repr`` and ``str`` never show
    the password; :attr:`url` (with the password, for handing to a worker process) does.
    """

    backend: Literal["chdb", "native"]
    path: str | None = None
    host: str | None = None
    port: int = NATIVE_DEFAULT_PORT
    user: str = "default"
    password: str = field(default="", repr=False)
    secure: bool = False
    database: str = DATABASE
    connect_timeout_s: float = 10.0
    send_receive_timeout_s: float = 300.0

    @property
    def url(self) -> str:
        """The canonical URL, password included: pass it to processes, never log it."""
        return self._format(redact=False)

    @property
    def redacted_url(self) -> str:
        """The canonical URL with the password replaced by ``***``: safe to log."""
        return self._format(redact=True)

    def __str__(self) -> str:
        return self.redacted_url

    def _format(self, *, redact: bool) -> str:
        if self.backend == "chdb":
            return f"chdb://{self.path}"
        credentials = quote(self.user, safe="")
        if self.password:
            credentials += ":" + ("***" if redact else quote(self.password, safe=""))
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        query = []
        if self.secure:
            query.append("secure=1")
        if self.connect_timeout_s != 10.0:
            query.append(f"connect_timeout={self.connect_timeout_s:g}")
        if self.send_receive_timeout_s != 300.0:
            query.append(f"send_receive_timeout={self.send_receive_timeout_s:g}")
        suffix = ("?" + "&".join(query)) if query else ""
        return f"clickhouse://{credentials}@{host}:{self.port}/{self.database}{suffix}"


def parse_clickhouse_url(url: str, *, base_dir: Path | None = None) -> ClickHouseTarget:
    """Parse a ``CLICKHOUSE_URL`` into a :class:`ClickHouseTarget`.

    ``chdb://relative/path`` is resolved against ``base_dir`` (default: the project root,
    like ``jobs.config``) at parse time, so the target names the same directory in any
    process, whatever its working directory (Flink's Python workers run elsewhere).
    Server URLs accept ``?secure=1``, ``?connect_timeout=S`` and ``?send_receive_timeout=S``.
    Raises ValueError with a message that never contains the password.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(
            "ClickHouse URL must look like chdb:///path or clickhouse://user:pass@host:9000/"
            f"{DATABASE}"
        )
    if scheme == "chdb":
        return _parse_chdb(rest, base_dir)
    if scheme in ("clickhouse", "clickhouse+native"):
        return _parse_native(url)
    raise ValueError(
        f"unsupported ClickHouse URL scheme {scheme!r} (expected chdb://, clickhouse:// or "
        "clickhouse+native://)"
    )


def _parse_chdb(rest: str, base_dir: Path | None) -> ClickHouseTarget:
    if "?" in rest or "#" in rest:
        raise ValueError("chdb URL: the path must not contain '?' or '#' (no options exist)")
    if not rest or rest == "/":
        raise ValueError("chdb URL needs a data directory: chdb:///abs/path or chdb://rel/path")
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = (base_dir or PROJECT_ROOT) / path
    return ClickHouseTarget(backend="chdb", path=os.path.normpath(path))


def _parse_native(url: str) -> ClickHouseTarget:
    parts = urlsplit(url)
    try:
        port_number = parts.port
    except ValueError:
        raise ValueError("ClickHouse URL: the port is not a number between 0 and 65535") from None
    if not parts.hostname:
        raise ValueError("ClickHouse URL: missing host (clickhouse://user:pass@host:9000/db)")
    database = parts.path.strip("/") or DATABASE
    if database != DATABASE:
        raise ValueError(
            f"ClickHouse URL: database must be {DATABASE!r} (the schema in sql/ creates it), "
            f"got {database!r}"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    known = {"secure", "connect_timeout", "send_receive_timeout"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"ClickHouse URL: unknown option(s) {', '.join(unknown)}")
    secure = options.get("secure", "0").strip().lower() in ("1", "true", "yes", "on")
    try:
        connect_timeout = float(options.get("connect_timeout", "10"))
        send_receive_timeout = float(options.get("send_receive_timeout", "300"))
    except ValueError:
        raise ValueError("ClickHouse URL: timeouts must be numbers of seconds") from None
    default_port = NATIVE_DEFAULT_SECURE_PORT if secure else NATIVE_DEFAULT_PORT
    return ClickHouseTarget(
        backend="native",
        host=parts.hostname,
        port=port_number or default_port,
        user=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
        secure=secure,
        database=database,
        connect_timeout_s=connect_timeout,
        send_receive_timeout_s=send_receive_timeout,
    )
