"""Private Redis and PostgreSQL servers a chaos test may kill and restart without harming anybody.

Each server has its own free port and its own temporary directory; ``close()`` stops whatever still
runs and removes the directory, whatever state the test left it in.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.helpers import local_servers

_START_TIMEOUT = 30.0
_POLL = 0.02


class ServerUnavailable(RuntimeError):
    """The private server cannot be made on this machine; the message says why and what is needed."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of one test: no persistence, so a restart comes back empty, as after a crash
    of a cache-only Redis."""

    def __init__(self) -> None:
        try:  # redis-server (or valkey-server) on PATH, else the one the `servers` extra ships
            binary, _how = local_servers.redis_binary()
        except local_servers.ServerUnavailable as missing:
            raise ServerUnavailable(str(missing)) from None
        self._binary = str(binary)
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="st-chaos-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        log = self.directory / "redis.log"
        settings = {"bind": "127.0.0.1", "port": str(self.port), "save": "", "appendonly": "no"}
        settings |= {"dir": str(self.directory), "logfile": str(log)}
        self._process = subprocess.Popen(
            [self._binary, *(part for name, value in settings.items() for part in (f"--{name}", value))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + _START_TIMEOUT
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        raise ServerUnavailable(f"redis-server did not start: {_tail(log)}") from None
                    time.sleep(_POLL)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server and wait until it is gone."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
        self._process = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivatePostgres:
    """A PostgreSQL cluster of one test (trust auth, role ``postgres``), made with ``initdb`` as the
    current user, or, as root (which PostgreSQL refuses), as the ``postgres`` OS user, else ``nobody``."""

    USER = "postgres"

    def __init__(self) -> None:
        self._bin = _postgres_bin_dir()
        try:
            runner = local_servers.server_user()
        except local_servers.ServerUnavailable as missing:
            raise ServerUnavailable(str(missing)) from None
        self._as_postgres = _run_as(runner.pw_name) if runner is not None else []
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="st-chaos-postgres-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        try:
            if runner is not None:
                local_servers.let_enter(self._bin, runner)
                os.chown(self.directory, runner.pw_uid, runner.pw_gid)
            self._run("initdb", "--pgdata", str(self.data), "--username", self.USER, "--auth", "trust", "--no-sync")
        except (OSError, subprocess.CalledProcessError) as exc:
            self.close()
            raise ServerUnavailable(f"initdb failed: {_describe(exc)}") from None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.USER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """``pg_ctl start``, returning once the server accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory}"
        self._pg_ctl("start", "--wait", "--log", str(self.log), "--options", options)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>``, returning once the server is down."""
        self._pg_ctl("stop", "--wait", "--mode", mode)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        if self.data.is_dir() and self.running():
            subprocess.run(
                [
                    *self._as_postgres,
                    str(self._bin / "pg_ctl"),
                    "stop",
                    "--pgdata",
                    str(self.data),
                    "--mode",
                    "immediate",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.directory, ignore_errors=True)

    def _pg_ctl(self, action: str, *args: str) -> None:
        try:
            self._run("pg_ctl", action, "--pgdata", str(self.data), *args)
        except subprocess.CalledProcessError as exc:
            raise ServerUnavailable(f"pg_ctl {action} failed: {_describe(exc)}; log: {_tail(self.log)}") from None

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self._as_postgres, str(self._bin / program), *args],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


def _postgres_bin_dir() -> Path:
    """``SERVICETITAN_TEST_PG_BINDIR`` if set, else the newest ``/usr/lib/postgresql/<version>/bin``
    (Debian, Ubuntu): the one that holds ``initdb`` and ``pg_ctl``."""
    configured = os.environ.get("SERVICETITAN_TEST_PG_BINDIR")
    if configured:
        candidates, looked_in = [Path(configured)], f"SERVICETITAN_TEST_PG_BINDIR={configured}"
    else:
        found = Path("/usr/lib/postgresql").glob("*/bin")
        candidates = sorted(
            found, key=lambda path: [int(n) for n in re.findall(r"\d+", path.parent.name)], reverse=True
        )
        looked_in = "/usr/lib/postgresql/*/bin"
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    if not configured:  # the binaries the `servers` extra ships
        with contextlib.suppress(local_servers.ServerUnavailable):
            return local_servers.postgres_bindir(system=False)[0]
    raise ServerUnavailable(
        f"initdb and pg_ctl were not found in {looked_in}; install PostgreSQL's server package "
        "or set SERVICETITAN_TEST_PG_BINDIR to the directory that holds them"
    )


def _run_as(user: str) -> list[str]:
    """The command prefix that runs a program as ``user``: nothing if we are that user, runuser if root."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ServerUnavailable(f"there is no {user!r} OS user to run initdb and pg_ctl as") from None
    if pwd.getpwuid(os.geteuid()).pw_name == user:
        return []
    runuser = shutil.which("runuser")
    if os.geteuid() == 0 and runuser is not None:
        return [runuser, "-u", user, "--"]
    raise ServerUnavailable(f"initdb must run as the {user!r} OS user: run the chaos tests as root or as {user!r}")


def _describe(exc: OSError | subprocess.CalledProcessError) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return f"exit status {exc.returncode}: {(exc.stderr or exc.stdout or '').strip()[-2000:]}"
    return str(exc)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:].strip() or "(empty log)"
    except OSError:
        return "(no log)"
