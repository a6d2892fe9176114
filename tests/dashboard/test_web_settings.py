"""Business settings: greeting, policies, numbers and services, validated like the file."""

from __future__ import annotations

from datetime import date

import httpx

from booking.scheduler import Scheduler
from tests.dashboard.conftest import post_form

SERVICES = [
    ("svc_id", "cleaning"),
    ("svc_name", "Teeth cleaning"),
    ("svc_duration_minutes", "45"),
    ("svc_buffer_before_minutes", "0"),
    ("svc_buffer_after_minutes", "15"),
    ("svc_id", "checkup"),
    ("svc_name", "Checkup"),
    ("svc_duration_minutes", "30"),
    ("svc_buffer_before_minutes", "0"),
    ("svc_buffer_after_minutes", "0"),
]


def form(**changes: str) -> list[tuple[str, str]]:
    values = {
        "name": "Clinic",
        "greeting": "",
        "policies": "",
        "transfer_number": "+12025550199",
        "phone_numbers": "+12025550100",
    } | changes
    return [*values.items(), *SERVICES]


async def test_owner_saves_greeting_policies_numbers_and_services(
    owner: httpx.AsyncClient,
    scheduler: Scheduler,
    accounts: dict[str, str],
) -> None:
    fields = form(
        greeting="Hello from the clinic!",
        policies="Cancel 24h ahead.",
        phone_numbers="+12025550100\n+12025550101",
    )
    fields = [(k, "60" if (k, v) == ("svc_duration_minutes", "30") else v) for k, v in fields]
    r = await post_form(owner, "/settings", "/settings", fields)
    assert r.status_code == 303, r.text
    business = await scheduler.business("clinic")
    assert business.greeting == "Hello from the clinic!"
    assert business.phone_numbers == ["+12025550100", "+12025550101"]
    services = {s.id: s for s in await scheduler.services("clinic")}
    assert services["checkup"].duration_minutes == 60
    found = await scheduler.availability(
        business_id="clinic",
        service_id="checkup",
        first_day=date(2026, 12, 7),
        last_day=date(2026, 12, 7),
    )
    assert (found.slots[0].end - found.slots[0].start).total_seconds() == 3600


async def test_bad_settings_are_refused_with_clear_errors(
    owner: httpx.AsyncClient,
    scheduler: Scheduler,
    accounts: dict[str, str],
) -> None:
    fields = form(name="", transfer_number="555-0199", phone_numbers="+442071234567")
    fields = [(k, "-5" if k == "svc_buffer_after_minutes" else v) for k, v in fields]
    fields = [(k, "soon" if (k, v) == ("svc_duration_minutes", "45") else v) for k, v in fields]
    r = await post_form(owner, "/settings", "/settings", fields)
    assert r.status_code == 422
    assert "Business name:" in r.text
    assert "Transfer number: &#39;555-0199&#39; is not a valid phone number" in r.text
    assert "+442071234567 already answers another business" in r.text
    assert "Teeth cleaning: the duration must be a whole number of minutes" in r.text
    assert "Checkup: the buffer after" in r.text
    assert (await scheduler.business("clinic")).transfer_number == "+12025550199"


async def test_numbers_typed_the_national_way_are_saved_in_e164(
    owner: httpx.AsyncClient,
    scheduler: Scheduler,
    accounts: dict[str, str],
) -> None:
    fields = form(transfer_number="(202) 555-0198", phone_numbers="202 555 0100, 202-555-0102")
    r = await post_form(owner, "/settings", "/settings", fields)
    assert r.status_code == 303, r.text
    business = await scheduler.business("clinic")
    assert business.phone_numbers == ["+12025550100", "+12025550102"]
    assert business.transfer_number == "+12025550198"


async def test_numbers_that_do_not_exist_are_refused(
    owner: httpx.AsyncClient,
    scheduler: Scheduler,
    accounts: dict[str, str],
) -> None:
    # The shape of E.164, but no such number: 555 is no area code in use.
    r = await post_form(
        owner,
        "/settings",
        "/settings",
        form(transfer_number="+15551234567", phone_numbers="(555) 123-4567"),
    )
    assert r.status_code == 422
    assert "Transfer number: &#39;+15551234567&#39; is not a valid phone number" in r.text
    assert "Phone numbers: &#39;(555) 123-4567&#39; is not a valid phone number" in r.text
    business = await scheduler.business("clinic")
    assert business.transfer_number == "+12025550199"
    assert business.phone_numbers == ["+12025550100"]


async def test_owner_adds_a_service_the_agent_can_book_and_removes_it(owner, scheduler) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime

    r = await post_form(
        owner,
        "/settings",
        "/settings/services",
        [
            ("id", "whitening"),
            ("name", "Teeth whitening"),
            ("duration_minutes", "60"),
            ("buffer_before_minutes", "0"),
            ("buffer_after_minutes", "15"),
            ("staff", "lee"),
        ],
    )
    assert r.status_code == 303, r.text
    found = await scheduler.availability(
        business_id="clinic",
        service_id="whitening",
        first_day=datetime(2026, 12, 1).date(),
        last_day=datetime(2026, 12, 1).date(),
    )
    assert found.slots and {s.staff_id for s in found.slots} == {"lee"}
    again = await post_form(
        owner,
        "/settings",
        "/settings/services",
        [("id", "whitening"), ("name", "Again"), ("duration_minutes", "30"), ("staff", "lee")],
    )
    assert again.status_code == 422 and "already a service" in again.text

    booked = await scheduler.book(
        business_id="clinic",
        service_id="whitening",
        staff_id="lee",
        start=found.slots[0].start,
        name="Ada",
        phone="+12025552200",
    )
    refused = await post_form(owner, "/settings", "/settings/services/whitening/remove", {})
    assert refused.status_code == 422 and "upcoming appointments" in refused.text
    await scheduler.cancel(business_id="clinic", appointment_id=booked.id)
    removed = await post_form(owner, "/settings", "/settings/services/whitening/remove", {})
    assert removed.status_code == 303
    assert "whitening" not in [sv.id for sv in await scheduler.services("clinic")]


async def test_staff_cannot_change_services(staff) -> None:  # type: ignore[no-untyped-def]
    page = await staff.get("/leads")
    r = await staff.post(
        "/settings/services/cleaning/remove",
        data={"csrf_token": page.text.split('name="csrf_token" value="')[1].split('"')[0]},
    )
    assert r.status_code == 403
