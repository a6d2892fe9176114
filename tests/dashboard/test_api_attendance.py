"""POST /api/v1/appointments/{id}/attendance, and the appointment JSON's attendance and text
confirmation fields."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr

from booking.db import session_scope
from booking.models import Appointment
from booking.scheduler import Scheduler
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.conftest import NOW
from tests.dashboard.conftest import API_KEY, seed_salon
from tests.dashboard.test_web_attendance import PAST, book

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def client(scheduler: Scheduler) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(api_key=SecretStr(API_KEY)), scheduler=scheduler)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        yield c


async def test_marking_a_no_show_unmarking_and_marking_attended(
    client: httpx.AsyncClient, scheduler: Scheduler
) -> None:
    apt = await book(scheduler, PAST)
    url = f"/api/v1/appointments/{apt}/attendance"
    r = await client.get(f"/api/v1/appointments/{apt}", headers=AUTH)
    body = r.json()
    assert body["attendance"] is None and body["attendance_at"] is None
    assert body["caller_confirmed_at"] is None
    r = await client.post(url, headers=AUTH, json={"attendance": "no_show"})
    assert r.status_code == 200, r.text
    assert r.json()["attendance"] == "no_show"
    assert r.json()["attendance_at"] == "2026-11-30T12:00:00Z"
    r = await client.get(f"/api/v1/appointments/{apt}", headers=AUTH)
    assert r.json()["attendance"] == "no_show"
    assert await scheduler.no_shows(business_id="clinic", contact_ids=[r.json()["contact_id"]])
    r = await client.post(url, headers=AUTH, json={"attendance": None})
    assert r.status_code == 200 and r.json()["attendance"] is None
    assert r.json()["attendance_at"] is None
    r = await client.post(
        url, headers=AUTH, json={"attendance": "attended"}, params={"business": "clinic"}
    )
    assert r.status_code == 200 and r.json()["attendance"] == "attended"


async def test_the_appointment_json_says_when_the_caller_confirmed_by_text(
    client: httpx.AsyncClient, scheduler: Scheduler
) -> None:
    apt = await book(scheduler, NOW + timedelta(days=7, hours=2))
    with session_scope(scheduler.engine, write=True) as s:
        row = s.get(Appointment, apt)
        assert row is not None
        row.caller_confirmed_at = NOW
        s.add(row)
    r = await client.get("/api/v1/appointments", headers=AUTH, params={"business": "clinic"})
    [listed] = [a for a in r.json() if a["id"] == apt]
    assert listed["caller_confirmed_at"] == "2026-11-30T12:00:00Z"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"attendance": "maybe"},
        {"attendance": "NO_SHOW"},
        {"attendance": 1},
        {"attendance": ["no_show"]},
        {"attendance": "no_show", "by": "me"},
        [],
        "no_show",
    ],
)
async def test_a_body_that_is_no_attendance_is_a_422(
    client: httpx.AsyncClient, scheduler: Scheduler, body: object
) -> None:
    apt = await book(scheduler, PAST)
    r = await client.post(f"/api/v1/appointments/{apt}/attendance", headers=AUTH, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"


async def test_refusals_are_4xx_with_a_reason(
    client: httpx.AsyncClient, scheduler: Scheduler
) -> None:
    seed_salon(scheduler.engine)
    ahead = await book(scheduler, NOW + timedelta(days=7, hours=2))
    url = f"/api/v1/appointments/{ahead}/attendance"
    r = await client.post(url, json={"attendance": "no_show"})
    assert r.status_code == 401
    r = await client.post(url, headers={"Authorization": "Bearer nope"}, json={"attendance": None})
    assert r.status_code == 401
    r = await client.post(
        url, headers=AUTH, json={"attendance": "no_show"}, params={"business": "clinic"}
    )
    assert r.status_code == 422 and "once it has started" in r.json()["message"]
    r = await client.post(
        url, headers=AUTH, params={"business": "salon"}, json={"attendance": None}
    )
    assert r.status_code == 404
    r = await client.post(url, headers=AUTH, json={"attendance": None})
    assert r.status_code == 400  # two businesses now: which one?
    r = await client.post(
        "/api/v1/appointments/apt_nope/attendance",
        headers=AUTH,
        params={"business": "clinic"},
        json={"attendance": None},
    )
    assert r.status_code == 404
    await scheduler.cancel(business_id="clinic", appointment_id=ahead)
    r = await client.post(
        url, headers=AUTH, params={"business": "clinic"}, json={"attendance": None}
    )
    assert r.status_code == 409 and r.json()["error"] == "appointment_not_active"
    r = await client.post(
        url,
        headers=AUTH | {"Content-Type": "application/json"},
        params={"business": "clinic"},
        content=b"{",
    )
    assert r.status_code == 422
