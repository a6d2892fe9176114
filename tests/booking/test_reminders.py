"""Appointment reminders: when each is due (DST, quiet hours, whole days in wall-clock time), what
it says (placeholders, SMS segments), and the planner that queues each once into the outbox, on
SQLite and PostgreSQL: never for a cancelled or moved appointment, never a stale one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from booking.clock import FixedClock
from booking.db import session_scope
from booking.models import Appointment, Business, Service, SmsStatus
from booking.reminders import (
    DEFAULT_TEXT,
    Policy,
    ReminderPlanner,
    ReminderSettings,
    ServiceReminders,
    due_at,
    in_quiet,
    parse_offset,
    pick,
    policy,
    render,
    segments,
)
from booking.scheduler import Scheduler
from booking.sms_outbox import SmsStore
from tests.conftest import NOW

NY = ZoneInfo("America/New_York")
QUIET = (time(21), time(8))
DEFAULT = Policy(before=(1440, 120), text=DEFAULT_TEXT, quiet=QUIET)
CALLER = "+12025554321"


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY).astimezone(UTC)  # type: ignore[misc]


# ---- settings ---------------------------------------------------------------------------------


def test_offsets_are_written_the_way_people_write_them() -> None:
    assert [parse_offset(v) for v in ("24h", "2 hours", "90m", "1d", "3 days", 45)] == [
        1440,
        120,
        90,
        1440,
        4320,
        45,
    ]
    for bad in ("soon", "0h", "31d", True, "-2h", 2.5):
        with pytest.raises(ValueError):
            parse_offset(bad)
    settings = ReminderSettings.model_validate({"before": ["2h", "24h", "2h"]})
    assert settings.before == [1440, 120]  # longest first, once each


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"text": "Hi {nmae}"}, "unknown placeholder {nmae}"),
        ({"text": "Hi {name!r}"}, "without a format"),
        ({"text": "Hi {name"}, "stray brace"),
        ({"text": "   "}, "empty"),
        ({"text": "x" * 700}, "longer than"),
        ({"quiet_hours": "9pm-8am"}, "not quiet hours"),
        ({"quiet_hours": "25:00-08:00"}, "not quiet hours"),
        ({"before": ["1h"] * 1 + ["2h", "3h", "4h", "5h", "6h"]}, "at most 5"),
        ({"sms": True}, "Extra inputs"),
    ],
)
def test_bad_settings_say_what_is_wrong(raw: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        ReminderSettings.model_validate(raw)


def test_a_service_overrides_only_what_it_sets() -> None:
    business = Business(
        id="b",
        name="B",
        timezone="America/New_York",
        reminders={"before": ["48h"], "text": "{business}: see you {date}", "quiet_hours": "off"},
    )
    plain = Service(business_id="b", id="s", name="S", duration_minutes=30)
    assert policy(business, plain) == Policy(
        before=(2880,), text="{business}: see you {date}", quiet=None
    )
    short = Service(
        business_id="b", id="t", name="T", duration_minutes=30, reminders={"before": [60]}
    )
    assert policy(business, short).before == (60,)
    off = Service(
        business_id="b", id="u", name="U", duration_minutes=30, reminders={"enabled": False}
    )
    assert policy(business, off).before == ()
    defaults = Business(id="c", name="C", timezone="America/New_York")
    assert policy(defaults, None) == DEFAULT
    assert ServiceReminders.model_validate({}).before is None


# ---- when -------------------------------------------------------------------------------------


def test_a_day_before_is_the_same_wall_clock_time_across_a_dst_change() -> None:
    start = ny(2026, 11, 1, 10, 0)  # Sunday 10:00 EST, the morning clocks went back
    assert due_at(start, 1440, NY, QUIET) == ny(2026, 10, 31, 10, 0)  # Saturday 10:00 EDT
    assert due_at(start, 1440, NY, QUIET) == datetime(2026, 10, 31, 14, 0, tzinfo=UTC)
    # Hours are hours: 2 h before is 08:00 EST.
    assert due_at(start, 120, NY, QUIET) == ny(2026, 11, 1, 8, 0)
    spring = ny(2026, 3, 9, 9, 0)  # the Monday after clocks went forward
    assert due_at(spring, 1440, NY, QUIET) == ny(2026, 3, 8, 9, 0)


def test_a_reminder_that_would_fall_in_quiet_hours_goes_before_they_begin() -> None:
    # 2 h before 09:00 is 07:00, quiet: it goes at 20:45 the evening before.
    assert due_at(ny(2026, 12, 2, 9, 0), 120, NY, QUIET) == ny(2026, 12, 1, 20, 45)
    # 2 h before 23:30 is 21:30, quiet: 20:45 the same evening.
    assert due_at(ny(2026, 12, 2, 23, 30), 120, NY, QUIET) == ny(2026, 12, 2, 20, 45)
    # Daytime quiet hours (a lunch break) work the same way.
    lunch = (time(12), time(13))
    assert due_at(ny(2026, 12, 2, 14, 30), 120, NY, lunch) == ny(2026, 12, 2, 11, 45)
    assert not in_quiet(ny(2026, 12, 2, 8, 0), NY, QUIET)
    assert in_quiet(ny(2026, 12, 2, 21, 0), NY, QUIET)
    assert due_at(ny(2026, 12, 2, 9, 0), 120, NY, None) == ny(2026, 12, 2, 7, 0)


def test_which_reminder_goes_now() -> None:
    start = ny(2026, 12, 2, 10, 0)
    booked = ny(2026, 11, 25, 9, 0)

    def at(now: datetime, created: datetime = booked) -> int | None:
        return pick(start=start, created_at=created, policy=DEFAULT, tz=NY, now=now)

    assert at(ny(2026, 12, 1, 9, 59)) is None
    assert at(ny(2026, 12, 1, 10, 0)) == 1440
    assert at(ny(2026, 12, 2, 8, 0)) == 120
    assert at(ny(2026, 12, 2, 10, 0)) is None  # it has started
    # Booked after the day-before reminder was due: only the 2-hour one.
    assert at(ny(2026, 12, 1, 15, 0), created=ny(2026, 12, 1, 12, 0)) is None
    assert at(ny(2026, 12, 2, 8, 5), created=ny(2026, 12, 1, 12, 0)) == 120
    # Booked after both were due: none.
    assert at(ny(2026, 12, 2, 9, 0), created=ny(2026, 12, 2, 8, 30)) is None
    # Never in quiet hours, even when one is due.
    assert at(ny(2026, 12, 1, 22, 0)) is None


# ---- what it says -----------------------------------------------------------------------------


def test_the_text_fills_its_placeholders_in_the_business_zone() -> None:
    body = render(
        "{business}: hi {name}, your {service} with {staff} is {date} at {time} ({zone}), "
        "{address}.",
        name="Ana",
        service="Teeth cleaning",
        staff="Dr. Lee",
        start=ny(2026, 12, 2, 9, 0),
        tz=NY,
        business="Clinic",
        address="12 Main St",
    )
    assert body == (
        "Clinic: hi Ana, your Teeth cleaning with Dr. Lee is Wed Dec 2 at 9:00 AM (EST), "
        "12 Main St."
    )
    nameless = render(
        "Hi {name}.", name=None, service="", staff="", start=NOW, tz=NY, business="", address=None
    )
    assert nameless == "Hi there."


def test_segments_follow_gsm_7_and_ucs_2() -> None:
    assert segments("a" * 160) == segments("a" * 160) and segments("a" * 160).count == 1
    assert segments("a" * 161).count == 2 and segments("a" * 306).count == 2
    assert segments("a" * 307).count == 3
    # Extension characters take two septets.
    assert segments("{" * 80).units == 160 and segments("{" * 81).count == 2
    # One character outside GSM-7 makes the whole text UCS-2.
    assert segments("é" * 70).encoding == "GSM-7"  # é is in the GSM-7 table
    assert segments("ç" + "a" * 69).encoding == "UCS-2"
    assert segments("ç" + "a" * 69).count == 1 and segments("ç" + "a" * 70).count == 2
    assert segments("😀" * 35).units == 70  # surrogate pairs: two units each
    long_default = render(
        DEFAULT_TEXT,
        name="Alexandra",
        service="Teeth cleaning",
        staff="Dr. Lee",
        start=NOW,
        tz=NY,
        business="Bright Smile Dental",
        address=None,
    )
    assert segments(long_default).count == 1, long_default


# ---- the planner ------------------------------------------------------------------------------


async def book(scheduler: Scheduler, start: datetime, *, at: datetime = NOW) -> Appointment:
    return await scheduler.book(
        business_id="clinic",
        name="Ana",
        phone=CALLER,
        service_id="cleaning",
        staff_id="lee",
        start=start,
        now=at,
    )


def texts(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT key, status, body FROM sms_message WHERE kind = 'reminder' ORDER BY key"
            )
        )
        return [(r.key, r.status, r.body) for r in rows]


async def test_each_reminder_is_queued_once_when_it_is_due(
    scheduler: Scheduler, clinic: Engine
) -> None:
    apt = await book(scheduler, ny(2026, 12, 1, 10, 0))
    planner = ReminderPlanner(clinic)
    assert await planner.plan_due(now=NOW) == []
    [first] = await planner.plan_due(now=ny(2026, 11, 30, 10, 0))
    assert (first.appointment_id, first.minutes) == (apt.id, 1440)
    assert await planner.plan_due(now=ny(2026, 11, 30, 10, 5)) == []  # once
    [second] = await planner.plan_due(now=ny(2026, 12, 1, 8, 0))
    assert second.minutes == 120
    assert await planner.plan_due(now=ny(2026, 12, 1, 9, 0)) == []
    [(k1, s1, body), (k2, s2, _)] = texts(clinic)
    assert (k1, k2) == (f"reminder:{apt.id}:120", f"reminder:{apt.id}:1440")
    assert s1 == s2 == SmsStatus.PENDING.value
    assert body == (
        "Clinic: reminder of your Teeth cleaning with Dr. Lee on Tue Dec 1 at 10:00 AM. "
        "Reply C to confirm or X to cancel."
    )
    with clinic.connect() as conn:
        row = conn.execute(
            sa.text("SELECT to_number, from_number, appointment_id FROM sms_message")
        ).first()
    assert row is not None and tuple(row) == (CALLER, "+12025550100", apt.id)


async def test_after_downtime_only_the_latest_due_reminder_goes(
    scheduler: Scheduler, clinic: Engine
) -> None:
    await book(scheduler, ny(2026, 12, 1, 10, 0))
    planned = await ReminderPlanner(clinic).plan_due(now=ny(2026, 12, 1, 8, 30))
    assert [p.minutes for p in planned] == [120]


async def test_a_booking_made_inside_a_reminders_window_gets_no_stale_reminder(
    scheduler: Scheduler, clinic: Engine
) -> None:
    await book(scheduler, ny(2026, 12, 1, 10, 0), at=ny(2026, 11, 30, 11, 0))
    planner = ReminderPlanner(clinic)
    assert await planner.plan_due(now=ny(2026, 11, 30, 11, 30)) == []
    assert [p.minutes for p in await planner.plan_due(now=ny(2026, 12, 1, 8, 0))] == [120]


async def test_cancelling_or_moving_voids_what_is_queued_and_nothing_else_is(
    scheduler: Scheduler, clinic: Engine
) -> None:
    planner = ReminderPlanner(clinic)
    gone = await book(scheduler, ny(2026, 12, 1, 10, 0))
    moved = await book(scheduler, ny(2026, 12, 1, 14, 0))
    assert len(await planner.plan_due(now=ny(2026, 11, 30, 14, 0))) == 2
    await scheduler.cancel(
        business_id="clinic", appointment_id=gone.id, now=ny(2026, 11, 30, 14, 1)
    )
    new = await scheduler.reschedule(
        business_id="clinic",
        appointment_id=moved.id,
        start=ny(2026, 12, 3, 11, 0),
        now=ny(2026, 11, 30, 14, 2),
    )
    statuses = {key: status for key, status, _ in texts(clinic)}
    assert statuses == {
        f"reminder:{gone.id}:1440": SmsStatus.CANCELLED.value,
        f"reminder:{moved.id}:1440": SmsStatus.CANCELLED.value,
    }
    # Nothing for the cancelled or the old time again; the new time gets its own schedule.
    assert await planner.plan_due(now=ny(2026, 12, 1, 8, 0)) == []
    [day_before] = await planner.plan_due(now=ny(2026, 12, 2, 11, 0))
    assert (day_before.appointment_id, day_before.minutes) == (new.id, 1440)
    store = SmsStore.over(clinic, FixedClock(ny(2026, 12, 2, 11, 0)))
    claimed = await store.claim(lease=timedelta(seconds=60))
    assert [c.key for c in claimed] == [f"reminder:{new.id}:1440"]


async def test_a_reminder_left_pending_past_its_appointment_is_never_sent(
    scheduler: Scheduler, clinic: Engine
) -> None:
    await book(scheduler, ny(2026, 12, 1, 10, 0))
    assert await ReminderPlanner(clinic).plan_due(now=ny(2026, 11, 30, 10, 0))
    late = SmsStore.over(clinic, FixedClock(ny(2026, 12, 1, 10, 30)))  # the outbox was down
    assert await late.claim(lease=timedelta(seconds=60)) == []
    [(_, status, _)] = texts(clinic)
    assert status == SmsStatus.CANCELLED.value


async def test_three_planners_at_once_queue_each_reminder_once(
    scheduler: Scheduler, clinic: Engine
) -> None:
    starts = [ny(2026, 12, 1, h, m) for h in (9, 10, 11, 13, 14, 15) for m in (0,)]
    for start in starts:
        await book(scheduler, start)
    due = ny(2026, 11, 30, 16, 0)
    planners = [ReminderPlanner(clinic) for _ in range(3)]
    results = await asyncio.gather(*(p.plan_due(now=due) for p in planners))
    assert sum(len(r) for r in results) == len(starts)
    assert len(texts(clinic)) == len(starts)
    # Whoever skipped a row another held picks up nothing new on the next pass either.
    assert await planners[0].plan_due(now=due) == []


async def test_business_and_service_settings_change_what_is_sent(
    scheduler: Scheduler, clinic: Engine
) -> None:
    with session_scope(clinic, write=True) as s:
        business = s.get(Business, "clinic")
        assert business is not None
        business.reminders = ReminderSettings.model_validate(
            {"before": ["3h"], "text": "{business}: {service} at {time}, {address}."}
        ).model_dump()
        business.address = "12 Main St"
        s.add(business)
        checkup = s.get(Service, ("clinic", "checkup"))
        assert checkup is not None
        checkup.reminders = {"enabled": False}
        s.add(checkup)
    cleaning = await book(scheduler, ny(2026, 12, 1, 10, 0))
    await scheduler.book(
        business_id="clinic",
        name="Bo",
        phone="+12025554322",
        service_id="checkup",
        staff_id="lee",
        start=ny(2026, 12, 1, 11, 0),
        now=NOW,
    )
    planner = ReminderPlanner(clinic)
    assert await planner.plan_due(now=ny(2026, 11, 30, 10, 0)) == []  # no day-before any more
    planned = await planner.plan_due(now=ny(2026, 12, 1, 8, 30))
    assert [(p.appointment_id, p.minutes) for p in planned] == [(cleaning.id, 180)]
    [(_, _, body)] = texts(clinic)
    assert body == "Clinic: Teeth cleaning at 10:00 AM, 12 Main St."


# ---- attendance -------------------------------------------------------------------------------


async def test_staff_mark_attended_or_no_show_once_it_has_started(scheduler: Scheduler) -> None:
    from booking import errors
    from booking.models import Attendance

    apt = await book(scheduler, ny(2026, 12, 1, 10, 0))
    with pytest.raises(errors.InvalidRequest):
        await scheduler.mark_attendance(
            business_id="clinic", appointment_id=apt.id, attendance=Attendance.NO_SHOW
        )
    later = ny(2026, 12, 1, 11, 0)
    row = await scheduler.mark_attendance(
        business_id="clinic", appointment_id=apt.id, attendance=Attendance.NO_SHOW, now=later
    )
    assert row.attendance == "no_show" and row.attendance_at == later
    assert await scheduler.no_shows(business_id="clinic", contact_ids=[apt.contact_id]) == {
        apt.contact_id: 1
    }
    await scheduler.mark_attendance(
        business_id="clinic", appointment_id=apt.id, attendance=Attendance.ATTENDED, now=later
    )
    assert await scheduler.no_shows(business_id="clinic", contact_ids=[apt.contact_id]) == {}
    await scheduler.cancel(business_id="clinic", appointment_id=apt.id)
    with pytest.raises(errors.AppointmentNotActive):
        await scheduler.mark_attendance(
            business_id="clinic", appointment_id=apt.id, attendance=None, now=later
        )


def test_a_caller_from_another_zone_is_told_which_zone_the_time_is_in() -> None:
    from booking.reminders import elsewhere

    start = ny(2026, 12, 2, 9, 0)
    assert not elsewhere("+12025554321", start, NY)  # Washington: the same clock
    assert elsewhere("+13125550100", start, NY)  # Chicago
    assert not elsewhere("+447700900123", start, NY)  # a mobile number says no zone
    body = render(
        "{service} at {time}",
        name=None,
        service="Cleaning",
        staff="",
        start=start,
        tz=NY,
        business="",
        address=None,
        name_zone=True,
    )
    assert body == "Cleaning at 9:00 AM EST"
