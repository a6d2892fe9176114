"""Fixtures for the web dashboard: two businesses, their accounts, logged-in clients."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from booking.db import session_scope
from booking.models import Business, Service, Staff
from booking.scheduler import Scheduler
from dashboard.users import add_user
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.conftest import NOW

PASSWORD = "correct horse battery"
API_KEY = "test-key-123"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


TEST_HOSTS = "test, localhost, 127.0.0.1"


@pytest.fixture(autouse=True)
def _answered_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The apps these tests build answer the test clients' Host (`base_url="http://test"`);
    any other host is refused as in production (tests/dashboard/test_web_security.py)."""
    monkeypatch.setenv("FRONTDESK_ALLOWED_HOSTS", TEST_HOSTS)


def seed_salon(engine: Engine) -> None:
    """A second business, to prove one business never sees another's data."""
    with session_scope(engine, write=True) as s:
        s.add(
            Business(
                id="salon", name="Salon", timezone="Europe/London", phone_numbers=["+442071234567"]
            )
        )
        s.flush()
        s.add(
            Service(
                business_id="salon",
                id="cut",
                name="Haircut",
                duration_minutes=30,
                staff_ids=["kim"],
            )
        )
        s.add(
            Staff(business_id="salon", id="kim", name="Kim", weekly_hours={"mon": ["10:00-18:00"]})
        )


@pytest.fixture
def accounts(scheduler: Scheduler) -> dict[str, str]:
    """email -> role: the clinic's owner and staff (Lee), and the salon's owner."""
    seed_salon(scheduler.engine)
    people = {
        "owner@clinic.test": ("clinic", "owner", None),
        "lee@clinic.test": ("clinic", "staff", "lee"),
        "owner@salon.test": ("salon", "owner", None),
    }
    for email, (business, role, staff) in people.items():
        add_user(
            scheduler.engine,
            business_id=business,
            email=email,
            password=PASSWORD,
            role=role,
            staff_id=staff,
            now=NOW,
        )
    return {email: role for email, (_, role, _) in people.items()}


@pytest.fixture
def app(scheduler: Scheduler, accounts: dict[str, str]) -> FastAPI:
    # The tests' receivers and calendar servers run on loopback.
    settings = Settings(api_key=SecretStr(API_KEY), allow_private_urls=True)
    return create_app(settings, scheduler=scheduler)


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def log_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    page = await client.get("/login")
    return await client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": csrf_of(page.text), "next": "/"},
    )


@pytest.fixture
def client_for(
    app: FastAPI,
) -> Callable[[str | None], AbstractAsyncContextManager[httpx.AsyncClient]]:
    """`async with client_for("owner@clinic.test") as c:` a client logged in as that account."""

    @asynccontextmanager
    async def make(email: str | None) -> AsyncIterator[httpx.AsyncClient]:
        async with _client(app) as c:
            if email:
                r = await log_in(c, email)
                assert r.status_code == 303, r.text
            yield c

    return make


@pytest.fixture
async def owner(client_for) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with client_for("owner@clinic.test") as c:
        yield c


@pytest.fixture
async def staff(client_for) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with client_for("lee@clinic.test") as c:
        yield c


@pytest.fixture
async def anonymous(client_for) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with client_for(None) as c:
        yield c


async def post_form(
    client: httpx.AsyncClient,
    page_url: str,
    action: str,
    data: dict[str, str] | list[tuple[str, str]],
) -> httpx.Response:
    """Submit a form the way a browser does: read the page's CSRF token, post with it."""
    page = await client.get(page_url)
    assert page.status_code == 200, page.text
    items = list(data.items()) if isinstance(data, dict) else list(data)
    fields: dict[str, list[str]] = {"csrf_token": [csrf_of(page.text)]}
    for key, value in items:
        fields.setdefault(key, []).append(value)
    return await client.post(action, data=fields)


@pytest.fixture
async def leads(scheduler: Scheduler, accounts: dict[str, str]) -> dict[str, str]:
    """Clinic leads over three days (one with a call and a booking) and one salon lead."""
    from datetime import timedelta

    from booking.models import Call

    apt = await scheduler.book(
        business_id="clinic",
        service_id="cleaning",
        staff_id="lee",
        start=NOW + timedelta(days=7, hours=2),
        name="Ann Smith",
        phone="+12025550001",
        booked_by="agent",
    )
    call = Call(
        business_id="clinic",
        call_sid="CA1",
        from_number="+12025550001",
        to_number="+12025550100",
        status="completed",
        outcome="booked",
        started_at=NOW - timedelta(days=2),
        summary="Ann booked a cleaning.",
        transcript=[
            {"role": "agent", "text": "Bright Smile, how can I help?"},
            {"role": "caller", "text": "I'd like a cleaning next Monday."},
        ],
    )
    with session_scope(scheduler.engine, write=True) as s:
        s.add(call)
    made = {
        "ann": await scheduler.record_lead(
            business_id="clinic",
            phone="+12025550001",
            name="Ann Smith",
            reason="Cleaning",
            outcome="booked",
            appointment_id=apt.id,
            call_id=call.id,
            now=NOW - timedelta(days=2),
        ),
        "bob": await scheduler.record_lead(
            business_id="clinic",
            phone="+12025550002",
            name="Bob Jones",
            reason='=HYPERLINK("http://evil")',
            outcome="callback",
            now=NOW - timedelta(days=1),
        ),
        "spam": await scheduler.record_lead(
            business_id="clinic",
            phone="+12125550000",
            name=None,
            reason="Robocall",
            outcome="spam",
            now=NOW - timedelta(hours=1),
        ),
        "salon": await scheduler.record_lead(
            business_id="salon",
            phone="+447911123456",
            name="Sally Salon",
            reason="Cut",
            outcome="callback",
            now=NOW - timedelta(hours=2),
        ),
    }
    return {key: row.id for key, row in made.items()} | {"appointment": apt.id}
