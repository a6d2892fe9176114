"""Whole conversations through the real `openai` client: book, race, reschedule, cancel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.engine import Filler, Speech
from booking.models import AppointmentStatus
from booking.scheduler import Scheduler
from tests.agent.conftest import (
    CALLER,
    MakeConversation,
    last_result,
    offered_slots,
    slot_ids_in,
    spoken,
    tool_results,
    turn,
)
from tests.fakes.llm_server import Call, FakeLLM, Text, ToolCalls

TUESDAY_9 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)  # 9 AM in New York


def check(day: str = "2026-12-01", **more: Any) -> ToolCalls:
    return ToolCalls(Call("check_availability", {"service": "cleaning", "date": day, **more}))


def offer(messages: list[dict[str, Any]]) -> Text:
    options = offered_slots(messages)
    return Text(f"I have {options[0]['spoken']} or {options[1]['spoken']}. Which suits you?")


def first_slot(messages: list[dict[str, Any]]) -> str:
    return offered_slots(messages)[0]["slot_id"]


async def test_a_caller_books_a_real_appointment(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    llm_server.script(
        check(),
        offer,
        lambda m: ToolCalls(Call("hold_slot", {"slot_id": first_slot(m)})),
        lambda m: ToolCalls(
            Call("book_appointment", {"slot_id": first_slot(m), "name": "Jane Doe"})
        ),
        lambda m: Text(f"You're booked for {last_result(m)['spoken']}. See you then!"),
    )
    conversation = converse()
    await conversation.greeting()

    first = await turn(conversation, "I'd like a cleaning on Tuesday.")
    assert "Tuesday, December 1 at 9 AM with Dr. Lee" in spoken(first)
    assert not any(isinstance(e, Filler) for e in first)  # fast tools need no filler
    second = await turn(conversation, "The first one. I'm Jane Doe.")
    assert spoken(second) == (
        "You're booked for Tuesday, December 1 at 9 AM with Dr. Lee. See you then!"
    )

    [appointment] = await scheduler.appointments(business_id="clinic", phone=CALLER)
    assert appointment.start == TUESDAY_9
    assert (appointment.service_id, appointment.staff_id) == ("cleaning", "lee")
    assert appointment.booked_by == "agent"
    assert conversation.booked == [appointment.id]
    results = tool_results(llm_server.requests[-1]["messages"])
    assert results[1]["held"] is True and "not booked" in results[1]["note"].lower()
    assert results[2]["booked"] is True
    assert results[0]["slots"][0]["start"] == "2026-12-01T09:00:00-05:00"

    await conversation.finish()
    [lead] = await scheduler.leads(business_id="clinic")
    assert (lead.outcome, lead.appointment_id, lead.name) == ("booked", appointment.id, "Jane Doe")
    assert lead.phone == CALLER


async def test_first_choice_taken_by_a_racing_caller_is_not_booked_and_alternatives_offered(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    def book(slot_id: str) -> ToolCalls:
        return ToolCalls(Call("book_appointment", {"slot_id": slot_id, "name": "Jane Doe"}))

    llm_server.script(
        check(),
        offer,
        lambda m: book(first_slot(m)),
        lambda m: Text(last_result(m)["error"]),
        lambda m: book(slot_ids_in(last_result(m)["error"])[0]),
        lambda m: Text(f"Done: {last_result(m)['spoken']}."),
    )
    conversation = converse()
    await turn(conversation, "A cleaning on Tuesday, please.")
    racer = await scheduler.book(
        business_id="clinic",
        service_id="cleaning",
        staff_id="lee",
        start=TUESDAY_9,
        name="Racer",
        phone="+12125550001",
    )

    await turn(conversation, "9 AM please, Jane Doe.")
    messages = llm_server.requests[-1]["messages"]
    refusal = last_result(messages)["error"]
    assert "just taken" in refusal and "NOT booked" in refusal
    alternatives = slot_ids_in(refusal)
    assert len(alternatives) == 3 and first_slot(messages) not in alternatives
    assert "Tuesday, December 1 at 10 AM with Dr. Lee" in refusal  # the same day first
    assert conversation.booked == []

    await turn(conversation, "The next one then.")
    [mine] = await scheduler.appointments(business_id="clinic", phone=CALLER)
    assert mine.start != TUESDAY_9 and conversation.booked == [mine.id]
    taken = await scheduler.appointments(business_id="clinic", staff_id="lee")
    assert {a.id for a in taken} == {racer.id, mine.id}


async def test_a_caller_reschedules_their_appointment(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    old = await scheduler.book(
        business_id="clinic",
        service_id="cleaning",
        staff_id="lee",
        start=TUESDAY_9,
        name="Jane Doe",
        phone=CALLER,
    )
    llm_server.script(
        ToolCalls(Call("find_appointments")),
        lambda m: Text(f"I see {last_result(m)['appointments'][0]['spoken']}. When instead?"),
        check("2026-12-02", earliest_time="13:00"),
        offer,
        lambda m: ToolCalls(
            Call(
                "reschedule_appointment",
                {
                    "appointment_id": tool_results(m)[0]["appointments"][0]["appointment_id"],
                    "slot_id": first_slot(m),
                },
            )
        ),
        lambda m: Text(f"Moved to {last_result(m)['spoken']}."),
    )
    conversation = converse()
    assert "Tuesday, December 1 at 9 AM" in spoken(await turn(conversation, "Move my cleaning."))
    await turn(conversation, "Wednesday afternoon.")
    done = await turn(conversation, "The first one.")
    assert spoken(done) == "Moved to Wednesday, December 2 at 1 PM with Dr. Lee."

    [current] = await scheduler.appointments(business_id="clinic", phone=CALLER)
    assert current.start == datetime(2026, 12, 2, 18, 0, tzinfo=UTC)
    assert current.rescheduled_from == old.id
    before = await scheduler.get_appointment(business_id="clinic", appointment_id=old.id)
    assert before.status == AppointmentStatus.RESCHEDULED
    assert conversation.booked == [current.id]


async def test_a_caller_cancels_their_appointment(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    appointment = await scheduler.book(
        business_id="clinic",
        service_id="cleaning",
        staff_id="lee",
        start=TUESDAY_9,
        name="Jane Doe",
        phone=CALLER,
    )
    llm_server.script(
        ToolCalls(Call("find_appointments")),
        lambda m: ToolCalls(
            Call(
                "cancel_appointment",
                {"appointment_id": last_result(m)["appointments"][0]["appointment_id"]},
            )
        ),
        lambda m: Text(f"I've cancelled {last_result(m)['spoken']}."),
    )
    conversation = converse()
    events = await turn(conversation, "Cancel my appointment on Tuesday.")
    assert spoken(events) == "I've cancelled Tuesday, December 1 at 9 AM with Dr. Lee."
    row = await scheduler.get_appointment(business_id="clinic", appointment_id=appointment.id)
    assert row.status == AppointmentStatus.CANCELLED
    assert conversation.cancelled == [appointment.id] and conversation.booked == []
    await conversation.finish()
    [lead] = await scheduler.leads(business_id="clinic")
    assert lead.outcome == "not_interested"


async def test_each_sentence_is_spoken_before_the_answer_is_complete(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    import threading

    gate = threading.Event()
    llm_server.script(Text("Sure, I can help with that. ", "What day suits you?", gate=gate))
    replies = converse().reply("Hi, I need a cleaning.")
    first = await anext(replies)
    assert first == Speech("Sure, I can help with that.")
    gate.set()
    assert [e async for e in replies] == [Speech("What day suits you?")]
