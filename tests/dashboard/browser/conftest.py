"""Real headless Chromium (Debian's, driven by Playwright) against the app under uvicorn.

Skipped only when Chromium is missing and CI is not set; in CI a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from booking.clock import FixedClock
from booking.scheduler import Scheduler
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.conftest import NOW, seed_clinic
from tests.dashboard.conftest import API_KEY, PASSWORD
from tests.fakes.loopback import LoopbackServer

CHROMIUM = Path("/usr/bin/chromium")

if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )
if os.environ.get("CI"):
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def live(sqlite_engine: Engine) -> Iterator[dict[str, Any]]:
    """The clinic with two accounts and a few leads, served on a loopback port."""
    from tests.dashboard.conftest import seed_salon

    seed_clinic(sqlite_engine)
    scheduler = Scheduler(engine=sqlite_engine, clock=FixedClock(NOW))
    seed_salon(sqlite_engine)
    leads = asyncio.run(_seed(scheduler))
    settings = Settings(api_key=SecretStr(API_KEY), allow_private_urls=True)
    app = create_app(settings, scheduler=scheduler)
    server = LoopbackServer(app, name="dashboard")
    server.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.port}", "scheduler": scheduler, "leads": leads}
    finally:
        server.stop()


async def _seed(scheduler: Scheduler) -> dict[str, str]:
    from datetime import timedelta

    from dashboard.users import add_user

    for email, role, staff in (
        ("owner@clinic.test", "owner", None),
        ("lee@clinic.test", "staff", "lee"),
    ):
        add_user(
            scheduler.engine,
            business_id="clinic",
            email=email,
            password=PASSWORD,
            role=role,
            staff_id=staff,
            now=NOW,
        )
    ann = await scheduler.record_lead(
        business_id="clinic",
        phone="+12025550001",
        name="Ann Smith",
        reason="Cleaning",
        outcome="callback",
        now=NOW - timedelta(days=1),
    )
    bob = await scheduler.record_lead(
        business_id="clinic",
        phone="+12025550002",
        name="Bob Jones",
        reason="Spam call",
        outcome="spam",
        now=NOW - timedelta(hours=2),
    )
    return {"ann": ann.id, "bob": bob.id}


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


# Injected by Playwright (outside the page's policy): every violation is also logged as an error.
_REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => console.error(
  "Content Security Policy violation: " + e.violatedDirective + " blocked " + e.blockedURI +
  " at " + e.sourceFile + ":" + e.lineNumber));
"""


def is_violation(text: str) -> bool:
    return "Content Security Policy" in text or "Content-Security-Policy" in text


@pytest.fixture
def browser_problems() -> list[str]:
    """Content-Security-Policy violations and uncaught script errors seen by `page`."""
    return []


@pytest.fixture
def page(browser: Any, browser_problems: list[str]) -> Iterator[Any]:
    """A fresh page; the test fails if any page it opened broke the Content-Security-Policy
    (a refused inline script, handler, style or foreign resource) or threw a script error."""
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(10_000)
    context.add_init_script(_REPORT_VIOLATIONS)
    opened = context.new_page()

    def console(message: Any) -> None:
        if message.type == "error" and is_violation(message.text):
            browser_problems.append(f"{opened.url}: {message.text}")

    opened.on("console", console)
    opened.on("pageerror", lambda error: browser_problems.append(f"{opened.url}: {error}"))
    yield opened
    context.close()
    assert not browser_problems, "\n".join(browser_problems)


def log_in(page: Any, url: str, email: str) -> None:
    page.goto(f"{url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda u: "/login" not in u)
