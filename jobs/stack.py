"""The local stack's services: a real Apache Kafka broker (KRaft, one node) and a Redis server.

Both run as detached child processes on 127.0.0.1 with every file they write (config, data,
logs, pid files) under one directory, ``StackConfig.home`` (``.klineflow/stack`` by default,
git-ignored)::

    home/
      kafka/server.properties    generated on every start (ports may change)
      kafka/log4j2.properties    generated on every start
      kafka/cluster-id           created once; the storage is formatted once with it
      kafka/data/                the KRaft metadata log and the topic partitions
      kafka/logs/server.log      the broker's log (log4j2)
      kafka/logs/console.log     the JVM's stdout/stderr
      kafka.pid
      redis/redis.conf, redis/dump.rdb, redis/redis.log
      redis.pid

The Kafka broker is started as ``java -cp 'build/kafka/libs/*' kafka.Kafka server.properties``
from the jars Maven fetched (``make setup`` runs ``mvn -B -q -f pom.xml package``); Redis is
Debian's ``redis-server``. A start returns only once the service answers (Kafka: metadata with
our cluster id; Redis: PING from our process) and raises :class:`StackError` with the tail of
the service's log if it does not. Starting a running service is harmless; stopping sends
SIGTERM, waits, and sends SIGKILL after a timeout. Pid files store the pid and the process
start time, so a stale pid file whose pid was reused by another process is recognised.
The local Redis Cluster is in ``jobs/redis_cluster.py``; ``jobs/stack_control.py`` starts,
stops and inspects the stack as a whole.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import redis

from connectors.kafka_replication import replication_for

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_STACK_HOME = Path(".klineflow/stack")
DEFAULT_KAFKA_LIBS = Path("build/kafka/libs")
SETUP_HINT_KAFKA = "run `make setup` (mvn fetches the Kafka broker)"
SETUP_HINT_REDIS = "install it with `sudo apt-get install redis-server` (or run `make setup`)"
SETUP_HINT_JAVA = "install Java 17+ with `sudo apt-get install openjdk-17-jre-headless`"
LOG_TAIL_LINES = 40
POLL_INTERVAL_S = 0.2
KAFKA_NODE_ID = 1
# A cluster's controller listeners sit this far above its broker ports.
KAFKA_CLUSTER_CONTROLLER_OFFSET = 100


class StackError(RuntimeError):
    """A stack service could not be started or stopped; ``log_tail`` holds its last log lines."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        text = f"{message}\n--- last lines of the log ---\n{log_tail}" if log_tail else message
        super().__init__(text)


@dataclass(frozen=True)
class StackConfig:
    """Where the local stack keeps its files and which loopback ports it listens on."""

    home: Path = DEFAULT_STACK_HOME
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    redis_port: int = 6379
    # Kafka brokers: 1 is the single broker above; N > 1 is a KRaft cluster of N combined
    # broker+controller nodes (jobs/kafka_cluster.py) on kafka_port .. + N-1, their
    # controller listeners on kafka_port + 100 .. + 100 + N-1.
    kafka_brokers: int = 1
    # A local Redis Cluster (jobs/redis_cluster.py) instead of the single Redis: six nodes
    # on redis_cluster_port .. + 5 (their cluster buses 10000 above).
    redis_cluster: bool = False
    redis_cluster_port: int = 7000
    # How long a primary may be silent before its replica takes over (cluster-node-timeout).
    redis_cluster_node_timeout_ms: int = 5000
    kafka_libs: Path = DEFAULT_KAFKA_LIBS
    kafka_heap: str = "512m"
    # Extra JVM options for the broker (e.g. GC flags); the heap is set from ``kafka_heap``.
    kafka_jvm_options: tuple[str, ...] = field(default=())
    # Linux only: the services get SIGTERM when the process (strictly: the thread) that
    # started them dies; test sessions use this so a killed pytest leaves no broker behind.
    # Off for `stack up`, whose services outlive the command.
    stop_with_parent: bool = False


@dataclass(frozen=True)
class ServiceStatus:
    """What one stack service is doing right now."""

    name: str
    running: bool  # a live process of ours holds the pid file
    answering: bool  # it answers its protocol (Kafka metadata / Redis PING)
    pid: int | None
    address: str  # bootstrap ``host:port`` or ``redis://`` URL
    log_file: Path

    @property
    def state(self) -> str:
        """``running``, ``starting`` (alive but not answering yet) or ``stopped``."""
        if not self.running:
            return "stopped"
        return "running" if self.answering else "starting"


def tail_lines(paths: Sequence[Path], lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of each existing file in ``paths``, each under a header."""
    chunks: list[str] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        last = text.splitlines()[-lines:]
        if last:
            chunks.append(f"==> {path} <==\n" + "\n".join(last))
    return "\n".join(chunks)


def _process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone or a zombie.

    Off Linux (no ``/proc``) this falls back to a signal-0 probe and returns 0 for a live pid.
    """
    stat_path = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0
        return 0
    try:
        stat = stat_path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the parenthesised command name: state is the 1st, starttime the 20th.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def port_accepts(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True if a TCP connection to ``host:port`` succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _with_parent_death_signal(command: list[str]) -> list[str]:
    """``command`` wrapped so Linux sends it SIGTERM when our process dies.

    Uses util-linux's ``setpriv --pdeathsig`` (the signal survives the exec); where that is
    missing the command runs unwrapped and a warning says so.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("no `setpriv` (util-linux): services will outlive a killed parent")
        return command
    return [setpriv, "--pdeathsig", "TERM", "--", *command]


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is our exited child (so it is no zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class LocalService:
    """A detached, pid-file-managed local server process. Subclasses fill in the specifics."""

    name: ClassVar[str]

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.home = config.home.expanduser().resolve()
        self.pid_file = self.home / f"{self.name}.pid"
        self._process: subprocess.Popen[bytes] | None = None

    # -- to be provided by subclasses -------------------------------------------------------

    @property
    def address(self) -> str:
        """Where clients connect."""
        raise NotImplementedError

    @property
    def log_file(self) -> Path:
        """The service's main log file."""
        raise NotImplementedError

    @property
    def console_log(self) -> Path:
        """Where the process's stdout and stderr go."""
        raise NotImplementedError

    def _prepare(self) -> list[str]:
        """Check prerequisites, write config files, return the command line to run."""
        raise NotImplementedError

    def _answers(self, pid: int) -> bool:
        """True if the service on our port is ours (``pid``) and ready for clients."""
        raise NotImplementedError

    # -- pid file ---------------------------------------------------------------------------

    def _read_pid(self) -> int | None:
        """The pid from the pid file if that process is still the one we started, else None.

        A stale pid file (process gone, or the pid reused by another process) is removed.
        """
        try:
            parts = self.pid_file.read_text().split()
        except FileNotFoundError:
            return None
        try:
            pid, recorded_ticks = int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            log.warning("removing unreadable pid file %s", self.pid_file)
            self.pid_file.unlink(missing_ok=True)
            return None
        _reap(pid)
        ticks = _process_start_ticks(pid)
        if ticks is None or ticks != recorded_ticks:
            log.info("removing stale pid file %s (pid %d is not ours any more)", self.pid_file, pid)
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def _write_pid(self, pid: int) -> None:
        ticks = _process_start_ticks(pid)
        self.pid_file.write_text(f"{pid}\n{ticks if ticks is not None else 0}\n")

    def _alive(self, pid: int) -> bool:
        _reap(pid)
        return _process_start_ticks(pid) is not None

    # -- public -----------------------------------------------------------------------------

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the service's logs (main log and console output)."""
        return tail_lines([self.log_file, self.console_log], lines)

    def status(self) -> ServiceStatus:
        """Whether the service runs (per its pid file) and answers its protocol."""
        pid = self._read_pid()
        answering = pid is not None and self._answers(pid)
        return ServiceStatus(
            name=self.name,
            running=pid is not None,
            answering=answering,
            pid=pid,
            address=self.address,
            log_file=self.log_file,
        )

    def start(self, timeout_s: float = 60.0) -> ServiceStatus:
        """Start the service (or find it running) and wait until it answers.

        Raises :class:`StackError` with the log tail if it exits or does not answer within
        ``timeout_s``.
        """
        return self.wait_ready(self.launch(), timeout_s)

    def launch(self) -> int:
        """Start the process unless ours runs already; its pid. Does not wait for it.

        With :meth:`wait_ready` this starts services that only answer together (the nodes
        of a Kafka controller quorum).
        """
        self.home.mkdir(parents=True, exist_ok=True)
        pid = self._read_pid()
        if pid is not None:
            log.info("%s already running (pid %d)", self.name, pid)
            return pid
        return self._spawn(self._prepare())

    def wait_ready(self, pid: int, timeout_s: float = 60.0) -> ServiceStatus:
        """Wait until ``pid`` answers; :class:`StackError` with the log tail if it does not."""
        return self._wait_until_answering(pid, timeout_s)

    def request_stop(self) -> None:
        """Send SIGTERM if ours runs, without waiting (:meth:`stop` then waits for it).

        Stopping every node of a quorum at once lets each shut down while the others still
        answer, instead of the last one waiting for peers already gone.
        """
        pid = self._read_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> ServiceStatus:
        """Stop the service by pid: SIGTERM, wait up to ``timeout_s``, then SIGKILL."""
        pid = self._read_pid()
        if pid is None:
            return self.status()
        log.info("stopping %s (pid %d)", self.name, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._poll_until(lambda: not self._alive(pid), timeout_s):
            log.warning(
                "%s (pid %d) ignored SIGTERM for %.0fs; killing it", self.name, pid, timeout_s
            )
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not self._poll_until(lambda: not self._alive(pid), 10.0):
                raise StackError(f"{self.name} (pid {pid}) survived SIGKILL", self.log_tail())
        self.pid_file.unlink(missing_ok=True)
        if self._process is not None and self._process.pid == pid:
            self._process.wait(timeout=1.0)
            self._process = None
        return self.status()

    # -- internals --------------------------------------------------------------------------

    def _spawn(self, command: list[str]) -> int:
        if self.config.stop_with_parent:
            command = _with_parent_death_signal(command)
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s on %s (log: %s)", self.name, self.address, self.log_file)
        log.debug("command: %s", " ".join(command))
        console: IO[bytes]
        with self.console_log.open("ab") as console:
            console.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting ===\n".encode())
            console.flush()
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
            )
        self._process = process
        self._write_pid(process.pid)
        return process.pid

    def _wait_until_answering(self, pid: int, timeout_s: float) -> ServiceStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self._alive(pid):
                self.pid_file.unlink(missing_ok=True)
                code = self._process.poll() if self._process is not None else None
                exit_text = f" with code {code}" if code is not None else ""
                raise StackError(
                    f"{self.name} (pid {pid}) exited{exit_text} during start-up", self.log_tail()
                )
            if self._answers(pid):
                return ServiceStatus(
                    name=self.name,
                    running=True,
                    answering=True,
                    pid=pid,
                    address=self.address,
                    log_file=self.log_file,
                )
            if time.monotonic() >= deadline:
                raise StackError(
                    f"{self.name} (pid {pid}) did not answer on {self.address} within "
                    f"{timeout_s:.0f}s; it is still running, stop it with `klineflow stack down`",
                    self.log_tail(),
                )
            time.sleep(POLL_INTERVAL_S)

    @staticmethod
    def _poll_until(condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)
        return True


def _new_kafka_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (like ``Uuid``)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # a leading dash would read as a CLI flag
            return cluster_id


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise StackError(f"no `java` on PATH and no JAVA_HOME; {SETUP_HINT_JAVA}")
    return java


class KafkaBroker(LocalService):
    """An Apache Kafka broker in KRaft mode (combined broker and controller).

    ``index`` None is the single broker of the stack (node id 1, ``kafka_port``,
    ``kafka_controller_port``, files in ``home/kafka``). An index ``i`` makes it node ``i + 1``
    of a cluster of ``config.kafka_brokers`` (ports: ``kafka_port + i`` and
    ``kafka_port + 100 + i``; files in ``home/kafka-cluster/broker-i``, pid file
    ``home/kafka-i.pid``), every node a voter of the controller quorum.
    """

    name = "kafka"

    def __init__(self, config: StackConfig, index: int | None = None) -> None:
        super().__init__(config)
        self.index = index
        if index is not None:
            self.pid_file = self.home / f"kafka-{index}.pid"

    @property
    def node_id(self) -> int:
        """The KRaft node id (1 for the single broker, ``index + 1`` in a cluster)."""
        return KAFKA_NODE_ID if self.index is None else self.index + 1

    @property
    def port(self) -> int:
        """The PLAINTEXT listener port."""
        return self.config.kafka_port + (self.index or 0)

    @property
    def controller_port(self) -> int:
        """The CONTROLLER listener port."""
        if self.index is None:
            return self.config.kafka_controller_port
        return self.config.kafka_port + KAFKA_CLUSTER_CONTROLLER_OFFSET + self.index

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT bootstrap address, ``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def address(self) -> str:
        """Same as :attr:`bootstrap`."""
        return self.bootstrap

    @property
    def kafka_dir(self) -> Path:
        """The broker's own directory under the stack home."""
        if self.index is None:
            return self.home / "kafka"
        return self.home / "kafka-cluster" / f"broker-{self.index}"

    @property
    def data_dir(self) -> Path:
        """The KRaft metadata log and topic partitions."""
        return self.kafka_dir / "data"

    @property
    def log_file(self) -> Path:
        """The broker's log4j2 log."""
        return self.kafka_dir / "logs" / "server.log"

    @property
    def console_log(self) -> Path:
        """The JVM's stdout and stderr."""
        return self.kafka_dir / "logs" / "console.log"

    @property
    def server_properties(self) -> Path:
        """The generated broker configuration."""
        return self.kafka_dir / "server.properties"

    @property
    def log4j2_properties(self) -> Path:
        """The generated log4j2 configuration."""
        return self.kafka_dir / "log4j2.properties"

    @property
    def libs(self) -> Path:
        """The directory with the broker's jars (absolute)."""
        return self.config.kafka_libs.expanduser().resolve()

    def cluster_id(self) -> str:
        """The cluster id of this stack's broker (or cluster), created once, kept in the home."""
        id_dir = self.kafka_dir if self.index is None else self.kafka_dir.parent
        id_file = id_dir / "cluster-id"
        try:
            return id_file.read_text().strip()
        except FileNotFoundError:
            pass
        id_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = _new_kafka_cluster_id()
        id_file.write_text(cluster_id + "\n")
        return cluster_id

    def server_properties_text(self) -> str:
        """The broker configuration for the current ports and directories."""
        if self.index is None:
            voters = f"{self.node_id}@{LOOPBACK}:{self.controller_port}"
            replicas, min_isr = 1, 1
        else:
            peers = [KafkaBroker(self.config, i) for i in range(self.config.kafka_brokers)]
            voters = ",".join(f"{p.node_id}@{LOOPBACK}:{p.controller_port}" for p in peers)
            replicas, min_isr = replication_for(self.config.kafka_brokers)
        settings: dict[str, str | int] = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": voters,
            "listeners": (
                f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # Topics: auto-creation stays on as a safety net, with 4 partitions.
            "auto.create.topics.enable": "true",
            "num.partitions": 4,
            # Replication (also of the internal topics): 1 on one node, 3 / 2 in a cluster.
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 4,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            # Flink's exactly-once Kafka sink uses 1 h transactions; the default cap is 15 min.
            "transaction.max.timeout.ms": 3_600_000,
            "group.initial.rebalance.delay.ms": 0,
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "log.retention.hours": 168,
            "log.segment.bytes": 256 * 1024 * 1024,
            "delete.topic.enable": "true",
        }
        lines = ["# Generated by klineflow (jobs/stack.py) on every start; edits are lost."]
        lines += [f"{key}={value}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"

    def log4j2_properties_text(self) -> str:
        """A log4j2 configuration sending everything to ``server.log`` (rolled at 50 MB)."""
        log_file = self.log_file.as_posix()
        return f"""# Generated by klineflow (jobs/stack.py) on every start; edits are lost.
status = warn
name = klineflow-kafka
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.network.name = org.apache.kafka.request.logger
logger.network.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
"""

    def _java_command(self, java: str, main_class: str, *args: str) -> list[str]:
        return [
            java,
            f"-Xms{self.config.kafka_heap}",
            f"-Xmx{self.config.kafka_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j2_properties}",
            f"-Dkafka.logs.dir={self.log_file.parent}",
            *self.config.kafka_jvm_options,
            "-cp",
            str(self.libs / "*"),
            main_class,
            *args,
        ]

    def _check_libs(self) -> None:
        libs = self.libs
        if not libs.is_dir() or not any(libs.glob("kafka_2.13-*.jar")):
            raise StackError(f"no Kafka broker jars in {libs}: {SETUP_HINT_KAFKA}")

    def _format_storage(self, java: str) -> None:
        """Format the KRaft storage once (a ``meta.properties`` marks it done)."""
        if (self.data_dir / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = self._java_command(
            java,
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self.cluster_id(),
            "--config",
            str(self.server_properties),
            "--ignore-formatted",
        )
        log.info("formatting Kafka storage in %s", self.data_dir)
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise StackError(
                f"formatting the Kafka storage failed (exit {result.returncode})", output
            )

    def _prepare(self) -> list[str]:
        self._check_libs()
        java = _find_java()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.server_properties.write_text(self.server_properties_text())
        self.log4j2_properties.write_text(self.log4j2_properties_text())
        self._format_storage(java)
        return self._java_command(java, "kafka.Kafka", str(self.server_properties))

    def _answers(self, pid: int) -> bool:
        """The broker on our port reports our cluster id, a controller and a live broker."""
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        if not port_accepts(LOOPBACK, self.port):
            return False  # not listening yet: skip the client and its connection-error logs
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id="klineflow-stack-health",
                bootstrap_timeout_ms=2000,
                request_timeout_ms=3000,
            )
        except (KafkaError, OSError):
            return False
        try:
            cluster = admin.describe_cluster()
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()
        return (
            cluster.get("cluster_id") == self.cluster_id()
            and cluster.get("controller_id", -1) != -1
            and any(
                b.get("broker_id") == self.node_id and not b.get("is_fenced", False)
                for b in cluster.get("brokers", ())
            )
        )


class RedisServer(LocalService):
    """Debian's ``redis-server`` on loopback with its own config and data directory."""

    name = "redis"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self.config.redis_port}/0"

    @property
    def address(self) -> str:
        """Same as :attr:`url`."""
        return self.url

    @property
    def redis_dir(self) -> Path:
        """Config and data directory."""
        return self.home / "redis"

    @property
    def log_file(self) -> Path:
        """Redis logs to stdout, which goes here."""
        return self.redis_dir / "redis.log"

    @property
    def console_log(self) -> Path:
        """Same file as :attr:`log_file`."""
        return self.log_file

    @property
    def config_file(self) -> Path:
        """The generated ``redis.conf``."""
        return self.redis_dir / "redis.conf"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of ``redis.log``."""
        return tail_lines([self.log_file], lines)

    def config_text(self) -> str:
        """``redis.conf`` for the current port and directory."""
        return f"""# Generated by klineflow (jobs/stack.py) on every start; edits are lost.
bind {LOOPBACK}
protected-mode yes
port {self.config.redis_port}
daemonize no
supervised no
logfile ""
loglevel notice
dir {self.redis_dir}
dbfilename dump.rdb
# Live state only: a snapshot now and then, no append-only file.
save 300 1
appendonly no
databases 16
"""

    def _prepare(self) -> list[str]:
        server = shutil.which("redis-server")
        if server is None:
            raise StackError(f"no `redis-server` on PATH: {SETUP_HINT_REDIS}")
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config_text())
        return [server, str(self.config_file)]

    def _answers(self, pid: int) -> bool:
        """Redis on our port answers PING and is the process we started."""
        client = redis.Redis(
            host=LOOPBACK,
            port=self.config.redis_port,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
        )
        try:
            if not client.ping():
                return False
            info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()
        return int(info.get("process_id", -1)) == pid
