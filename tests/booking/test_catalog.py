"""Each worker's copy of a business's catalogue: reused while the database says it is unchanged,
reloaded on the very next operation after any change, by any worker or by hand in SQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from booking import errors
from booking.clock import FixedClock
from booking.db import session_scope
from booking.models import Business, Service, Staff
from booking.scheduler import Scheduler
from calendars.models import CalendarConnection
from tests.conftest import NOW, seed_clinic

NY = ZoneInfo("America/New_York")
MON = date(2026, 12, 7)  # a Monday a week after NOW


def revision(engine: Engine, business_id: str = "clinic") -> int | None:
    with engine.connect() as conn:
        value = conn.execute(
            sa.text("SELECT revision FROM catalog_revision WHERE business_id = :b"),
            {"b": business_id},
        ).scalar_one_or_none()
    return None if value is None else int(value)


def run(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement `engine` sends while the block runs."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


async def lee_starts(scheduler: Scheduler) -> list[str]:
    result = await scheduler.availability(
        business_id="clinic", service_id="cleaning", staff_id="lee", first_day=MON, last_day=MON
    )
    return [s.start.astimezone(NY).strftime("%H:%M") for s in result.slots]


def test_every_change_to_what_searches_load_bumps_the_revision(engine: Engine) -> None:
    assert revision(engine) is None
    seed_clinic(engine)
    seeded = revision(engine)
    assert seeded is not None and seeded >= 5  # business, two services, two staff

    changes = [
        "UPDATE business SET timezone = 'America/Chicago' WHERE id = 'clinic'",
        "UPDATE service SET duration_minutes = 50 WHERE id = 'cleaning'",
        "UPDATE staff SET name = 'Dr. J. Lee' WHERE id = 'lee'",
        "DELETE FROM service WHERE id = 'checkup'",
    ]
    last = seeded
    for sql in changes:
        run(engine, sql)
        now = revision(engine)
        assert now is not None and now > last, sql
        last = now


def test_calendar_links_bump_it_only_for_what_a_search_reads(engine: Engine) -> None:
    seed_clinic(engine)
    with session_scope(engine, write=True) as s:
        link = CalendarConnection(business_id="clinic", staff_id="lee", provider="ics", name="x")
        s.add(link)
    linked = revision(engine)
    assert linked is not None

    # The scheduled sync's bookkeeping changes nothing a search reads: no reload for it.
    run(engine, "UPDATE calendarconnection SET sync = '{}', last_error = 'timeout', claim = 'w1'")
    assert revision(engine) == linked
    run(engine, "UPDATE calendarconnection SET status = 'disconnected'")
    after_status = revision(engine)
    assert after_status is not None and after_status > linked
    run(engine, "DELETE FROM calendarconnection")
    gone = revision(engine)
    assert gone is not None and gone > after_status


def test_a_business_made_again_under_its_old_id_never_repeats_a_revision(engine: Engine) -> None:
    seed_clinic(engine)
    for table in ("staff", "service", "business"):
        run(engine, f"DELETE FROM {table}")  # noqa: S608 - fixed table names
    deleted = revision(engine)
    assert deleted is not None
    seed_clinic(engine)
    again = revision(engine)
    assert again is not None and again > deleted


async def test_a_warm_search_reads_no_catalogue_rows(clinic: Engine) -> None:
    scheduler = Scheduler(engine=clinic, clock=FixedClock(NOW))
    first = await lee_starts(scheduler)
    with statements(clinic) as seen:
        assert await lee_starts(scheduler) == first
    assert not [q for q in seen if "FROM staff" in q or "FROM service" in q], seen
    assert any("catalog_revision" in q for q in seen)


async def test_a_change_by_another_worker_is_seen_by_the_next_search(clinic: Engine) -> None:
    """Two schedulers on one database stand for two worker processes."""
    worker_a = Scheduler(engine=clinic, clock=FixedClock(NOW))
    worker_b = Scheduler(engine=clinic, clock=FixedClock(NOW))
    before = await lee_starts(worker_a)
    assert before[0] == "09:00"

    assert (await lee_starts(worker_b)) == before  # both have it cached now

    with session_scope(clinic, write=True) as s:  # what the dashboard's staff page does
        lee = s.get(Staff, ("clinic", "lee"))
        assert lee is not None
        lee.weekly_hours = {"mon": ["14:00-16:00"]}
        s.add(lee)
    after = await lee_starts(worker_a)
    assert after and after[0] == "14:00" and after[-1] <= "15:15"

    # By hand in SQL too: the service gets longer, so fewer starts fit before 16:00.
    run(clinic, "UPDATE service SET duration_minutes = 90 WHERE id = 'cleaning'")
    assert (await lee_starts(worker_a))[-1] == "14:30"


async def test_the_team_a_call_loads_is_cached_until_it_changes(clinic: Engine) -> None:
    worker_a = Scheduler(engine=clinic, clock=FixedClock(NOW))
    worker_b = Scheduler(engine=clinic, clock=FixedClock(NOW))
    business, services, staff = await worker_a.business_with_team("clinic")
    with statements(clinic) as seen:
        again = await worker_a.business_with_team("clinic")
    assert again[0].name == business.name and [m.id for m in again[2]] == [m.id for m in staff]
    assert not [q for q in seen if "FROM staff" in q or "FROM service" in q], seen
    again[2].clear()  # a caller's list is its own
    assert [m.id for m in (await worker_a.business_with_team("clinic"))[2]] == ["lee", "rivera"]

    await worker_b.business_with_team("clinic")
    run(clinic, "UPDATE staff SET name = 'Dr. Sam Lee' WHERE id = 'lee'")
    for worker in (worker_a, worker_b):
        _, _, fresh = await worker.business_with_team("clinic")
        assert fresh[0].name == "Dr. Sam Lee"
    with pytest.raises(errors.NotFound):
        await worker_a.business_with_team("no-such-business")


async def test_who_answers_a_number_follows_any_workers_change(clinic: Engine) -> None:
    worker_a = Scheduler(engine=clinic, clock=FixedClock(NOW))
    worker_b = Scheduler(engine=clinic, clock=FixedClock(NOW))
    assert (await worker_a.business_by_number("+12025550100")).id == "clinic"
    with statements(clinic) as seen:
        assert (await worker_a.business_by_number("+1 202 555 0100")).id == "clinic"
    assert not [q for q in seen if "FROM business" in q], seen
    with pytest.raises(errors.NotFound):
        await worker_a.business_by_number("+12025550199")

    # Another worker adds a business with that number; the first sees it on its next call.
    with session_scope(clinic, write=True) as s:
        s.add(
            Business(
                id="salon",
                name="Salon",
                timezone="America/New_York",
                phone_numbers=["+12025550199"],
            )
        )
    assert (await worker_b.business_by_number("+12025550199")).id == "salon"
    assert (await worker_a.business_by_number("+12025550199")).id == "salon"
    # And by hand in SQL: the clinic gives its number up.
    run(clinic, "UPDATE business SET phone_numbers = '[]' WHERE id = 'clinic'")
    with pytest.raises(errors.NotFound):
        await worker_a.business_by_number("+12025550100")


async def test_a_booking_that_fails_leaves_the_cached_catalogue_usable(clinic: Engine) -> None:
    scheduler = Scheduler(engine=clinic, clock=FixedClock(NOW))
    await lee_starts(scheduler)
    start = (
        (
            await scheduler.availability(
                business_id="clinic",
                service_id="cleaning",
                staff_id="lee",
                first_day=MON,
                last_day=MON,
            )
        )
        .slots[0]
        .start
    )
    with pytest.raises(errors.BookingError):  # off the step grid: rolled back
        await scheduler.book(
            business_id="clinic",
            service_id="cleaning",
            staff_id="lee",
            start=start.replace(minute=5),
            name="Ann",
            phone="+12025550001",
        )
    booked = await scheduler.book(
        business_id="clinic",
        service_id="cleaning",
        staff_id="lee",
        start=start,
        name="Ann",
        phone="+12025550001",
    )
    assert booked.status == "confirmed"


async def test_unknown_names_still_get_their_own_errors_from_a_warm_cache(clinic: Engine) -> None:
    scheduler = Scheduler(engine=clinic, clock=FixedClock(NOW))
    await lee_starts(scheduler)
    with session_scope(clinic, write=True) as s:
        s.add(Staff(business_id="clinic", id="kim", name="Kim", weekly_hours={}))
    with pytest.raises(errors.InvalidRequest, match="kim does not do"):
        await scheduler.availability(
            business_id="clinic", service_id="cleaning", staff_id="kim", first_day=MON, last_day=MON
        )
    with pytest.raises(errors.NotFound, match="no staff member"):
        await scheduler.availability(
            business_id="clinic",
            service_id="cleaning",
            staff_id="nobody",
            first_day=MON,
            last_day=MON,
        )
    with pytest.raises(errors.NotFound, match="no service"):
        await scheduler.availability(
            business_id="clinic", service_id="nothing", first_day=MON, last_day=MON
        )
    with pytest.raises(errors.NotFound, match="no business"):
        await scheduler.availability(
            business_id="elsewhere", service_id="cleaning", first_day=MON, last_day=MON
        )


def test_the_catalogue_keeps_a_bounded_number_of_entries(clinic: Engine) -> None:
    scheduler = Scheduler(engine=clinic, clock=FixedClock(NOW))
    scheduler.catalog.size = 2
    with session_scope(clinic) as s:
        for key in range(5):
            scheduler.catalog.get(s, "clinic", key, lambda: object())
    assert len(scheduler.catalog) == 2


def test_the_models_still_map_the_watched_tables() -> None:
    # The triggers name these tables; a renamed model would leave its table unwatched.
    names = {m.__tablename__ for m in (Business, Service, Staff, CalendarConnection)}  # type: ignore[attr-defined]
    assert names == {"business", "service", "staff", "calendarconnection"}
