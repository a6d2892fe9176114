"""Staff availability through the JSON API changes the very next slot search."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from booking.business_file import import_business, load_business_file
from booking.clock import FixedClock
from booking.db import session_scope
from booking.models import Staff
from booking.recurrence import _compile
from booking.scheduler import Scheduler
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.conftest import NOW

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
DEMO = Path(__file__).resolve().parents[2] / "frontdesk" / "demo" / "demo-business.yaml"
DAY = {"service": "checkup", "staff": "lee", "from": "2026-12-07", "to": "2026-12-07"}


@pytest.fixture
async def client(scheduler: Scheduler) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(api_key=SecretStr(KEY)), scheduler=scheduler)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def starts(client: httpx.AsyncClient) -> list[str]:
    r = await client.get("/api/v1/availability", headers=AUTH, params=DAY)
    assert r.status_code == 200, r.text
    return [s["start"] for s in r.json()["slots"]]


async def test_new_hours_apply_to_the_next_search(client: httpx.AsyncClient) -> None:
    listed = await client.get("/api/v1/staff", headers=AUTH)
    assert [s["id"] for s in listed.json()] == ["lee", "rivera"]
    assert (await starts(client))[0] == "2026-12-07T09:00:00-05:00"
    r = await client.put(
        "/api/v1/staff/lee/availability",
        headers=AUTH,
        json={
            "weekly_hours": {"mon": ["14:00-16:00"]},
            "time_off": [{"start": "2026-12-07T15:00", "end": "2026-12-07T16:00"}],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["weekly_hours"] == {"mon": ["14:00-16:00"]}
    assert await starts(client) == ["2026-12-07T14:00:00-05:00", "2026-12-07T14:30:00-05:00"]


async def test_bad_hours_are_refused_with_the_reason(client: httpx.AsyncClient) -> None:
    r = await client.put(
        "/api/v1/staff/lee/availability",
        headers=AUTH,
        json={"weekly_hours": {"mon": ["17:00-09:00"]}},
    )
    assert r.status_code == 422 and "weekly_hours" in r.text
    r = await client.put("/api/v1/staff/nobody/availability", headers=AUTH, json={})
    assert r.status_code == 404
    assert (await starts(client))[0] == "2026-12-07T09:00:00-05:00"  # nothing changed


@pytest.mark.parametrize(
    ("time_off", "reason"),
    [
        (
            {"rrule": "FREQ=MINUTELY"},
            "time_off[0].rrule: FREQ=MINUTELY repeats more often than daily",
        ),
        (
            {"rrule": "FREQ=SECONDLY"},
            "time_off[0].rrule: FREQ=SECONDLY repeats more often than daily",
        ),
        (
            {"rrule": "FREQ=HOURLY", "start": "2000-01-01T00:00", "end": "2000-01-01T00:05"},
            "time_off[0].rrule: FREQ=HOURLY repeats more often than daily",
        ),
        ({"rrule": "FREQ=DAILY;BYHOUR=0,1,2,3"}, "time_off[0].rrule: BYHOUR=0,1,2,3 repeats more"),
        ({"rrule": "FREQ=DAILY;COUNT=50000"}, "time_off[0].rrule: COUNT=50000 is more than 10000"),
        (
            {"rrule": "FREQ=WEEKLY;UNTIL=99991231"},
            "time_off[0].rrule: UNTIL 9999-12-31T00:00:00 is",
        ),
        (
            {"start": "1900-01-01T00:00"},
            "time_off[0].start: the date 1900-01-01T00:00:00 is outside",
        ),
    ],
    ids=["minutely", "secondly", "hourly-2000", "byhour", "count", "until", "start"],
)
async def test_time_off_that_would_stall_every_search_is_refused(
    client: httpx.AsyncClient,
    time_off: dict[str, str],
    reason: str,
) -> None:
    entry = {"start": "2026-12-07T15:00", "end": "2026-12-07T16:00", **time_off}
    r = await client.put(
        "/api/v1/staff/lee/availability",
        headers=AUTH,
        json={"weekly_hours": {"mon": ["09:00-17:00"]}, "time_off": [entry]},
    )
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith(reason), r.json()
    assert (await starts(client))[0] == "2026-12-07T09:00:00-05:00"  # nothing changed


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01", "1969-12-31", "2200-01-01"])
async def test_an_override_outside_the_calendars_years_is_refused(
    client: httpx.AsyncClient,
    day: str,
) -> None:
    r = await client.put(
        "/api/v1/staff/lee/availability",
        headers=AUTH,
        json={"weekly_hours": {"mon": ["09:00-17:00"]}, "overrides": [{"date": day, "hours": []}]},
    )
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith("overrides[0].date: date "), r.json()
    assert "outside the years 1970-2199" in r.json()["message"]


async def test_a_daily_rule_is_accepted(client: httpx.AsyncClient) -> None:
    r = await client.put(
        "/api/v1/staff/lee/availability",
        headers=AUTH,
        json={
            "weekly_hours": {"mon": ["09:00-11:00"]},
            "time_off": [
                {"start": "2026-12-01T09:00", "end": "2026-12-01T10:00", "rrule": "FREQ=DAILY"}
            ],
        },
    )
    assert r.status_code == 200, r.text
    assert await starts(client) == ["2026-12-07T10:00:00-05:00", "2026-12-07T10:30:00-05:00"]


# The costliest rule time off accepts: its COUNT is never reached, so it runs to the year 2199.
WORST = {
    "start": "1970-01-05T12:00",
    "end": "1970-01-05T13:00",
    "rrule": "FREQ=YEARLY;BYDAY=53MO,53TU,53WE,53TH,53FR,53SA,53SU;COUNT=10000",
}


async def save_and_search(client: httpx.AsyncClient, time_off: list[dict[str, str]]) -> float:
    _compile.cache_clear()
    t0 = time.perf_counter()
    r = await client.put(
        "/api/v1/staff/lee/availability",
        headers=AUTH,
        json={"weekly_hours": {"mon": ["09:00-11:00"]}, "time_off": time_off},
    )
    assert r.status_code == 200, r.text
    _compile.cache_clear()  # the search compiles it again, as another process would
    assert (await starts(client))[0] == "2026-12-07T09:00:00-05:00"
    return time.perf_counter() - t0


async def test_a_count_rule_is_saved_and_searched_quickly(client: httpx.AsyncClient) -> None:
    plain = min([await save_and_search(client, []) for _ in range(3)])
    worst = min([await save_and_search(client, [WORST]) for _ in range(3)])
    # Was 1.1 s more: the COUNT walked every day to 2199, once to validate, once to search.
    assert worst - plain < 0.1, f"{worst - plain:.3f} s"


async def test_more_than_100_time_off_entries_are_refused(client: httpx.AsyncClient) -> None:
    many = [
        {**WORST, "start": f"{1970 + i}-01-05T12:00", "end": f"{1970 + i}-01-05T13:00"}
        for i in range(101)
    ]
    t0 = time.perf_counter()
    r = await client.put(
        "/api/v1/staff/lee/availability",
        headers=AUTH,
        json={"weekly_hours": {"mon": ["09:00-11:00"]}, "time_off": many},
    )
    assert r.status_code == 422, r.text
    assert r.json()["message"] == "time_off: at most 100 time off entries, not 101"
    assert time.perf_counter() - t0 < 0.5  # refused before any rule is compiled
    assert (await starts(client))[0] == "2026-12-07T09:00:00-05:00"  # nothing changed
    r = await client.put(
        "/api/v1/staff/lee/availability",
        headers=AUTH,
        json={"weekly_hours": {"mon": ["09:00-11:00"]}, "time_off": many[:100]},
    )
    assert r.status_code == 200, r.text


async def test_staff_with_a_calendar_file_can_change_their_hours(engine: Engine) -> None:
    # The demo business links lee and patel to .ics files next to its file; the stored
    # (absolute) source used to be re-checked without that folder and refused: 422.
    import_business(engine, load_business_file(DEMO))
    scheduler = Scheduler(engine=engine, clock=FixedClock(NOW))
    app = create_app(Settings(api_key=SecretStr(KEY)), scheduler=scheduler)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as c:
        for staff_id in ("lee", "patel"):
            r = await c.put(
                f"/api/v1/staff/{staff_id}/availability",
                headers=AUTH,
                json={"weekly_hours": {"tue": ["10:00-12:00"]}},
            )
            assert r.status_code == 200, r.text
            assert r.json()["weekly_hours"] == {"tue": ["10:00-12:00"]}
    with session_scope(engine) as s:
        lee = s.get(Staff, ("bright-smile", "lee"))
        assert lee is not None and lee.calendars == [
            {"provider": "ics", "source": str(DEMO.parent.resolve() / "calendars" / "lee.ics")}
        ]
