"""An appointment's page: its texts (kind, when, status, delivery), whether the caller confirmed
by text, marking attended or no-show once it started, and the caller's no-show count (also on
their lead, and as a filter of the leads list)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta

import httpx
import pytest

from booking.db import session_scope
from booking.models import Appointment, Attendance, SmsMessage
from booking.scheduler import Scheduler
from tests.conftest import NOW
from tests.dashboard.conftest import csrf_of, post_form

ClientFor = Callable[[str | None], AbstractAsyncContextManager[httpx.AsyncClient]]
PAST = datetime.fromisoformat("2026-11-27T14:00:00+00:00")  # Friday 09:00 in New York


async def book(
    scheduler: Scheduler,
    start: datetime,
    *,
    staff: str = "lee",
    phone: str = "+12025550001",
    service: str = "checkup",
) -> str:
    """An appointment at `start`, booked a day before it (so it may lie before NOW)."""
    row = await scheduler.book(
        business_id="clinic",
        service_id=service,
        staff_id=staff,
        start=start,
        name="Ann Smith",
        phone=phone,
        booked_by="agent",
        now=min(NOW, start - timedelta(days=1)),
    )
    return row.id


def attendance_of(scheduler: Scheduler, appointment_id: str) -> str | None:
    with session_scope(scheduler.engine) as s:
        row = s.get(Appointment, appointment_id)
        assert row is not None
        return row.attendance


@pytest.fixture
async def past(scheduler: Scheduler, accounts: dict[str, str]) -> str:
    return await book(scheduler, PAST)


async def test_staff_mark_a_started_appointment_no_show_then_attended_then_unmark(
    staff: httpx.AsyncClient, scheduler: Scheduler, past: str
) -> None:
    later = await book(scheduler, NOW + timedelta(days=7, hours=2))  # Ann again, next week
    page = await staff.get(f"/appointments/{past}")
    assert "Mark attended" in page.text and "Mark no-show" in page.text
    assert "Unmark" not in page.text
    r = await post_form(
        staff,
        f"/appointments/{past}",
        f"/appointments/{past}/attendance",
        {"attendance": "no_show"},
    )
    assert r.status_code == 303 and r.headers["location"] == f"/appointments/{past}"
    assert attendance_of(scheduler, past) == "no_show"
    page = await staff.get(f"/appointments/{past}")
    assert '<span class="badge no_show">No-show</span>' in page.text
    assert "Mark no-show" not in page.text and "Unmark" in page.text
    assert "1 missed appointment<" in page.text
    # The caller's next appointment shows the miss too, and cannot be marked before it starts.
    page = await staff.get(f"/appointments/{later}")
    assert "1 missed appointment<" in page.text
    assert "once it has started" in page.text and "Mark no-show" not in page.text

    r = await post_form(
        staff,
        f"/appointments/{past}",
        f"/appointments/{past}/attendance",
        {"attendance": "attended"},
    )
    assert r.status_code == 303 and attendance_of(scheduler, past) == "attended"
    r = await post_form(
        staff, f"/appointments/{past}", f"/appointments/{past}/attendance", {"attendance": "none"}
    )
    assert r.status_code == 303 and attendance_of(scheduler, past) is None
    page = await staff.get(f"/appointments/{past}")
    assert 'No-shows</dt><dd id="no-shows"><span class="muted">None' in page.text


async def test_marking_is_refused_with_the_reason_before_the_start_or_once_cancelled(
    owner: httpx.AsyncClient, scheduler: Scheduler, past: str
) -> None:
    ahead = await book(scheduler, NOW + timedelta(days=7, hours=2))
    url = f"/appointments/{ahead}"
    r = await post_form(owner, url, f"{url}/attendance", {"attendance": "no_show"})
    assert r.status_code == 422 and "once it has started" in r.text
    assert attendance_of(scheduler, ahead) is None
    for bad in ("maybe", "", "NO_SHOW"):
        r = await post_form(
            owner, f"/appointments/{past}", f"/appointments/{past}/attendance", {"attendance": bad}
        )
        assert r.status_code == 422 and "choose attended, no-show or unmark" in r.text
    await scheduler.cancel(business_id="clinic", appointment_id=ahead)
    token = csrf_of((await owner.get(url)).text)
    r = await owner.post(f"{url}/attendance", data={"csrf_token": token, "attendance": "none"})
    assert r.status_code == 409 and "is cancelled" in r.text
    assert 'id="attendance"' not in (await owner.get(url)).text


async def test_marking_needs_a_form_token_and_an_appointment_one_may_see(
    client_for: ClientFor,
    owner: httpx.AsyncClient,
    staff: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    scheduler: Scheduler,
    past: str,
) -> None:
    action = f"/appointments/{past}/attendance"
    assert (await owner.post(action, data={"attendance": "no_show"})).status_code == 403
    r = await owner.post(action, data={"attendance": "no_show", "csrf_token": "forged"})
    assert r.status_code == 403
    assert (await anonymous.post(action, data={"attendance": "no_show"})).status_code == 403
    # Rivera's appointment is not Lee's to mark; the salon's owner does not see the clinic's.
    riveras = await book(scheduler, PAST - timedelta(days=4), staff="rivera", service="cleaning")
    token = csrf_of((await staff.get("/appointments")).text)
    r = await staff.post(
        f"/appointments/{riveras}/attendance", data={"csrf_token": token, "attendance": "no_show"}
    )
    assert r.status_code == 404
    async with client_for("owner@salon.test") as salon:
        token = csrf_of((await salon.get("/leads")).text)
        r = await salon.post(action, data={"csrf_token": token, "attendance": "no_show"})
        assert r.status_code == 404
    assert attendance_of(scheduler, past) is None
    assert attendance_of(scheduler, riveras) is None


async def test_the_page_shows_each_text_and_whether_the_caller_confirmed(
    owner: httpx.AsyncClient, scheduler: Scheduler, accounts: dict[str, str]
) -> None:
    apt = await book(scheduler, NOW + timedelta(days=7, hours=2))
    page = await owner.get(f"/appointments/{apt}")
    assert "No texts about this appointment." in page.text and "Not yet" in page.text
    at = NOW - timedelta(hours=1)
    texts = [
        ("confirmation", "sent", "delivered", None, None, "Booked: checkup Mon Dec 7"),
        ("reminder", "sent", "undelivered", "30003", None, "Reminder: checkup tomorrow"),
        ("reminder", "cancelled", None, None, "the appointment was cancelled or moved", "Old"),
        ("reminder", "failed", None, None, "21211 invalid number", "Never went"),
    ]
    with session_scope(scheduler.engine, write=True) as s:
        for i, (kind, status, delivery, code, error, body) in enumerate(texts):
            s.add(
                SmsMessage(
                    business_id="clinic",
                    key=f"test:{apt}:{i}",
                    to_number="+12025550001",
                    from_number="+12025550100",
                    body=body,
                    status=status,
                    next_attempt_at=at,
                    created_at=at + timedelta(minutes=i),
                    sent_at=at + timedelta(minutes=i, seconds=5) if status == "sent" else None,
                    sid=f"SM{i}" if status == "sent" else None,
                    error=error,
                    kind=kind,
                    appointment_id=apt,
                    delivery_status=delivery,
                    delivery_error=code,
                )
            )
        row = s.get(Appointment, apt)
        assert row is not None
        row.caller_confirmed_at = NOW - timedelta(minutes=30)
        s.add(row)
    page = await owner.get(f"/appointments/{apt}")
    section = page.text[page.text.index('id="texts"') :]
    assert section.index("Booked: checkup") < section.index("Reminder: checkup tomorrow")
    assert "Confirmation" in section and section.count(">Reminder<") == 3
    assert '<span class="badge delivered">Delivered</span>' in section
    assert "error 30003: the phone was off or out of reach" in section
    assert "the appointment was cancelled or moved" in section and "21211 invalid number" in section
    assert "30 Nov 06:00" in section and "30 Nov 06:03" in section  # New York time
    assert "Yes, the caller replied C on Mon 30 Nov 2026, 06:30" in page.text


async def test_owners_filter_leads_by_no_show_and_see_the_count(
    owner: httpx.AsyncClient, scheduler: Scheduler, leads: dict[str, str], past: str
) -> None:
    await scheduler.mark_attendance(
        business_id="clinic", appointment_id=past, attendance=Attendance.NO_SHOW
    )
    r = await owner.get("/leads", params={"no_show": "1"})
    assert r.status_code == 200
    assert leads["ann"] in r.text and leads["bob"] not in r.text and leads["spam"] not in r.text
    assert '<span class="badge no_show">1 no-show</span>' in r.text
    assert 'name="no_show" value="1" checked' in r.text
    r = await owner.get("/leads.csv", params={"no_show": "1"})
    assert leads["ann"] in r.text and leads["bob"] not in r.text
    r = await owner.get("/leads")
    assert leads["bob"] in r.text and r.text.count("1 no-show<") == 1
    r = await owner.get(f"/leads/{leads['ann']}")
    assert "1 missed appointment<" in r.text
    r = await owner.get(f"/leads/{leads['bob']}")
    assert '<dd id="no-shows"><span class="muted">None' in r.text
