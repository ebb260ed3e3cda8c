"""The health page in a real browser (Debian's Chromium, headless, driven by Playwright): log in to the
Airflow UI, open the page from the navigation route, see the sandbox's rows, reset a breaker.

The screenshot goes to the test's output directory; with ``SERVICETITAN_UPDATE_SCREENSHOT=1`` also to
``docs/images/health-page.png`` (README), so that a plain test run leaves the checkout unchanged.
Chromium is not downloaded: ``/usr/bin/chromium`` (or ``SERVICETITAN_CHROMIUM``) must exist, else the
test fails and says how to install it (``scripts/ensure-chromium``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.services import ADMIN_USER
from tests.e2e.session import DAG_FILE, DAG_ID, E2ESession
from tests.plugins.health_setup import HOSTILE_ERROR, HOSTILE_REASON, HealthSandbox, health_sandbox

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CHROMIUM = Path(os.environ.get("SERVICETITAN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "health-page.png"
UPDATE_SCREENSHOT = "SERVICETITAN_UPDATE_SCREENSHOT"
WAIT_MS = 60_000
RUN_MS = 600_000
"""A run of the DAG on this loaded machine (the other waits are for the page's own refresh)."""
TERMINAL = re.compile(r"^(success|failed|skipped|upstream failed)$")


@pytest.fixture(scope="module")
def sandbox(airflow_services: E2ESession) -> Iterator[HealthSandbox]:
    airflow_services.ready_dag(DAG_ID, DAG_FILE)
    with health_sandbox(airflow_services, "page") as prepared:
        yield prepared


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, under Playwright; fails the test (never skips it) when either is missing."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: run scripts/ensure-chromium (apt-get install -y chromium) "
            "or set SERVICETITAN_CHROMIUM to a Chromium binary",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def test_the_page_shows_the_rows_and_resets_a_breaker(
    airflow_services: E2ESession, sandbox: HealthSandbox, tmp_path: Path
) -> None:
    with chromium() as browser:
        _check_the_page(browser, airflow_services, sandbox, tmp_path)


def _check_the_page(browser: Any, airflow_services: E2ESession, sandbox: HealthSandbox, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)  # the page refreshes every 10 s: a change shows within that

    rest = airflow_services.rest
    base = airflow_services.services.base_url
    admin = airflow_services.services.users[ADMIN_USER]
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(WAIT_MS)

    # Log in through the auth manager's own form, as a person does.
    page.goto(f"{base}/auth/login")
    page.locator("input[name=username]").fill(admin.username)
    page.locator("input[name=password]").fill(admin.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=WAIT_MS)

    # The page from Airflow's navigation: Browse -> ServiceTitan health, shown inside the UI.
    page.goto(f"{base}/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="ServiceTitan health").click()
    page.wait_for_url("**/plugin/servicetitan-health", timeout=WAIT_MS)
    frame = page.frame_locator("iframe")
    attention = frame.locator(f'tr[data-credential="{sandbox.attention}"]')
    held = frame.locator(f'tr[data-credential="{sandbox.open_breaker}"]')

    expect(attention.locator('[data-field="status"]')).to_have_text("needs attention")
    expect(held.locator('[data-field="token"]')).to_have_text("cached")
    expect(held.locator('[data-field="breaker-state"]')).to_have_text("open")
    expect(attention.locator('[data-field="reason"]')).to_have_text(HOSTILE_REASON)
    expect(attention.locator('[data-field="sample-error"]')).to_contain_text(HOSTILE_ERROR)
    expect(attention.locator('[data-field="dead-letters"]')).to_have_text("1")
    expect(attention.locator('[data-resource="jobs"] [data-field="sync-status"]')).to_have_text("interrupted")
    # What came from outside is text: no element was made from it, no script of it ran.
    expect(frame.locator("#credentials img, #credentials script")).to_have_count(0)
    assert page.title() != "pwned"
    for secret in (
        value for cred in airflow_services.sandbox.credentials for value in (cred.client_secret, cred.app_key)
    ):
        assert secret not in page.frames[-1].content()

    # Recover now: a run of the DAG for that credential alone; its tasks appear in the row by themselves.
    attention.locator('[data-action="recover"]').click()
    expect(frame.locator(".banner.ok")).to_contain_text("Recovery run")
    expect(attention.locator('[data-field="task-link"]')).to_have_count(2, timeout=RUN_MS)
    (latest,) = rest.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", params={"order_by": "-run_after", "limit": 1})[
        "dag_runs"
    ]
    assert latest["conf"] == {"connections": [sandbox.attention]}
    rest.wait_for_run(DAG_ID, latest["dag_run_id"], timeout=RUN_MS / 1000)
    for state in attention.locator('[data-field="task-state"]').all():
        expect(state).to_have_text(TERMINAL)

    shot = tmp_path / "health-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    if os.environ.get(UPDATE_SCREENSHOT) == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, README_SCREENSHOT)

    held.locator('[data-action="reset-breaker"]').click()

    expect(held.locator('[data-field="breaker-state"]')).to_have_text("closed")
    expect(frame.locator(".banner.ok")).to_contain_text("Reset breaker")
    page.screenshot(path=str(tmp_path / "health-page-after-reset.png"), full_page=True)
    payload = rest.call("GET", f"/servicetitan/api/credentials/{sandbox.open_breaker}")
    assert payload["credential"]["breaker"]["state"] == "closed"

    # Changed elsewhere (the JSON API, another operator): the page shows it without a reload.
    rest.call("POST", f"/servicetitan/api/credentials/{sandbox.open_breaker}/breaker/hold", json={"minutes": 2})
    expect(held.locator('[data-field="breaker-state"]')).to_have_text("open")
