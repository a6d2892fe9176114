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
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_requests_without_the_key_are_refused(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/leads")
    assert r.status_code == 401 and "API key" in r.json()["message"]
    r = await client.get("/api/v1/leads", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await client.get("/api/v1/leads", headers={"X-API-Key": KEY})
    assert r.status_code == 200


async def test_availability_lists_slots_with_offsets(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/availability", headers=AUTH, params={
        "service": "cleaning", "staff": "lee", "from": "2026-12-07", "to": "2026-12-07"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timezone"] == "America/New_York"
    assert body["slots"][0] == {"start": "2026-12-07T09:00:00-05:00",
                                "end": "2026-12-07T09:45:00-05:00", "staff": "lee"}
    r = await client.get("/api/v1/availability", headers=AUTH, params={
        "service": "cleaning", "from": "2026-12-07", "to": "2026-12-09", "limit": 3,
        "earliest": "13:00"})
    slots = r.json()["slots"]
    assert len(slots) == 3 and all(s["start"][11:16] >= "13:00" for s in slots)


async def test_hold_then_book_then_cancel(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/holds", headers=AUTH, json={
        "service": "cleaning", "staff": "lee", "start": "2026-12-07T09:00:00-05:00",
        "holder": "call-1"})
    assert r.status_code == 201, r.text
    hold = r.json()
    r = await client.post("/api/v1/appointments", headers=AUTH, json={
        "service": "cleaning", "staff": "lee", "start": "2026-12-07T09:00:00-05:00",
        "name": "Bob", "phone": "+12025552222"})
    assert r.status_code == 409 and r.json()["error"] == "slot_taken"
    r = await client.post("/api/v1/appointments", headers=AUTH, json={
        "hold_id": hold["id"], "name": "Ann", "phone": "+1 (202) 555-3333"})
    assert r.status_code == 201, r.text
    appt = r.json()
    assert appt["start"] == "2026-12-07T09:00:00-05:00" and appt["status"] == "confirmed"
    r = await client.post(f"/api/v1/appointments/{appt['id']}/reschedule", headers=AUTH,
                          json={"start": "2026-12-07T14:00:00-05:00"})
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["rescheduled_from"] == appt["id"]
    r = await client.post(f"/api/v1/appointments/{moved['id']}/cancel", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await client.post(f"/api/v1/appointments/{moved['id']}/cancel", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"] == "appointment_not_active"
    r = await client.get("/api/v1/appointments", headers=AUTH,
                         params={"include_inactive": True})
    assert {a["status"] for a in r.json()} == {"rescheduled", "cancelled"}


async def test_bad_input_gets_a_clear_reason(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/availability", headers=AUTH,
                         params={"service": "cleaning", "from": "2026-12-07", "to": "soon"})
    assert r.status_code == 422 and "to" in r.json()["message"]
    r = await client.get("/api/v1/availability", headers=AUTH,
                         params={"service": "surgery", "from": "2026-12-07", "to": "2026-12-07"})
    assert r.status_code == 404 and "surgery" in r.json()["message"]
    r = await client.post("/api/v1/appointments", headers=AUTH, json={
        "service": "cleaning", "staff": "lee", "start": "2026-12-07T09:05:00-05:00",
        "name": "Bob", "phone": "+12025552222"})
    assert r.status_code == 409 and r.json()["error"] == "outside_hours"
    r = await client.post("/api/v1/appointments", headers=AUTH, json={
        "service": "cleaning", "staff": "lee", "start": "2026-12-07T09:00:00-05:00",
        "name": "Bob", "phone": "call me"})
    assert r.status_code == 422 and "E.164" in r.json()["message"]
    r = await client.get("/api/v1/appointments/apt_nope", headers=AUTH)
    assert r.status_code == 404


async def test_leads_can_be_logged_and_listed(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/leads", headers=AUTH, json={
        "phone": "+12025552222", "name": "Cara", "reason": "whitening price",
        "outcome": "callback"})
    assert r.status_code == 201, r.text
    r = await client.get("/api/v1/leads", headers=AUTH, params={"outcome": "callback"})
    assert [lead["name"] for lead in r.json()] == ["Cara"]
    r = await client.post("/api/v1/leads", headers=AUTH, json={"outcome": "maybe"})
    assert r.status_code == 422


async def test_appointments_say_whether_they_reached_the_staff_calendar(
        client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/appointments", headers=AUTH, json={
        "service": "checkup", "staff": "lee", "start": "2026-12-07T09:00:00-05:00",
        "name": "Ann Smith", "phone": "+12025550001"})
    assert r.status_code == 201, r.text
    assert r.json()["calendar_sync"] == "no_calendar"  # Lee has no linked calendar to write to
