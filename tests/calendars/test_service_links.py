"""Calendars linked in a business file (ICS feeds) read through the service, and write-back
bookkeeping for staff without a calendar to write to."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine

from booking import errors
from booking.busy import StaffCalendars
from booking.clock import FixedClock
from booking.models import SyncState
from booking.scheduler import Scheduler
from calendars.ics import IcsProvider
from calendars.secrets import Vault
from calendars.service import CalendarService
from tests.conftest import NOW

NY = ZoneInfo("America/New_York")
START = datetime(2026, 12, 1, 5, tzinfo=UTC)
END = datetime(2026, 12, 2, 5, tzinfo=UTC)


def ics(path: Path, uid: str, start: str, end: str) -> str:
    path.write_text(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20261101T000000Z\r\nDTSTART:{start}\r\n"
        f"DTEND:{end}\r\nSUMMARY:busy\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    return str(path)


def service(engine: Engine) -> CalendarService:
    return CalendarService(
        engine=engine, vault=Vault(None), providers={"ics": IcsProvider()}, now=lambda: NOW
    )


def staff(*links: dict[str, object]) -> StaffCalendars:
    return StaffCalendars(business_id="clinic", staff_id="lee", tz=NY, links=links)


async def test_several_links_are_read_together_and_merged(clinic: Engine, tmp_path: Path) -> None:
    a = ics(tmp_path / "a.ics", "a", "20261201T150000Z", "20261201T160000Z")
    b = ics(tmp_path / "b.ics", "b", "20261201T153000Z", "20261201T170000Z")
    busy = await service(clinic).busy(
        staff({"provider": "ics", "source": a}, {"provider": "ics", "source": b}),
        start=START,
        end=END,
    )
    assert busy == [(datetime(2026, 12, 1, 15, tzinfo=UTC), datetime(2026, 12, 1, 17, tzinfo=UTC))]


async def test_an_unknown_provider_or_an_unreadable_link_fails_the_whole_read(
    clinic: Engine, tmp_path: Path
) -> None:
    good = ics(tmp_path / "a.ics", "a", "20261201T150000Z", "20261201T160000Z")
    with pytest.raises(errors.CalendarUnavailable, match="unknown provider"):
        await service(clinic).busy(staff({"provider": "outlook-classic"}), start=START, end=END)
    # A partial answer could offer time the unread calendar has taken.
    with pytest.raises(errors.CalendarUnavailable):
        await service(clinic).busy(
            staff(
                {"provider": "ics", "source": good},
                {"provider": "ics", "source": str(tmp_path / "gone")},
            ),
            start=START,
            end=END,
        )


async def test_a_booking_for_staff_without_a_calendar_is_marked_so(clinic: Engine) -> None:
    cal = service(clinic)
    scheduler = Scheduler(engine=clinic, calendars=cal, writer=cal, clock=FixedClock(NOW))
    booked = await scheduler.book(
        business_id="clinic",
        service_id="checkup",
        staff_id="lee",
        start=datetime(2026, 12, 1, 9, tzinfo=NY),
        name="Ada",
        phone="+12025552200",
    )
    assert booked.sync_state == SyncState.NO_CALENDAR
    cancelled = await scheduler.cancel(business_id="clinic", appointment_id=booked.id)
    assert cancelled.sync_state == SyncState.NO_CALENDAR
    assert await cal.retry_pending() == 0


async def test_the_local_calendar_feed_lists_bookings_and_moves_them(clinic: Engine) -> None:
    from calendars.secrets import new_key

    cal = CalendarService(engine=clinic, vault=Vault(new_key()), providers={}, now=lambda: NOW)
    scheduler = Scheduler(engine=clinic, calendars=cal, writer=cal, clock=FixedClock(NOW))
    booked = await scheduler.book(
        business_id="clinic",
        service_id="checkup",
        staff_id="lee",
        start=datetime(2026, 12, 1, 9, tzinfo=NY),
        name="Ada",
        phone="+12025552200",
    )
    moved = await scheduler.reschedule(
        business_id="clinic", appointment_id=booked.id, start=datetime(2026, 12, 1, 10, tzinfo=NY)
    )
    token = cal.feed_path("clinic", "lee").rsplit("/", 1)[1].removesuffix(".ics")
    body = (await cal.feed("clinic", "lee", token)).decode()
    assert body.count("BEGIN:VEVENT") == 1
    assert f"UID:{booked.id}@frontdesk" in body  # the same event, moved
    assert "DTSTART:20261201T150000Z" in body and "Ada" in body and moved.id in body
    with pytest.raises(errors.NotFound):
        await cal.feed("clinic", "rivera", token)  # a token opens one staff member's feed only
