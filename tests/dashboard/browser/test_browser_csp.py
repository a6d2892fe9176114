"""The Content-Security-Policy in a real browser: every page works under it with nothing refused,
and the behaviour that used to be inline (confirmations, submit on change, select on focus, the
reset after an htmx post) still works from static/app.js."""

from __future__ import annotations

import time
from typing import Any

from tests.dashboard.browser.conftest import log_in

OWNER_PAGES = [
    "/leads",
    "/leads/{ann}",
    "/appointments",
    "/appointments?view=day",
    "/staff",
    "/staff/lee",
    "/staff/lee/calendars",
    "/settings",
    "/integrations",
    "/privacy",
    "/try",
    "/no-such-page",
]


def test_every_page_loads_without_a_policy_violation(live: dict[str, Any], page: Any) -> None:
    first = page.goto(f"{live['url']}/login")
    policy = first.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    log_in(page, live["url"], "owner@clinic.test")
    for path in OWNER_PAGES:
        response = page.goto(live["url"] + path.format(**live["leads"]))
        page.wait_for_load_state("load")
        assert response.headers["x-frame-options"] == "DENY", path
        if response.ok:  # htmx runs, with its config from the meta tag
            assert page.evaluate(
                "() => htmx.config.allowEval === false"
                " && htmx.config.includeIndicatorStyles === false"
            ), path
    page.context.clear_cookies()
    log_in(page, live["url"], "lee@clinic.test")  # a staff member's pages too
    page.goto(f"{live['url']}/staff/lee")
    page.wait_for_load_state("load")
    # The page fixture fails the test on any violation it saw.


def test_a_violation_is_caught(
    live: dict[str, Any], page: Any, browser_problems: list[str]
) -> None:
    """The check above can fail: an inline script added to a page is refused and reported."""
    page.goto(f"{live['url']}/login")
    page.evaluate("""() => { const s = document.createElement("script");
                             s.textContent = "window.ranInline = true";
                             document.body.append(s); }""")
    deadline = time.monotonic() + 5
    while not browser_problems and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert page.evaluate("() => window.ranInline") is None
    assert browser_problems and "script-src" in browser_problems[0]
    browser_problems.clear()


def test_a_confirmation_is_asked_before_removing(live: dict[str, Any], page: Any) -> None:
    log_in(page, live["url"], "owner@clinic.test")
    page.goto(f"{live['url']}/settings")
    remove = page.get_by_role("button", name="Remove Checkup")
    asked: list[str] = []

    def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    remove.click()
    page.wait_for_timeout(300)
    assert asked == ["Remove this service?"]
    assert page.url.endswith("/settings") and remove.count() == 1  # not submitted

    page.once("dialog", lambda dialog: dialog.accept())
    remove.click()
    page.wait_for_url("**/settings?saved=1")
    assert page.get_by_role("button", name="Remove Checkup").count() == 0


def test_choosing_a_service_shows_its_slots(live: dict[str, Any], page: Any) -> None:
    log_in(page, live["url"], "owner@clinic.test")
    page.goto(f"{live['url']}/staff/lee?week=2026-12-07")
    page.get_by_label("Service").select_option("checkup")
    page.wait_for_url("**service=checkup*")


def test_the_try_it_box_is_cleared_after_each_turn(live: dict[str, Any], page: Any) -> None:
    log_in(page, live["url"], "owner@clinic.test")
    page.goto(f"{live['url']}/try")
    page.get_by_role("button", name="Start a call").click()
    said = page.get_by_label("You say")
    said.fill("Hello, is anyone there?")
    before = page.locator("#turns li").count()
    page.get_by_role("button", name="Say").click()
    page.wait_for_function(f"() => document.querySelectorAll('#turns li').length > {before}")
    assert said.input_value() == ""
