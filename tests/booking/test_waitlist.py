"""The waitlist on SQLite and PostgreSQL: a freed time is held and offered to the first person
waiting, never to two at once; NO or silence passes it to the next; YES books it."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from booking import errors
from booking.models import Appointment, WaitlistStatus
from booking.scheduler import Scheduler
from booking.waitlist import Waitlist
from tests.conftest import NOW

TUESDAY = date(2026, 12, 1)
ANA, BO = "+12025554321", "+12025554322"


async def fill_tuesday(scheduler: Scheduler) -> list[Appointment]:
    """Book every checkup Dr. Lee offers on Tuesday."""
    found = await scheduler.search(
        business_id="clinic",
        service_id="checkup",
        start=datetime(2026, 12, 1, 5, 0, tzinfo=UTC),
        end=datetime(2026, 12, 2, 5, 0, tzinfo=UTC),
    )
    booked = []
    for n, slot in enumerate(found.slots):
        booked.append(
            await scheduler.book(
                business_id="clinic",
                name=f"Caller {n}",
                phone=f"+120255510{n:02d}",
                service_id="checkup",
                staff_id=slot.staff_id,
                start=slot.start,
            )
        )
    assert len(booked) == 14
    return booked


async def join(waitlist: Waitlist, phone: str, name: str) -> str:
    entry = await waitlist.join(
        business_id="clinic",
        phone=phone,
        name=name,
        service_id="checkup",
        first_day=TUESDAY,
        last_day=TUESDAY,
    )
    return entry.id


def sms_rows(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT to_number, body FROM sms_message WHERE kind = 'waitlist' ORDER BY key")
        )
        return [(r.to_number, r.body) for r in rows]


async def test_a_freed_time_goes_to_the_first_waiting_and_passes_on(
    scheduler: Scheduler, clinic: Engine
) -> None:
    booked = await fill_tuesday(scheduler)
    waitlist = Waitlist(scheduler, offer_minutes=30)
    ana = await join(waitlist, ANA, "Ana")
    bo = await join(waitlist, BO, "Bo")
    assert await waitlist.offer_due() == []  # nothing is free

    await scheduler.cancel(business_id="clinic", appointment_id=booked[3].id)
    [offer] = await waitlist.offer_due()
    assert offer.entry_id == ana and offer.start == booked[3].start
    assert await waitlist.offer_due() == []  # held for Ana: Bo is not offered it too
    [(to, body)] = sms_rows(clinic)
    assert to == ANA
    assert body == (
        "Clinic: a Checkup with Dr. Lee opened up on Tue Dec 1 at 10:30 AM. Reply YES to "
        "book it (held for you for 30 minutes) or NO to pass."
    )
    # A caller on the phone cannot take the held time.
    with pytest.raises(errors.SlotUnavailable):
        await scheduler.book(
            business_id="clinic",
            name="Cy",
            phone="+12025554323",
            service_id="checkup",
            staff_id="lee",
            start=booked[3].start,
        )

    # Ana says no: Bo is offered it; Ana keeps waiting.
    held = await waitlist.open_offer(business_id="clinic", phone=ANA)
    assert held is not None
    await waitlist.decline(held)
    [offer] = await waitlist.offer_due()
    assert offer.entry_id == bo
    # Bo stays silent past the hold: it passes on, and nobody is offered it again.
    later = NOW + timedelta(minutes=31)
    assert await waitlist.offer_due(now=later) == []
    entries = {e.id: e for e in await waitlist.entries("clinic")}
    assert entries[ana].status == entries[bo].status == WaitlistStatus.WAITING.value
    assert entries[bo].passed == [f"lee@{booked[3].start.isoformat()}"]
    assert len(sms_rows(clinic)) == 2


async def test_yes_books_the_held_time(scheduler: Scheduler) -> None:
    booked = await fill_tuesday(scheduler)
    waitlist = Waitlist(scheduler)
    entry_id = await join(waitlist, ANA, "Ana")
    await scheduler.cancel(business_id="clinic", appointment_id=booked[0].id)
    assert await waitlist.offer_due()
    held = await waitlist.open_offer(business_id="clinic", phone=ANA)
    assert held is not None
    appointment = await waitlist.accept(held)
    assert appointment.start == booked[0].start and appointment.booked_by == "waitlist"
    [entry] = await waitlist.entries("clinic")
    assert entry.id == entry_id and entry.status == WaitlistStatus.BOOKED.value
    assert entry.appointment_id == appointment.id
    assert await waitlist.open_offer(business_id="clinic", phone=ANA) is None
    assert await waitlist.offer_due() == []


async def test_two_passes_at_once_make_one_offer(scheduler: Scheduler, clinic: Engine) -> None:
    booked = await fill_tuesday(scheduler)
    first, second = Waitlist(scheduler), Waitlist(Scheduler(engine=clinic, clock=scheduler.clock))
    await join(first, ANA, "Ana")
    await scheduler.cancel(business_id="clinic", appointment_id=booked[5].id)
    results = await asyncio.gather(first.offer_due(), second.offer_due())
    assert sum(len(r) for r in results) == 1
    assert len(sms_rows(clinic)) == 1


async def test_joining_checks_what_it_is_given(scheduler: Scheduler) -> None:
    waitlist = Waitlist(scheduler)
    cases: list[tuple[dict[str, object], type[Exception]]] = [
        ({"service_id": "massage"}, errors.NotFound),
        ({"staff_id": "rivera"}, errors.InvalidRequest),  # Rivera does no checkups
        ({"last_day": date(2026, 11, 1), "first_day": date(2026, 10, 1)}, errors.InvalidRequest),
        ({"last_day": date(2026, 11, 29)}, errors.InvalidRequest),  # before the first day
        ({"last_day": date(2027, 3, 1)}, errors.InvalidRequest),  # more than 60 days
        ({"phone": "not a number"}, errors.InvalidRequest),
    ]
    for change, error in cases:
        values: dict[str, object] = {
            "business_id": "clinic",
            "phone": ANA,
            "name": "Ana",
            "service_id": "checkup",
            "first_day": TUESDAY,
            "last_day": TUESDAY,
        } | change
        with pytest.raises(error):
            await waitlist.join(**values)  # type: ignore[arg-type]
    for _ in range(5):
        await join(waitlist, ANA, "Ana")
    with pytest.raises(errors.InvalidRequest, match="enough"):
        await join(waitlist, ANA, "Ana")
    [first, *_] = await waitlist.entries("clinic")
    assert await waitlist.remove("clinic", first.id)
    assert not await waitlist.remove("clinic", first.id)
    # Past its last day an entry is taken off the list.
    assert await waitlist.offer_due(now=NOW + timedelta(days=3)) == []
    assert {e.status for e in await waitlist.entries("clinic")} == {WaitlistStatus.REMOVED.value}
