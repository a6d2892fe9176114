"""Appointments: day and week views per staff member, cancel and move through the scheduler."""

from __future__ import annotations

import httpx

from booking.scheduler import Scheduler
from tests.dashboard.conftest import post_form


async def test_week_and_day_views_show_the_staff_members_bookings(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    r = await owner.get("/appointments", params={"staff": "lee", "day": "2026-12-09"})
    assert r.status_code == 200
    assert leads["appointment"] in r.text and "09:00–09:45" in r.text and "Ann Smith" in r.text
    assert "Mon 07 Dec" in r.text and "Sun 13 Dec" in r.text
    r = await owner.get(
        "/appointments", params={"staff": "lee", "view": "day", "day": "2026-12-08"}
    )
    assert leads["appointment"] not in r.text and "Tue 08 Dec" in r.text
    r = await owner.get("/appointments", params={"staff": "rivera", "day": "2026-12-07"})
    assert leads["appointment"] not in r.text


async def test_move_then_cancel_use_the_scheduler(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
    scheduler: Scheduler,
) -> None:
    old = leads["appointment"]
    page = await owner.get(f"/appointments/{old}")
    assert 'value="2026-12-07T14:00:00-05:00"' in page.text  # a free time from slot search
    r = await post_form(
        owner, f"/appointments/{old}", f"/appointments/{old}/move", {"start": "2026-12-07T14:00"}
    )
    assert r.status_code == 303
    new = r.headers["location"].rsplit("/", 1)[1]
    moved = await scheduler.get_appointment(business_id="clinic", appointment_id=new)
    assert moved.rescheduled_from == old
    assert moved.start.isoformat() == "2026-12-07T19:00:00+00:00"
    r = await post_form(
        owner, f"/appointments/{new}", f"/appointments/{new}/move", {"start": "2026-12-07T12:15"}
    )  # Lee's lunch break
    assert r.status_code == 409 and "not a time this staff member offers" in r.text
    r = await post_form(owner, f"/appointments/{new}", f"/appointments/{new}/cancel", {})
    assert r.status_code == 303
    row = await scheduler.get_appointment(business_id="clinic", appointment_id=new)
    assert row.status == "cancelled"
    page = await owner.get(f"/appointments/{new}")
    assert "Cancel appointment" not in page.text


async def test_staff_see_and_manage_only_their_own_appointments(
    staff: httpx.AsyncClient,
    leads: dict[str, str],
    scheduler: Scheduler,
) -> None:
    theirs = await scheduler.book(
        business_id="clinic",
        service_id="cleaning",
        staff_id="rivera",
        start=_at("2026-12-07T09:00-06:00"),
        name="Cy",
        phone="+12025550009",
    )
    r = await staff.get("/appointments")
    assert r.status_code == 200 and "Dr. Lee" in r.text
    r = await staff.get("/appointments", params={"day": "2026-12-07"})
    assert leads["appointment"] in r.text
    assert (await staff.get("/appointments", params={"staff": "rivera"})).status_code == 404
    assert (await staff.get(f"/appointments/{theirs.id}")).status_code == 404
    r = await post_form(staff, "/appointments", f"/appointments/{theirs.id}/cancel", {})
    assert r.status_code == 404
    row = await scheduler.get_appointment(business_id="clinic", appointment_id=theirs.id)
    assert row.status == "confirmed"
    r = await staff.get("/staff/lee")
    assert leads["appointment"] in r.text  # their own upcoming appointments


def _at(text: str):  # type: ignore[no-untyped-def]
    from datetime import datetime

    return datetime.fromisoformat(text)


EDGE_DAYS = ["9999-12-31", "0001-01-01", "2026-13-45", "yesterday"]


async def test_a_day_outside_1970_2199_or_no_date_is_a_400_page(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    apt = leads["appointment"]
    for day in EDGE_DAYS:
        for view in ("week", "day"):
            r = await owner.get("/appointments", params={"staff": "lee", "view": view, "day": day})
            assert r.status_code == 400, (day, view)
            assert (
                "outside the years 1970-2199" in r.text or "must look like 2026-12-31" in r.text
            ), day
        r = await owner.get(f"/appointments/{apt}", params={"day": day})
        assert r.status_code == 400, day
        assert "The day" in r.text


async def test_the_first_and_last_allowed_days_open(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    # Their week (or, east of UTC, the day itself) reaches past 1970-2199: the search is cut.
    for day in ("1970-01-01", "2199-12-31"):
        for view in ("week", "day"):
            r = await owner.get("/appointments", params={"staff": "lee", "view": view, "day": day})
            assert r.status_code == 200, (day, view)
        r = await owner.get(f"/appointments/{leads['appointment']}", params={"day": day})
        assert r.status_code == 200, day


async def test_moving_to_a_time_outside_1970_2199_is_refused_on_the_form(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
    scheduler: Scheduler,
) -> None:
    apt = leads["appointment"]
    for start in ("9999-12-31T23:59", "0001-01-01T00:00", "9999-12-31T23:59:59+14:00"):
        r = await post_form(
            owner, f"/appointments/{apt}", f"/appointments/{apt}/move", {"start": start}
        )
        assert r.status_code == 422, start
        assert "outside the years 1970-2199" in r.text, start
    r = await post_form(
        owner, f"/appointments/{apt}", f"/appointments/{apt}/move", {"start": "soon"}
    )
    assert r.status_code == 422 and "choose a date and time like" in r.text
    row = await scheduler.get_appointment(business_id="clinic", appointment_id=apt)
    assert row.status == "confirmed" and row.rescheduled_from is None
