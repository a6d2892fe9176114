"""Staff availability edited in the browser: same rules as the business file, and the very next
slot search follows the change."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

import httpx

from booking.scheduler import Scheduler
from tests.dashboard.conftest import post_form

WEEK = {d: "" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def hours(**days: str) -> dict[str, str]:
    return {f"hours_{d}": v for d, v in (WEEK | days).items()}


async def _starts(scheduler: Scheduler, day: str) -> list[str]:
    found = await scheduler.availability(
        business_id="clinic",
        service_id="checkup",
        staff_id="lee",
        first_day=date.fromisoformat(day),
        last_day=date.fromisoformat(day),
    )
    return [f"{s.start.astimezone(ZoneInfo(found.timezone)):%H:%M}" for s in found.slots]


async def test_week_grid_shows_bookable_times_from_slot_search(staff: httpx.AsyncClient) -> None:
    r = await staff.get("/staff/lee", params={"week": "2026-12-07", "service": "checkup"})
    assert r.status_code == 200
    day = r.text.split('data-day="2026-12-07"')[1].split("</section>")[0]
    assert "09:00–12:00, 13:00–17:00" in day and ">09:00<" in day and ">16:30<" in day
    assert ">12:00<" not in day
    closed = r.text.split('data-day="2026-12-12"')[1].split("</section>")[0]
    assert "Off" in closed


async def test_saving_hours_changes_the_next_slot_search(
    staff: httpx.AsyncClient,
    scheduler: Scheduler,
) -> None:
    assert (await _starts(scheduler, "2026-12-07"))[0] == "09:00"
    form = [
        *hours(mon="14:00-16:00", tue="09:00-12:00, 13:00-17:00").items(),
        ("ov_date", "2026-12-08"),
        ("ov_hours", "10:00-11:00"),
        ("ov_date", "2026-12-24"),
        ("ov_hours", ""),
        ("off_start", "2026-12-09T09:00"),
        ("off_end", "2026-12-09T12:00"),
        ("off_rrule", ""),
        ("off_reason", "Dentist"),
    ]
    r = await post_form(staff, "/staff/lee", "/staff/lee/hours", form)
    assert r.status_code == 303, r.text
    assert await _starts(scheduler, "2026-12-07") == ["14:00", "14:30", "15:00", "15:30"]
    assert await _starts(scheduler, "2026-12-08") == ["10:00", "10:30"]
    assert await _starts(scheduler, "2026-12-09") == []  # no Wednesday hours any more
    page = await staff.get("/staff/lee?saved=1")
    assert "Saved." in page.text and 'value="Dentist"' in page.text
    assert 'value="2026-12-09T09:00"' in page.text


async def test_invalid_hours_are_refused_with_the_business_file_rules(
    staff: httpx.AsyncClient,
    scheduler: Scheduler,
) -> None:
    form = [
        *hours(mon="09:00-08:00", tue="9 to 5", wed="09:00-12:00, 11:00-13:00").items(),
        ("ov_date", "2026-12-08"),
        ("ov_hours", "10:00-11:00"),
        ("ov_date", "2026-12-08"),
        ("ov_hours", ""),
        ("off_start", "2026-12-09T12:00"),
        ("off_end", "2026-12-09T09:00"),
        ("off_rrule", "FREQ=SOMETIMES"),
        ("off_reason", ""),
    ]
    r = await post_form(staff, "/staff/lee", "/staff/lee/hours", form)
    assert r.status_code == 422
    assert "Monday: &#39;09:00-08:00&#39; ends before it starts" in r.text
    assert "Tuesday: &#39;9 to 5&#39; is not a range like" in r.text
    assert "Wednesday:" in r.text and "overlap" in r.text
    assert "more than one override for 2026-12-08" in r.text
    assert "Time off 1, Repeat: FREQ=SOMETIMES is not one of DAILY" in r.text
    assert 'value="9 to 5"' in r.text  # the form comes back as typed
    assert (await _starts(scheduler, "2026-12-07"))[0] == "09:00"  # nothing saved


async def test_staff_cannot_open_a_colleagues_hours(staff: httpx.AsyncClient) -> None:
    assert (await staff.get("/staff/rivera")).status_code == 404
    r = await post_form(staff, "/staff/lee", "/staff/rivera/hours", hours(mon="09:00-10:00"))
    assert r.status_code == 404
    assert (await staff.get("/staff")).status_code == 403
    assert (await staff.get("/settings")).status_code == 403


async def test_owner_sees_every_staff_member_and_their_calendars(
    owner: httpx.AsyncClient,
) -> None:
    r = await owner.get("/staff")
    assert "Dr. Lee" in r.text and "Sam Rivera" in r.text
    r = await owner.get("/staff/rivera/calendars")
    assert r.status_code == 200
    assert 'href="/calendars/connect/google?staff=rivera"' in r.text
    assert 'href="/calendars/connect/microsoft?staff=rivera"' in r.text
    assert 'action="/calendars/connect/caldav"' in r.text


async def test_time_off_repeating_more_often_than_daily_is_refused(
    staff: httpx.AsyncClient,
    scheduler: Scheduler,
) -> None:
    form = [
        *hours(mon="09:00-17:00").items(),
        ("off_start", "2000-01-01T00:00"),
        ("off_end", "2000-01-01T00:01"),
        ("off_rrule", "FREQ=MINUTELY"),
        ("off_reason", ""),
    ]
    r = await post_form(staff, "/staff/lee", "/staff/lee/hours", form)
    assert r.status_code == 422
    assert "Time off 1, Repeat: FREQ=MINUTELY repeats more often than daily" in r.text
    assert 'value="FREQ=MINUTELY"' in r.text  # the form comes back as typed
    assert (await _starts(scheduler, "2026-12-07"))[0] == "09:00"  # nothing saved


async def test_a_page_with_a_hostile_stored_rule_still_opens(
    staff: httpx.AsyncClient,
    scheduler: Scheduler,
) -> None:
    from booking.db import session_scope
    from booking.models import Staff

    with session_scope(scheduler.engine, write=True) as s:
        row = s.get(Staff, ("clinic", "lee"))
        assert row is not None
        row.time_off = [
            {
                "start": "0001-01-01T00:00:00+09:00",
                "end": "0001-01-01T00:01+09:00",
                "rrule": "FREQ=MINUTELY",
            }
        ]
        s.add(row)
    r = await staff.get("/staff/lee", params={"week": "2026-12-07", "service": "checkup"})
    assert r.status_code == 200
    assert 'value="FREQ=MINUTELY"' in r.text
    assert await _starts(scheduler, "2026-12-07") == []  # busy, never offered


async def test_a_week_outside_1970_2199_or_no_date_is_a_400_page(
    staff: httpx.AsyncClient,
    owner: httpx.AsyncClient,
) -> None:
    for week, said in [
        ("9999-12-31", "The week 9999-12-31 is outside the years 1970-2199"),
        ("0001-01-01", "The week 0001-01-01 is outside the years 1970-2199"),
        ("2026-02-30", "The week must look like 2026-12-31"),
        ("next", "The week must look like 2026-12-31"),
    ]:
        for client in (staff, owner):
            r = await client.get("/staff/lee", params={"week": week, "service": "checkup"})
            assert r.status_code == 400, week
            assert said in r.text, week


async def test_the_first_and_last_allowed_weeks_open(staff: httpx.AsyncClient) -> None:
    # 1970-01-01 is a Thursday: its week starts in 1969; 2199-12-31's ends in 2200.
    for week in ("1970-01-01", "2199-12-31"):
        r = await staff.get("/staff/lee", params={"week": week, "service": "checkup"})
        assert r.status_code == 200, week
        assert "outside the years" not in r.text, week


async def test_hours_with_dates_outside_1970_2199_are_form_problems(
    staff: httpx.AsyncClient,
    scheduler: Scheduler,
) -> None:
    for day in ("9999-12-31", "0001-01-01"):
        form = [
            *hours(mon="09:00-17:00").items(),
            ("ov_date", day),
            ("ov_hours", "10:00-11:00"),
            ("off_start", f"{day}T00:00"),
            ("off_end", f"{day}T23:59"),
            ("off_rrule", ""),
            ("off_reason", ""),
        ]
        r = await post_form(staff, "/staff/lee", "/staff/lee/hours", form)
        assert r.status_code == 422, day
        assert "Date override 1:" in r.text and "Time off 1" in r.text, day
        assert f'value="{day}"' in r.text, day  # the form comes back as typed
    assert (await _starts(scheduler, "2026-12-07"))[0] == "09:00"  # nothing saved
