"""The CalDAV provider against a real Radicale server on loopback."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import caldav
import pytest
from sqlalchemy.engine import Engine

from booking import errors
from booking.clock import FixedClock
from booking.db import session_scope
from booking.errors import CalendarUnavailable
from booking.models import Staff
from booking.scheduler import Scheduler
from calendars.caldav import CaldavProvider
from calendars.ics import IcsProvider
from calendars.registry import CalendarRegistry
from tests.calendars.radicale_server import (
    PASSWORD,
    USERNAME,
    RadicaleServer,
    free_port,
    start_radicale,
)
from tests.conftest import NOW

NY = ZoneInfo("America/New_York")
DEC_START = datetime(2026, 11, 30, tzinfo=UTC)
DEC_END = datetime(2027, 1, 1, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def vevent(uid: str, *props: str) -> str:
    """A one-event iCalendar document, as another client would write it."""
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//Frontdesk tests//EN",
        "BEGIN:VEVENT",
        f"UID:{uid}",
        "DTSTAMP:20261101T000000Z",
        *props,
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadicaleServer]:
    server = start_radicale(tmp_path_factory.mktemp("radicale"))
    yield server
    server.stop()


@pytest.fixture
def dav(radicale: RadicaleServer) -> Iterator[caldav.DAVClient]:
    """The library's own client, standing in for the staff member's calendar app."""
    with caldav.DAVClient(
        url=radicale.principal_url, username=USERNAME, password=PASSWORD, enable_rfc6764=False
    ) as client:
        yield client


@pytest.fixture
def calendar(dav: caldav.DAVClient) -> caldav.Calendar:
    """A fresh calendar collection for one test."""
    principal = dav.principal()
    return principal.make_calendar(name="Work", cal_id=f"work-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def link(calendar: caldav.Calendar) -> dict[str, Any]:
    return {
        "provider": "caldav",
        "url": str(calendar.url),
        "username": USERNAME,
        "password": PASSWORD,
    }


@pytest.fixture
def provider() -> CaldavProvider:
    return CaldavProvider(timeout=5)


async def busy(provider: CaldavProvider, link: dict[str, Any]) -> list[tuple[datetime, datetime]]:
    return await provider.busy(link, tz=NY, start=DEC_START, end=DEC_END, live=True)


def event_count(calendar: caldav.Calendar) -> int:
    return len(calendar.get_events())


# --- reading busy time ------------------------------------------------------------------------


async def test_event_created_in_the_server_is_busy(
    provider: CaldavProvider, link: dict[str, Any], calendar: caldav.Calendar
) -> None:
    calendar.add_event(
        vevent(
            "dentist-1",
            "DTSTART;TZID=America/New_York:20261201T090000",
            "DTEND;TZID=America/New_York:20261201T103000",
        )
    )
    assert await busy(provider, link) == [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 15, 30))]


async def test_transparent_and_cancelled_events_are_free(
    provider: CaldavProvider, link: dict[str, Any], calendar: caldav.Calendar
) -> None:
    calendar.add_event(
        vevent("free-1", "DTSTART:20261201T150000Z", "DTEND:20261201T160000Z", "TRANSP:TRANSPARENT")
    )
    calendar.add_event(
        vevent("gone-1", "DTSTART:20261202T150000Z", "DTEND:20261202T160000Z", "STATUS:CANCELLED")
    )
    calendar.add_event(
        vevent(
            "tentative-1", "DTSTART:20261203T150000Z", "DTEND:20261203T160000Z", "STATUS:TENTATIVE"
        )
    )
    assert await busy(provider, link) == [(utc(2026, 12, 3, 15), utc(2026, 12, 3, 16))]


async def test_all_day_event_covers_the_staff_members_local_date(
    provider: CaldavProvider, link: dict[str, Any], calendar: caldav.Calendar
) -> None:
    calendar.add_event(
        vevent("holiday-1", "DTSTART;VALUE=DATE:20261208", "DTEND;VALUE=DATE:20261209")
    )
    assert await busy(provider, link) == [(utc(2026, 12, 8, 5), utc(2026, 12, 9, 5))]


async def test_weekly_event_with_an_exdate_and_a_moved_instance(
    provider: CaldavProvider, link: dict[str, Any], calendar: caldav.Calendar
) -> None:
    series = vevent(
        "standup-1",
        "DTSTART;TZID=America/New_York:20261201T090000",
        "DTEND;TZID=America/New_York:20261201T093000",
        "RRULE:FREQ=WEEKLY;COUNT=4",
        "EXDATE;TZID=America/New_York:20261208T090000",
    )
    moved = "\r\n".join(
        [
            "BEGIN:VEVENT",
            "UID:standup-1",
            "DTSTAMP:20261101T000000Z",
            "RECURRENCE-ID;TZID=America/New_York:20261215T090000",
            "DTSTART;TZID=America/New_York:20261215T140000",
            "DTEND;TZID=America/New_York:20261215T143000",
            "END:VEVENT",
        ]
    )
    calendar.add_event(series.replace("END:VCALENDAR", moved + "\r\nEND:VCALENDAR"))
    assert await busy(provider, link) == [
        (utc(2026, 12, 1, 14), utc(2026, 12, 1, 14, 30)),
        (utc(2026, 12, 15, 19), utc(2026, 12, 15, 19, 30)),
        (utc(2026, 12, 22, 14), utc(2026, 12, 22, 14, 30)),
    ]


async def test_a_principal_url_reads_every_calendar_of_the_account(
    provider: CaldavProvider,
    link: dict[str, Any],
    calendar: caldav.Calendar,
    radicale: RadicaleServer,
) -> None:
    calendar.add_event(vevent("one", "DTSTART:20261201T150000Z", "DTEND:20261201T160000Z"))
    account = {**link, "url": radicale.principal_url}
    assert (utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)) in await busy(provider, account)
    listed = await provider.list_calendars(account)
    assert {"name": "Work", "url": str(calendar.url)} in listed
    assert await provider.list_calendars(link) == [{"name": "Work", "url": str(calendar.url)}]


async def test_busy_reads_are_cached_until_the_ttl_or_a_live_read(
    link: dict[str, Any], calendar: caldav.Calendar
) -> None:
    clock = [0.0]
    provider = CaldavProvider(timeout=5, ttl=60, monotonic=lambda: clock[0])
    assert await provider.busy(link, tz=NY, start=DEC_START, end=DEC_END) == []
    calendar.add_event(vevent("late", "DTSTART:20261201T150000Z", "DTEND:20261201T160000Z"))
    assert await provider.busy(link, tz=NY, start=DEC_START, end=DEC_END) == []
    assert await provider.busy(link, tz=NY, start=DEC_START, end=DEC_END, live=True) != []
    calendar.event_by_uid("late").delete()
    clock[0] = 61
    assert await provider.busy(link, tz=NY, start=DEC_START, end=DEC_END) == []


# --- writing ----------------------------------------------------------------------------------


async def write(
    provider: CaldavProvider, link: dict[str, Any], uid: str, start: datetime, end: datetime
) -> str:
    return await provider.create_event(
        link,
        uid=uid,
        start=start,
        end=end,
        summary="Teeth cleaning: Ann Caller",
        description="Phone +15551230001",
    )


async def test_create_event_twice_with_one_uid_leaves_one_event(
    provider: CaldavProvider, link: dict[str, Any], calendar: caldav.Calendar
) -> None:
    start, end = utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)
    first = await write(provider, link, "appt-1@frontdesk", start, end)
    second = await write(provider, link, "appt-1@frontdesk", start, end)
    assert first == second
    assert event_count(calendar) == 1
    event = calendar.event_by_uid("appt-1@frontdesk").icalendar_component
    assert event["DTEND"].dt == end and str(event["SUMMARY"]) == "Teeth cleaning: Ann Caller"
    assert await busy(provider, link) == [(start, end)]


async def test_retry_after_a_timed_out_but_successful_create_makes_no_copy(
    provider: CaldavProvider, link: dict[str, Any], calendar: caldav.Calendar
) -> None:
    start, end = utc(2026, 12, 2, 15), utc(2026, 12, 2, 16)
    # The first attempt reached the server, but its answer never came back to us.
    await provider.create_event(
        link, uid="appt-2", start=start, end=end, summary="Checkup", description=""
    )
    retried = await write(provider, link, "appt-2", start, end)
    assert retried.endswith("/appt-2.ics")
    assert event_count(calendar) == 1


async def test_a_late_create_retry_does_not_undo_a_reschedule(
    provider: CaldavProvider, link: dict[str, Any], calendar: caldav.Calendar
) -> None:
    old, new = (
        (utc(2026, 12, 2, 15), utc(2026, 12, 2, 16)),
        (utc(2026, 12, 4, 15), utc(2026, 12, 4, 16)),
    )
    await write(provider, link, "appt-6", *old)
    await provider.update_event(
        link, uid="appt-6", start=new[0], end=new[1], summary="Moved", description=""
    )
    await write(provider, link, "appt-6", *old)  # the retry job's stale first attempt
    assert await busy(provider, link) == [new]
    assert event_count(calendar) == 1


async def test_update_moves_the_busy_time_and_delete_frees_it(
    provider: CaldavProvider, link: dict[str, Any], calendar: caldav.Calendar
) -> None:
    await write(provider, link, "appt-3", utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))
    await provider.update_event(
        link,
        uid="appt-3",
        start=utc(2026, 12, 3, 17),
        end=utc(2026, 12, 3, 18),
        summary="Moved",
        description="",
    )
    assert await busy(provider, link) == [(utc(2026, 12, 3, 17), utc(2026, 12, 3, 18))]
    assert event_count(calendar) == 1
    await provider.delete_event(link, uid="appt-3")
    assert await busy(provider, link) == []
    await provider.delete_event(link, uid="appt-3")  # already gone: still fine


async def test_writes_need_a_single_calendar_not_an_account(
    provider: CaldavProvider, link: dict[str, Any], radicale: RadicaleServer
) -> None:
    account = {**link, "url": radicale.principal_url}
    with pytest.raises(CalendarUnavailable, match="not a single calendar"):
        await write(provider, account, "appt-4", utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))


# --- failures ---------------------------------------------------------------------------------


async def test_check_accepts_a_calendar_and_an_account(
    provider: CaldavProvider, link: dict[str, Any], radicale: RadicaleServer
) -> None:
    await provider.check(link)
    await provider.check({**link, "url": radicale.principal_url})


async def test_wrong_password_is_refused_without_leaking_it(
    provider: CaldavProvider, link: dict[str, Any]
) -> None:
    wrong = {**link, "password": "not-the-password-123"}
    with pytest.raises(CalendarUnavailable, match="refused the username or password") as info:
        await provider.check(wrong)
    assert info.value.retryable
    with pytest.raises(CalendarUnavailable) as read:
        await busy(provider, wrong)
    for exc in (info.value, read.value):
        assert "not-the-password-123" not in str(exc) and PASSWORD not in str(exc)
        assert exc.__cause__ is None and exc.__suppress_context__


async def test_credentials_in_the_url_stay_out_of_errors(
    provider: CaldavProvider, link: dict[str, Any]
) -> None:
    port = free_port()
    leaky = {**link, "url": f"http://{USERNAME}:hunter2@127.0.0.1:{port}/lee/work/"}
    with pytest.raises(CalendarUnavailable) as info:
        await provider.check(leaky)
    assert "hunter2" not in str(info.value) and "/lee/work" not in str(info.value)


async def test_server_down_is_calendar_unavailable(
    provider: CaldavProvider, link: dict[str, Any]
) -> None:
    down = {**link, "url": f"http://127.0.0.1:{free_port()}/lee/work/"}
    with pytest.raises(CalendarUnavailable, match="cannot be reached"):
        await busy(provider, down)
    with pytest.raises(CalendarUnavailable, match="cannot be reached"):
        await write(provider, down, "appt-5", utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))


async def test_a_server_that_never_answers_times_out(link: dict[str, Any]) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/lee/work/"
        provider = CaldavProvider(timeout=0.3)
        with pytest.raises(CalendarUnavailable, match="did not answer"):
            await busy(provider, {**link, "url": url})


async def test_a_missing_calendar_is_unavailable(
    provider: CaldavProvider, link: dict[str, Any], radicale: RadicaleServer
) -> None:
    missing = {**link, "url": f"{radicale.principal_url}no-such-calendar/"}
    with pytest.raises(CalendarUnavailable):
        await busy(provider, missing)


# --- through slot search ----------------------------------------------------------------------


async def test_event_in_the_calendar_removes_the_slot_without_a_restart(
    clinic: Engine, link: dict[str, Any], calendar: caldav.Calendar
) -> None:
    with session_scope(clinic, write=True) as s:
        lee = s.get(Staff, ("clinic", "lee"))
        assert lee is not None
        lee.calendars = [link]
        s.add(lee)
    clock = [0.0]
    provider = CaldavProvider(timeout=5, ttl=60, monotonic=lambda: clock[0])
    registry = CalendarRegistry({"caldav": provider, "ics": IcsProvider()})
    scheduler = Scheduler(engine=clinic, calendars=registry, clock=FixedClock(NOW))
    tuesday = date(2026, 12, 1)

    async def lee_starts() -> list[str]:
        result = await scheduler.availability(
            business_id=None,
            service_id="cleaning",
            staff_id="lee",
            first_day=tuesday,
            last_day=tuesday,
        )
        return [slot.start.astimezone(NY).strftime("%H:%M") for slot in result.slots]

    before = await lee_starts()
    assert "10:00" in before and "11:00" in before
    calendar.add_event(
        vevent(
            "walk-in",
            "DTSTART;TZID=America/New_York:20261201T100000",
            "DTEND;TZID=America/New_York:20261201T110000",
        )
    )
    # Booking re-reads the calendar live, so even a warm cache cannot double-book.
    with pytest.raises(errors.SlotTaken):
        await scheduler.book(
            business_id=None,
            service_id="cleaning",
            staff_id="lee",
            start=datetime(2026, 12, 1, 10, tzinfo=NY),
            name="Ann Caller",
            phone="+15551230001",
        )
    clock[0] = 61  # the cached read has expired
    after = await lee_starts()
    assert "10:00" not in after and "10:30" not in after and "11:00" in after
