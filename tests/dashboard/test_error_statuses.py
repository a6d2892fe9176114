"""One table from domain errors to HTTP statuses, used by the JSON API, the dashboard's pages and
calendar linking alike; linking and dashboard forms are read into models (a bad field is a 422
naming it, never a 500)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from booking import errors
from booking.db import make_engine, migrate
from booking.scheduler import Scheduler
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from dashboard.http_errors import STATUS, status_for
from frontdesk.cli_errors import report
from tests.dashboard.conftest import API_KEY, csrf_of, post_form

PAGE = "/staff/lee/calendars"
LINK = "/calendars/connect/ics?business=clinic"
BEARER = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}


def _service(app: FastAPI, key: str | None) -> CalendarService:
    service = CalendarService(engine=app.state.scheduler.engine, vault=Vault(key), providers={})
    app.state.calendar_service = service
    return service


def test_every_domain_error_has_one_status() -> None:
    assert status_for(errors.InvalidRequest("x")) == 422
    assert status_for(errors.NotFound("x")) == 404
    assert status_for(errors.SlotTaken("x")) == 409
    assert status_for(errors.CalendarUnavailable("x", retryable=False)) == 503
    assert status_for(errors.SecretKeyMissing("x")) == 503
    assert not errors.SecretKeyMissing("x").retryable
    kinds = [kind for kind, _ in STATUS]
    assert len(kinds) == len(set(kinds))


async def test_a_linking_form_missing_a_field_is_a_422_naming_it(
    app: FastAPI, staff: httpx.AsyncClient
) -> None:
    service = _service(app, new_key())
    r = await post_form(
        staff, PAGE, "/calendars/connect/caldav", {"staff": "lee", "username": "u", "password": "p"}
    )
    assert r.status_code == 422 and "url" in r.text and "not linked" in r.text
    twice = await post_form(
        staff,
        PAGE,
        "/calendars/connect/ics",
        [("staff", "lee"), ("source", "https://a.example/x.ics"), ("source", "https://b.example")],
    )
    assert twice.status_code == 422 and "source" in twice.text
    assert await service.connections("clinic") == []


async def test_a_script_gets_the_same_status_as_json(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    _service(app, new_key())
    r = await anonymous.post(LINK, data={"staff": "lee", "source": "/etc/passwd"}, headers=BEARER)
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request" and "https://" in r.json()["message"]
    missing = await anonymous.post(LINK, data={"staff": "lee"}, headers=BEARER)
    assert missing.status_code == 422 and "source" in missing.json()["message"]
    nobody = await anonymous.post(
        LINK,
        data={"staff": "nobody", "source": "https://cal.example/x.ics"},
        headers=BEARER,
    )
    assert nobody.status_code == 404 and nobody.json()["code"] == "not_found"


@pytest.mark.parametrize(("key", "status"), [(None, 503), ("set", 404)])
async def test_the_feed_answers_from_the_same_table(
    app: FastAPI, anonymous: httpx.AsyncClient, key: str | None, status: int
) -> None:
    _service(app, new_key() if key else None)
    r = await anonymous.get("/calendars/feed/clinic/lee/not-the-token.ics")
    assert r.status_code == status
    assert r.json()["error"] == ("not_found" if key else "secret_key_missing")


async def test_a_csrf_token_sent_as_a_file_is_no_token(owner: httpx.AsyncClient) -> None:
    page = await owner.get("/settings")
    r = await owner.post(
        "/settings/services",
        data={"id": "x", "name": "X", "duration_minutes": "30"},
        files={"csrf_token": ("t.txt", csrf_of(page.text).encode())},
    )
    assert r.status_code == 403


async def test_the_new_service_form_refuses_a_field_sent_twice(owner: httpx.AsyncClient) -> None:
    r = await post_form(
        owner,
        "/settings",
        "/settings/services",
        [
            ("id", "polish"),
            ("name", "Polish"),
            ("duration_minutes", "30"),
            ("duration_minutes", "45"),
            ("staff", "lee"),
        ],
    )
    assert r.status_code == 422 and "New service: the duration_minutes" in r.text
    again = await post_form(
        owner,
        "/settings",
        "/settings/services",
        [("id", "polish"), ("name", "Polish"), ("duration_minutes", "half"), ("staff", "lee")],
    )
    assert again.status_code == 422 and "whole numbers of minutes" in again.text
    saved = await post_form(
        owner,
        "/settings",
        "/settings/services",
        [("id", "polish"), ("name", "Polish"), ("duration_minutes", "30"), ("staff", "lee")],
    )
    assert saved.status_code == 303


BIG = b"x" * (1024 * 1024 + 1)  # past Starlette's in-memory limit: a real temporary file


@contextmanager
def no_unclosed_files() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaked = [w for w in seen if issubclass(w.category, ResourceWarning)]
    assert not leaked, [str(w.message) for w in leaked]


async def test_files_uploaded_to_the_settings_forms_are_closed(owner: httpx.AsyncClient) -> None:
    page = await owner.get("/settings")
    token = csrf_of(page.text)
    with no_unclosed_files():
        added = await owner.post(
            "/settings/services",
            data={"csrf_token": token, "id": "x", "name": "X", "duration_minutes": "30"},
            files={"description": ("d.txt", BIG)},
        )
    assert added.status_code in (303, 422)
    with no_unclosed_files():
        saved = await owner.post(
            "/settings", data={"csrf_token": token}, files={"name": ("n.txt", BIG)}
        )
    assert saved.status_code in (303, 422)


async def test_which_business_is_asked_in_plain_words_not_cli_flags(
    app: FastAPI, anonymous: httpx.AsyncClient, tmp_path: Path
) -> None:
    _service(app, new_key())
    r = await anonymous.post(
        "/calendars/connect/ics",
        data={"staff": "lee", "source": "https://cal.example/x.ics"},
        headers=BEARER,
    )
    assert r.status_code == 400 and r.json()["error"] == "business_required"
    assert r.json()["message"] == "there are several businesses: say which one"
    # The command line, an edge, names its own flag.
    said = report(errors.AmbiguousBusiness(r.json()["message"]))
    assert said == (1, "error: there are several businesses: say which one (--business ID)")
    empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    migrate(empty)
    with pytest.raises(errors.NotFound) as none:
        await Scheduler(engine=empty).resolve_business(None)
    empty.dispose()
    assert none.value.message == "no business is set up yet; import a business file first"
