"""One business never sees another's data: guessed ids in URLs are simply not found."""

from __future__ import annotations

import httpx
import pytest

from booking.scheduler import Scheduler
from tests.dashboard.conftest import post_form


@pytest.fixture
async def salon(client_for):  # type: ignore[no-untyped-def]
    async with client_for("owner@salon.test") as c:
        yield c


async def test_another_business_ids_are_not_found(
    salon: httpx.AsyncClient,
    leads: dict[str, str],
    scheduler: Scheduler,
) -> None:
    clinic_lead, apt = leads["ann"], leads["appointment"]
    for url in (
        f"/leads/{clinic_lead}",
        f"/appointments/{apt}",
        "/staff/lee",
        "/staff/lee/calendars",
        "/appointments?staff=lee",
    ):
        r = await salon.get(url)
        assert r.status_code == 404, url
        assert "Ann Smith" not in r.text and "Dr. Lee" not in r.text
    r = await post_form(salon, "/leads", f"/leads/{clinic_lead}/status", {"status": "lost"})
    assert r.status_code == 404
    r = await post_form(salon, "/leads", f"/appointments/{apt}/cancel", {})
    assert r.status_code == 404
    r = await post_form(salon, "/leads", f"/appointments/{apt}/move", {"start": "2026-12-07T14:00"})
    assert r.status_code == 404
    r = await post_form(salon, "/leads", "/staff/lee/hours", {"hours_mon": "09:00-10:00"})
    assert r.status_code == 404
    row = await scheduler.get_appointment(business_id="clinic", appointment_id=apt)
    assert row.status == "confirmed"
    [lead] = [x for x in await scheduler.leads(business_id="clinic") if x.id == clinic_lead]
    assert lead.status == "new"


async def test_lists_and_exports_hold_only_the_own_business(
    salon: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    r = await salon.get("/leads")
    assert leads["salon"] in r.text and leads["ann"] not in r.text and leads["bob"] not in r.text
    r = await salon.get("/leads.csv")
    assert leads["salon"] in r.text and leads["ann"] not in r.text
    r = await salon.get("/staff")
    assert "Kim" in r.text and "Dr. Lee" not in r.text
    r = await salon.get("/appointments")
    assert "Kim" in r.text and "Dr. Lee" not in r.text
    r = await salon.get("/settings")
    assert "Salon" in r.text and "Teeth cleaning" not in r.text
