#!/usr/bin/env python3
"""The pausewire stack as local processes, for machines without Docker.

    python3 compose/native.py up        install what is missing, start all
    python3 compose/native.py status    one line per component
    python3 compose/native.py logs kafka [-n 50]
    python3 compose/native.py down [--purge]

It starts the same services as compose/docker-compose.yml: Postgres (logical
WAL, as an unprivileged user when run as root), Redis, a single-node KRaft
Kafka broker, Kafka Connect with the Debezium connector registered, and the
Prefect server on Postgres. All state (data, logs, pid files, generated
passwords) lives under one folder, `.stack/` by default. `up` twice is
harmless: a component that is already running and healthy is left alone.

Only the standard library is used, so this file runs before the project's
own virtual environment exists (it is what creates it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "connect-config"
CONNECTOR_NAME = "pausewire"


class StackError(Exception):
    """A component could not start; the message names it, the cause and a log."""

    def __init__(self, component: str, cause: str, log: Path | None = None) -> None:
        self.component = component
        self.cause = cause
        self.log = log
        where = f"; see {log}" if log else ""
        super().__init__(f"{component}: {cause}{where}")


# ---------------------------------------------------------------- settings


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StackError("config", f"{name}={raw!r} is not a TCP port")
    return int(raw)


@dataclass(frozen=True)
class Layout:
    """Ports and folders of one stack, from PAUSEWIRE_* variables."""

    root: Path
    pg_port: int
    redis_port: int
    kafka_port: int
    kafka_controller_port: int
    connect_port: int
    prefect_port: int
    resumer_port: int
    with_resumer: bool
    partitions: int
    venv: Path

    @classmethod
    def from_env(cls) -> Layout:
        root = Path(os.environ.get("PAUSEWIRE_STACK_DIR", REPO / ".stack"))
        partitions = os.environ.get("PAUSEWIRE_KAFKA_PARTITIONS", "3")
        if not partitions.isdigit() or int(partitions) < 1:
            raise StackError("config", "PAUSEWIRE_KAFKA_PARTITIONS must be >= 1")
        return cls(
            root=root.resolve(),
            pg_port=_port("PAUSEWIRE_PG_PORT", 15432),
            redis_port=_port("PAUSEWIRE_REDIS_PORT", 16379),
            kafka_port=_port("PAUSEWIRE_KAFKA_PORT", 19092),
            kafka_controller_port=_port("PAUSEWIRE_KAFKA_CONTROLLER_PORT", 19093),
            connect_port=_port("PAUSEWIRE_CONNECT_PORT", 18083),
            prefect_port=_port("PAUSEWIRE_PREFECT_PORT", 14200),
            resumer_port=_port("PAUSEWIRE_RESUMER_PORT", 19400),
            with_resumer=os.environ.get("PAUSEWIRE_NATIVE_RESUMER", "1") != "0",
            partitions=int(partitions),
            venv=Path(os.environ.get("PAUSEWIRE_VENV", REPO / ".venv")).resolve(),
        )

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def log(self, component: str) -> Path:
        return self.path("logs", f"{component}.log")

    def pidfile(self, component: str) -> Path:
        return self.path("run", f"{component}.pid")

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


# ---------------------------------------------------------------- waiting


def wait_until(
    component: str,
    check: Callable[[], bool],
    *,
    timeout_s: float,
    log: Path | None = None,
    alive: Callable[[], int | None] | None = None,
    interval_s: float = 0.25,
) -> float:
    """Polls `check` until it is true; returns the seconds it took.

    `alive` returns a process's exit code once it has died (else None): a
    component that dies while starting fails at once instead of after the
    whole timeout.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        if alive is not None and (code := alive()) is not None:
            raise StackError(
                component,
                f"process exited with code {code} while starting" + _tail_hint(log),
                log,
            )
        with contextlib.suppress(OSError, ValueError):
            if check():
                return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise StackError(
                component, f"not healthy after {timeout_s:g} s" + _tail_hint(log), log
            )
        time.sleep(interval_s)


def _tail_hint(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    if not tail:
        return ""
    return "\n    " + "\n    ".join(tail) + "\n"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ensure_port_free(component: str, port: int, variable: str) -> None:
    """Fails with the variable to change when another process holds the port."""
    if port_open(port):
        raise StackError(
            component,
            f"port {port} is already in use by another process; stop it or set "
            f"{variable} to a free port",
        )


def http_json(
    method: str, url: str, body: object | None = None, timeout_s: float = 5.0
) -> tuple[int, object]:
    """One HTTP request with a JSON body; returns the status and parsed reply."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            raw = reply.read()
            status = reply.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def http_ok(url: str) -> bool:
    status, _ = http_json("GET", url, timeout_s=2.0)
    return status == 200


# ---------------------------------------------------------------- processes


def require_tool(component: str, tool: str, hint: str) -> str:
    """The tool's full path, or a StackError saying how to install it."""
    found = shutil.which(tool)
    if not found:
        raise StackError(component, f"{tool} not found on PATH; {hint}")
    return found


def read_pid(pidfile: Path) -> int | None:
    """The pid recorded in a pid file, if that process still runs."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def owned_by_stack(pid: int, marker: str) -> bool:
    """Guards against pid reuse: the command line must mention our folder."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return marker.encode() in cmdline


def spawn(
    layout: Layout,
    component: str,
    argv: list[str],
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Starts a detached process logging to its file, and records its pid."""
    log = layout.log(component)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=layout.root,
            start_new_session=True,
        )
    layout.pidfile(component).write_text(f"{proc.pid}\n")
    return proc


def stop_pid(component: str, pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after the timeout; only this pid's group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    print(f"  {component}: still running after {timeout_s:g} s; sending SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run_checked(
    component: str, argv: list[str], log: Path, env: dict[str, str] | None = None
) -> None:
    """Runs a command to completion, its output appended to the log."""
    with log.open("ab") as out:
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise StackError(
            component,
            f"`{' '.join(argv[:3])} ...` exited with {code}" + _tail_hint(log),
            log,
        )


def render(template: Path, target: Path, values: dict[str, object]) -> None:
    """Fills ${name} placeholders; a missing name is an error, not a blank."""
    try:
        text = string.Template(template.read_text()).substitute(
            {k: str(v) for k, v in values.items()}
        )
    except (KeyError, ValueError) as exc:
        raise StackError("config", f"cannot fill in {template.name}: {exc}") from exc
    target.write_text(text)


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- secrets


@dataclass(frozen=True)
class Secrets:
    """Passwords made at the first `up`, kept in a 0600 file of the stack."""

    admin: str
    app: str
    cdc: str
    prefect: str

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        if path.exists():
            values = dict(
                line.split("=", 1) for line in path.read_text().splitlines() if line
            )
            return cls(**{k: values[k] for k in ("admin", "app", "cdc", "prefect")})
        made = cls(*(secrets.token_urlsafe(18) for _ in range(4)))
        path.touch(mode=0o600)
        path.write_text("".join(f"{k}={v}\n" for k, v in made.__dict__.items()))
        return made


# ---------------------------------------------------------------- components


@dataclass
class Stack:
    """Starts, checks and stops the components of one stack folder."""

    layout: Layout
    started: list[str] = field(default_factory=list)

    @property
    def secrets(self) -> Secrets:
        return Secrets.load_or_create(self.layout.path("secrets.env"))

    # ---- preparation

    def prepare(self) -> None:
        for sub in ("logs", "run", "config", "jars"):
            self.layout.path(sub).mkdir(parents=True, exist_ok=True)
        require_tool(
            "kafka",
            "java",
            "install OpenJDK 17 (apt-get install -y openjdk-17-jre-headless)",
        )
        self.ensure_redis_binary()
        self.ensure_venv()
        self.ensure_jars()

    def ensure_redis_binary(self) -> None:
        if shutil.which("redis-server"):
            return
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise StackError(
                "redis",
                "redis-server not found on PATH; install it "
                "(apt-get install -y redis-server)",
            )
        progress("redis", "installing Debian's redis-server")
        log = self.layout.log("install")
        run_checked("redis", ["apt-get", "update", "-qq"], log)
        run_checked(
            "redis",
            ["apt-get", "install", "-y", "-qq", "redis-server"],
            log,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )

    def ensure_venv(self) -> None:
        layout = self.layout
        stamp = layout.venv / ".pausewire-installed"
        want = file_digest(REPO / "pyproject.toml")
        if stamp.exists() and stamp.read_text() == want and layout.python.exists():
            return
        progress(
            "python",
            f"installing pausewire and its dependencies in "
            f"{layout.venv.name}/ (first run only)",
        )
        log = layout.log("install")
        if not layout.python.exists():
            run_checked("python", [sys.executable, "-m", "venv", str(layout.venv)], log)
        run_checked(
            "python",
            [str(layout.python), "-m", "pip", "install", "-q", "-e", f"{REPO}[test]"],
            log,
        )
        stamp.write_text(want)

    def ensure_jars(self) -> None:
        poms = {
            "broker": CONFIG_DIR / "maven" / "broker.pom.xml",
            "connect": CONFIG_DIR / "maven" / "connect.pom.xml",
            "plugins/debezium-connector-postgres": CONFIG_DIR
            / "maven"
            / "debezium.pom.xml",
        }
        for target, pom in poms.items():
            folder = self.layout.path("jars", target)
            stamp = folder / ".pom-digest"
            if stamp.exists() and stamp.read_text() == file_digest(pom):
                continue
            mvn = require_tool(
                "kafka", "mvn", "install Maven (apt-get install -y maven)"
            )
            progress("jars", f"fetching {pom.name} with Maven into jars/{target}")
            shutil.rmtree(folder, ignore_errors=True)
            run_checked(
                "jars",
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={folder}",
                    "-DincludeScope=runtime",
                ],
                self.layout.log("maven"),
            )
            stamp.write_text(file_digest(pom))

    # ---- postgres

    def pg_bin(self, tool: str) -> str:
        configured = os.environ.get("PAUSEWIRE_PG_BIN")
        candidates = (
            [Path(configured)]
            if configured
            else sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        )
        for folder in candidates:
            if (folder / tool).exists():
                return str(folder / tool)
        return require_tool(
            "postgres",
            tool,
            "install the PostgreSQL 15 server "
            "(apt-get install -y postgresql-15) or set "
            "PAUSEWIRE_PG_BIN",
        )

    def as_pg_user(self, argv: list[str]) -> list[str]:
        # Postgres refuses to run as root; hand it to the `postgres` account.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def start_postgres(self) -> None:
        layout = self.layout
        data = layout.path("postgres", "data")
        if self.postgres_pid() is not None:
            progress("postgres", f"already running on port {layout.pg_port}")
            return
        ensure_port_free("postgres", layout.pg_port, "PAUSEWIRE_PG_PORT")
        fresh = not (data / "PG_VERSION").exists()
        if fresh:
            self.init_postgres(data)
        log = layout.log("postgres")
        log.touch()
        if os.geteuid() == 0:
            shutil.chown(log, "postgres")
        options = (
            f"-p {layout.pg_port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={layout.path('postgres')} "
            "-c wal_level=logical -c max_wal_senders=10 "
            "-c max_replication_slots=10 -c max_connections=200 "
            "-c fsync=on -c shared_buffers=256MB"
        )
        started = time.monotonic()
        run_checked(
            "postgres",
            self.as_pg_user(
                [
                    self.pg_bin("pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            layout.log("pg_ctl"),
        )
        self.started.append("postgres")
        if fresh:
            self.provision_databases()
        progress(
            "postgres",
            f"ready on port {layout.pg_port} in {time.monotonic() - started:.1f} s",
        )

    def init_postgres(self, data: Path) -> None:
        folder = data.parent
        folder.mkdir(parents=True, exist_ok=True)
        pwfile = folder / "admin.pw"
        pwfile.touch(mode=0o600)
        pwfile.write_text(self.secrets.admin + "\n")
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
            shutil.chown(pwfile, "postgres")
        progress("postgres", "creating a data folder (first run only)")
        run_checked(
            "postgres",
            self.as_pg_user(
                [
                    self.pg_bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "pausewire_admin",
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=peer",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            self.layout.log("initdb"),
        )
        pwfile.unlink()
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication pausewire_cdc 127.0.0.1/32 scram-sha-256\n")

    def admin_url(self, database: str = "pausewire") -> str:
        return (
            f"postgresql://pausewire_admin:{self.secrets.admin}@127.0.0.1:"
            f"{self.layout.pg_port}/{database}"
        )

    def provision_databases(self) -> None:
        statements = [
            "CREATE DATABASE pausewire",
            f"CREATE ROLE prefect LOGIN PASSWORD '{self.secrets.prefect}'",
            "CREATE DATABASE prefect OWNER prefect",
        ]
        for statement in statements:
            self.psql(self.admin_url("postgres"), statement)

    def psql(self, url: str, statement: str) -> None:
        run_checked(
            "postgres",
            [
                self.pg_bin("psql"),
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                statement,
            ],
            self.layout.log("provision"),
        )

    def migrate(self) -> None:
        env = {
            **os.environ,
            "PAUSEWIRE_ADMIN_DATABASE_URL": self.admin_url(),
            "PAUSEWIRE_APP_PASSWORD": self.secrets.app,
            "PAUSEWIRE_CDC_PASSWORD": self.secrets.cdc,
        }
        run_checked(
            "migrations",
            [
                str(self.layout.python),
                "-m",
                "outbox.migrations",
                "up",
                "--app-password-env",
                "PAUSEWIRE_APP_PASSWORD",
                "--cdc-password-env",
                "PAUSEWIRE_CDC_PASSWORD",
            ],
            self.layout.log("migrations"),
            env=env,
        )

    def postgres_pid(self) -> int | None:
        return read_pid(self.layout.path("postgres", "data", "postmaster.pid"))

    def stop_postgres(self) -> None:
        if self.postgres_pid() is None:
            return
        run_checked(
            "postgres",
            self.as_pg_user(
                [
                    self.pg_bin("pg_ctl"),
                    "-D",
                    str(self.layout.path("postgres", "data")),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "60",
                    "stop",
                ]
            ),
            self.layout.log("pg_ctl"),
        )

    # ---- redis

    def start_redis(self) -> None:
        layout = self.layout
        if self.running_pid("redis") is not None:
            progress("redis", f"already running on port {layout.redis_port}")
            return
        ensure_port_free("redis", layout.redis_port, "PAUSEWIRE_REDIS_PORT")
        folder = layout.path("redis")
        folder.mkdir(exist_ok=True)
        proc = spawn(
            layout,
            "redis",
            [
                require_tool(
                    "redis", "redis-server", "apt-get install -y redis-server"
                ),
                "--port",
                str(layout.redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(folder),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ],
        )
        self.started.append("redis")
        took = wait_until(
            "redis",
            lambda: redis_ping(layout.redis_port),
            timeout_s=20,
            log=layout.log("redis"),
            alive=proc.poll,
        )
        progress("redis", f"ready on port {layout.redis_port} in {took:.1f} s")

    # ---- kafka

    def java(
        self, component: str, classpath: str, main: list[str], heap: str = "768m"
    ) -> list[str]:
        return [
            require_tool(component, "java", "install OpenJDK 17"),
            "-Xms128m",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={CONFIG_DIR / 'log4j2.xml'}",
            f"-Dpausewire.log.file={self.layout.log(component)}",
            f"-Dpausewire.stack={self.layout.root}",
            "-cp",
            classpath,
            *main,
        ]

    def start_kafka(self) -> subprocess.Popen[bytes] | None:
        layout = self.layout
        if self.running_pid("kafka") is not None:
            progress("kafka", f"already running on port {layout.kafka_port}")
            return None
        for port, var in (
            (layout.kafka_port, "PAUSEWIRE_KAFKA_PORT"),
            (layout.kafka_controller_port, "PAUSEWIRE_KAFKA_CONTROLLER_PORT"),
        ):
            ensure_port_free("kafka", port, var)
        config = layout.path("config", "broker.properties")
        render(
            CONFIG_DIR / "broker.properties",
            config,
            {
                "kafka_port": layout.kafka_port,
                "kafka_controller_port": layout.kafka_controller_port,
                "kafka_data_dir": layout.path("kafka", "data"),
                "kafka_partitions": layout.partitions,
            },
        )
        classpath = str(layout.path("jars", "broker", "*"))
        if not layout.path("kafka", "data", "meta.properties").exists():
            # A new broker must be formatted with a cluster id before its
            # first start: 16 random bytes in URL-safe base64, unpadded.
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
            run_checked(
                "kafka",
                self.java(
                    "kafka",
                    classpath,
                    [
                        "kafka.tools.StorageTool",
                        "format",
                        "--standalone",
                        "-t",
                        cluster_id,
                        "-c",
                        str(config),
                    ],
                    heap="256m",
                ),
                layout.log("kafka"),
            )
        proc = spawn(
            layout, "kafka", self.java("kafka", classpath, ["kafka.Kafka", str(config)])
        )
        self.started.append("kafka")
        return proc

    def wait_kafka(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            return
        log = self.layout.log("kafka")
        took = wait_until(
            "kafka",
            lambda: (
                port_open(self.layout.kafka_port)
                and "Kafka Server started" in log.read_text(errors="replace")
            ),
            timeout_s=90,
            log=log,
            alive=proc.poll,
        )
        progress("kafka", f"ready on port {self.layout.kafka_port} in {took:.1f} s")

    # ---- connect

    def connect_url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.layout.connect_port}{path}"

    def start_connect(self) -> subprocess.Popen[bytes] | None:
        layout = self.layout
        if self.running_pid("connect") is not None:
            progress("connect", f"already running on port {layout.connect_port}")
            return None
        ensure_port_free("connect", layout.connect_port, "PAUSEWIRE_CONNECT_PORT")
        config = layout.path("config", "worker.properties")
        render(
            CONFIG_DIR / "worker.properties",
            config,
            {
                "kafka_port": layout.kafka_port,
                "connect_port": layout.connect_port,
                "plugin_dir": layout.path("jars", "plugins"),
            },
        )
        env = {
            "PAUSEWIRE_PG_HOST": "127.0.0.1",
            "PAUSEWIRE_PG_PORT": str(layout.pg_port),
            "PAUSEWIRE_PG_DATABASE": "pausewire",
            "PAUSEWIRE_CDC_PASSWORD": self.secrets.cdc,
            "PAUSEWIRE_SLOT_NAME": "pausewire_slot",
            "PAUSEWIRE_KAFKA_PARTITIONS": str(layout.partitions),
        }
        proc = spawn(
            layout,
            "connect",
            self.java(
                "connect",
                str(layout.path("jars", "connect", "*")),
                ["org.apache.kafka.connect.cli.ConnectDistributed", str(config)],
                heap="1g",
            ),
            env=env,
        )
        self.started.append("connect")
        return proc

    def wait_connect(self, proc: subprocess.Popen[bytes] | None) -> None:
        log = self.layout.log("connect")
        alive = proc.poll if proc is not None else None
        took = wait_until(
            "connect", self.postgres_plugin_loaded, timeout_s=120, log=log, alive=alive
        )
        progress("connect", f"ready on port {self.layout.connect_port} in {took:.1f} s")
        self.register_connector(alive)

    def postgres_plugin_loaded(self) -> bool:
        status, plugins = http_json("GET", self.connect_url("/connector-plugins"))
        return (
            status == 200
            and isinstance(plugins, list)
            and any(p.get("class", "").endswith("PostgresConnector") for p in plugins)
        )

    def register_connector(self, alive: Callable[[], int | None] | None) -> None:
        config = json.loads((CONFIG_DIR / "pausewire-connector.json").read_text())
        # Idempotent: PUT creates the connector or replaces its configuration.
        status, reply = http_json(
            "PUT",
            self.connect_url(f"/connectors/{CONNECTOR_NAME}/config"),
            config,
            timeout_s=60,
        )
        if status not in (200, 201):
            raise StackError(
                "connect",
                f"Connect rejected the connector "
                f"configuration (HTTP {status}): {reply}",
                self.layout.log("connect"),
            )
        took = wait_until(
            "connector",
            self.connector_running,
            timeout_s=60,
            log=self.layout.log("connect"),
            alive=alive,
        )
        progress("connector", f"{CONNECTOR_NAME} RUNNING in {took:.1f} s")

    def connector_running(self) -> bool:
        status, reply = http_json(
            "GET", self.connect_url(f"/connectors/{CONNECTOR_NAME}/status")
        )
        if status != 200 or not isinstance(reply, dict):
            return False
        states = [reply["connector"]["state"]]
        states += [task["state"] for task in reply.get("tasks", [])]
        if "FAILED" in states:
            trace = next(
                (
                    t.get("trace", "")
                    for t in reply.get("tasks", [])
                    if t.get("state") == "FAILED"
                ),
                "",
            )
            first_line = trace.splitlines()[0] if trace else "no trace"
            raise StackError(
                "connector",
                f"the Debezium connector FAILED: {first_line}",
                self.layout.log("connect"),
            )
        return len(states) > 1 and all(s == "RUNNING" for s in states)

    # ---- prefect

    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.layout.prefect_port}/api"

    def start_prefect(self) -> subprocess.Popen[bytes] | None:
        layout = self.layout
        if self.running_pid("prefect") is not None:
            progress("prefect", f"already running on port {layout.prefect_port}")
            return None
        ensure_port_free("prefect", layout.prefect_port, "PAUSEWIRE_PREFECT_PORT")
        home = layout.path("prefect")
        home.mkdir(exist_ok=True)
        env = {
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": (
                f"postgresql+asyncpg://prefect:{self.secrets.prefect}@127.0.0.1:"
                f"{layout.pg_port}/prefect"
            ),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        proc = spawn(
            layout,
            "prefect",
            [
                str(layout.venv / "bin" / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(layout.prefect_port),
                "--no-ui",
            ],
            env=env,
        )
        self.started.append("prefect")
        return proc

    def wait_prefect(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            return
        took = wait_until(
            "prefect",
            lambda: http_ok(self.prefect_api() + "/health"),
            timeout_s=120,
            log=self.layout.log("prefect"),
            alive=proc.poll,
        )
        progress("prefect", f"ready at {self.prefect_api()} in {took:.1f} s")

    # ---- whole stack

    def running_pid(self, component: str) -> int | None:
        pid = read_pid(self.layout.pidfile(component))
        if pid is not None and owned_by_stack(pid, self.marker(component)):
            return pid
        return None

    def marker(self, component: str) -> str:
        # A string that the component's command line always contains.
        if component == "redis":
            # Redis rewrites its command line to "redis-server host:port".
            return f"redis-server 127.0.0.1:{self.layout.redis_port}"
        if component == "prefect":
            return str(self.layout.venv)
        if component == "resumer":
            return f"{self.layout.python} -m resumer"
        return str(self.layout.root)

    def up(self) -> None:
        begin = time.monotonic()
        self.prepare()
        self.start_postgres()
        # Every `up` migrates: a pulled checkout may bring new files.
        self.migrate()
        kafka = self.start_kafka()
        prefect = self.start_prefect()
        self.start_redis()
        self.wait_kafka(kafka)
        self.write_env_file()
        self.create_topics()
        connect = self.start_connect()
        self.wait_prefect(prefect)
        self.wait_connect(connect)
        self.write_env_file()
        if self.layout.with_resumer:
            self.start_resumer()
        else:
            # Tests run resumers of their own; one of the stack's would race
            # them for every callback.
            self.down(purge=False, only=["resumer"])
        progress(
            "stack",
            f"up in {time.monotonic() - begin:.1f} s; settings in {self.env_file()}",
        )

    def create_topics(self) -> None:
        # Before the connector runs, so that its change topic gets the same
        # partition count as the callback topic instead of a default.
        env = {**os.environ, **self.env_values()}
        run_checked(
            "topics",
            [str(self.layout.python), "-m", "outbox.topics"],
            self.layout.log("topics"),
            env=env,
        )

    def start_resumer(self) -> None:
        layout = self.layout
        if self.running_pid("resumer") is not None:
            progress(
                "resumer", f"already running; metrics on port {layout.resumer_port}"
            )
            return
        ensure_port_free("resumer", layout.resumer_port, "PAUSEWIRE_RESUMER_PORT")
        env = {**self.env_values(), "PAUSEWIRE_METRICS_PORT": str(layout.resumer_port)}
        proc = spawn(layout, "resumer", [str(layout.python), "-m", "resumer"], env=env)
        self.started.append("resumer")
        took = wait_until(
            "resumer",
            lambda: http_ok(f"http://127.0.0.1:{layout.resumer_port}/healthz"),
            timeout_s=120,
            log=layout.log("resumer"),
            alive=proc.poll,
        )
        progress(
            "resumer",
            f"ready in {took:.1f} s; metrics at "
            f"http://127.0.0.1:{layout.resumer_port}/metrics",
        )

    def env_file(self) -> Path:
        return self.layout.path("stack.env")

    def env_values(self) -> dict[str, str]:
        """The settings a pausewire process needs to talk to this stack."""
        layout = self.layout
        return {
            "PAUSEWIRE_DATABASE_URL": (
                f"postgresql://pausewire_app:{self.secrets.app}@127.0.0.1:"
                f"{layout.pg_port}/pausewire"
            ),
            "PAUSEWIRE_ADMIN_DATABASE_URL": self.admin_url(),
            "PREFECT_API_URL": self.prefect_api(),
            "REDIS_URL": f"redis://127.0.0.1:{layout.redis_port}/0",
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{layout.kafka_port}",
            "PAUSEWIRE_CONNECT_URL": self.connect_url(),
            "PAUSEWIRE_KAFKA_PARTITIONS": str(layout.partitions),
        }

    def write_env_file(self) -> None:
        path = self.env_file()
        path.touch(mode=0o600)
        path.write_text("".join(f"{k}={v}\n" for k, v in self.env_values().items()))

    def down(self, purge: bool, only: list[str] | None = None) -> None:
        for component in ("resumer", "prefect", "connect", "kafka", "redis"):
            if only is not None and component not in only:
                continue
            pid = self.running_pid(component)
            if pid is not None:
                progress(component, f"stopping pid {pid}")
                stop_pid(component, pid)
            self.layout.pidfile(component).unlink(missing_ok=True)
        if self.postgres_pid() is not None and (only is None or "postgres" in only):
            progress("postgres", "stopping")
            self.stop_postgres()
        if purge and self.layout.root.exists():
            shutil.rmtree(self.layout.root)
            progress("stack", f"removed {self.layout.root}")

    def status(self) -> bool:
        layout = self.layout
        checks = {
            "postgres": (
                self.postgres_pid(),
                layout.pg_port,
                lambda: port_open(layout.pg_port),
            ),
            "redis": (
                self.running_pid("redis"),
                layout.redis_port,
                lambda: redis_ping(layout.redis_port),
            ),
            "kafka": (
                self.running_pid("kafka"),
                layout.kafka_port,
                lambda: port_open(layout.kafka_port),
            ),
            "connect": (
                self.running_pid("connect"),
                layout.connect_port,
                self.connector_running,
            ),
            "resumer": (
                self.running_pid("resumer"),
                layout.resumer_port,
                lambda: http_ok(f"http://127.0.0.1:{layout.resumer_port}/healthz"),
            ),
            "prefect": (
                self.running_pid("prefect"),
                layout.prefect_port,
                lambda: http_ok(self.prefect_api() + "/health"),
            ),
        }
        healthy = True
        for name, (pid, port, check) in checks.items():
            ok = False
            if pid is not None:
                with contextlib.suppress(OSError, StackError, ValueError):
                    ok = check()
            state = "healthy" if ok else ("unhealthy" if pid else "stopped")
            # A stack started without its resumer is whole without it.
            optional = name == "resumer" and not layout.with_resumer
            healthy &= ok or (optional and pid is None)
            print(
                f"{name:<9} {state:<9} pid={pid or '-':<8} port={port:<6} "
                f"log={layout.log(name)}"
            )
        return healthy


def redis_ping(port: int) -> bool:
    """Speaks just enough RESP to ask Redis for PONG."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def progress(component: str, message: str) -> None:
    print(f"  {component:<10} {message}", flush=True)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="native.py",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="install what is missing and start the stack")
    down = commands.add_parser("down", help="stop every component")
    down.add_argument(
        "--purge",
        action="store_true",
        help="also delete the stack folder (data, logs, jars)",
    )
    commands.add_parser("status", help="one line per component; exit 1 if unhealthy")
    commands.add_parser("env", help="print the stack's settings as KEY=value lines")
    logs = commands.add_parser("logs", help="print the end of a component's log")
    logs.add_argument("component", nargs="?", default="connect")
    logs.add_argument("-n", type=int, default=40)
    args = parser.parse_args(argv)

    try:
        stack = Stack(Layout.from_env())
        if args.command == "up":
            return _up(stack)
        if args.command == "down":
            stack.down(args.purge)
            return 0
        if args.command == "status":
            return 0 if stack.status() else 1
        if args.command == "env":
            print(stack.env_file().read_text(), end="")
            return 0
        log = stack.layout.log(args.component)
        if not log.exists():
            raise StackError(args.component, "has no log yet", log)
        print("\n".join(log.read_text(errors="replace").splitlines()[-args.n :]))
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _up(stack: Stack) -> int:
    try:
        stack.up()
    except (StackError, KeyboardInterrupt) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if stack.started:
            # Leave nothing half-started behind that the user did not ask for.
            print(
                f"  stopping what this run started: {', '.join(stack.started)}",
                file=sys.stderr,
            )
            stack.down(purge=False, only=stack.started)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
