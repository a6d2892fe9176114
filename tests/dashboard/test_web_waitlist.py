"""The waitlist page: staff add a caller and see the queue in offer order, the offer a freed time
made (held until when), take someone off (their held time goes to the next), and what came of
earlier entries; bad input gets the form back with a reason, never a 500."""

from __future__ import annotations

import httpx
import pytest

from booking.models import WaitlistStatus
from booking.scheduler import Scheduler
from booking.waitlist import Waitlist
from tests.booking.test_waitlist import ANA, BO, fill_tuesday
from tests.dashboard.conftest import post_form

ADD = {
    "name": "Ana",
    "phone": ANA,
    "service": "checkup",
    "staff": "",
    "first_day": "2026-12-01",
    "last_day": "2026-12-01",
}


async def add(client: httpx.AsyncClient, **changes: str) -> httpx.Response:
    return await post_form(client, "/waitlist", "/waitlist", {**ADD, **changes})


async def test_staff_add_callers_see_the_offer_and_take_one_off(
    staff: httpx.AsyncClient, scheduler: Scheduler
) -> None:
    booked = await fill_tuesday(scheduler)
    page = await staff.get("/waitlist")
    assert page.status_code == 200 and "No one is waiting." in page.text
    r = await add(staff)
    assert r.status_code == 303 and r.headers["location"] == "/waitlist"
    r = await add(staff, name="Bo", phone="(202) 555-4322", staff="lee")
    assert r.status_code == 303
    page = await staff.get("/waitlist")
    assert "Waiting (2)" in page.text
    assert page.text.index("Ana") < page.text.index("Bo") < page.text.index("Add a caller")
    assert "Dr. Lee" in page.text and "Tue 01 Dec" in page.text

    # A cancellation frees a time: Ana, first in line, is offered it and it is held for her.
    await scheduler.cancel(business_id="clinic", appointment_id=booked[2].id)
    waitlist = Waitlist(scheduler)
    [offer] = await waitlist.offer_due()
    page = await staff.get("/waitlist")
    assert '<span class="badge offered">Offered</span>' in page.text
    assert "Tue 01 Dec 10:00 with Dr. Lee" in page.text and "held until 07:30" in page.text

    # Taking Ana off lets the held time go: the next pass offers it to Bo.
    r = await post_form(staff, "/waitlist", f"/waitlist/{offer.entry_id}/remove", {})
    assert r.status_code == 303
    [second] = await waitlist.offer_due()
    assert second.start == offer.start and second.entry_id != offer.entry_id
    entries = {e.phone: e for e in await waitlist.entries("clinic")}
    assert entries[ANA].status == WaitlistStatus.REMOVED.value
    assert entries[BO].status == WaitlistStatus.OFFERED.value
    page = await staff.get("/waitlist")
    assert "Waiting (1)" in page.text and "Earlier" in page.text
    assert page.text.index("Bo") < page.text.index("Earlier") < page.text.index("Ana")


async def test_a_booked_entry_links_to_its_appointment(
    owner: httpx.AsyncClient, scheduler: Scheduler
) -> None:
    booked = await fill_tuesday(scheduler)
    assert (await add(owner)).status_code == 303
    await scheduler.cancel(business_id="clinic", appointment_id=booked[0].id)
    waitlist = Waitlist(scheduler)
    assert await waitlist.offer_due()
    held = await waitlist.open_offer(business_id="clinic", phone=ANA)
    assert held is not None
    appointment = await waitlist.accept(held)
    page = await owner.get("/waitlist")
    assert f'href="/appointments/{appointment.id}"' in page.text
    assert "No one is waiting." in page.text


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"phone": ""}, 422, "phone"),
        ({"phone": "not a number"}, 422, "phone"),
        ({"service": "nope"}, 404, "no service"),
        ({"service": ""}, 422, "choose a service"),
        ({"staff": "nobody"}, 422, "nobody does not do Checkup"),
        ({"first_day": "soon"}, 422, "must look like 2026-12-31"),
        ({"first_day": "9999-01-01", "last_day": "9999-01-02"}, 422, "outside the years"),
        ({"last_day": ""}, 422, "choose the last day"),
        ({"last_day": "2026-11-30", "first_day": "2026-12-03"}, 422, "before the first"),
        ({"first_day": "2026-12-01", "last_day": "2027-06-01"}, 422, "at most 60 days"),
        ({"first_day": "2026-11-01", "last_day": "2026-11-02"}, 422, "those days are past"),
    ],
)
async def test_bad_input_gets_the_form_back_with_the_reason(
    staff: httpx.AsyncClient, changes: dict[str, str], status: int, reason: str
) -> None:
    r = await add(staff, **changes)
    assert r.status_code == status, r.text
    assert reason in r.text and "Add a caller" in r.text
    if changes.get("phone") == "not a number":
        assert 'value="not a number"' in r.text  # what was typed comes back


async def test_oversized_fields_and_forged_posts_are_refused(
    staff: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    r = await add(staff, name="x" * 5000)
    assert r.status_code == 422
    r = await staff.post("/waitlist", data=ADD)  # no CSRF token
    assert r.status_code == 403
    r = await anonymous.get("/waitlist", follow_redirects=False)
    assert r.status_code in (303, 307) and "/login" in r.headers["location"]
    r = await post_form(staff, "/waitlist", "/waitlist/wait_nope/remove", {})
    assert r.status_code == 404 and "no waitlist entry" in r.text
