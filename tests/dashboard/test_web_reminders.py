"""The reminder settings page: the business's reminders and each service's override, previewed
with their SMS segment count, checked like the business file, and read by the planner."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta

import httpx
from sqlmodel import select

from booking.db import session_scope
from booking.models import Business, Service, SmsMessage
from booking.reminders import ReminderPlanner, policy
from booking.scheduler import Scheduler
from tests.conftest import NOW
from tests.dashboard.conftest import csrf_of, post_form

ClientFor = Callable[[str | None], AbstractAsyncContextManager[httpx.AsyncClient]]


def form(**changes: str) -> dict[str, str]:
    """The page's fields as a browser sends them, unchanged from the defaults."""
    return {
        "enabled": "1",
        "before": "24h, 2h",
        "text": "",
        "quiet_hours": "21:00-08:00",
        "svc-cleaning-mode": "inherit",
        "svc-cleaning-before": "",
        "svc-cleaning-text": "",
        "svc-checkup-mode": "inherit",
        "svc-checkup-before": "",
        "svc-checkup-text": "",
    } | changes


def stored(scheduler: Scheduler) -> tuple[object, dict[str, object]]:
    """The clinic's stored reminders and each service's override."""
    with session_scope(scheduler.engine) as s:
        business = s.get(Business, "clinic")
        assert business is not None
        query = select(Service).where(Service.business_id == "clinic")
        return business.reminders, {row.id: row.reminders for row in s.exec(query)}


async def test_the_page_shows_the_defaults_and_each_services_text(
    owner: httpx.AsyncClient, accounts: dict[str, str]
) -> None:
    r = await owner.get("/reminders")
    assert r.status_code == 200
    assert 'value="24h, 2h"' in r.text and 'value="21:00-08:00"' in r.text
    # Sample values: a long caller name, the longest name among the service's staff.
    assert (
        "Clinic: reminder of your Teeth cleaning with Sam Rivera on Thu Dec 10 at 10:00 AM."
        in r.text
    )
    assert "Checkup with Dr. Lee" in r.text
    assert r.text.count("1 segment <") == 2 and "GSM-7" in r.text
    assert 'href="/reminders"' in r.text  # in the owner's navigation


async def test_owner_saves_business_settings_and_service_overrides(
    owner: httpx.AsyncClient, scheduler: Scheduler, accounts: dict[str, str]
) -> None:
    fields = form(
        before="2 days, 90m",
        text="Hi {name}, see you {date} at {time} for {service}.",
        quiet_hours="off",
        **{
            "svc-cleaning-mode": "off",
            "svc-checkup-mode": "own",
            "svc-checkup-before": "30m",
            "svc-checkup-text": "{business}: checkup at {time} with {staff}. C to confirm.",
        },
    )
    r = await post_form(owner, "/reminders", "/reminders", fields)
    assert r.status_code == 303 and r.headers["location"] == "/reminders?saved=1"
    business_row, services = stored(scheduler)
    assert business_row == {
        "enabled": True,
        "before": [2880, 90],
        "text": "Hi {name}, see you {date} at {time} for {service}.",
        "quiet_hours": None,
    }
    assert services["cleaning"] == {"enabled": False}
    assert services["checkup"] == {
        "before": [30],
        "text": "{business}: checkup at {time} with {staff}. C to confirm.",
    }
    page = await owner.get("/reminders?saved=1")
    assert "Saved." in page.text and 'value="2d, 90m"' not in page.text
    assert 'value="48h, 90m"' in page.text and "No reminders" in page.text
    assert "Clinic: checkup at 10:00 AM with Dr. Lee. C to confirm." in page.text

    # The planner follows at once: the checkup's own 30 minutes and wording.
    apt = await scheduler.book(
        business_id="clinic",
        service_id="checkup",
        staff_id="lee",
        start=NOW + timedelta(days=1, hours=3),
        name="Ann Smith",
        phone="+12025550001",
        booked_by="api",
    )
    planner = ReminderPlanner(scheduler.engine, scheduler.clock)
    assert await planner.plan_due(now=apt.start - timedelta(minutes=90)) == []
    [planned] = await planner.plan_due(now=apt.start - timedelta(minutes=29))
    with session_scope(scheduler.engine) as s:
        sms = s.get(SmsMessage, planned.sms_id)
        assert (
            sms is not None
            and sms.body == "Clinic: checkup at 10:00 AM with Dr. Lee. C to confirm."
        )


async def test_turning_reminders_off_keeps_the_times_and_text(
    owner: httpx.AsyncClient, scheduler: Scheduler, accounts: dict[str, str]
) -> None:
    fields = form(before="3h", **{"svc-checkup-mode": "own", "svc-checkup-always": "1"})
    del fields["enabled"]  # an unticked box is not sent
    r = await post_form(owner, "/reminders", "/reminders", fields)
    assert r.status_code == 303
    business_row, services = stored(scheduler)
    assert isinstance(business_row, dict)
    assert business_row["enabled"] is False and business_row["before"] == [180]
    assert services["checkup"] == {"enabled": True}
    with session_scope(scheduler.engine) as s:
        business = s.get(Business, "clinic")
        assert business is not None
        rows = {r.id: r for r in s.exec(select(Service).where(Service.business_id == "clinic"))}
        assert policy(business, rows["cleaning"]).before == ()
        assert policy(business, rows["checkup"]).before == (180,)
    page = await owner.get("/reminders")
    assert 'name="enabled" value="1">' in page.text  # unticked now
    assert 'name="svc-checkup-always" value="1" checked' in page.text


async def test_bad_settings_are_refused_with_the_reason_and_nothing_changes(
    owner: httpx.AsyncClient, scheduler: Scheduler, accounts: dict[str, str]
) -> None:
    fields = form(
        before="24h, soon",
        text="Hello {nom}",
        quiet_hours="9pm-8am",
        **{
            "svc-checkup-mode": "own",
            "svc-checkup-before": "31 days",
            "svc-cleaning-mode": "own",
            "svc-cleaning-text": "x" * 700,
        },
    )
    r = await post_form(owner, "/reminders", "/reminders", fields)
    assert r.status_code == 422
    assert "Times before: &#39;soon&#39; is not a time before the appointment" in r.text
    assert "Text: unknown placeholder {nom}" in r.text
    assert "Quiet hours: &#39;9pm-8am&#39; is not quiet hours like" in r.text
    assert "Checkup: times before: a reminder goes between 1 minute and 30 days" in r.text
    assert "Teeth cleaning: text: the reminder text is longer than 640 characters" in r.text
    assert 'value="24h, soon"' in r.text  # what was typed stays on the form
    assert stored(scheduler) == (None, {"cleaning": None, "checkup": None})

    for bad in (
        form(before=""),
        form(text="Hi {name"),
        form(text="{time!r}"),
        form(before="1h,2h,3h,4h,5h,6h"),
        form(**{"svc-checkup-mode": "sometimes"}),
    ):
        r = await post_form(owner, "/reminders", "/reminders", bad)
        assert r.status_code == 422, bad
        assert "Not saved:" in r.text
    assert stored(scheduler) == (None, {"cleaning": None, "checkup": None})


async def test_a_field_sent_as_a_file_or_twice_is_refused_not_a_crash(
    owner: httpx.AsyncClient, accounts: dict[str, str]
) -> None:
    token = csrf_of((await owner.get("/reminders")).text)
    r = await owner.post(
        "/reminders",
        data={"csrf_token": token, "before": "24h"},
        files={"text": ("t.txt", b"{name}", "text/plain")},
    )
    assert r.status_code == 422 and "in a way a browser does not" in r.text
    r = await owner.post(
        "/reminders", data={"csrf_token": token, "before": ["24h", "2h"], "enabled": "1"}
    )
    assert r.status_code == 422


async def test_the_preview_shows_the_typed_text_and_its_segments_without_saving(
    owner: httpx.AsyncClient, scheduler: Scheduler, accounts: dict[str, str]
) -> None:
    token = csrf_of((await owner.get("/reminders")).text)
    long_text = "{business}: " + "Please bring your insurance card and arrive early. " * 4
    r = await owner.post(
        "/reminders/preview",
        data=form(csrf_token=token, text=long_text, **{"svc-checkup-text": "See you 🦷 {time}"})
        | {"svc-checkup-mode": "own"},
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert r.status_code == 200
    assert r.text.lstrip().startswith('<section class="card" id="previews"')  # the fragment
    assert "2 segments" in r.text and "Over one SMS" in r.text
    assert "See you 🦷 10:00 AM" in r.text and "UCS-2" in r.text
    r = await owner.post(
        "/reminders/preview",
        data=form(csrf_token=token, text="Hi {who}"),
        headers={"HX-Request": "true"},
    )
    assert r.status_code == 200 and "Would not save:" in r.text and "{who}" in r.text
    # Without scripts the Preview button gets the whole page back, the typing kept.
    r = await owner.post("/reminders/preview", data=form(csrf_token=token, before="5h"))
    assert r.status_code == 200 and "<h1>Reminders</h1>" in r.text and 'value="5h"' in r.text
    assert "5h before" in r.text
    assert stored(scheduler) == (None, {"cleaning": None, "checkup": None})


async def test_only_the_owner_with_a_valid_form_token_changes_reminders(
    client_for: ClientFor,
    owner: httpx.AsyncClient,
    staff: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    scheduler: Scheduler,
) -> None:
    r = await staff.get("/reminders")
    assert r.status_code == 403
    assert 'href="/reminders"' not in (await staff.get("/appointments")).text
    token = csrf_of((await staff.get("/appointments")).text)
    for path in ("/reminders", "/reminders/preview"):
        r = await staff.post(path, data=form(csrf_token=token, before="1h"))
        assert r.status_code == 403, path
        r = await anonymous.post(path, data=form(before="1h"))
        assert r.status_code == 403, path  # no session, no token
        r = await owner.post(path, data=form(before="1h"))
        assert r.status_code == 403, path  # no token
        r = await owner.post(path, data=form(before="1h", csrf_token="forged"))
        assert r.status_code == 403, path
    r = await anonymous.get("/reminders")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    # Another business's owner edits only their own business.
    async with client_for("owner@salon.test") as salon:
        r = await post_form(salon, "/reminders", "/reminders", {"enabled": "1", "before": "1h"})
        assert r.status_code == 303
    assert stored(scheduler) == (None, {"cleaning": None, "checkup": None})


async def test_a_service_set_in_the_business_file_shows_as_its_own(
    owner: httpx.AsyncClient, scheduler: Scheduler, accounts: dict[str, str]
) -> None:
    with session_scope(scheduler.engine, write=True) as s:
        row = s.get(Service, ("clinic", "checkup"))
        assert row is not None
        row.reminders = {"before": [60], "text": "Checkup at {time}."}
        s.add(row)
    page = await owner.get("/reminders")
    assert '<option value="own" selected>' in page.text
    assert 'value="1h"' in page.text and "Checkup at 10:00 AM." in page.text
    r = await post_form(
        owner,
        "/reminders",
        "/reminders",
        form(
            **{
                "svc-checkup-mode": "own",
                "svc-checkup-before": "1h",
                "svc-checkup-text": "Checkup at {time}.",
            }
        ),
    )
    assert r.status_code == 303
    assert stored(scheduler)[1]["checkup"] == {"before": [60], "text": "Checkup at {time}."}
