"""Starting and stopping: ports, base URL, many clients at once, the pytest plugin, the CLI."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from airflow_provider_servicetitan.sandbox import SandboxConfig, SandboxServer

pytest_plugins = ["airflow_provider_servicetitan.sandbox.pytest_plugin"]


def test_start_and_stop_release_the_port():
    server = SandboxServer(SandboxConfig(records=5)).start()
    url = server.base_url
    assert requests.get(url + "/_sandbox/config", timeout=5).ok
    assert server.token_url == url + "/connect/token"

    server.stop()

    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + "/_sandbox/config", timeout=5)
    with pytest.raises(RuntimeError, match="not started"):
        server.base_url  # noqa: B018


def test_stopping_lets_held_requests_go(make_api):
    server = SandboxServer(SandboxConfig(records=5, fault_overrides={"timeout_rate": 1.0, "timeout_hold": 600})).start()
    api = make_api(server)
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(api.get, api.list_path("customers"), timeout=120)
        server.admin.wait_for_held(1, timeout=60)
        assert not held.done()

        server.stop()

        with pytest.raises(requests.exceptions.ConnectionError):
            held.result()


def test_concurrent_clients_are_all_served(sandbox, make_api):
    apis = [make_api(sandbox, index % 2) for index in range(8)]

    def page_through(api) -> int:
        return len(api.list_all("jobs", active="Any", pageSize=10))

    with ThreadPoolExecutor(max_workers=8) as pool:
        counts = list(pool.map(page_through, apis))

    expected = [len([r for r in sandbox.admin.truth(api.tenant_id, "jobs") if not r["deleted"]]) for api in apis]
    assert counts == expected


def test_pytest_fixture_gives_a_started_default_sandbox(servicetitan_sandbox):
    config = servicetitan_sandbox.admin.config()

    assert config["tenants"] == SandboxConfig().tenants
    assert len(servicetitan_sandbox.credentials) == SandboxConfig().tenants


def _run_cli(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "airflow_provider_servicetitan.sandbox.cli", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _banner(process: subprocess.Popen[str]) -> str:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Press Ctrl+C"):
            return "".join(lines)
    pytest.fail(f"the CLI ended early: {''.join(lines)} {process.stderr.read()}")


@pytest.mark.parametrize(
    "stop_signal", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
)
def test_cli_prints_url_and_credentials_serves_and_stops_cleanly(stop_signal):
    process = _run_cli(
        *("--port", "0", "--tenants", "2", "--records", "10", "--seed", "3"),
        *("--faults", "flaky", "--fault", "error_rate=0.5", "--unlicensed", "1002=accounting,jpm"),
    )
    try:
        banner = _banner(process)
        base_url = re.search(r"listening on (http://\S+)", banner)[1]
        tenants = re.findall(r"tenant (\d+): client_id=(\S+) client_secret=(\S+)", banner)
        expected = SandboxServer(SandboxConfig(seed=3, tenants=2)).credentials

        token = requests.post(
            base_url + "/connect/token",
            data={"grant_type": "client_credentials", "client_id": tenants[1][1], "client_secret": tenants[1][2]},
            timeout=5,
        )
        faults = requests.get(base_url + "/_sandbox/faults", timeout=5).json()
        config = requests.get(base_url + "/_sandbox/config", timeout=5).json()
    finally:
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=30)

    assert [(int(t), cid, secret) for t, cid, secret in tenants] == [
        (c.tenant_id, c.client_id, c.client_secret) for c in expected
    ]
    assert f"app key:   {expected[0].app_key}" in banner
    assert token.status_code == 200
    assert (faults["profile"], faults["error_rate"], faults["reset_rate"]) == ("flaky", 0.5, 0.02)
    assert (config["records"], config["unlicensed_modules"]) == (10, {"1002": ["accounting", "jpm"]})
    assert token.json()["scope"] == "crm settings"
    assert process.returncode == 0, err
    assert "stopped" in out


def test_cli_refuses_bad_arguments():
    process = _run_cli("--fault", "no_such_knob=1")
    _, err = process.communicate(timeout=30)

    assert process.returncode == 2
    assert "no_such_knob" in err
