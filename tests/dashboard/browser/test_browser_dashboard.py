"""The dashboard in a real browser: log in, review a lead, export CSV, edit hours."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import httpx

from tests.dashboard.browser.conftest import log_in
from tests.dashboard.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_owner_reviews_a_lead_and_changes_its_status(live: dict[str, Any], page: Any) -> None:
    log_in(page, live["url"], "owner@clinic.test")
    assert page.url.endswith("/leads")
    page.get_by_role("link", name="Ann Smith").click()
    page.wait_for_url(f"**/leads/{live['leads']['ann']}")
    page.get_by_label("New status").select_option("contacted")
    page.get_by_label("Note").fill("Left a voicemail")
    page.get_by_role("button", name="Save status").click()
    history = page.locator("#status .history")
    history.wait_for()
    assert "New → Contacted" in history.inner_text()
    assert "Left a voicemail" in history.inner_text()
    page.reload()
    assert "Contacted" in page.locator("#status h2").first.inner_text()


def test_owner_filters_and_exports_csv(live: dict[str, Any], page: Any) -> None:
    log_in(page, live["url"], "owner@clinic.test")
    page.get_by_label("Outcome").select_option("spam")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/leads?*outcome=spam*")
    assert page.locator("#leads tbody tr").count() == 1
    with page.expect_download() as info:
        page.get_by_role("link", name="Export CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
    assert [r["id"] for r in rows] == [live["leads"]["bob"]]


def test_staff_edits_hours_and_slot_search_follows(live: dict[str, Any], page: Any) -> None:
    log_in(page, live["url"], "lee@clinic.test")
    page.goto(f"{live['url']}/staff/lee?week=2026-12-07&service=checkup")
    monday = page.locator('[data-day="2026-12-07"]')
    assert "09:00" in monday.inner_text()
    page.locator("#hours_mon").fill("14:00-15:00")
    page.get_by_role("button", name="Save availability").click()
    page.wait_for_url("**/staff/lee?saved=1")
    page.goto(f"{live['url']}/staff/lee?week=2026-12-07&service=checkup")
    text = page.locator('[data-day="2026-12-07"]').inner_text()
    assert "14:00–15:00" in text and "14:30" in text and "09:00" not in text
    # The next caller's search (the JSON API's, the agent's) sees the new hours at once.
    r = httpx.get(
        f"{live['url']}/api/v1/availability",
        headers=AUTH,
        params={
            "business": "clinic",
            "service": "checkup",
            "staff": "lee",
            "from": "2026-12-07",
            "to": "2026-12-07",
        },
    )
    assert [s["start"][11:16] for s in r.json()["slots"]] == ["14:00", "14:30"]
    # A mistake is refused with the reason, in the browser too.
    page.locator("#hours_tue").fill("17:00-09:00")
    page.get_by_role("button", name="Save availability").click()
    assert "Tuesday: '17:00-09:00' ends before it starts" in page.locator(".errors").inner_text()
