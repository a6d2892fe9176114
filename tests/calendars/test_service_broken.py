"""One broken calendar affects only its own staff member.

Lee's CalDAV account stops accepting the stored password and his busy cache is gone; Rivera's
calendar (an ICS file) is fine. Slot search for the business goes on with Rivera (his calendar
still counted), Lee offers no times and the log says why; a search for Lee alone answers 503
saying his calendar needs re-linking. Lee's server is not asked again on every search.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import col

from booking.clock import FixedClock
from booking.db import session_scope
from booking.scheduler import Scheduler
from calendars.base import NeedsRelink
from calendars.ics import IcsProvider
from calendars.models import CalendarBusyBlock, CalendarConnection
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.calendars import caldav_harness
from tests.calendars.caldav_harness import FaultProxy
from tests.calendars.harness import Harness
from tests.conftest import NOW

CHICAGO = ZoneInfo("America/Chicago")
MONDAY = date(2026, 12, 7)  # Rivera works 08:00-12:00 Chicago time; Lee 09:00-17:00 New York
KEY = "broken-calendar-key"
RIVERA_ICS = b"""BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//Frontdesk tests//EN\r
BEGIN:VEVENT\r
UID:rivera-dentist\r
DTSTAMP:20261101T000000Z\r
DTSTART:20261207T150000Z\r
DTEND:20261207T160000Z\r
SUMMARY:Own dentist\r
END:VEVENT\r
END:VCALENDAR\r
"""


@dataclass
class Clinic:
    harness: Harness
    service: CalendarService
    scheduler: Scheduler
    lee: CalendarConnection

    async def starts(self, staff_id: str | None = None) -> list[tuple[str, str]]:
        found = await self.scheduler.availability(
            business_id="clinic",
            service_id="cleaning",
            staff_id=staff_id,
            first_day=MONDAY,
            last_day=MONDAY,
        )
        return [(s.staff_id, s.start.astimezone(CHICAGO).strftime("%H:%M")) for s in found.slots]


@pytest.fixture
async def clinic_calendars(clinic: Engine, tmp_path: Path) -> AsyncIterator[Clinic]:
    async with caldav_harness.harness() as h:
        vault = Vault(new_key())
        service = CalendarService(
            engine=clinic,
            vault=vault,
            now=lambda: NOW,
            providers={"caldav": h.provider, "ics": IcsProvider()},
        )
        lee = await service.link_caldav(
            business_id="clinic",
            staff_id="lee",
            url=h.account.settings["url"],
            username=h.account.settings["username"],
            password=h.account.secret["password"],
        )
        feed = tmp_path / "rivera.ics"
        feed.write_bytes(RIVERA_ICS)
        await service.link_ics(
            business_id="clinic", staff_id="rivera", source=str(feed), allow_files=True
        )
        scheduler = Scheduler(engine=clinic, calendars=service, clock=FixedClock(NOW))
        # Lee changed his password on the server, and his busy cache is gone (a provider's
        # "read everything again"): nothing is known of his calendar.
        with session_scope(clinic, write=True) as s:
            row = s.get(CalendarConnection, lee.id)
            assert row is not None
            row.secret = vault.seal({"password": "the-old-one"})
            row.sync = {}
            s.add(row)
            s.execute(
                sa.delete(CalendarBusyBlock).where(col(CalendarBusyBlock.connection_id) == lee.id)
            )
        yield Clinic(h, service, scheduler, lee)
        await service.close()


async def test_the_business_is_searched_without_the_staff_member_whose_calendar_broke(
    clinic_calendars: Clinic, caplog: pytest.LogCaptureFixture
) -> None:
    c = clinic_calendars
    with caplog.at_level(logging.WARNING):
        starts = await c.starts()
    assert starts, "Rivera is offered as usual"
    assert {staff for staff, _ in starts} == {"rivera"}
    # Rivera's own calendar still counts: 09:00-10:00 Chicago is his dentist.
    assert ("rivera", "08:00") in starts and ("rivera", "10:00") in starts
    assert not any(hhmm.startswith("09") for _, hhmm in starts)
    [conn] = await c.service.connections("clinic", "lee")
    assert conn.status == "needs_relink"
    assert any("staff lee offers no times" in r.getMessage() for r in caplog.records)

    # A search for Lee alone says why there is nothing, and his server is not asked again
    # (a refused password, tried on every search, can lock the account).
    proxy: FaultProxy = c.harness.extra["proxy"]
    asked = len(proxy.requests)
    with pytest.raises(NeedsRelink, match="lee needs re-linking"):
        await c.starts("lee")
    assert {staff for staff, _ in await c.starts()} == {"rivera"}
    assert len(proxy.requests) == asked


async def test_the_api_answers_with_the_others_and_503_only_for_the_broken_one(
    clinic_calendars: Clinic,
) -> None:
    app = create_app(
        Settings(api_key=SecretStr(KEY), _env_file=None),
        scheduler=clinic_calendars.scheduler,
    )
    params = {"service": "cleaning", "from": MONDAY.isoformat(), "to": MONDAY.isoformat()}
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        everyone = await client.get("/api/v1/availability", headers=auth, params=params)
        lee = await client.get(
            "/api/v1/availability", headers=auth, params={**params, "staff": "lee"}
        )
    assert everyone.status_code == 200, everyone.text
    slots = everyone.json()["slots"]
    assert slots and {s["staff"] for s in slots} == {"rivera"}
    assert datetime.fromisoformat(slots[0]["start"]).astimezone(UTC).hour == 14  # 08:00 CT
    assert lee.status_code == 503
    assert "needs re-linking" in lee.text and "the-old-one" not in lee.text
    # Asking again cannot help until someone re-links: the answer says so.
    assert lee.json()["retryable"] is False
