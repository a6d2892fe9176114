"""The JSON API: auth, availability, holds, bookings, leads, and clear errors."""

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


@pytest.fixture
async def client(scheduler: Scheduler) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(api_key=SecretStr(KEY)), scheduler=scheduler)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        yield c


async def test_requests_without_the_key_are_refused(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/leads")
    assert r.status_code == 401 and "API key" in r.json()["message"]
    r = await client.get("/api/v1/leads", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await client.get("/api/v1/leads", headers={"X-API-Key": KEY})
    assert r.status_code == 200


async def test_availability_lists_slots_with_offsets(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/api/v1/availability",
        headers=AUTH,
        params={"service": "cleaning", "staff": "lee", "from": "2026-12-07", "to": "2026-12-07"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timezone"] == "America/New_York"
    assert body["slots"][0] == {
        "start": "2026-12-07T09:00:00-05:00",
        "end": "2026-12-07T09:45:00-05:00",
        "staff": "lee",
    }
    r = await client.get(
        "/api/v1/availability",
        headers=AUTH,
        params={
            "service": "cleaning",
            "from": "2026-12-07",
            "to": "2026-12-09",
            "limit": 3,
            "earliest": "13:00",
        },
    )
    slots = r.json()["slots"]
    assert len(slots) == 3 and all(s["start"][11:16] >= "13:00" for s in slots)


async def test_hold_then_book_then_cancel(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/holds",
        headers=AUTH,
        json={
            "service": "cleaning",
            "staff": "lee",
            "start": "2026-12-07T09:00:00-05:00",
            "holder": "call-1",
        },
    )
    assert r.status_code == 201, r.text
    hold = r.json()
    r = await client.post(
        "/api/v1/appointments",
        headers=AUTH,
        json={
            "service": "cleaning",
            "staff": "lee",
            "start": "2026-12-07T09:00:00-05:00",
            "name": "Bob",
            "phone": "+12025552222",
        },
    )
    assert r.status_code == 409 and r.json()["error"] == "slot_taken"
    r = await client.post(
        "/api/v1/appointments",
        headers=AUTH,
        json={"hold_id": hold["id"], "name": "Ann", "phone": "+1 (202) 555-3333"},
    )
    assert r.status_code == 201, r.text
    appt = r.json()
    assert appt["start"] == "2026-12-07T09:00:00-05:00" and appt["status"] == "confirmed"
    r = await client.post(
        f"/api/v1/appointments/{appt['id']}/reschedule",
        headers=AUTH,
        json={"start": "2026-12-07T14:00:00-05:00"},
    )
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["rescheduled_from"] == appt["id"]
    r = await client.post(f"/api/v1/appointments/{moved['id']}/cancel", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await client.post(f"/api/v1/appointments/{moved['id']}/cancel", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"] == "appointment_not_active"
    r = await client.get("/api/v1/appointments", headers=AUTH, params={"include_inactive": True})
    assert {a["status"] for a in r.json()} == {"rescheduled", "cancelled"}


async def test_bad_input_gets_a_clear_reason(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/api/v1/availability",
        headers=AUTH,
        params={"service": "cleaning", "from": "2026-12-07", "to": "soon"},
    )
    assert r.status_code == 422 and "to" in r.json()["message"]
    r = await client.get(
        "/api/v1/availability",
        headers=AUTH,
        params={"service": "surgery", "from": "2026-12-07", "to": "2026-12-07"},
    )
    assert r.status_code == 404 and "surgery" in r.json()["message"]
    r = await client.post(
        "/api/v1/appointments",
        headers=AUTH,
        json={
            "service": "cleaning",
            "staff": "lee",
            "start": "2026-12-07T09:05:00-05:00",
            "name": "Bob",
            "phone": "+12025552222",
        },
    )
    assert r.status_code == 409 and r.json()["error"] == "outside_hours"
    r = await client.post(
        "/api/v1/appointments",
        headers=AUTH,
        json={
            "service": "cleaning",
            "staff": "lee",
            "start": "2026-12-07T09:00:00-05:00",
            "name": "Bob",
            "phone": "call me",
        },
    )
    assert r.status_code == 422 and "phone number" in r.json()["message"]
    r = await client.get("/api/v1/appointments/apt_nope", headers=AUTH)
    assert r.status_code == 404


async def test_leads_can_be_logged_and_listed(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/leads",
        headers=AUTH,
        json={
            "phone": "+12025552222",
            "name": "Cara",
            "reason": "whitening price",
            "outcome": "callback",
        },
    )
    assert r.status_code == 201, r.text
    r = await client.get("/api/v1/leads", headers=AUTH, params={"outcome": "callback"})
    assert [lead["name"] for lead in r.json()] == ["Cara"]
    r = await client.post("/api/v1/leads", headers=AUTH, json={"outcome": "maybe"})
    assert r.status_code == 422


async def test_appointments_say_whether_they_reached_the_staff_calendar(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        "/api/v1/appointments",
        headers=AUTH,
        json={
            "service": "checkup",
            "staff": "lee",
            "start": "2026-12-07T09:00:00-05:00",
            "name": "Ann Smith",
            "phone": "+12025550001",
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["calendar_sync"] == "no_calendar"  # Lee has no linked calendar to write to


async def test_appointment_windows_take_dates_and_local_times(client: httpx.AsyncClient) -> None:
    # Regression: a plain date (the form /availability takes) was a 500 (a naive datetime).
    r = await client.post(
        "/api/v1/appointments",
        headers=AUTH,
        json={
            "service": "cleaning",
            "staff": "lee",
            "start": "2026-12-10T16:00:00-05:00",
            "name": "Ann",
            "phone": "+12025550123",
        },
    )
    assert r.status_code == 201, r.text
    booked = r.json()["id"]

    async def listed(**params: str) -> list[str]:
        r = await client.get("/api/v1/appointments", headers=AUTH, params=params)
        assert r.status_code == 200, r.text
        return [a["id"] for a in r.json()]

    # `to` is inclusive of its day, in the business's zone (16:00 New York is 21:00 UTC).
    assert await listed(**{"from": "2026-12-01", "to": "2026-12-10"}) == [booked]
    assert await listed(**{"from": "2026-12-01", "to": "2026-12-09"}) == []
    assert await listed(**{"from": "2026-12-11"}) == []
    # A naive time is local: the appointment ends 16:45 New York.
    assert await listed(**{"from": "2026-12-10T16:44"}) == [booked]
    assert await listed(**{"from": "2026-12-10T16:45"}) == []
    assert await listed(**{"to": "2026-12-10T16:00:01"}) == [booked]
    assert await listed(**{"to": "2026-12-10T16:00"}) == []
    # An offset is honoured as given.
    assert await listed(**{"from": "2026-12-10T21:44:00Z"}) == [booked]
    assert await listed(**{"from": "2026-12-10T21:45:00+00:00"}) == []


@pytest.mark.parametrize(
    "value",
    [
        "soon",
        "1700000000",
        "2026-02-30",
        "2026-12-01T25:00",
        "9999-12-31",
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00+05:00",
        "",
    ],
)
async def test_appointment_windows_refuse_anything_else(
    client: httpx.AsyncClient, value: str
) -> None:
    for name in ("from", "to"):
        r = await client.get("/api/v1/appointments", headers=AUTH, params={name: value})
        assert r.status_code == 422, (name, value, r.text)
        assert r.json()["problems"][0]["field"] == name


EDGE = "9999-12-31T23:59:59Z"


async def test_dates_at_the_edge_of_the_calendar_are_a_422(client: httpx.AsyncClient) -> None:
    # Regression: each of these was an OverflowError 500.
    r = await client.post(
        "/api/v1/holds",
        headers=AUTH,
        json={"service": "cleaning", "staff": "lee", "start": EDGE, "holder": "call-1"},
    )
    assert r.status_code == 422 and "2199" in r.json()["message"], r.text
    r = await client.post(
        "/api/v1/appointments",
        headers=AUTH,
        json={
            "service": "cleaning",
            "staff": "lee",
            "start": EDGE,
            "name": "Ann",
            "phone": "+12025550123",
        },
    )
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "start", r.text
    r = await client.post(
        "/api/v1/appointments",
        headers=AUTH,
        json={
            "service": "cleaning",
            "staff": "lee",
            "start": "2026-12-07T09:00:00-05:00",
            "name": "Ann",
            "phone": "+12025550123",
        },
    )
    assert r.status_code == 201, r.text
    apt = r.json()["id"]
    for start in (EDGE, "0001-01-01T00:00:00+14:00", "2200-01-01T00:00:00Z"):
        r = await client.post(
            f"/api/v1/appointments/{apt}/reschedule", headers=AUTH, json={"start": start}
        )
        assert r.status_code == 422, (start, r.text)
    window = {"service": "cleaning", "from": "2026-12-07", "to": "2026-12-07"}
    for extra in ({"now": EDGE}, {"to": "9999-12-31"}, {"from": "0001-01-01"}):
        r = await client.get("/api/v1/availability", headers=AUTH, params=window | extra)
        assert r.status_code == 422, (extra, r.text)
    # The years are those of the instant in UTC (2200-01-01T13:59:59Z here).
    r = await client.get(
        "/api/v1/availability", headers=AUTH, params=window | {"now": "2199-12-31T23:59:59-14:00"}
    )
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "now", r.text
    r = await client.get(
        "/api/v1/availability", headers=AUTH, params=window | {"now": "2199-12-31T09:59:59-14:00"}
    )
    assert r.status_code == 200 and r.json()["slots"] == [], r.text


async def test_stored_times_must_carry_an_offset(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/holds",
        headers=AUTH,
        json={"service": "cleaning", "staff": "lee", "start": "2026-12-07T09:00", "holder": "c"},
    )
    assert r.status_code == 422 and "timezone" in r.json()["message"], r.text
    r = await client.get(
        "/api/v1/availability",
        headers=AUTH,
        params={
            "service": "cleaning",
            "from": "2026-12-07",
            "to": "2026-12-07",
            "now": "2026-12-01T09:00",
        },
    )
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "now", r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "reason"),
        ({"outcome": "callback"}, "reason"),
        ({"name": "Cara", "reason": "   "}, "reason"),
        ({"reason": "whitening price"}, ""),
        ({"reason": "whitening price", "name": " ", "phone": ""}, ""),
    ],
)
async def test_a_lead_needs_a_reason_and_someone_to_call_back(
    client: httpx.AsyncClient, body: dict[str, str], field: str
) -> None:
    # Regression: `{}` made an "Unknown caller" lead with nothing to act on.
    r = await client.post("/api/v1/leads", headers=AUTH, json=body)
    assert r.status_code == 422, r.text
    problem = r.json()["problems"][0]
    assert problem["field"] == field
    if not field:
        assert r.json()["message"] == "a lead needs the caller's name or phone number (or both)"
    r = await client.get("/api/v1/leads", headers=AUTH)
    assert r.json() == []


async def test_a_lead_with_a_name_or_a_phone_is_logged(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/leads", headers=AUTH, json={"name": " Cara ", "reason": " whitening price "}
    )
    assert r.status_code == 201, r.text
    assert (r.json()["name"], r.json()["phone"], r.json()["reason"]) == (
        "Cara",
        None,
        "whitening price",
    )
    r = await client.post(
        "/api/v1/leads", headers=AUTH, json={"phone": "+12025550123", "reason": "call back"}
    )
    assert r.status_code == 201 and r.json()["phone"] == "+12025550123", r.text
