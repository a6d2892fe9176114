"""Reminders and attendance in a real browser: the owner edits the reminder settings and watches
the live preview's segment count; staff mark a no-show beside the appointment's texts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from booking.db import session_scope
from booking.models import Appointment, Business, Service, SmsMessage
from booking.reminders import policy
from tests.dashboard.browser.conftest import log_in
from tests.dashboard.test_web_attendance import PAST, book


def test_owner_edits_reminders_and_the_preview_counts_segments(
    live: dict[str, Any], page: Any
) -> None:
    log_in(page, live["url"], "owner@clinic.test")
    page.get_by_role("link", name="Reminders").click()
    page.wait_for_url("**/reminders")
    previews = page.locator("#previews")
    assert previews.locator(".segments").first.inner_text().startswith("1 segment")

    page.get_by_label("Reminders for Checkup").select_option("own")
    page.get_by_label("Text for Checkup").fill("See you at {time} 🦷 " + "bring your card. " * 4)
    # The preview follows the typing (htmx), before anything is saved.
    checkup = previews.locator("tr.preview", has_text="Checkup")
    checkup.locator(".warning").wait_for()
    assert "2 segments" in checkup.inner_text() and "UCS-2" in checkup.inner_text()
    page.get_by_label("Text for Checkup").fill("See you at {time}, {name}.")
    page.wait_for_function(
        "() => !document.querySelector('#previews .warning')"
    )  # one segment again
    assert "See you at 10:00 AM, Alexandrina." in previews.inner_text()
    page.get_by_label("Times before the appointment").fill("48h, 1h")
    page.get_by_label("Text for Checkup").fill("Hi {nom}")
    previews.get_by_text("unknown placeholder {nom}").wait_for()
    page.get_by_role("button", name="Save reminders").click()
    assert "unknown placeholder {nom}" in page.locator(".errors").first.inner_text()

    page.get_by_label("Text for Checkup").fill("See you at {time}, {name}.")
    page.get_by_role("button", name="Save reminders").click()
    page.wait_for_url("**/reminders?saved=1")
    assert page.get_by_label("Times before the appointment").input_value() == "48h, 1h"
    with session_scope(live["scheduler"].engine) as s:
        business = s.get(Business, "clinic")
        checkup_row = s.get(Service, ("clinic", "checkup"))
        assert business is not None and checkup_row is not None
        rule = policy(business, checkup_row)
    assert rule.before == (2880, 60) and rule.text == "See you at {time}, {name}."


@pytest.fixture
def past(live: dict[str, Any]) -> str:
    """A checkup of Ann's last Friday, with its reminder sent and delivered; booked before the
    browser starts (Playwright's sync API runs its own event loop in this thread)."""
    scheduler = live["scheduler"]
    apt = asyncio.run(book(scheduler, PAST, phone="+12025550001"))
    with session_scope(scheduler.engine, write=True) as s:
        s.add(
            SmsMessage(
                business_id="clinic",
                key=f"reminder:{apt}:1440",
                to_number="+12025550001",
                from_number="+12025550100",
                body="Clinic: reminder of your Checkup tomorrow. Reply C to confirm.",
                status="sent",
                next_attempt_at=PAST - timedelta(days=1),
                created_at=PAST - timedelta(days=1),
                sent_at=PAST - timedelta(days=1),
                sid="SMreminder",
                kind="reminder",
                appointment_id=apt,
                delivery_status="delivered",
            )
        )
    return apt


def test_staff_mark_a_no_show_beside_the_appointments_texts(
    live: dict[str, Any], past: str, page: Any
) -> None:
    apt = past
    log_in(page, live["url"], "lee@clinic.test")
    page.goto(f"{live['url']}/appointments/{apt}")
    texts = page.locator("#texts")
    assert "Reply C to confirm." in texts.inner_text() and "Delivered" in texts.inner_text()
    page.get_by_role("button", name="Mark no-show").click()
    page.locator("#attendance .badge.no_show").wait_for()
    assert "1 missed appointment" in page.locator("#no-shows").inner_text()
    assert page.get_by_role("button", name="Mark no-show").count() == 0
    assert "Reply C to confirm." in page.locator("#texts").inner_text()
    with session_scope(live["scheduler"].engine) as s:
        row = s.get(Appointment, apt)
        assert row is not None and row.attendance == "no_show"
