"""Take the README's screenshots of the dashboard: `.venv/bin/python scripts/screenshots.py`.

Builds a throwaway SQLite database with the demo clinic (examples/demo-business.yaml), a week of
calls, leads and bookings at a fixed date, serves the app on a loopback port, and photographs the
main pages with Debian's headless Chromium into docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from booking.business_file import import_business, load_business_file  # noqa: E402
from booking.calls import CallLog  # noqa: E402
from booking.clock import FixedClock  # noqa: E402
from booking.db import session_scope  # noqa: E402
from booking.models import Call  # noqa: E402
from booking.scheduler import Scheduler  # noqa: E402
from calendars.secrets import new_key  # noqa: E402
from dashboard.users import add_user  # noqa: E402
from dashboard.web.leads import change_status  # noqa: E402
from frontdesk.app import build_scheduler, calendar_service, create_app  # noqa: E402
from frontdesk.settings import Settings  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
NOW = datetime(2026, 12, 2, 15, 30, tzinfo=UTC)  # a Wednesday morning in New York
PASSWORD = "demo password 1"
CHROMIUM = "/usr/bin/chromium"

CALLERS = [
    ("Ann Smith", "+12025550001", "booked", "Cleaning next Monday", "cleaning", "lee", 7, 14),
    ("Marco Diaz", "+12025550002", "callback", "Asked about Invisalign pricing", None, None, 0, 0),
    ("Priya Natarajan", "+12025550003", "booked", "Checkup for her son", "checkup", "patel", 7, 15),
    (None, "+12125550000", "spam", "Recorded sales pitch", None, None, 0, 0),
    (
        "Leo Park",
        "+12025550005",
        "message",
        "Running late to his 3pm; asked to pass it on",
        None,
        None,
        0,
        0,
    ),
    ("Grace Liu", "+12025550006", "not_interested", "Wanted weekend hours only", None, None, 0, 0),
    (
        "Tom Becker",
        "+12025550007",
        "booked",
        "Cleaning, prefers mornings",
        "cleaning",
        "sam",
        8,
        13,
    ),
]


async def seed(scheduler: Scheduler) -> str:
    """Calls with transcripts, leads and bookings; returns the first lead's id."""
    calls = CallLog.over(scheduler.engine, scheduler.clock)
    first = ""
    for i, (name, phone, outcome, reason, service, staff, day, hour) in enumerate(CALLERS):
        at = NOW - timedelta(hours=5 * (len(CALLERS) - i))
        appointment = None
        if service and staff:
            start = datetime(2026, 12, day, hour, 0, tzinfo=UTC)
            appointment = await scheduler.book(
                business_id="bright-smile",
                service_id=service,
                staff_id=staff,
                start=start,
                name=name or "Caller",
                phone=phone,
                booked_by="agent",
                now=at,
            )
        call = await calls.start_call(
            business_id="bright-smile",
            call_sid=f"CA{i:032d}",
            from_number=phone,
            to_number="+12025550100",
        )
        transcript = [
            {
                "role": "agent",
                "text": "Thanks for calling Bright Smile Dental! I'm the virtual "
                "receptionist. How can I help?",
            },
            {"role": "caller", "text": f"Hi, this is {name or 'someone'}. {reason}."},
            {"role": "agent", "text": "Of course. Let me check what we have."},
        ]
        if appointment:
            transcript.append(
                {"role": "agent", "text": "You're booked. You'll get a text with the details."}
            )
        with session_scope(scheduler.engine, write=True) as s:
            row = s.get(Call, call.id)
            assert row is not None
            row.transcript, row.summary, row.outcome = transcript, reason, outcome
            row.status, row.started_at, row.duration_seconds = "completed", at, 95 + 20 * i
        lead = await scheduler.record_lead(
            business_id="bright-smile",
            phone=phone,
            name=name,
            reason=reason,
            outcome=outcome,
            appointment_id=appointment.id if appointment else None,
            call_id=call.id,
            now=at,
        )
        first = first or lead.id
        if outcome == "callback":
            with session_scope(scheduler.engine, write=True) as s:
                change_status(
                    s,
                    business_id="bright-smile",
                    lead_id=lead.id,
                    status="contacted",
                    note="Left a voicemail with the price list",
                    actor="owner@bright-smile.test",
                    user_id=None,
                    at=NOW,
                )
    return first


class Server:
    def __init__(self, app: object) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{tmp}/demo.db",
            api_key=SecretStr("screenshots"),
            secret_key=SecretStr(new_key()),
            calendar_sync_seconds=0,
            _env_file=None,
        )  # type: ignore[call-arg]
        scheduler = build_scheduler(settings, clock=FixedClock(NOW))
        import_business(
            scheduler.engine, load_business_file(ROOT / "examples" / "demo-business.yaml")
        )
        add_user(
            scheduler.engine,
            business_id="bright-smile",
            email="owner@bright-smile.test",
            password=PASSWORD,
            role="owner",
            now=NOW,
        )
        lead_id = asyncio.run(seed(scheduler))
        app = create_app(settings, scheduler=scheduler)
        app.state.calendar_service = calendar_service(scheduler)  # set by the lifespan when served
        with Server(app) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"{url}/login")
            page.screenshot(path=OUT / "login.png")
            page.get_by_label("Email").fill("owner@bright-smile.test")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url("**/leads")
            shots = {
                "leads.png": "/leads",
                "lead.png": f"/leads/{lead_id}",
                "appointments-week.png": "/appointments?staff=lee&day=2026-12-07",
                "staff-hours.png": "/staff/lee?week=2026-12-07&service=checkup",
                "settings.png": "/settings",
                "calendars.png": "/staff/lee/calendars",
                "integrations.png": "/integrations",
                "tryit.png": "/try",
                "privacy.png": "/privacy",
            }
            for name, path in shots.items():
                page.goto(url + path)
                page.screenshot(path=OUT / name, full_page=True)
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{url}/leads")
            phone.screenshot(path=OUT / "leads-phone.png", full_page=True)
            browser.close()
        scheduler.engine.dispose()
    for shot in sorted(OUT.glob("*.png")):
        print(shot.relative_to(ROOT))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
