"""The linking routes of `calendars.web`: who may link is decided before the form is judged, an
outage while linking stays a retryable 503 (a refused password a 422), and a posted form's
uploaded files are closed whatever the answer."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import httpx
import pytest
from fastapi import FastAPI

from booking import errors
from booking.db import session_scope
from calendars.base import Account, CalendarInfo, CalendarProvider, NeedsRelink
from calendars.models import CalendarConnection
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from tests.dashboard import conftest as dashboard
from tests.dashboard.conftest import API_KEY, csrf_of

# The dashboard's app, its accounts and clients, as fixtures of this module.
_answered_hosts = dashboard._answered_hosts
accounts = dashboard.accounts
app = dashboard.app
client_for = dashboard.client_for
staff = dashboard.staff
anonymous = dashboard.anonymous

PAGE = "/staff/lee/calendars"
CALDAV = "/calendars/connect/caldav"
JSON = {"Accept": "application/json"}
BEARER = {"Authorization": f"Bearer {API_KEY}", **JSON}
BIG = b"x" * (1024 * 1024 + 1)  # past Starlette's in-memory limit: a real temporary file


class Refusing:
    """A CalDAV provider whose server answers linking with `error`."""

    name = "caldav"
    writable = True

    def __init__(self, error: errors.CalendarUnavailable) -> None:
        self.error = error

    async def check(self, account: Account) -> None:
        raise self.error

    async def list_calendars(self, account: Account) -> list[CalendarInfo]:
        raise self.error


def _service(app: FastAPI, provider: object | None = None) -> CalendarService:
    providers = {} if provider is None else {"caldav": cast(CalendarProvider, provider)}
    service = CalendarService(
        engine=app.state.scheduler.engine, vault=Vault(new_key()), providers=providers
    )
    app.state.calendar_service = service
    return service


def _caldav(**extra: str) -> dict[str, str]:
    return {
        "staff": "lee",
        "url": "https://cal.example/dav/",
        "username": "lee",
        "password": "secret-pw",
        **extra,
    }


@contextmanager
def no_unclosed_files() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaked = [w for w in seen if issubclass(w.category, ResourceWarning)]
    assert not leaked, [str(w.message) for w in leaked]


# ---- who may link comes before the form ---------------------------------------------------


@pytest.mark.parametrize("fields", [{}, {"staff": "lee"}, {"return_to": "x" * 5000}])
async def test_a_visitor_who_is_not_signed_in_is_sent_to_log_in_whatever_the_form(
    app: FastAPI, anonymous: httpx.AsyncClient, fields: dict[str, str]
) -> None:
    service = _service(app)
    r = await anonymous.post(CALDAV, data=fields)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert await service.connections("clinic") == []


async def test_a_script_without_the_key_gets_a_401_not_a_form_error(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    _service(app)
    wrong = {"Authorization": "Bearer not-the-key", **JSON}
    r = await anonymous.post(CALDAV, data={"staff": "lee"}, headers=wrong)
    assert r.status_code == 401 and "API key" in r.json()["message"]
    asked_json = await anonymous.post(CALDAV, data={}, headers=JSON)
    assert asked_json.status_code == 401
    # With the key the same form is judged: a 422 naming what is missing.
    keyed = await anonymous.post(CALDAV + "?business=clinic", data={"staff": "lee"}, headers=BEARER)
    assert keyed.status_code == 422 and "url" in keyed.json()["message"]


async def test_unlinking_asks_who_you_are_before_reading_the_form(
    app: FastAPI, anonymous: httpx.AsyncClient, staff: httpx.AsyncClient
) -> None:
    service = _service(app)
    with session_scope(app.state.scheduler.engine, write=True) as s:
        conn = CalendarConnection(business_id="clinic", staff_id="lee", provider="ics", name="F")
        s.add(conn)
        s.flush()
        conn_id = conn.id
    url = f"/calendars/{conn_id}/disconnect"
    bad = {"return_to": "x" * 5000}
    r = await anonymous.post(url, data=bad)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    script = await anonymous.post(url, data=bad, headers={"X-API-Key": "wrong"})
    assert script.status_code == 401
    assert [c.id for c in await service.connections("clinic")] == [conn_id]
    # Signed in, the same form is judged (422), and nothing is unlinked.
    page = await staff.get(PAGE)
    judged = await staff.post(url, data={**bad, "csrf_token": csrf_of(page.text)})
    assert judged.status_code == 422 and "return_to" in judged.text
    assert [c.id for c in await service.connections("clinic")] == [conn_id]


# ---- a calendar that cannot be read while linking -----------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code", "retryable", "says"),
    [
        (
            errors.CalendarUnavailable("cal.example answered 503"),
            503,
            "calendar_unavailable",
            True,
            "try again later",
        ),
        (
            errors.CalendarUnavailable("cal.example timed out"),
            503,
            "calendar_unavailable",
            True,
            "try again later",
        ),
        (
            NeedsRelink("cal.example refused the password"),
            422,
            "invalid_request",
            False,
            "username or password",
        ),
        (
            errors.CalendarUnavailable("cal.example answered 404", retryable=False),
            422,
            "invalid_request",
            False,
            "could not read that calendar",
        ),
    ],
)
async def test_an_outage_while_linking_is_a_retryable_503_and_a_refusal_a_422(
    app: FastAPI,
    anonymous: httpx.AsyncClient,
    error: errors.CalendarUnavailable,
    status: int,
    code: str,
    retryable: bool,
    says: str,
) -> None:
    service = _service(app, Refusing(error))
    r = await anonymous.post(CALDAV + "?business=clinic", data=_caldav(), headers=BEARER)
    assert r.status_code == status
    body = r.json()
    assert (body["code"], body["retryable"]) == (code, retryable)
    assert says in body["message"] and "secret-pw" not in body["message"]
    assert await service.connections("clinic") == []


async def test_a_person_is_told_the_password_was_refused(
    app: FastAPI, staff: httpx.AsyncClient
) -> None:
    _service(app, Refusing(NeedsRelink("cal.example refused the password")))
    page = await staff.get(PAGE)
    r = await staff.post(CALDAV, data={**_caldav(), "csrf_token": csrf_of(page.text)})
    assert r.status_code == 422
    assert "not linked" in r.text and "username or password" in r.text
    assert "secret-pw" not in r.text


# ---- uploaded files are closed --------------------------------------------------------------


async def test_a_linking_form_with_an_uploaded_file_is_refused_and_the_file_closed(
    app: FastAPI, staff: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    service = _service(app)
    page = await staff.get(PAGE)
    fields = {**_caldav(), "csrf_token": csrf_of(page.text)}
    del fields["url"]
    with no_unclosed_files():
        r = await staff.post(CALDAV, data=fields, files={"url": ("u.txt", BIG)})
    assert r.status_code == 422 and "url" in r.text
    keyed = {k: v for k, v in fields.items() if k != "csrf_token"}
    with no_unclosed_files():
        refused = await anonymous.post(
            CALDAV, data=keyed, files={"url": ("u.txt", BIG)}, headers={"X-API-Key": "wrong"}
        )
    assert refused.status_code == 401
    assert await service.connections("clinic") == []


async def test_an_upload_to_the_callback_is_closed_too(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    _service(app)
    with no_unclosed_files():
        r = await anonymous.post(
            "/calendars/callback/microsoft",
            data={"state": "made-up"},
            files={"code": ("c.txt", BIG)},
            headers=JSON,
        )
    assert r.status_code in (404, 422, 503)  # never a 500, and the file is closed


# ---- a provider this server is not set up for ---------------------------------------------


async def test_google_without_an_oauth_app_is_a_503_naming_the_setting(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    _service(app)  # no OAuth clients configured
    r = await anonymous.get("/calendars/connect/google?business=clinic&staff=lee", headers=BEARER)
    assert r.status_code == 503
    body = r.json()
    assert (body["code"], body["retryable"]) == ("not_configured", False)
    assert "FRONTDESK_GOOGLE_CLIENT_ID" in body["message"]


class RefusingFeed(Refusing):
    name = "ics"
    writable = False


@pytest.mark.parametrize(
    ("error", "status", "retryable"),
    [
        (errors.CalendarUnavailable("x is not a valid iCalendar", retryable=False), 422, False),
        (errors.CalendarUnavailable("feed did not answer within 5 s"), 503, True),
    ],
)
async def test_a_feed_that_is_no_calendar_is_a_422_and_one_that_is_down_a_503(
    app: FastAPI,
    anonymous: httpx.AsyncClient,
    error: errors.CalendarUnavailable,
    status: int,
    retryable: bool,
) -> None:
    service = CalendarService(
        engine=app.state.scheduler.engine,
        vault=Vault(new_key()),
        providers={"ics": cast(CalendarProvider, RefusingFeed(error))},
    )
    app.state.calendar_service = service
    r = await anonymous.post(
        "/calendars/connect/ics?business=clinic",
        data={"staff": "lee", "source": "https://feeds.example/cal.ics"},
        headers=BEARER,
    )
    assert r.status_code == status, r.text
    assert r.json()["retryable"] is retryable
    assert await service.connections("clinic") == []
