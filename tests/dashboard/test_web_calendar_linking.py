"""Linking a CalDAV calendar from the dashboard's calendars page, as staff and owners do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from tests.calendars import caldav_harness
from tests.calendars.harness import Harness
from tests.conftest import NOW
from tests.dashboard.conftest import csrf_of, post_form

PAGE = "/staff/lee/calendars"
ClientFor = Callable[[str | None], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
async def radicale(app: FastAPI) -> AsyncIterator[tuple[Harness, CalendarService]]:
    async with caldav_harness.harness() as h:
        service = CalendarService(
            engine=app.state.scheduler.engine,
            vault=Vault(new_key()),
            providers={"caldav": h.provider},
            now=lambda: NOW,
        )
        app.state.calendar_service = service
        yield h, service


def form(h: Harness, password: str | None = None) -> dict[str, str]:
    return {
        "staff": "lee",
        "url": h.account.settings["url"],
        "username": h.account.settings["username"],
        "password": password or h.account.secret["password"],
    }


async def test_staff_link_and_unlink_their_own_caldav_calendar(
    staff: httpx.AsyncClient, radicale: tuple[Harness, CalendarService]
) -> None:
    h, service = radicale
    wrong = await post_form(staff, PAGE, "/calendars/connect/caldav", form(h, "nope"))
    # A request that cannot work as given is a 422 here as in the JSON API (it was a 400).
    assert wrong.status_code == 422 and "not linked" in wrong.text and "nope" not in wrong.text
    linked = await post_form(staff, PAGE, "/calendars/connect/caldav", form(h))
    assert linked.status_code == 303 and linked.headers["location"] == PAGE
    [conn] = await service.connections("clinic", "lee")
    assert conn.status == "ok"
    page = await staff.get(PAGE)
    assert conn.name in page.text and "Disconnect" in page.text
    gone = await post_form(staff, PAGE, f"/calendars/{conn.id}/disconnect", {})
    assert gone.status_code == 303
    assert await service.connections("clinic", "lee") == []


async def test_linking_needs_csrf_and_the_right_person(
    staff: httpx.AsyncClient,
    client_for: ClientFor,
    radicale: tuple[Harness, CalendarService],
) -> None:
    h, service = radicale
    no_token = await staff.post("/calendars/connect/caldav", data=form(h))
    assert no_token.status_code == 403
    # Lee may not link Rivera's calendar.
    page = await staff.get(PAGE)
    other = await staff.post(
        "/calendars/connect/caldav",
        data={**form(h), "staff": "rivera", "csrf_token": csrf_of(page.text)},
    )
    assert other.status_code == 403
    # Another business's owner cannot reach the clinic's staff at all.
    async with client_for("owner@salon.test") as salon:
        home = await salon.get("/staff/kim/calendars")
        foreign = await salon.post(
            "/calendars/connect/caldav", data={**form(h), "csrf_token": csrf_of(home.text)}
        )
    assert foreign.status_code == 404
    assert await service.connections("clinic") == []


async def test_an_ics_feed_from_the_web_must_be_an_address_and_errors_quote_nothing(
    staff: httpx.AsyncClient, radicale: tuple[Harness, CalendarService], tmp_path: Path
) -> None:
    from calendars.ics import IcsProvider

    _, service = radicale
    service.providers = {**service.providers, "ics": IcsProvider()}
    secret = tmp_path / "secret.env"
    secret.write_text("FRONTDESK_SECRET_KEY=abc123supersecret\n")
    local = await post_form(
        staff, PAGE, "/calendars/connect/ics", {"staff": "lee", "source": str(secret)}
    )
    assert local.status_code == 422 and "abc123" not in local.text
    assert "https://" in local.text
    assert await service.connections("clinic", "lee") == []


async def test_sync_now_reads_the_calendar_again_and_says_what_changed(
    staff: httpx.AsyncClient, radicale: tuple[Harness, CalendarService]
) -> None:
    from datetime import timedelta

    from booking.busy import StaffCalendars
    from tests.calendars.test_service import NY

    h, service = radicale
    assert (await post_form(staff, PAGE, "/calendars/connect/caldav", form(h))).status_code == 303
    [conn] = await service.connections("clinic", "lee")
    page = await staff.get(PAGE)
    assert "Sync now" in page.text and "<script" not in page.text.split("<main", 1)[-1]

    start = NOW + timedelta(days=1)
    await h.add_event(start, start + timedelta(hours=1), summary="School run")
    lee = StaffCalendars(
        business_id="clinic", staff_id="lee", tz=NY, links=[{"connection_id": conn.id}]
    )
    assert await service.busy(lee, start=NOW, end=NOW + timedelta(days=2)) == []  # cached

    synced = await post_form(staff, PAGE, "/staff/lee/calendars/sync", {})
    assert synced.status_code == 200
    assert f"{conn.name}: 1 busy interval added" in synced.text
    assert await service.busy(lee, start=NOW, end=NOW + timedelta(days=2)) == [
        (start, start + timedelta(hours=1))
    ]

    again = await post_form(staff, PAGE, "/staff/lee/calendars/sync", {"connection": conn.id})
    assert again.status_code == 200 and f"{conn.name}: unchanged" in again.text


async def test_sync_now_needs_csrf_and_the_right_person(
    staff: httpx.AsyncClient, radicale: tuple[Harness, CalendarService]
) -> None:
    h, service = radicale
    assert (await post_form(staff, PAGE, "/calendars/connect/caldav", form(h))).status_code == 303
    assert (await staff.post("/staff/lee/calendars/sync")).status_code == 403
    # Lee may not sync Rivera's calendars, nor a connection that is not there.
    assert (await post_form(staff, PAGE, "/staff/rivera/calendars/sync", {})).status_code == 404
    gone = await post_form(staff, PAGE, "/staff/lee/calendars/sync", {"connection": "cal_x"})
    assert gone.status_code == 404 and "no such linked calendar" in gone.text


@pytest.mark.parametrize(
    "fields",
    [
        [("connection", "a"), ("connection", "b")],
        [("connection", "x" * 201)],
        [("everything", "yes")],
    ],
)
async def test_sync_now_refuses_a_form_it_does_not_know(
    staff: httpx.AsyncClient,
    radicale: tuple[Harness, CalendarService],
    fields: list[tuple[str, str]],
) -> None:
    r = await post_form(staff, PAGE, "/staff/lee/calendars/sync", fields)
    assert r.status_code == 422 and "no calendar this page knows" in r.text


async def linked_with_family(
    staff: httpx.AsyncClient, h: Harness, service: CalendarService
) -> tuple[str, str, str]:
    """Link Lee's Radicale account, which has a Work and a Family calendar: (connection id,
    Work's id, Family's id)."""
    import asyncio

    from caldav.davclient import DAVClient

    def make_family() -> None:
        with DAVClient(
            url=h.account.settings["url"],
            username=h.account.settings["username"],
            password=h.account.secret["password"],
            enable_rfc6764=False,
        ) as client:
            principal = client.principal()  # type: ignore[no-untyped-call]
            principal.make_calendar(name="Family", cal_id="family")

    await asyncio.to_thread(make_family)
    assert (await post_form(staff, PAGE, "/calendars/connect/caldav", form(h))).status_code == 303
    [conn] = await service.connections("clinic", "lee")
    ids = {c.name: c.id for c in await service.list_calendars(conn.id)}
    return conn.id, ids["Work"], ids["Family"]


async def test_staff_choose_which_calendars_are_read_and_written(
    staff: httpx.AsyncClient, radicale: tuple[Harness, CalendarService]
) -> None:
    import re

    h, service = radicale
    conn_id, work, family = await linked_with_family(staff, h, service)
    page = await staff.get(PAGE)
    section = page.text.split(f'id="choose-{conn_id}"', 1)[1].split("</section>", 1)[0]
    assert f'action="/staff/lee/calendars/{conn_id}/choose"' in section
    assert re.search(rf'name="read" value="{re.escape(family)}"', section)
    assert re.search(rf'name="write" value="{re.escape(work)}"', section)
    assert "Reads: " in section and "Writes: " in section

    choose = f"/staff/lee/calendars/{conn_id}/choose"
    saved = await post_form(
        staff, PAGE, choose, [("read", work), ("read", family), ("write", family)]
    )
    assert saved.status_code == 303 and saved.headers["location"] == PAGE
    [conn] = await service.connections("clinic", "lee")
    assert (conn.read_calendars, conn.write_calendar) == ([work, family], family)
    page = await staff.get(PAGE)
    assert "Reads: Work, Family · Writes: Family" in page.text
    section = page.text.split(f'id="choose-{conn_id}"', 1)[1].split("</section>", 1)[0]
    assert re.search(rf'value="{re.escape(work)}" aria-label="Read Work" checked', section)
    assert re.search(
        rf'value="{re.escape(family)}" aria-label="Write bookings to Family" checked', section
    )
    assert not re.search(
        rf'value="{re.escape(work)}" aria-label="Write bookings to Work" checked', section
    )

    # Reading only Family and writing nowhere: Work's busy time stops counting.
    from datetime import timedelta

    from booking.busy import StaffCalendars
    from tests.calendars.test_service import NY

    start = NOW + timedelta(days=1)
    await h.add_event(start, start + timedelta(hours=1), summary="School run")  # in Work
    saved = await post_form(staff, PAGE, choose, [("read", family), ("write", "")])
    assert saved.status_code == 303
    [conn] = await service.connections("clinic", "lee")
    assert (conn.read_calendars, conn.write_calendar) == ([family], None)
    assert "Reads: Family · Writes: nothing" in (await staff.get(PAGE)).text
    lee = StaffCalendars(
        business_id="clinic", staff_id="lee", tz=NY, links=[{"connection_id": conn_id}]
    )
    assert await service.busy(lee, start=NOW, end=NOW + timedelta(days=2)) == []
    assert (await post_form(staff, PAGE, choose, [("read", work)])).status_code == 303
    assert await service.busy(lee, start=NOW, end=NOW + timedelta(days=2)) == [
        (start, start + timedelta(hours=1))
    ]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ([("write", "{work}")], "at least one calendar"),
        ([("read", "{work}"), ("read", "")], "at least one calendar"),
        ([("read", "https://elsewhere.example/cal/")], "no such calendar"),
        ([("read", "{work}"), ("write", "{work}"), ("write", "{family}")], "one calendar for"),
        ([("read", "{work}"), ("surprise", "1")], "fields this page does not know"),
        ([("read", "x" * 3000)], "at least one calendar"),
    ],
)
async def test_a_bad_choice_is_422_and_changes_nothing(
    staff: httpx.AsyncClient,
    radicale: tuple[Harness, CalendarService],
    fields: list[tuple[str, str]],
    says: str,
) -> None:
    h, service = radicale
    conn_id, work, family = await linked_with_family(staff, h, service)
    [before] = await service.connections("clinic", "lee")
    data = [(k, v.format(work=work, family=family)) for k, v in fields]
    bad = await post_form(staff, PAGE, f"/staff/lee/calendars/{conn_id}/choose", data)
    assert bad.status_code == 422
    assert says in bad.text and 'role="alert"' in bad.text and "Traceback" not in bad.text
    [after] = await service.connections("clinic", "lee")
    assert (after.read_calendars, after.write_calendar) == (
        before.read_calendars,
        before.write_calendar,
    )


async def test_choosing_needs_csrf_and_the_right_person(
    staff: httpx.AsyncClient,
    client_for: ClientFor,
    radicale: tuple[Harness, CalendarService],
) -> None:
    h, service = radicale
    conn_id, work, _ = await linked_with_family(staff, h, service)
    [before] = await service.connections("clinic", "lee")
    choose = f"/staff/lee/calendars/{conn_id}/choose"
    assert (await staff.post(choose, data={"read": work})).status_code == 403
    # Lee's connection is not reachable through Rivera's page, nor an unknown one through Lee's.
    rivera = await post_form(
        staff, PAGE, f"/staff/rivera/calendars/{conn_id}/choose", {"read": work}
    )
    assert rivera.status_code == 404
    gone = await post_form(staff, PAGE, "/staff/lee/calendars/cal_x/choose", {"read": work})
    assert gone.status_code == 404 and "no such linked calendar" in gone.text
    async with client_for("owner@salon.test") as salon:
        home = await salon.get("/staff/kim/calendars")
        foreign = await salon.post(choose, data={"read": work, "csrf_token": csrf_of(home.text)})
        assert foreign.status_code == 404
        kim = await salon.post(
            f"/staff/kim/calendars/{conn_id}/choose",
            data={"read": work, "csrf_token": csrf_of(home.text)},
        )
        assert kim.status_code == 404
    [after] = await service.connections("clinic", "lee")
    assert after.read_calendars == before.read_calendars


async def test_an_account_that_cannot_be_listed_shows_what_is_read_and_why(
    staff: httpx.AsyncClient, radicale: tuple[Harness, CalendarService]
) -> None:
    h, service = radicale
    conn_id, work, _ = await linked_with_family(staff, h, service)
    assert h.fail_next is not None
    h.fail_next("500", 20)  # the server is down while the page lists the account's calendars
    page = await staff.get(PAGE)
    assert page.status_code == 200
    section = page.text.split(f'id="choose-{conn_id}"', 1)[1].split("</section>", 1)[0]
    assert "could not be listed just now" in section and "Reads: " in section
    assert "/choose" not in section  # no form to save a choice the page cannot show


async def test_a_choice_the_server_cannot_check_is_not_saved_and_the_page_says_so(
    staff: httpx.AsyncClient, radicale: tuple[Harness, CalendarService]
) -> None:
    h, service = radicale
    conn_id, work, family = await linked_with_family(staff, h, service)
    [before] = await service.connections("clinic", "lee")
    token = csrf_of((await staff.get(PAGE)).text)
    assert h.fail_next is not None
    h.fail_next("500", 20)  # down while the choice is checked against the account's calendars
    answer = await staff.post(
        f"/staff/lee/calendars/{conn_id}/choose",
        data={"csrf_token": token, "read": [family], "write": family},
    )
    assert answer.status_code == 503
    section = answer.text.split(f'id="choose-{conn_id}"', 1)[1].split("</section>", 1)[0]
    assert 'role="alert"' in section and "Nothing was saved" in section
    assert "Try again" in section and "Traceback" not in answer.text
    [after] = await service.connections("clinic", "lee")
    assert (after.read_calendars, after.write_calendar) == (
        before.read_calendars,
        before.write_calendar,
    )


async def test_a_choice_for_an_account_whose_password_stopped_working_says_re_link(
    staff: httpx.AsyncClient, radicale: tuple[Harness, CalendarService]
) -> None:
    from booking.db import session_scope
    from calendars.models import CalendarConnection

    h, service = radicale
    conn_id, work, family = await linked_with_family(staff, h, service)
    [before] = await service.connections("clinic", "lee")
    token = csrf_of((await staff.get(PAGE)).text)
    with session_scope(service.runtime.engine, write=True) as s:
        row = s.get(CalendarConnection, conn_id)
        assert row is not None
        row.secret = service.runtime.vault.seal({"password": "the-old-one"})
        s.add(row)
    answer = await staff.post(
        f"/staff/lee/calendars/{conn_id}/choose",
        data={"csrf_token": token, "read": [family], "write": family},
    )
    assert answer.status_code == 503
    section = answer.text.split(f'id="choose-{conn_id}"', 1)[1].split("</section>", 1)[0]
    assert "Nothing was saved" in section and "re-link" in section.lower()
    assert "the-old-one" not in answer.text
    [after] = await service.connections("clinic", "lee")
    assert (after.read_calendars, after.write_calendar) == (
        before.read_calendars,
        before.write_calendar,
    )
    assert after.status == "needs_relink"
