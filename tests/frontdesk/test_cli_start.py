"""The command line starts fast: parsing and help load no web, LLM, Twilio or calendar SDK, and
a search for staff without linked calendars never builds the calendar service."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from booking.business_file import import_business, load_business_file
from dashboard.models import Role
from frontdesk import cli
from frontdesk.settings import Settings
from frontdesk.wiring import LazyCalendars, build_scheduler

HEAVY = (
    "fastapi",
    "openai",
    "googleapiclient",
    "twilio",
    "caldav",
    "msal",
    "uvicorn",
    "frontdesk.app",
    "sqlalchemy",
)
ROOT = Path(__file__).resolve().parents[2]


def loaded_after(code: str) -> list[str]:
    probe = (
        f"import sys\n{code}\nimport json\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_cli_loads_no_heavy_module() -> None:
    assert loaded_after("import frontdesk.cli") == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["availability", "--help"],
        ["calendars", "link", "--help"],
        ["users", "add", "--help"],
    ],
)
def test_help_loads_no_heavy_module(argv: list[str]) -> None:
    code = (
        "from frontdesk.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
    )
    assert loaded_after(code) == []


def test_the_role_choices_are_the_dashboards_roles() -> None:
    assert set(cli.ROLES) == {role.value for role in Role}


async def test_a_search_without_linked_calendars_builds_no_calendar_service(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'start.db'}")
    scheduler = build_scheduler(settings)
    import_business(scheduler.engine, load_business_file(cli.DEMO_BUSINESS))
    assert isinstance(scheduler.calendars, LazyCalendars)
    await scheduler.availability(
        business_id=None,
        service_id="cleaning",
        staff_id="sam",
        first_day=date(2026, 12, 7),
        last_day=date(2026, 12, 7),
    )
    assert not scheduler.calendars.built
    await scheduler.availability(
        business_id=None,
        service_id="cleaning",
        staff_id="lee",
        first_day=date(2026, 12, 7),
        last_day=date(2026, 12, 7),
    )
    assert scheduler.calendars.built  # Dr. Lee's ICS file is read through the service
    await scheduler.calendars.close()
    scheduler.engine.dispose()


def test_the_web_app_and_the_cli_build_the_scheduler_from_one_copy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """frontdesk.app has no scheduler builder of its own: it is wiring's, and the served app's
    calendar service is the one behind wiring's lazy calendars, built when the app starts."""
    from fastapi.testclient import TestClient

    from calendars.service import CalendarService
    from frontdesk import app as web_app
    from frontdesk import wiring

    assert web_app.build_scheduler is wiring.build_scheduler
    assert web_app.calendar_service is wiring.calendar_service
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'web.db'}", calendar_sync_seconds=0)
    app = web_app.create_app(settings)
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        scheduler = app.state.scheduler
        assert isinstance(scheduler.calendars, LazyCalendars)
        assert isinstance(app.state.calendar_service, CalendarService)
        assert app.state.calendar_service is scheduler.calendars.service
