"""``make demo`` (``scripts/demo.py demo``), run as users run it, against this machine's Redis.

It must sync every credential through real Airflow, say that the warehouse equals the sandbox for
each one (the chaos tenant: except what it parked as dead letters), and leave nothing running: the
sandbox, the alert webhook, Airflow's processes, the demo's Redis keys, and a Redis it had to start.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import redis

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"
_TIMEOUT = 600


def run_demo(workdir: Path, redis_url: str, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(DEMO), "demo", "--dir", str(workdir), "--redis-url", redis_url, *options]
    # The demo gives Airflow its own home: the test session's AIRFLOW_* settings are not its business.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=_TIMEOUT, check=False)


def verdicts(summary: str) -> dict[str, tuple[str, str]]:
    """Connection id -> (faults, verdict line) of every credential block of the summary."""
    found = {}
    for block in re.finditer(r"^(\S+)  \(tenant \d+, faults: (\w+)\).*?^  => (.*?)$", summary, re.M | re.S):
        found[block[1]] = (block[2], block[3])
    return found


def answers(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


def processes_in(directory: Path) -> list[str]:
    """Command lines of live processes whose working directory is under ``directory``."""
    left = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(directory)):
            left.append(f"{proc.name}: {cmdline}")
    return left


def assert_stopped(output: str, workdir: Path) -> None:
    """The demo said it stopped everything, and the sandbox, the webhook and Airflow are gone."""
    assert "stopped:  everything the demo started" in output
    for name in ("sandbox", "alerts"):
        url = re.search(rf"^{name}:\s+(http://\S+)", output, re.M)
        assert url, output
        assert not answers(url[1]), f"the {name} still answers at {url[1]}"
    assert processes_in(workdir) == []


def test_demo_syncs_every_credential_and_stops_what_it_started(tmp_path: Path, redis_url: str):
    workdir = tmp_path / "demo"
    namespace = f"st_demo_test_{uuid.uuid4().hex[:8]}"

    done = run_demo(workdir, redis_url, "--namespace", namespace, "--records", "60")

    output = done.stdout
    assert done.returncode == 0, f"{output}\n{done.stderr[-3000:]}"
    found = verdicts(output)
    assert len(found) == 3, output
    for conn_id, (faults, verdict) in found.items():
        if faults == "chaos":
            assert re.fullmatch(r"warehouse equals the sandbox \(\d+ records\)( except .*parked.*)?", verdict), verdict
        else:
            assert re.fullmatch(r"warehouse equals the sandbox \(420 records\)", verdict), (conn_id, verdict)
    assert re.search(r"^sandbox: \d+ requests, \d+ token requests", output, re.M), output
    assert re.search(r"^alerts received by the local webhook: \d+$", output, re.M), output
    assert_stopped(output, workdir)
    assert f"{redis_url} (reachable)" in output
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()  # the Redis it found is left running...
        assert list(client.scan_iter(match=f"*{namespace}*", count=1000)) == []  # ...without the demo's keys
    finally:
        client.close()


def test_without_a_redis_the_demo_starts_one_and_stops_it(tmp_path: Path):
    with socket.socket() as sock:  # a port where no Redis runs
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tmp_path / "demo"
    own_redis = f"redis://127.0.0.1:{port}/1"

    done = run_demo(workdir, own_redis, "--tenants", "2", "--records", "30")

    output = done.stdout
    assert done.returncode == 0, f"{output}\n{done.stderr[-3000:]}"
    assert re.search(rf"^redis:\s+{re.escape(own_redis)} \((?!reachable)", output, re.M), output
    assert len(verdicts(output)) == 2, output
    assert_stopped(output, workdir)
    assert not answers(own_redis)
