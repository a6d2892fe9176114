"""The scheduler under hostile input, on SQLite and PostgreSQL: recurring time off that would
freeze every call, and dates at the edges of the calendar."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine

from booking import errors
from booking.db import session_scope
from booking.models import Staff
from booking.recurrence import _compile, compile_rule
from booking.scheduler import Scheduler

NY = ZoneInfo("America/New_York")
MON = datetime(2026, 12, 7, 9, 0, tzinfo=NY)
END_OF_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
# The costliest rule time off accepts: its COUNT is walked from 1970 when first compiled.
WORST = {
    "rrule": "FREQ=YEARLY;BYDAY=53MO,53TU,53WE,53TH,53FR,53SA,53SU;COUNT=10000",
    "start": "1970-01-05T12:00",
    "end": "1970-01-05T13:00",
}


def store_time_off(engine: Engine, staff_id: str, time_off: list[dict[str, Any]]) -> None:
    """Write rules straight into the row, as a version without today's checks could have."""
    with session_scope(engine, write=True) as s:
        row = s.get(Staff, ("clinic", staff_id))
        assert row is not None
        row.time_off = time_off
        s.add(row)


async def starts(scheduler: Scheduler, staff_id: str, day: date = MON.date()) -> list[datetime]:
    found = await scheduler.availability(
        business_id=None, service_id="cleaning", staff_id=staff_id, first_day=day, last_day=day
    )
    return [s.start for s in found.slots]


@pytest.mark.parametrize(
    "rule",
    [
        {"rrule": "FREQ=MINUTELY", "start": "2000-01-01T00:00", "end": "2000-01-01T00:01"},
        {"rrule": "FREQ=SECONDLY", "start": "2020-01-01T00:00", "end": "2020-01-01T00:00:01"},
        {"rrule": "FREQ=HOURLY", "start": "2000-01-01T00:00", "end": "2000-01-01T00:05"},
        {
            "rrule": "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
            "start": "2026-01-01T00:00",
            "end": "2026-01-01T01:00",
        },
    ],
    ids=["minutely", "secondly", "hourly", "never"],
)
async def test_a_stored_hostile_rule_does_not_stall_the_search(
    scheduler: Scheduler,
    rule: dict[str, Any],
) -> None:
    store_time_off(scheduler.engine, "lee", [rule])
    t0 = time.perf_counter()
    found = await starts(scheduler, "lee")
    assert time.perf_counter() - t0 < 1.0  # was 2-17 s with the rule expanded
    if rule["rrule"].startswith("FREQ=DAILY"):
        assert found  # accepted, and it never matches: nothing is busy
        await scheduler.hold(
            business_id=None, service_id="cleaning", staff_id="lee", start=found[0], holder="caller"
        )
        return
    assert found == []  # refused today: busy, so no time is ever offered over it
    with pytest.raises(errors.SlotUnavailable):
        await scheduler.hold(
            business_id=None,
            service_id="cleaning",
            staff_id="lee",
            start=MON + timedelta(hours=1),
            holder="caller",
        )
    assert await starts(scheduler, "rivera")  # the others are unaffected


async def test_the_worst_accepted_rule_never_blocks_the_event_loop(scheduler: Scheduler) -> None:
    compile_rule(WORST["rrule"], datetime.fromisoformat(WORST["start"]))  # accepted
    store_time_off(scheduler.engine, "lee", [WORST])
    _compile.cache_clear()  # the first search after a save pays for the COUNT walk
    delays: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            delays.append(loop.time() - due)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    t0 = time.perf_counter()
    found = await scheduler.availability(
        business_id=None,
        service_id="cleaning",
        first_day=date(2026, 12, 1),
        last_day=date(2027, 1, 29),
    )
    elapsed = time.perf_counter() - t0
    done.set()
    await task
    assert found.slots
    assert max(delays) < 0.2, f"the loop stalled {max(delays):.3f} s in a {elapsed:.3f} s search"


@pytest.mark.parametrize(
    "when",
    [
        END_OF_TIME,
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(2200, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 0, tzinfo=UTC),
    ],
    ids=["9999", "year-1", "2200", "1969"],
)
async def test_dates_at_the_edge_are_invalid_requests(scheduler: Scheduler, when: datetime) -> None:
    outside = "outside the years 1970-2199"
    with pytest.raises(errors.InvalidRequest, match=outside):
        await scheduler.hold(
            business_id=None, service_id="cleaning", staff_id="lee", start=when, holder="caller"
        )
    with pytest.raises(errors.InvalidRequest, match=outside):
        await scheduler.book(
            business_id=None,
            service_id="cleaning",
            staff_id="lee",
            start=when,
            name="Ann",
            phone="+12025550001",
        )
    appt = await scheduler.book(
        business_id=None,
        service_id="cleaning",
        staff_id="lee",
        start=MON,
        name="Ann",
        phone="+12025550001",
    )
    with pytest.raises(errors.InvalidRequest, match=outside):
        await scheduler.reschedule(business_id=None, appointment_id=appt.id, start=when)
    with pytest.raises(errors.InvalidRequest, match=outside):
        await scheduler.availability(
            business_id=None,
            service_id="cleaning",
            first_day=MON.date(),
            last_day=MON.date(),
            now=when,
        )
    with pytest.raises(errors.InvalidRequest, match=outside):
        await scheduler.search(business_id=None, service_id="cleaning", start=when, end=when)
    with pytest.raises(errors.InvalidRequest, match=outside):
        await scheduler.appointments(business_id=None, start=when)
    with pytest.raises(errors.InvalidRequest, match=outside):
        await scheduler.availability(
            business_id=None, service_id="cleaning", first_day=when.date(), last_day=when.date()
        )
    assert (
        await scheduler.get_appointment(business_id=None, appointment_id=appt.id)
    ).start == MON  # nothing moved


async def test_naive_datetimes_are_invalid_requests(scheduler: Scheduler) -> None:
    naive = datetime(2026, 12, 7, 9, 0)
    with pytest.raises(errors.InvalidRequest, match="must carry a UTC offset"):
        await scheduler.hold(
            business_id=None, service_id="cleaning", staff_id="lee", start=naive, holder="caller"
        )
    with pytest.raises(errors.InvalidRequest, match="must carry a UTC offset"):
        await scheduler.search(
            business_id=None, service_id="cleaning", start=naive, end=MON + timedelta(days=1)
        )
    with pytest.raises(errors.InvalidRequest, match="must carry a UTC offset"):
        await scheduler.appointments(business_id=None, start=naive)
    with pytest.raises(errors.InvalidRequest, match="must carry a UTC offset"):
        await scheduler.availability(
            business_id=None,
            service_id="cleaning",
            first_day=MON.date(),
            last_day=MON.date(),
            now=naive,
        )
