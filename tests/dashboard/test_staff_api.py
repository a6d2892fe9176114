"""Staff availability through the JSON API changes the very next slot search."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from booking.scheduler import Scheduler
from frontdesk.app import create_app
from frontdesk.settings import Settings

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
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
    r = await client.put("/api/v1/staff/lee/availability", headers=AUTH, json={
        "weekly_hours": {"mon": ["14:00-16:00"]},
        "time_off": [{"start": "2026-12-07T15:00", "end": "2026-12-07T16:00"}]})
    assert r.status_code == 200, r.text
    assert r.json()["weekly_hours"] == {"mon": ["14:00-16:00"]}
    assert await starts(client) == ["2026-12-07T14:00:00-05:00", "2026-12-07T14:30:00-05:00"]


async def test_bad_hours_are_refused_with_the_reason(client: httpx.AsyncClient) -> None:
    r = await client.put("/api/v1/staff/lee/availability", headers=AUTH,
                         json={"weekly_hours": {"mon": ["17:00-09:00"]}})
    assert r.status_code == 422 and "weekly_hours" in r.text
    r = await client.put("/api/v1/staff/nobody/availability", headers=AUTH, json={})
    assert r.status_code == 404
    assert (await starts(client))[0] == "2026-12-07T09:00:00-05:00"  # nothing changed


@pytest.mark.parametrize(("time_off", "reason"), [
    ({"rrule": "FREQ=MINUTELY"}, "time_off[0].rrule: FREQ=MINUTELY repeats more often than daily"),
    ({"rrule": "FREQ=SECONDLY"}, "time_off[0].rrule: FREQ=SECONDLY repeats more often than daily"),
    ({"rrule": "FREQ=HOURLY", "start": "2000-01-01T00:00", "end": "2000-01-01T00:05"},
     "time_off[0].rrule: FREQ=HOURLY repeats more often than daily"),
    ({"rrule": "FREQ=DAILY;BYHOUR=0,1,2,3"}, "time_off[0].rrule: BYHOUR=0,1,2,3 repeats more"),
    ({"rrule": "FREQ=DAILY;COUNT=50000"}, "time_off[0].rrule: COUNT=50000 is more than 10000"),
    ({"rrule": "FREQ=WEEKLY;UNTIL=99991231"}, "time_off[0].rrule: UNTIL 9999-12-31T00:00:00 is"),
    ({"start": "1900-01-01T00:00"}, "time_off[0].start: the date 1900-01-01T00:00:00 is outside"),
], ids=["minutely", "secondly", "hourly-2000", "byhour", "count", "until", "start"])
async def test_time_off_that_would_stall_every_search_is_refused(
    client: httpx.AsyncClient, time_off: dict[str, str], reason: str,
) -> None:
    entry = {"start": "2026-12-07T15:00", "end": "2026-12-07T16:00", **time_off}
    r = await client.put("/api/v1/staff/lee/availability", headers=AUTH,
                         json={"weekly_hours": {"mon": ["09:00-17:00"]}, "time_off": [entry]})
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith(reason), r.json()
    assert (await starts(client))[0] == "2026-12-07T09:00:00-05:00"  # nothing changed


async def test_a_daily_rule_is_accepted(client: httpx.AsyncClient) -> None:
    r = await client.put("/api/v1/staff/lee/availability", headers=AUTH, json={
        "weekly_hours": {"mon": ["09:00-11:00"]},
        "time_off": [{"start": "2026-12-01T09:00", "end": "2026-12-01T10:00",
                      "rrule": "FREQ=DAILY"}]})
    assert r.status_code == 200, r.text
    assert await starts(client) == ["2026-12-07T10:00:00-05:00", "2026-12-07T10:30:00-05:00"]
