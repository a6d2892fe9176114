"""Holds, bookings, cancellations, reschedules and leads, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from booking import errors
from booking.clock import FixedClock
from booking.rules import Interval
from booking.scheduler import Scheduler
from tests.conftest import NOW, count_rows

NY = ZoneInfo("America/New_York")
MON = datetime(2026, 12, 7, 9, 0, tzinfo=NY)  # a Monday a week after NOW


async def book(s: Scheduler, start: datetime = MON, phone: str = "+12025550001", **kw: object):
    kw.setdefault("service_id", "cleaning")
    kw.setdefault("staff_id", "lee")
    return await s.book(business_id=None, start=start, name="Ann Caller", phone=phone, **kw)  # type: ignore[arg-type]


async def lee_starts(s: Scheduler, day: date = MON.date(), **kw: object) -> list[str]:
    result = await s.availability(
        business_id=None, service_id="cleaning", staff_id="lee", first_day=day, last_day=day, **kw
    )  # type: ignore[arg-type]
    return [x.start.astimezone(NY).strftime("%H:%M") for x in result.slots]


async def test_booking_removes_the_slot_and_its_buffer(scheduler: Scheduler) -> None:
    before = await lee_starts(scheduler)
    appt = await book(scheduler)
    assert appt.status == "confirmed" and appt.end - appt.start == timedelta(minutes=45)
    after = await lee_starts(scheduler)
    # 09:00-09:45 plus 15 minutes' clean-up: the next cleaning starts at 10:00.
    assert set(before) - set(after) == {"09:00", "09:15", "09:30", "09:45"}
    assert after[0] == "10:00"


async def test_second_booking_of_the_same_slot_is_refused(scheduler: Scheduler) -> None:
    await book(scheduler)
    with pytest.raises(errors.SlotTaken):
        await book(scheduler, phone="+12025550002")
    with pytest.raises(errors.SlotTaken):  # overlaps the first one's buffer
        await book(scheduler, start=MON + timedelta(minutes=45), phone="+12025550002")


async def test_booking_refuses_times_that_are_not_slots(scheduler: Scheduler) -> None:
    with pytest.raises(errors.OutsideHours):
        await book(scheduler, start=MON + timedelta(minutes=5))  # off the step grid
    with pytest.raises(errors.OutsideHours):
        await book(scheduler, start=MON.replace(hour=11, minute=30))  # runs into lunch
    with pytest.raises(errors.OutsideHours):
        await book(scheduler, start=datetime(2026, 12, 24, 10, tzinfo=NY))  # closed override
    with pytest.raises(errors.TooSoon):
        await book(scheduler, start=NOW + timedelta(minutes=60))
    with pytest.raises(errors.TooFarAhead):
        await book(scheduler, start=datetime(2027, 3, 1, 9, tzinfo=NY))
    with pytest.raises(errors.InvalidRequest):
        await book(scheduler, phone="555-1234")
    with pytest.raises(errors.InvalidRequest):
        await book(scheduler, staff_id="rivera", service_id="checkup")
    with pytest.raises(errors.NotFound):
        await book(scheduler, service_id="surgery")


async def test_hold_blocks_others_but_not_its_holder(scheduler: Scheduler) -> None:
    hold = await scheduler.hold(
        business_id=None, service_id="cleaning", staff_id="lee", start=MON, holder="call-a"
    )
    assert "09:00" not in await lee_starts(scheduler)
    assert "09:00" in await lee_starts(scheduler, holder="call-a")
    with pytest.raises(errors.SlotTaken):
        await scheduler.hold(
            business_id=None, service_id="cleaning", staff_id="lee", start=MON, holder="call-b"
        )
    with pytest.raises(errors.SlotTaken):
        await book(scheduler, phone="+12025550002")
    appt = await book(scheduler, hold_id=hold.id, service_id=None, staff_id=None, start=None)
    assert appt.start == MON
    assert count_rows(scheduler.engine, "SELECT count(*) FROM hold") == 0


async def test_expired_hold_blocks_nothing_and_cannot_be_booked(scheduler: Scheduler) -> None:
    hold = await scheduler.hold(
        business_id=None, service_id="cleaning", staff_id="lee", start=MON, holder="call-a"
    )
    later = Scheduler(engine=scheduler.engine, clock=FixedClock(NOW + timedelta(minutes=6)))
    assert "09:00" in await lee_starts(later)
    with pytest.raises(errors.HoldExpired):
        await later.book(business_id=None, hold_id=hold.id, name="Ann", phone="+12025550001")
    other = await book(later, phone="+12025550002")
    assert other.start == MON


async def test_one_caller_holds_one_slot_at_a_time(scheduler: Scheduler) -> None:
    await scheduler.hold(
        business_id=None, service_id="cleaning", staff_id="lee", start=MON, holder="call-a"
    )
    await scheduler.hold(
        business_id=None,
        service_id="cleaning",
        staff_id="lee",
        start=MON + timedelta(hours=2),
        holder="call-a",
    )
    starts = await lee_starts(scheduler)
    assert "09:00" in starts and "11:00" not in starts
    assert count_rows(scheduler.engine, "SELECT count(*) FROM hold") == 1


async def test_cancel_frees_the_time_and_is_scoped_to_the_caller(scheduler: Scheduler) -> None:
    appt = await book(scheduler)
    with pytest.raises(errors.NotYourAppointment):
        await scheduler.cancel(business_id=None, appointment_id=appt.id, phone="+12025559999")
    cancelled = await scheduler.cancel(
        business_id=None, appointment_id=appt.id, phone="+12025550001"
    )
    assert cancelled.status == "cancelled"
    assert "09:00" in await lee_starts(scheduler)
    with pytest.raises(errors.AppointmentNotActive):
        await scheduler.cancel(business_id=None, appointment_id=appt.id)


async def test_reschedule_secures_the_new_time_before_releasing_the_old(
    scheduler: Scheduler,
) -> None:
    appt = await book(scheduler)
    blocker = await book(scheduler, start=MON.replace(hour=10), phone="+12025550002")
    with pytest.raises(errors.SlotTaken):
        await scheduler.reschedule(business_id=None, appointment_id=appt.id, start=blocker.start)
    still = await scheduler.get_appointment(business_id=None, appointment_id=appt.id)
    assert still.status == "confirmed"
    moved = await scheduler.reschedule(
        business_id=None, appointment_id=appt.id, start=MON + timedelta(hours=2)
    )
    old = await scheduler.get_appointment(business_id=None, appointment_id=appt.id)
    assert old.status == "rescheduled" and old.rescheduled_to == moved.id
    assert moved.rescheduled_from == appt.id and moved.contact_id == appt.contact_id
    assert "09:00" in await lee_starts(scheduler)
    assert "11:00" not in await lee_starts(scheduler)
    # Moving by 15 minutes overlaps its own old block: allowed, the old one is released with it.
    nudged = await scheduler.reschedule(
        business_id=None, appointment_id=moved.id, start=moved.start + timedelta(minutes=15)
    )
    assert nudged.start.astimezone(NY).strftime("%H:%M") == "11:15"


async def test_callers_see_only_their_own_appointments(scheduler: Scheduler) -> None:
    await book(scheduler)
    await book(scheduler, start=MON.replace(hour=14), phone="+12025550002")
    mine = await scheduler.appointments(business_id=None, phone="+12025550001")
    assert [a.start for a in mine] == [MON]
    assert await scheduler.appointments(business_id=None, phone="+12025550000") == []


async def test_chicago_staff_slots_are_in_their_own_hours(scheduler: Scheduler) -> None:
    result = await scheduler.availability(
        business_id=None,
        service_id="cleaning",
        staff_id="rivera",
        first_day=MON.date(),
        last_day=MON.date(),
    )
    starts = [s.start.astimezone(ZoneInfo("America/Chicago")) for s in result.slots]
    assert starts[0].strftime("%H:%M") == "08:00" and starts[-1].strftime("%H:%M") == "11:15"
    assert result.timezone == "America/New_York"


async def test_leads_are_kept_newest_first(scheduler: Scheduler) -> None:
    await scheduler.record_lead(
        business_id=None, phone="+12025550001", name="Ann", reason="toothache", outcome="message"
    )
    later = Scheduler(engine=scheduler.engine, clock=FixedClock(NOW + timedelta(minutes=1)))
    await later.record_lead(business_id=None, phone="+12025550002", name="Bob", reason="price")
    leads = await scheduler.leads(business_id=None)
    assert [lead.name for lead in leads] == ["Bob", "Ann"]
    assert [
        lead.outcome for lead in await scheduler.leads(business_id=None, outcome="message")
    ] == ["message"]
    with pytest.raises(errors.InvalidRequest):
        await scheduler.record_lead(business_id=None, phone="+12025550001", outcome="maybe")


class SlowCalendar:
    """A linked calendar that says Lee is busy 09:00-10:00, after a delay."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.live_reads = 0

    async def busy(self, calendars, *, start, end, live=False) -> list[Interval]:  # type: ignore[no-untyped-def]
        self.live_reads += live
        await asyncio.sleep(self.delay)
        return [(MON, MON + timedelta(hours=1))] if calendars.staff_id == "lee" else []


async def test_linked_calendar_busy_time_is_respected_and_rechecked_live(clinic) -> None:  # type: ignore[no-untyped-def]
    from booking.db import session_scope
    from booking.models import Staff

    with session_scope(clinic, write=True) as s:
        lee = s.get(Staff, ("clinic", "lee"))
        assert lee is not None
        lee.calendars = [{"provider": "test"}]
        s.add(lee)
    calendar = SlowCalendar()
    scheduler = Scheduler(engine=clinic, calendars=calendar, clock=FixedClock(NOW))
    starts = await lee_starts(scheduler)
    assert starts[0] == "10:00"
    with pytest.raises(errors.SlotTaken):
        await book(scheduler)
    assert calendar.live_reads == 1

    slow = Scheduler(
        engine=clinic, calendars=SlowCalendar(delay=5), clock=FixedClock(NOW), calendar_timeout=0.05
    )
    with pytest.raises(errors.CalendarUnavailable):
        await lee_starts(slow)


async def test_concurrent_bookings_in_one_process_get_exactly_one(scheduler: Scheduler) -> None:
    results = await asyncio.gather(
        *(book(scheduler, phone=f"+1617555{i:04d}") for i in range(10)), return_exceptions=True
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert len(wins) == 1
    assert all(isinstance(r, errors.SlotTaken) for r in results if r not in wins)
    assert (
        count_rows(scheduler.engine, "SELECT count(*) FROM appointment WHERE status = 'confirmed'")
        == 1
    )


async def test_business_with_team_is_the_business_its_services_and_its_staff(
    scheduler: Scheduler,
) -> None:
    business, services, staff = await scheduler.business_with_team("clinic")
    assert business.id == "clinic"
    assert [s.id for s in services] == [s.id for s in await scheduler.services("clinic")]
    assert [m.id for m in staff] == [m.id for m in await scheduler.staff("clinic")]
    assert services and staff
    with pytest.raises(errors.NotFound):
        await scheduler.business_with_team("no-such-business")


@pytest.mark.parametrize("limit", [1, 3, 5])
async def test_a_few_options_are_the_full_listing_spread(scheduler: Scheduler, limit: int) -> None:
    """The agent's lazy search against the full listing, through the database: a booking and a
    hold in the way, a time-of-day window, any staff member."""
    from booking.slots import spread

    first = await scheduler.availability(
        business_id="clinic",
        service_id="cleaning",
        first_day=date(2026, 12, 2),
        last_day=date(2026, 12, 3),
    )
    taken = first.slots[2]
    await scheduler.book(
        business_id="clinic",
        name="Ann",
        phone="+12025550123",
        service_id="cleaning",
        staff_id=taken.staff_id,
        start=taken.start,
    )
    await scheduler.hold(
        business_id="clinic",
        service_id="cleaning",
        staff_id=first.slots[9].staff_id,
        start=first.slots[9].start,
        holder="someone else",
    )
    window = {
        "business_id": "clinic",
        "service_id": "cleaning",
        "first_day": date(2026, 12, 2),
        "last_day": date(2026, 12, 3),
        "earliest": time(9, 30),
        "latest": time(15),
    }
    every = await scheduler.availability(**window)  # type: ignore[arg-type]
    options = await scheduler.availability(**window, limit=limit)  # type: ignore[arg-type]
    assert options.slots == spread(every.slots, limit)
    assert len(options.slots) == limit
    assert (taken.start, taken.staff_id) not in {(s.start, s.staff_id) for s in every.slots}
