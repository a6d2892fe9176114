"""The waitlist in a real browser: staff put two callers on the list, see a freed time offered to
the first and held, take her off, and the next pass offers the time to the second."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from booking.models import WaitlistStatus
from booking.waitlist import Waitlist
from tests.booking.test_waitlist import ANA, BO, fill_tuesday
from tests.dashboard.browser.conftest import log_in

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end beside the browser (Playwright's sync API runs its own event
    loop in this thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def add(page: Any, name: str, phone: str, *, staff: str = "Anyone") -> None:
    form = page.locator("#add-entry")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Phone").fill(phone)
    form.get_by_label("Service").select_option(label="Checkup")
    form.get_by_label("With").select_option(label=staff)
    form.get_by_label("From").fill("2026-12-01")
    form.get_by_label("To").fill("2026-12-01")
    form.get_by_role("button", name="Add to the waitlist").click()
    page.wait_for_url("**/waitlist")


def test_staff_run_the_waitlist(live: dict[str, Any], page: Any) -> None:
    scheduler = live["scheduler"]
    booked = run(fill_tuesday(scheduler))
    log_in(page, live["url"], "lee@clinic.test")
    page.get_by_role("link", name="Waitlist").click()
    page.wait_for_url("**/waitlist")
    assert "No one is waiting." in page.locator("#waiting").inner_text()

    add(page, "Ana Lima", ANA)
    add(page, "Bo Chen", "(202) 555-4322", staff="Dr. Lee")
    rows = page.locator("#waiting tr.entry")
    assert rows.count() == 2
    assert "Ana Lima" in rows.nth(0).inner_text() and "Bo Chen" in rows.nth(1).inner_text()

    # A bad range comes back with the reason and what was typed.
    form = page.locator("#add-entry")
    form.get_by_label("Phone").fill("+12025554399")
    form.get_by_label("From").fill("2026-12-05")
    form.get_by_label("To").fill("2026-12-02")
    form.get_by_role("button", name="Add to the waitlist").click()
    assert "the last day is before the first" in page.get_by_role("alert").inner_text()
    assert page.locator("#add-entry").get_by_label("Phone").input_value() == "+12025554399"

    run(scheduler.cancel(business_id="clinic", appointment_id=booked[2].id))
    waitlist = Waitlist(scheduler)
    [offer] = run(waitlist.offer_due())
    page.goto(f"{live['url']}/waitlist")
    first = page.locator("#waiting tr.entry").nth(0)
    assert "Offered" in first.inner_text() and "held until 07:30" in first.inner_text()

    first.get_by_role("button", name="Remove Ana Lima").click()
    page.wait_for_url("**/waitlist")
    assert page.locator("#waiting tr.entry").count() == 1
    assert "Ana Lima" in page.locator("#finished").inner_text()
    [second] = run(waitlist.offer_due())
    assert second.start == offer.start
    entries = {e.phone: e for e in run(waitlist.entries("clinic"))}
    assert entries[BO].status == WaitlistStatus.OFFERED.value
    assert entries[ANA].status == WaitlistStatus.REMOVED.value
    page.reload()
    assert "Offered" in page.locator("#waiting tr.entry").nth(0).inner_text()
