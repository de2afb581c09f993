"""A throw-away ClickHouse server on loopback, for the native-protocol tests and benchmarks.

It runs whatever ``clickhouse-server`` binary is installed (Debian's is 18.16, see
DESIGN.md "What runs where": the real schema needs a modern server, so tests use a reduced
schema) with every file under one directory and the native protocol on one loopback port.
Two users exist: ``default`` without a password and ``klineflow`` with :attr:`password`.
``stop()`` followed by ``start()`` is a real server restart on the same data.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self

LOOPBACK: Final = "127.0.0.1"
SERVER_BINARY_NAMES: Final = ("clickhouse-server",)
INSTALL_HINT: Final = (
    "no clickhouse-server binary found: install it with `sudo apt-get install clickhouse-server` "
    "(or run `make setup` as root)"
)

_CONFIG: Final = """<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{home}/server.log</log>
    <errorlog>{home}/server.err.log</errorlog>
  </logger>
  <listen_host>{host}</listen_host>
  <tcp_port>{port}</tcp_port>
  <path>{home}/data/</path>
  <tmp_path>{home}/tmp/</tmp_path>
  <user_files_path>{home}/user_files/</user_files_path>
  <format_schema_path>{home}/format_schemas/</format_schema_path>
  <users_config>{home}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <timezone>UTC</timezone>
</yandex>
"""

_USERS: Final = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>{host}</ip></networks>
      <profile>default</profile><quota>default</quota>
    </default>
    <klineflow>
      <password>{password}</password>
      <networks><ip>{host}</ip></networks>
      <profile>default</profile><quota>default</quota>
    </klineflow>
  </users>
  <quotas><default></default></quotas>
</yandex>
"""


class ClickHouseServerError(RuntimeError):
    """The server binary is missing or the server did not start or stop in time."""


def find_server_binary() -> str:
    """The path of an installed ``clickhouse-server``; raises with an install hint if none."""
    for name in SERVER_BINARY_NAMES:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
        if found:
            return found
    raise ClickHouseServerError(INSTALL_HINT)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalClickHouseServer:
    """One ``clickhouse-server`` process with its config, data and logs under ``home``."""

    def __init__(self, home: Path, *, port: int | None = None) -> None:
        self.home = Path(home).resolve()
        self.port = port or free_loopback_port()
        self.password = secrets.token_urlsafe(12)
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, *, user: str = "default") -> str:
        """The ``CLICKHOUSE_URL`` of this server (with ``klineflow``'s password if that user)."""
        credentials = "default" if user == "default" else f"{user}:{self.password}"
        return f"clickhouse://{credentials}@{LOOPBACK}:{self.port}/crypto_kline"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server and wait until it accepts connections on its port."""
        if self.running:
            return
        binary = find_server_binary()
        for folder in ("data", "tmp", "user_files", "format_schemas"):
            (self.home / folder).mkdir(parents=True, exist_ok=True)
        config = self.home / "config.xml"
        config.write_text(_CONFIG.format(home=self.home, host=LOOPBACK, port=self.port))
        users = self.home / "users.xml"
        users.write_text(_USERS.format(host=LOOPBACK, password=self.password))
        os.chmod(users, 0o600)
        console = (self.home / "console.log").open("ab")
        try:
            self._process = subprocess.Popen(
                [binary, f"--config-file={config}"],
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            console.close()
        deadline = time.monotonic() + timeout_s
        while not _port_accepts(self.port):
            if not self.running:
                raise ClickHouseServerError(
                    f"clickhouse-server exited at start (code {self._process.returncode}):\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ClickHouseServerError(
                    f"clickhouse-server did not listen on {self.port} within {timeout_s:.0f} s:\n"
                    + self.log_tail()
                )
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server, wait for it to exit, SIGKILL it after ``timeout_s``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's error log and console output."""
        text = []
        for name in ("server.err.log", "console.log"):
            path = self.home / name
            if path.is_file():
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
