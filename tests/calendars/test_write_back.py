"""Write-back under the awkward timings: lost answers, races between writers, re-linking.

The provider here is an in-memory stand-in for the `CalendarProvider` interface (idempotent by
event id, like the real ones), so the tests can park a write mid-flight; the real providers'
idempotency is tested against their servers in test_service.py and the provider tests.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine
from sqlmodel import select

from booking import errors
from booking.clock import FixedClock
from booking.db import session_scope
from booking.models import Appointment, SyncState
from booking.rules import Interval
from booking.scheduler import Scheduler
from calendars.base import (
    Account,
    CalendarInfo,
    Channel,
    EventSpec,
    NeedsRelink,
    SyncResult,
    TokenSet,
)
from calendars.models import CalendarBusyBlock
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from tests.conftest import NOW

NY = ZoneInfo("America/New_York")
DAY = date(2026, 12, 1)


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, minute, tzinfo=NY)


class Memory:
    name = "caldav"
    writable = True
    notifies = False

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], EventSpec] = {}
        self.others: dict[str, dict[str, list[Any]]] = {}
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.lose_answer = False
        self.revoked: set[str] = set()  # account ids whose grant the server refuses
        self.calendars = [
            CalendarInfo(id="cal1", name="one", primary=True),
            CalendarInfo(id="cal2", name="two"),
        ]

    async def check(self, account: Account) -> None:
        pass

    async def list_calendars(self, account: Account) -> list[CalendarInfo]:
        return list(self.calendars)

    async def busy(
        self,
        account: Account,
        *,
        calendar_ids: list[str],
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
    ) -> list[Interval]:
        return []

    async def sync(
        self,
        account: Account,
        *,
        calendar_id: str,
        tz: ZoneInfo,
        cursor: str | None,
        start: datetime,
        end: datetime,
    ) -> SyncResult:
        changed = {k: list(v) for k, v in self.others.get(calendar_id, {}).items()}
        for (cal, eid), spec in self.events.items():
            if cal == calendar_id:
                changed[eid] = [(spec.start.astimezone(UTC), spec.end.astimezone(UTC))]
        return SyncResult(full=True, changed=changed)

    async def put_event(
        self, account: Account, *, calendar_id: str, event: EventSpec, event_id: str | None
    ) -> str:
        eid = event_id or f"uid-{event.key}"
        gate = self.gate
        if gate is not None:
            self.entered.set()
            await gate.wait()
        self.events[(calendar_id, eid)] = event
        if self.lose_answer:
            raise errors.CalendarUnavailable("timed out (the write landed)")
        return eid

    async def delete_event(self, account: Account, *, calendar_id: str, event_id: str) -> None:
        if account.id in self.revoked:
            raise NeedsRelink(f"{account.name}: the password no longer works")
        self.events.pop((calendar_id, event_id), None)

    async def watch(
        self, account: Account, *, calendar_id: str, callback_url: str, token: str
    ) -> Channel | None:
        return None

    async def renew(self, account: Account, channel: Channel) -> Channel | None:
        return None

    async def stop(self, account: Account, channel: Channel) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def setup(clinic: Engine) -> tuple[Memory, CalendarService, Scheduler]:
    memory = Memory()
    service = CalendarService(
        engine=clinic, vault=Vault(new_key()), providers={"caldav": memory}, now=lambda: NOW
    )
    scheduler = Scheduler(
        engine=clinic, calendars=service, writer=service, clock=FixedClock(NOW), write_timeout=10
    )
    await service.link_caldav(
        business_id="clinic", staff_id="lee", url="https://dav.example/", username="u", password="p"
    )
    return memory, service, scheduler


async def book(scheduler: Scheduler, start: datetime) -> Appointment:
    return await scheduler.book(
        business_id="clinic",
        name="Ada",
        phone="+12025550123",
        service_id="checkup",
        staff_id="lee",
        start=start,
    )


def state(clinic: Engine, appointment_id: str) -> str:
    with session_scope(clinic) as s:
        row = s.get(Appointment, appointment_id)
        assert row is not None
        return row.sync_state


async def test_a_cancel_after_a_lost_answer_still_removes_the_event(clinic: Engine) -> None:
    memory, service, scheduler = await setup(clinic)
    memory.lose_answer = True
    booked = await book(scheduler, at(10))
    assert booked.sync_state == SyncState.NOT_SYNCED and len(memory.events) == 1
    memory.lose_answer = False
    cancelled = await scheduler.cancel(business_id="clinic", appointment_id=booked.id)
    assert cancelled.sync_state == SyncState.SYNCED
    assert memory.events == {}


async def test_a_cancel_racing_the_booking_write_leaves_no_event(clinic: Engine) -> None:
    memory, service, scheduler = await setup(clinic)
    gate = asyncio.Event()
    memory.gate = gate
    booking = asyncio.create_task(book(scheduler, at(10)))
    await memory.entered.wait()  # the booking's write is in flight
    with session_scope(clinic) as s:
        apt_id = s.exec(select(Appointment.id)).one()
    memory.gate = None
    await scheduler.cancel(business_id="clinic", appointment_id=apt_id)
    gate.set()  # now the booking's create lands, after the cancel
    await booking
    await service.retry_pending()
    assert memory.events == {}
    assert state(clinic, apt_id) == SyncState.SYNCED


async def test_a_reschedule_racing_the_first_write_ends_at_the_new_time(clinic: Engine) -> None:
    memory, service, scheduler = await setup(clinic)
    gate = asyncio.Event()
    memory.gate = gate
    booking = asyncio.create_task(book(scheduler, at(10)))
    await memory.entered.wait()
    with session_scope(clinic) as s:
        apt_id = s.exec(select(Appointment.id)).one()
    memory.gate = None
    moved = await scheduler.reschedule(business_id="clinic", appointment_id=apt_id, start=at(14))
    gate.set()
    await booking
    await service.retry_pending()
    assert [spec.start for spec in memory.events.values()] == [at(14)]
    assert state(clinic, moved.id) == SyncState.SYNCED


async def test_a_deselected_calendar_stops_blocking_time(clinic: Engine) -> None:
    memory, service, scheduler = await setup(clinic)
    memory.others["cal1"] = {"x1": [(at(10).astimezone(UTC), at(11).astimezone(UTC))]}
    [conn] = await service.connections("clinic", "lee")
    await service.refresh(conn.id, full=True)
    await service.choose_calendars(conn.id, business_id="clinic", read=["cal2"], write="cal2")
    with session_scope(clinic) as s:
        assert list(s.exec(select(CalendarBusyBlock))) == []
    found = await scheduler.search(
        business_id="clinic", service_id="checkup", staff_id="lee", start=at(9), end=at(12)
    )
    assert at(10) in {slot.start for slot in found.slots}


async def test_linking_an_account_again_revives_the_connection(clinic: Engine) -> None:
    memory = Memory()
    memory.name = "google"

    class OAuth:
        name = "google"

        async def refresh(self, refresh_token: str) -> TokenSet:
            return TokenSet(access_token="a2", expires_at=NOW + timedelta(hours=1))

    service = CalendarService(
        engine=clinic,
        vault=Vault(new_key()),
        providers={"google": memory},
        oauth={"google": OAuth()},  # type: ignore[dict-item]
        now=lambda: NOW,
    )
    tokens = TokenSet(
        access_token="a",
        refresh_token="r",
        account="lee@example.com",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    first = await service.link_tokens("google", business_id="clinic", staff_id="lee", tokens=tokens)
    await service.accounts.mark(first.id, "needs_relink", "revoked")
    again = await service.link_tokens("google", business_id="clinic", staff_id="lee", tokens=tokens)
    assert again.id == first.id and again.status == "ok"
    assert [c.id for c in await service.connections("clinic", "lee")] == [first.id]


async def test_a_new_connection_reads_its_own_busy_calendars_and_writes_to_the_primary(
    clinic: Engine,
) -> None:
    memory = Memory()
    memory.calendars = [
        CalendarInfo(id="family", name="Family", counts_busy=False),
        CalendarInfo(id="holidays", name="Holidays", writable=False, counts_busy=False),
        CalendarInfo(id="side", name="Side job"),
        CalendarInfo(id="work", name="Work", primary=True),
    ]
    service = CalendarService(
        engine=clinic, vault=Vault(new_key()), providers={"caldav": memory}, now=lambda: NOW
    )
    conn = await service.link_caldav(
        business_id="clinic", staff_id="lee", url="https://dav.example/", username="u", password="p"
    )
    assert (conn.read_calendars, conn.write_calendar) == (["side", "work"], "work")
    memory.others["family"] = {"f1": [(at(10).astimezone(UTC), at(11).astimezone(UTC))]}
    await service.refresh(conn.id, full=True)
    with session_scope(clinic) as s:
        assert list(s.exec(select(CalendarBusyBlock))) == []  # the family calendar is not read


async def test_a_revoked_old_account_does_not_flag_the_account_the_booking_moves_to(
    clinic: Engine,
) -> None:
    memory, service, scheduler = await setup(clinic)
    booked = await book(scheduler, at(10))
    [old] = await service.connections("clinic", "lee")
    assert booked.sync_state == SyncState.SYNCED and len(memory.events) == 1
    # The old account's password stops working; the staff member links a second account.
    memory.revoked.add(old.id)
    await service.accounts.mark(old.id, "needs_relink", "password changed")
    new = await service.link_caldav(
        business_id="clinic",
        staff_id="lee",
        url="https://dav2.example/",
        username="u",
        password="p",
    )
    # The move writes to the new account and must first remove the event from the old one,
    # whose server refuses: that is the old account's problem, not the new one's.
    moved = await scheduler.reschedule(business_id="clinic", appointment_id=booked.id, start=at(14))
    assert moved.sync_state == SyncState.NOT_SYNCED
    status = {c.id: c.status for c in await service.connections("clinic", "lee")}
    assert status == {old.id: "needs_relink", new.id: "ok"}
