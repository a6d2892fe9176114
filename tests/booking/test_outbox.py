"""Every booking change and every new lead leaves an outbox event in the same transaction."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from booking import errors
from booking.db import session_scope
from booking.models import OutboxEvent
from booking.scheduler import Scheduler

NY = ZoneInfo("America/New_York")


def events(engine: Engine) -> list[OutboxEvent]:
    with session_scope(engine) as s:
        return list(s.exec(select(OutboxEvent).order_by(OutboxEvent.created_at)))


async def test_book_reschedule_cancel_and_lead_each_write_one_event(
    scheduler: Scheduler, clinic: Engine
) -> None:
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
    await scheduler.cancel(business_id="clinic", appointment_id=moved.id)
    lead = await scheduler.record_lead(
        business_id="clinic", phone="+12025552200", name="Ada", reason="wants whitening"
    )
    found = events(clinic)
    assert [e.type for e in found] == [
        "booking.created",
        "booking.rescheduled",
        "booking.cancelled",
        "lead.created",
    ]
    assert found[0].payload["id"] == booked.id
    assert found[0].payload["contact"] == {
        "id": booked.contact_id,
        "name": "Ada",
        "phone": "+12025552200",
    }
    assert found[1].payload["rescheduled_from"] == booked.id
    assert found[1].payload["previous_start"] == booked.start.isoformat()
    assert found[2].payload["status"] == "cancelled"
    assert found[3].payload["id"] == lead.id
    assert all(e.business_id == "clinic" for e in found)


async def test_a_refused_booking_leaves_no_event(scheduler: Scheduler, clinic: Engine) -> None:
    start = datetime(2026, 12, 1, 9, tzinfo=NY)
    await scheduler.book(
        business_id="clinic",
        service_id="checkup",
        staff_id="lee",
        start=start,
        name="Ada",
        phone="+12025552200",
    )
    with pytest.raises(errors.SlotTaken):
        await scheduler.book(
            business_id="clinic",
            service_id="checkup",
            staff_id="lee",
            start=start,
            name="Bob",
            phone="+12025552201",
        )
    assert [e.type for e in events(clinic)] == ["booking.created"]


async def test_a_call_has_one_lead_that_a_later_booking_upgrades(
    scheduler: Scheduler, clinic: Engine
) -> None:
    from booking.models import Call, Lead

    with session_scope(clinic, write=True) as s:
        s.add(Call(id="call_1", business_id="clinic", call_sid="CA1"))
    first = await scheduler.record_lead(
        business_id="clinic",
        phone="+12025552200",
        name="Ada",
        reason="Left a message: call back",
        outcome="message",
        call_id="call_1",
    )
    booked = await scheduler.book(
        business_id="clinic",
        service_id="checkup",
        staff_id="lee",
        start=datetime(2026, 12, 1, 9, tzinfo=NY),
        name="Ada",
        phone="+12025552200",
        call_id="call_1",
    )
    again = await scheduler.record_lead(
        business_id="clinic",
        phone="+12025552200",
        name="Ada",
        reason="Booked: checkup",
        outcome="booked",
        appointment_id=booked.id,
        call_id="call_1",
    )
    assert again.id == first.id
    with session_scope(clinic) as s:
        [lead] = list(s.exec(select(Lead)))
    assert lead.outcome == "booked" and lead.appointment_id == booked.id
    assert lead.reason == "Left a message: call back; then: Booked: checkup"
    assert [e.type for e in events(clinic)].count("lead.created") == 1
