"""The tools on their own: what the model is told for each kind of request and refusal."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.tools import BusinessFacts, Toolbox, model_message
from booking import errors
from booking.clock import FixedClock
from booking.scheduler import Scheduler
from tests.agent.conftest import CALLER
from tests.conftest import NOW


@pytest.fixture
async def tools(scheduler: Scheduler) -> Toolbox:
    facts = await BusinessFacts.load(scheduler, "clinic")
    return Toolbox(
        scheduler=scheduler,
        facts=facts,
        caller_phone=CALLER,
        call_id=None,
        holder="conv:test",
        clock=FixedClock(NOW),
    )


async def call(tools: Toolbox, tool: str, /, **arguments: Any) -> dict[str, Any]:
    return json.loads(await tools.call(tool, json.dumps(arguments)))  # type: ignore[no-any-return]


async def test_availability_offers_three_spread_slots_with_spoken_times(tools: Toolbox) -> None:
    result = await call(tools, "check_availability", service="Teeth cleaning", date="2026-11-30")
    slots = result["slots"]
    assert len(slots) == 3
    assert slots[0] == {
        "slot_id": slots[0]["slot_id"],
        "start": "2026-11-30T09:00:00-05:00",
        "spoken": "Monday, November 30 at 9 AM with Dr. Lee",
    }
    again = await call(tools, "check_availability", service="cleaning", date="2026-11-30")
    assert [s["slot_id"] for s in again["slots"]] == [s["slot_id"] for s in slots]


async def test_availability_by_staff_name_and_time_of_day(tools: Toolbox) -> None:
    result = await call(
        tools,
        "check_availability",
        service="cleaning",
        date="2026-11-30",
        staff="Sam Rivera",
        earliest_time="11:00",
        latest_time="12:00",
    )
    assert [s["spoken"] for s in result["slots"]] == [
        "Monday, November 30 at 11 AM with Sam Rivera",
        "Monday, November 30 at 11:30 AM with Sam Rivera",
        "Monday, November 30 at 12 PM with Sam Rivera",
    ]


async def test_a_closed_day_offers_the_next_free_times(tools: Toolbox) -> None:
    result = await call(tools, "check_availability", service="checkup", date="2026-12-05")
    assert "Nothing is free" in result["note"]
    assert result["slots"][0]["spoken"] == "Monday, December 7 at 9 AM with Dr. Lee"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"service": "massage", "date": "2026-12-01"}, "There is no service 'massage'"),
        (
            {"service": "checkup", "date": "2026-12-01", "staff": "rivera"},
            "Sam Rivera does not do Checkup",
        ),
        ({"service": "cleaning", "date": "2026-11-29"}, "has passed; today is Monday, November 30"),
        ({"service": "cleaning", "date": "2026-12-01", "days": 30}, "Invalid arguments"),
    ],
)
async def test_availability_refusals_tell_the_model_what_to_do(
    tools: Toolbox, arguments: dict[str, Any], expected: str
) -> None:
    assert expected in (await call(tools, "check_availability", **arguments))["error"]


async def test_a_spoken_callback_number_is_understood(tools: Toolbox, scheduler: Scheduler) -> None:
    result = await call(
        tools, "take_message", name="Jane", reason="billing", callback_number="(202) 555-7788"
    )
    assert result["callback_number"] == "+12025557788"
    assert result["read_back"] == "2 0 2, 5 5 5, 7 7 8 8"
    bad = await call(tools, "take_message", name="Jane", reason="billing", callback_number="12")
    assert "not a valid phone number" in bad["error"]
    # The right shape, but no such number exists: 555 is not an area code in use.
    fake = await call(
        tools, "take_message", name="Jane", reason="billing", callback_number="555 123 4567"
    )
    assert "not a valid phone number" in fake["error"]
    assert len(await scheduler.leads(business_id="clinic")) == 1


async def test_a_number_said_in_words_or_typed_any_way_is_stored_in_e164(
    tools: Toolbox, scheduler: Scheduler
) -> None:
    for said in (
        "202 555 0123",
        "(202) 555-0123",
        "1-202-555-0123",
        "two oh two, five five five, oh one two three",
    ):
        result = await call(
            tools, "take_message", name="Jane", reason="billing", callback_number=said
        )
        assert result.get("callback_number") == "+12025550123", (said, result)
    [lead] = await scheduler.leads(business_id="clinic")
    assert lead.phone == "+12025550123"


async def test_national_numbers_are_read_in_the_business_country(scheduler: Scheduler) -> None:
    facts = await BusinessFacts.load(scheduler, "clinic")
    facts.business.phone_numbers = ["+442079460000"]  # a London clinic
    tools = Toolbox(
        scheduler=scheduler,
        facts=facts,
        caller_phone=None,
        call_id=None,
        holder="conv:uk",
        clock=FixedClock(NOW),
    )
    result = await call(
        tools, "take_message", name="Jane", reason="billing", callback_number="020 7946 0018"
    )
    assert result["callback_number"] == "+442079460018"
    assert result["read_back"] == "0 2 0, 7 9 4 6, 0 0 1 8"
    abroad = await call(
        tools, "take_message", name="Jane", reason="billing", callback_number="+1 202 555 0123"
    )
    assert abroad["read_back"] == "plus 1, 2 0 2, 5 5 5, 0 1 2 3"


async def test_booking_for_a_withheld_number_asks_for_one(scheduler: Scheduler) -> None:
    facts = await BusinessFacts.load(scheduler, "clinic")
    tools = Toolbox(
        scheduler=scheduler,
        facts=facts,
        caller_phone=None,
        call_id=None,
        holder="conv:anon",
        clock=FixedClock(NOW),
    )
    slot = await call(tools, "check_availability", service="cleaning", date="2026-12-01")
    slot_id = slot["slots"][0]["slot_id"]
    refused = await call(tools, "book_appointment", slot_id=slot_id, name="Jane")
    assert "ask for a phone number" in refused["error"]
    booked = await call(
        tools, "book_appointment", slot_id=slot_id, name="Jane", phone="+12025557788"
    )
    assert booked["booked"] is True


async def test_an_unexpected_failure_becomes_a_generic_apology(
    tools: Toolbox, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(**kwargs: Any) -> None:
        raise RuntimeError("database password is hunter2")

    tools.scheduler.availability = broken  # type: ignore[method-assign]
    result = await call(tools, "check_availability", service="cleaning", date="2026-12-01")
    assert "Something went wrong on our side" in result["error"]
    assert "hunter2" not in result["error"]
    assert "tool check_availability failed" in caplog.text


def test_domain_errors_are_worded_for_the_model() -> None:
    assert "NOT booked" in model_message(errors.SlotTaken("x"))
    assert "belongs to this caller" in model_message(errors.NotYourAppointment("x"))
    assert "take a message" in model_message(errors.CalendarUnavailable("x"))
    assert model_message(errors.InvalidRequest("a booking needs the caller's name")) == (
        "a booking needs the caller's name"
    )


async def test_the_waitlist_tool_puts_the_caller_on_it(
    tools: Toolbox, scheduler: Scheduler
) -> None:
    from booking.waitlist import Waitlist

    result = await call(
        tools,
        "join_waitlist",
        service="checkup",
        first_date="2026-12-01",
        last_date="2026-12-04",
        name="Jane Doe",
        staff="Dr. Lee",
    )
    assert result["waiting"] is True and (result["from"], result["to"]) == (
        "2026-12-01",
        "2026-12-04",
    )
    [entry] = await Waitlist(scheduler).entries("clinic")
    assert (entry.phone, entry.name, entry.staff_id) == (CALLER, "Jane Doe", "lee")
    wrong = await call(
        tools,
        "join_waitlist",
        service="checkup",
        first_date="2026-12-04",
        last_date="2026-12-01",
        name="Jane",
    )
    assert "Nobody was put on the waitlist" in wrong["error"]
    tools.caller_phone = None
    withheld = await call(
        tools,
        "join_waitlist",
        service="checkup",
        first_date="2026-12-01",
        last_date="2026-12-01",
        name="Jane",
    )
    assert "withheld" in withheld["error"]
