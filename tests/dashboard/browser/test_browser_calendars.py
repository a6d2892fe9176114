"""Which calendars count, in a real browser: link a CalDAV account (a real Radicale with a Work
and a Family calendar) on the staff member's Calendars page, then choose what is read and
where bookings go with the page's checkboxes and radio buttons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from caldav.davclient import DAVClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from booking.clock import FixedClock
from booking.scheduler import Scheduler
from calendars.caldav import CaldavProvider
from calendars.models import CalendarConnection
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.calendars.radicale_server import PASSWORD, USERNAME, start_radicale
from tests.conftest import NOW, seed_clinic
from tests.dashboard.browser.conftest import log_in
from tests.dashboard.conftest import API_KEY
from tests.dashboard.conftest import PASSWORD as LOGIN_PASSWORD
from tests.fakes.loopback import LoopbackServer


@pytest.fixture
def live_calendars(sqlite_engine: Engine, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The clinic served on a loopback port, its calendar service linking to a real Radicale."""
    from dashboard.users import add_user

    radicale = start_radicale(tmp_path / "radicale")
    try:
        with DAVClient(
            url=radicale.principal_url,
            username=USERNAME,
            password=PASSWORD,
            enable_rfc6764=False,
        ) as client:
            principal = client.principal()  # type: ignore[no-untyped-call]
            principal.make_calendar(name="Work", cal_id="work")
            principal.make_calendar(name="Family", cal_id="family")
        seed_clinic(sqlite_engine)
        add_user(
            sqlite_engine,
            business_id="clinic",
            email="lee@clinic.test",
            password=LOGIN_PASSWORD,
            role="staff",
            staff_id="lee",
            now=NOW,
        )
        service = CalendarService(
            engine=sqlite_engine,
            vault=Vault(new_key()),
            providers={"caldav": CaldavProvider(timeout=10)},
            now=lambda: NOW,
        )
        scheduler = Scheduler(engine=sqlite_engine, clock=FixedClock(NOW), calendars=service)
        settings = Settings(
            api_key=SecretStr(API_KEY), allow_private_urls=True, calendar_sync_seconds=0
        )
        app = create_app(settings, scheduler=scheduler)
        app.state.calendar_service = service  # the loopback server runs without the lifespan
        server = LoopbackServer(app, name="dashboard")
        server.start()
        try:
            yield {
                "url": f"http://127.0.0.1:{server.port}",
                "engine": sqlite_engine,
                "radicale": radicale,
            }
        finally:
            server.stop()
    finally:
        radicale.stop()


def stored(engine: Engine) -> CalendarConnection:
    with Session(engine) as s:
        [conn] = s.exec(select(CalendarConnection).where(CalendarConnection.staff_id == "lee"))
        return conn


def test_staff_link_caldav_and_choose_what_is_read_and_written(
    live_calendars: dict[str, Any], page: Any
) -> None:
    url, radicale = live_calendars["url"], live_calendars["radicale"]
    log_in(page, url, "lee@clinic.test")
    page.goto(f"{url}/staff/lee/calendars")
    page.get_by_label("Server URL").fill(radicale.principal_url)
    page.get_by_label("User name").fill(USERNAME)
    page.get_by_label("Password (an app-specific password for iCloud)").fill(PASSWORD)
    page.get_by_role("button", name="Connect CalDAV").click()
    choice = page.locator(".calendar-choice")
    choice.wait_for()
    assert "which calendars count" in choice.locator("h2").inner_text()

    # Read Work only, write bookings to Family.
    page.get_by_label("Read Work").check()
    page.get_by_label("Read Family").uncheck()
    page.get_by_label("Write bookings to Family").check()
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(f"{url}/staff/lee/calendars")
    assert choice.locator("p.choice-summary").inner_text() == "Reads: Work · Writes: Family"
    assert page.get_by_label("Read Work").is_checked()
    assert not page.get_by_label("Read Family").is_checked()
    assert page.get_by_label("Write bookings to Family").is_checked()
    conn = stored(live_calendars["engine"])
    work, family = f"{radicale.principal_url}work/", f"{radicale.principal_url}family/"
    assert (conn.read_calendars, conn.write_calendar) == ([work], family)

    # Nothing ticked is refused with the reason, and nothing changes.
    page.get_by_label("Read Work").uncheck()
    page.get_by_role("button", name="Save").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "at least one calendar" in alert.inner_text()
    conn = stored(live_calendars["engine"])
    assert (conn.read_calendars, conn.write_calendar) == ([work], family)
