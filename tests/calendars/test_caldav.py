"""The CalDAV provider against a real Radicale server on loopback (through a fault proxy)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from caldav.collection import Calendar as DavCalendar
from caldav.collection import Principal
from sqlalchemy.engine import Engine

from booking import errors
from booking.busy import StaffCalendars
from booking.clock import FixedClock
from booking.db import session_scope
from booking.errors import CalendarUnavailable
from booking.models import Staff
from booking.rules import Interval
from booking.scheduler import Scheduler
from calendars.base import Account, CalendarProvider, EventSpec, NeedsRelink
from calendars.caldav import CaldavProvider, event_uid
from calendars.links import link_account
from tests.calendars.caldav_harness import FaultProxy, harness, vevent
from tests.calendars.harness import Harness
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


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadicaleServer]:
    server = start_radicale(tmp_path_factory.mktemp("radicale"))
    yield server
    server.stop()


@pytest.fixture
async def h(radicale: RadicaleServer) -> AsyncIterator[Harness]:
    async with harness(radicale) as made:
        yield made


@pytest.fixture
def calendar(h: Harness) -> DavCalendar:
    """The harness's calendar, as the staff member's own calendar app reaches it."""
    found: DavCalendar = h.extra["calendar"]
    return found


@pytest.fixture
def proxy(h: Harness) -> FaultProxy:
    found: FaultProxy = h.extra["proxy"]
    return found


@pytest.fixture
def provider(h: Harness) -> CaldavProvider:
    assert isinstance(h.provider, CaldavProvider)
    return h.provider


@pytest.fixture
def account(h: Harness) -> Account:
    """An account whose URL is the calendar collection itself (the harness's is the principal)."""
    return at(h.account, h.calendar_id)


def at(account: Account, url: str, **secret: str) -> Account:
    return replace(
        account,
        settings={**account.settings, "url": url},
        secret={**account.secret, **secret},
    )


async def busy(
    provider: CaldavProvider, account: Account, calendar_ids: list[str] | None = None
) -> list[Interval]:
    return await provider.busy(
        account, calendar_ids=calendar_ids or [], tz=NY, start=DEC_START, end=DEC_END
    )


def spec(
    key: str, start: datetime, end: datetime, summary: str = "Teeth cleaning: Ann Caller"
) -> EventSpec:
    return EventSpec(
        key=key,
        summary=summary,
        description="Phone +12025550001",
        start=start,
        end=end,
        timezone="America/New_York",
    )


def event_count(calendar: DavCalendar) -> int:
    events = calendar.get_events()
    assert isinstance(events, list)  # the synchronous client's answer
    return len(events)


def principal_of(calendar: DavCalendar) -> Principal:
    client = calendar.client
    assert client is not None
    # caldav's DAVClient.principal has no annotations.
    found: Principal = client.principal()  # type: ignore[no-untyped-call]
    return found


def drop(calendar: DavCalendar) -> None:
    calendar.delete()  # type: ignore[no-untyped-call]  # caldav's Calendar.delete: no annotations


def new_calendar(calendar: DavCalendar, name: str, cal_id: str, **options: Any) -> DavCalendar:
    """A new calendar of the same account (the synchronous client answers it, no coroutine)."""
    made = principal_of(calendar).make_calendar(name=name, cal_id=cal_id, **options)
    assert isinstance(made, DavCalendar)
    return made


def test_it_is_a_writable_calendar_provider_without_notifications() -> None:
    provider: CalendarProvider = CaldavProvider()
    assert (provider.name, provider.writable, provider.notifies) == ("caldav", True, False)


# --- reading busy time ------------------------------------------------------------------------


async def test_event_created_in_the_server_is_busy(
    h: Harness, provider: CaldavProvider, calendar: DavCalendar
) -> None:
    calendar.add_event(
        vevent(
            "dentist-1",
            "DTSTART;TZID=America/New_York:20261201T090000",
            "DTEND;TZID=America/New_York:20261201T103000",
        )
    )
    expected = [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 15, 30))]
    assert await busy(provider, h.account, [h.calendar_id]) == expected


async def test_transparent_and_cancelled_events_are_free(
    h: Harness, provider: CaldavProvider
) -> None:
    await h.add_event(utc(2026, 12, 1, 15), utc(2026, 12, 1, 16), transparent=True)
    await h.add_event(utc(2026, 12, 2, 15), utc(2026, 12, 2, 16), cancelled=True)
    await h.add_event(utc(2026, 12, 3, 15), utc(2026, 12, 3, 16), tentative=True)
    assert await busy(provider, h.account, [h.calendar_id]) == [
        (utc(2026, 12, 3, 15), utc(2026, 12, 3, 16))
    ]


async def test_all_day_event_covers_the_staff_members_local_date(
    h: Harness, provider: CaldavProvider
) -> None:
    await h.add_event(all_day=date(2026, 12, 8))
    assert await busy(provider, h.account, [h.calendar_id]) == [
        (utc(2026, 12, 8, 5), utc(2026, 12, 9, 5))
    ]


STANDUP = vevent(
    "standup-1",
    "DTSTART;TZID=America/New_York:20261201T090000",
    "DTEND;TZID=America/New_York:20261201T093000",
    "RRULE:FREQ=WEEKLY;COUNT=4",
    "EXDATE;TZID=America/New_York:20261208T090000",
).replace(
    "END:VCALENDAR",
    "\r\n".join(
        [
            "BEGIN:VEVENT",
            "UID:standup-1",
            "DTSTAMP:20261101T000000Z",
            "RECURRENCE-ID;TZID=America/New_York:20261215T090000",
            "DTSTART;TZID=America/New_York:20261215T140000",
            "DTEND;TZID=America/New_York:20261215T143000",
            "END:VEVENT",
            "END:VCALENDAR",
        ]
    ),
)


async def test_weekly_event_with_an_exdate_and_a_moved_instance(
    provider: CaldavProvider, account: Account, calendar: DavCalendar
) -> None:
    calendar.add_event(STANDUP)
    assert await busy(provider, account) == [
        (utc(2026, 12, 1, 14), utc(2026, 12, 1, 14, 30)),
        (utc(2026, 12, 15, 19), utc(2026, 12, 15, 19, 30)),
        (utc(2026, 12, 22, 14), utc(2026, 12, 22, 14, 30)),
    ]


async def test_a_principal_url_reads_every_calendar_of_the_account(
    h: Harness, provider: CaldavProvider, calendar: DavCalendar
) -> None:
    other = new_calendar(calendar, "Home", "home-principal-test")
    try:
        await h.add_event(utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))
        other.add_event(vevent("gym", "DTSTART:20261202T150000Z", "DTEND:20261202T160000Z"))
        spans = await busy(provider, h.account)  # no calendar ids: the account URL's calendars
        assert (utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)) in spans
        assert (utc(2026, 12, 2, 15), utc(2026, 12, 2, 16)) in spans
        # Chosen calendars only: the other one's event does not count.
        assert await busy(provider, h.account, [h.calendar_id]) == [
            (utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))
        ]
    finally:
        drop(other)


async def test_list_calendars_of_a_principal_names_each_calendar_by_its_url(
    h: Harness, provider: CaldavProvider, calendar: DavCalendar
) -> None:
    other = new_calendar(calendar, "Home", "home-list-test")
    tasks = new_calendar(
        calendar, "Tasks", "tasks-list-test", supported_calendar_component_set=["VTODO"]
    )
    try:
        listed = {info.id: info for info in await provider.list_calendars(h.account)}
        home = h.calendar_id.rsplit("/", 2)[0] + "/home-list-test/"
        todo = h.calendar_id.rsplit("/", 2)[0] + "/tasks-list-test/"
        assert listed[h.calendar_id].name == "Work" and listed[home].name == "Home"
        # Radicale names no default calendar (no RFC 6638): the first event calendar is.
        events = [info for info in listed.values() if info.id != todo]
        assert all(info.writable and info.counts_busy for info in events)
        assert len([info for info in events if info.primary]) == 1
        # A task list (VTODO only) is listed, holding no busy time and taking no bookings.
        assert (listed[todo].name, listed[todo].counts_busy, listed[todo].writable) == (
            "Tasks",
            False,
            False,
        )
        assert not listed[todo].primary
        # The ids are what busy and sync take.
        other.add_event(vevent("gym", "DTSTART:20261202T150000Z", "DTEND:20261202T160000Z"))
        assert await busy(provider, h.account, [home]) == [
            (utc(2026, 12, 2, 15), utc(2026, 12, 2, 16))
        ]
    finally:
        drop(other)
        drop(tasks)
    single = await provider.list_calendars(at(h.account, h.calendar_id))
    assert [(info.id, info.name, info.primary) for info in single] == [
        (h.calendar_id, "Work", True)
    ]


async def test_busy_is_always_a_live_read(h: Harness, provider: CaldavProvider) -> None:
    assert await busy(provider, h.account, [h.calendar_id]) == []
    late = await h.add_event(utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))
    assert await busy(provider, h.account, [h.calendar_id]) != []
    await h.remove_event(late)
    assert await busy(provider, h.account, [h.calendar_id]) == []


# --- sync -------------------------------------------------------------------------------------


async def sync(
    h: Harness,
    cursor: str | None = None,
    start: datetime = DEC_START,
    end: datetime = DEC_END,
) -> Any:
    return await h.provider.sync(
        h.account, calendar_id=h.calendar_id, tz=NY, cursor=cursor, start=start, end=end
    )


async def test_sync_reads_the_window_keyed_by_uid_and_instance(
    h: Harness, calendar: DavCalendar
) -> None:
    calendar.add_event(STANDUP)
    single = await h.add_event(utc(2026, 12, 3, 15), utc(2026, 12, 3, 16))
    free = await h.add_event(utc(2026, 12, 4, 15), utc(2026, 12, 4, 16), transparent=True)
    await h.add_event(utc(2027, 3, 1, 15), utc(2027, 3, 1, 16))  # outside the window
    result = await sync(h)
    assert result.full and not result.removed
    assert result.changed == {
        single: [(utc(2026, 12, 3, 15), utc(2026, 12, 3, 16))],
        free: [],
        "standup-1#20261201T140000Z": [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 14, 30))],
        "standup-1#20261215T140000Z": [(utc(2026, 12, 15, 19), utc(2026, 12, 15, 19, 30))],
        "standup-1#20261222T140000Z": [(utc(2026, 12, 22, 14), utc(2026, 12, 22, 14, 30))],
    }


async def test_sync_skips_the_read_while_the_calendar_is_unchanged(h: Harness) -> None:
    first = await h.add_event(utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))
    full = await sync(h)
    assert full.full and set(full.changed) == {first} and full.cursor is not None

    same = await sync(h, full.cursor)
    assert not same.full and same.changed == {} and same.removed == set()
    assert same.cursor == full.cursor
    # A narrower window is still answered by the earlier read.
    assert not (await sync(h, full.cursor, start=utc(2026, 12, 5))).full

    second = await h.add_event(utc(2026, 12, 2, 15), utc(2026, 12, 2, 16))
    changed = await sync(h, full.cursor)
    assert changed.full and set(changed.changed) == {first, second}
    assert changed.cursor != full.cursor


async def test_sync_reads_again_for_a_wider_window_or_a_bad_cursor(h: Harness) -> None:
    await h.add_event(utc(2027, 1, 5, 15), utc(2027, 1, 5, 16))
    full = await sync(h)
    assert full.changed == {}
    wider = await sync(h, full.cursor, end=utc(2027, 2, 1))
    assert wider.full and list(wider.changed.values()) == [
        [(utc(2027, 1, 5, 15), utc(2027, 1, 5, 16))]
    ]
    for broken in ("not json", json.dumps({"tag": 1})):
        assert (await sync(h, broken)).full


# --- writing ----------------------------------------------------------------------------------


async def test_put_event_twice_with_one_key_leaves_one_event(
    h: Harness, provider: CaldavProvider, calendar: DavCalendar
) -> None:
    start, end = utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)
    put = provider.put_event
    first = await put(
        h.account, calendar_id=h.calendar_id, event=spec("apt_1", start, end), event_id=None
    )
    second = await put(
        h.account, calendar_id=h.calendar_id, event=spec("apt_1", start, end), event_id=None
    )
    assert first == second == event_uid("apt_1")
    events = await h.events()
    assert len(events) == 1 and events[0]["id"] == first
    assert events[0]["end"] == end and events[0]["summary"] == "Teeth cleaning: Ann Caller"
    assert events[0]["description"] == "Phone +12025550001"
    assert await busy(provider, h.account, [h.calendar_id]) == [(start, end)]


async def test_retry_after_a_lost_answer_finds_the_event_the_first_attempt_wrote(
    h: Harness, proxy: FaultProxy
) -> None:
    provider = CaldavProvider(timeout=0.5)
    await provider.list_calendars(h.account)  # as when the calendar was linked
    start, end = utc(2026, 12, 2, 15), utc(2026, 12, 2, 16)
    proxy.fail_next("timeout")  # Radicale stores the event; its answer comes too late
    with pytest.raises(CalendarUnavailable, match="did not answer"):
        await provider.put_event(
            h.account, calendar_id=h.calendar_id, event=spec("apt_2", start, end), event_id=None
        )
    assert [e["id"] for e in await h.events()] == [event_uid("apt_2")]  # it did land

    retried = await provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec("apt_2", start, end), event_id=None
    )
    assert retried == event_uid("apt_2")
    assert len(await h.events()) == 1


async def test_a_create_retry_after_a_landed_attempt_writes_the_latest_details(
    h: Harness, provider: CaldavProvider
) -> None:
    # The write is retried from the appointment as it is now (moved since the first attempt):
    # the 412 of the create turns into an update with those details.
    old = (utc(2026, 12, 2, 15), utc(2026, 12, 2, 16))
    new = (utc(2026, 12, 4, 15), utc(2026, 12, 4, 16))
    for times in (old, new):
        await provider.put_event(
            h.account, calendar_id=h.calendar_id, event=spec("apt_6", *times), event_id=None
        )
    assert await busy(provider, h.account, [h.calendar_id]) == [new]
    assert len(await h.events()) == 1


async def test_update_moves_the_busy_time_and_delete_frees_it(
    h: Harness, provider: CaldavProvider
) -> None:
    event_id = await provider.put_event(
        h.account,
        calendar_id=h.calendar_id,
        event=spec("apt_3", utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)),
        event_id=None,
    )
    moved = spec("apt_3", utc(2026, 12, 3, 17), utc(2026, 12, 3, 18), summary="Moved")
    assert (
        await provider.put_event(
            h.account, calendar_id=h.calendar_id, event=moved, event_id=event_id
        )
        == event_id
    )
    assert await busy(provider, h.account, [h.calendar_id]) == [
        (utc(2026, 12, 3, 17), utc(2026, 12, 3, 18))
    ]
    assert [e["summary"] for e in await h.events()] == ["Moved"]
    await provider.delete_event(h.account, calendar_id=h.calendar_id, event_id=event_id)
    assert await busy(provider, h.account, [h.calendar_id]) == []
    # Already gone: still fine.
    await provider.delete_event(h.account, calendar_id=h.calendar_id, event_id=event_id)


async def test_updating_an_event_deleted_in_the_calendar_writes_it_anew(
    h: Harness, provider: CaldavProvider
) -> None:
    times = (utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))
    event_id = await provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec("apt_7", *times), event_id=None
    )
    await h.remove_event(event_id)  # the staff member deleted it on their phone
    again = await provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec("apt_7", *times), event_id=event_id
    )
    assert again == event_id and [e["id"] for e in await h.events()] == [event_id]


async def test_writes_need_a_single_calendar_not_an_account(
    h: Harness, provider: CaldavProvider
) -> None:
    principal = h.account.settings["url"]
    with pytest.raises(CalendarUnavailable, match="single calendar"):
        await provider.put_event(
            h.account,
            calendar_id=principal,
            event=spec("apt_4", utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)),
            event_id=None,
        )


async def test_an_event_needs_aware_times_that_end_after_they_start(
    h: Harness, provider: CaldavProvider
) -> None:
    with pytest.raises(ValueError, match="end after"):
        await provider.put_event(
            h.account,
            calendar_id=h.calendar_id,
            event=spec("apt_8", utc(2026, 12, 1, 16), utc(2026, 12, 1, 15)),
            event_id=None,
        )
    with pytest.raises(ValueError, match="aware"):
        await provider.put_event(
            h.account,
            calendar_id=h.calendar_id,
            event=spec("apt_8", datetime(2026, 12, 1, 15), datetime(2026, 12, 1, 16)),
            event_id=None,
        )


# --- failures ---------------------------------------------------------------------------------


async def test_check_accepts_a_calendar_and_an_account(
    h: Harness, provider: CaldavProvider, account: Account
) -> None:
    await provider.check(h.account)
    await provider.check(account)


async def test_wrong_password_needs_relinking_without_leaking_it(
    provider: CaldavProvider, account: Account
) -> None:
    wrong = at(account, account.settings["url"], password="not-the-password-123")
    with pytest.raises(NeedsRelink, match="refused the username or password") as info:
        await provider.check(wrong)
    with pytest.raises(NeedsRelink) as read:
        await busy(provider, wrong)
    for exc in (info.value, read.value):
        assert "not-the-password-123" not in str(exc) and PASSWORD not in str(exc)
        assert exc.__cause__ is None and exc.__suppress_context__


async def test_credentials_in_the_url_stay_out_of_errors(
    provider: CaldavProvider, account: Account
) -> None:
    port = free_port()
    leaky = at(account, f"http://{USERNAME}:hunter2@127.0.0.1:{port}/lee/work/")
    with pytest.raises(CalendarUnavailable) as info:
        await provider.check(leaky)
    assert "hunter2" not in str(info.value) and "/lee/work" not in str(info.value)


async def test_server_down_is_calendar_unavailable(
    provider: CaldavProvider, account: Account
) -> None:
    down = at(account, f"http://127.0.0.1:{free_port()}/lee/work/")
    with pytest.raises(CalendarUnavailable, match="cannot be reached"):
        await busy(provider, down)
    with pytest.raises(CalendarUnavailable, match="cannot be reached"):
        await provider.put_event(
            down,
            calendar_id=down.settings["url"],
            event=spec("apt_5", utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)),
            event_id=None,
        )


async def test_a_server_that_never_answers_times_out(account: Account) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/lee/work/"
        provider = CaldavProvider(timeout=0.3)
        with pytest.raises(CalendarUnavailable, match="did not answer"):
            await busy(provider, at(account, url))


@pytest.mark.parametrize("fault", ["500", "429"])
async def test_a_server_error_is_retried_and_one_that_lasts_is_calendar_unavailable(
    h: Harness, proxy: FaultProxy, fault: str
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    provider = CaldavProvider(timeout=5.0, sleep=sleep, clock=FixedClock(NOW))
    proxy.fail_next(fault)
    assert await busy(provider, h.account, [h.calendar_id]) == []  # the retry read it
    # The proxy's 429 asks for Retry-After: 1; a 500 waits the policy's back-off.
    assert len(waits) == 1 and (waits[0] == 1.0 if fault == "429" else 0 < waits[0] <= 0.5)

    proxy.fail_next(fault, 4)  # every attempt the policy makes
    with pytest.raises(CalendarUnavailable) as info:
        await busy(provider, h.account, [h.calendar_id])
    assert info.value.retryable and not isinstance(info.value, NeedsRelink)
    assert "/lee/" not in str(info.value)
    assert len(waits) == 1 + 3
    assert await busy(provider, h.account, [h.calendar_id]) == []  # and then it works again
    provider.close()


async def test_a_missing_calendar_is_unavailable(
    h: Harness, provider: CaldavProvider, account: Account
) -> None:
    missing = h.account.settings["url"] + "no-such-calendar/"
    with pytest.raises(CalendarUnavailable):
        await busy(provider, at(account, missing))
    with pytest.raises(CalendarUnavailable):
        await busy(provider, h.account, [missing])


async def test_watch_is_not_offered(h: Harness, provider: CaldavProvider) -> None:
    channel = await provider.watch(
        h.account, calendar_id=h.calendar_id, callback_url="https://example.com/n", token="t"
    )
    assert channel is None


# --- kept connections -------------------------------------------------------------------------


async def test_after_the_first_login_reads_send_the_password_up_front(
    h: Harness, provider: CaldavProvider, proxy: FaultProxy
) -> None:
    await busy(provider, h.account, [h.calendar_id])  # learns that the server wants Basic
    seen = len(proxy.requests)
    await busy(provider, h.account, [h.calendar_id])
    assert proxy.requests[seen:] == [("REPORT", proxy.requests[-1][1])]  # no 401 first

    # Reads at once need clients of their own; new ones log in up front as well.
    seen = len(proxy.requests)
    await asyncio.gather(*(busy(provider, h.account, [h.calendar_id]) for _ in range(3)))
    assert [method for method, _ in proxy.requests[seen:]] == ["REPORT"] * 3


async def test_a_kept_login_does_not_outlive_a_changed_password(
    h: Harness, provider: CaldavProvider
) -> None:
    assert await busy(provider, h.account, [h.calendar_id]) == []
    wrong = at(h.account, h.account.settings["url"], password="changed-on-the-phone-1")
    with pytest.raises(NeedsRelink):
        await busy(provider, wrong, [h.calendar_id])
    assert await busy(provider, h.account, [h.calendar_id]) == []


async def test_a_failed_read_does_not_spoil_the_next_one(h: Harness, proxy: FaultProxy) -> None:
    provider = CaldavProvider(timeout=0.5)
    await busy(provider, h.account, [h.calendar_id])
    proxy.fail_next("timeout")  # the kept client's request is answered too late
    with pytest.raises(CalendarUnavailable, match="did not answer"):
        await busy(provider, h.account, [h.calendar_id])
    start, end = utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)
    await h.add_event(start, end)
    assert await busy(provider, h.account, [h.calendar_id]) == [(start, end)]
    provider.close()


async def test_a_closed_provider_still_answers(h: Harness, provider: CaldavProvider) -> None:
    await busy(provider, h.account, [h.calendar_id])
    provider.close()
    start, end = utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)
    await h.add_event(start, end)
    assert await busy(provider, h.account, [h.calendar_id]) == [(start, end)]


# --- links from a business file ---------------------------------------------------------------


def test_a_caldav_link_becomes_an_account_with_the_password_kept_secret() -> None:
    link = {
        "provider": "caldav",
        "url": "https://lee:hunter2@caldav.example.com/dav/lee/work/",
        "username": "lee",
        "password": "app-pass-1",
    }
    made = link_account(link, staff_id="lee", index=1)
    assert made.id == "link:lee:1" and made.provider == "caldav"
    assert made.settings == {"url": "https://caldav.example.com/dav/lee/work/", "username": "lee"}
    assert made.secret == {"password": "app-pass-1"}
    for secret in ("hunter2", "app-pass-1"):
        assert secret not in made.name and secret not in json.dumps(made.settings)
    assert "/dav/lee" not in made.name


def test_a_link_without_credentials_or_of_unknown_kind_is_unavailable() -> None:
    with pytest.raises(CalendarUnavailable, match="password"):
        link_account(
            {"provider": "caldav", "url": "https://x.example/", "username": "lee"},
            staff_id="lee",
            index=0,
        )
    with pytest.raises(CalendarUnavailable, match="exchange-2003"):
        link_account({"provider": "exchange-2003"}, staff_id="lee", index=0)


# --- through slot search ----------------------------------------------------------------------


class LinkedCalendars:
    """Booking's `CalendarBusy` port over business-file links, read live each time; the
    smallest stand-in for `calendars.service`, to prove the provider in a real search."""

    def __init__(self, provider: CaldavProvider) -> None:
        self.provider = provider

    async def busy(
        self, calendars: StaffCalendars, *, start: datetime, end: datetime, live: bool = False
    ) -> list[Interval]:
        spans: list[Interval] = []
        for index, link in enumerate(calendars.links):
            account = link_account(link, staff_id=calendars.staff_id, index=index)
            spans += await self.provider.busy(
                account, calendar_ids=[], tz=calendars.tz, start=start, end=end
            )
        return sorted(spans)


async def test_event_in_the_calendar_removes_the_slot_without_a_restart(
    clinic: Engine, account: Account, calendar: DavCalendar
) -> None:
    link = {"provider": "caldav", **account.settings, **account.secret}
    with session_scope(clinic, write=True) as s:
        lee = s.get(Staff, ("clinic", "lee"))
        assert lee is not None
        lee.calendars = [link]
        s.add(lee)
    calendars = LinkedCalendars(CaldavProvider(timeout=5))
    scheduler = Scheduler(engine=clinic, calendars=calendars, clock=FixedClock(NOW))
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
    with pytest.raises(errors.SlotTaken):
        await scheduler.book(
            business_id=None,
            service_id="cleaning",
            staff_id="lee",
            start=datetime(2026, 12, 1, 10, tzinfo=NY),
            name="Ann Caller",
            phone="+12025550001",
        )
    after = await lee_starts()
    assert "10:00" not in after and "10:30" not in after and "11:00" in after


def test_only_an_answer_that_asked_for_it_carries_retry_after() -> None:
    # An answer asked to wait 120 s; an error that did not come from that answer (a timeout, a
    # refusal of ours) must not carry its wait, or a retry would wait for nothing.
    from calendars.caldav import clients

    link = clients._Link(url="https://caldav.example/", username="u", password="p")
    clock = FixedClock(datetime(2026, 12, 1, tzinfo=UTC))
    clients._last_answer.retry_after = "120"
    with (
        pytest.raises(CalendarUnavailable) as caught,
        clients._translated(link, clock, account_step=False),
    ):
        raise CalendarUnavailable("the read did not finish")
    assert caught.value.retryable and caught.value.retry_after is None
    with (
        pytest.raises(CalendarUnavailable) as refused,
        clients._translated(link, clock, account_step=False),
    ):
        raise clients._Refused("the server refused the event create: HTTP 503", 503)
    assert refused.value.retryable and refused.value.retry_after == 120.0
    clients._last_answer.retry_after = None
