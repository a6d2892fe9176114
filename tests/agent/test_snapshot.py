"""A conversation saved as a snapshot goes on in another worker: a new Conversation restored from
it (through JSON, as the store keeps it) sends the model the whole earlier history, never greets
again, keeps the scripted fallback's place, adopts bookings the snapshot missed and records one
lead."""

from __future__ import annotations

import json
from typing import Any

import openai

from agent.engine import CallContext, Conversation
from booking.clock import FixedClock
from booking.db import session_scope
from booking.models import Call as CallRow
from booking.scheduler import Scheduler
from tests.agent.conftest import (
    CALLER,
    MakeConversation,
    last_result,
    offered_slots,
    spoken,
    turn,
)
from tests.conftest import NOW, count_rows
from tests.fakes.llm_server import Call, FakeLLM, Fault, Text, ToolCalls


def _call_row(scheduler: Scheduler) -> str:
    with session_scope(scheduler.engine, write=True) as s:
        row = CallRow(business_id="clinic", call_sid="CA-snap", from_number=CALLER, started_at=NOW)
        s.add(row)
        s.flush()
        return row.id


def _context(call_id: str | None) -> CallContext:
    return CallContext(business_id="clinic", caller_phone=CALLER, call_id=call_id, channel="relay")


def _through_json(snapshot: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(snapshot))
    return loaded


def _restore(
    snapshot: dict[str, Any],
    scheduler: Scheduler,
    llm: openai.AsyncOpenAI,
    call_id: str | None,
    **more: Any,
) -> Conversation:
    return Conversation.restore(
        _through_json(snapshot),
        scheduler=scheduler,
        llm=llm,
        model="fake-model",
        context=_context(call_id),
        clock=FixedClock(NOW),
        llm_timeout=2.0,
        filler_after=5.0,
        **more,
    )


def _check() -> ToolCalls:
    return ToolCalls(Call("check_availability", {"service": "cleaning", "date": "2026-12-01"}))


def _first_slot(messages: list[dict[str, Any]]) -> str:
    return offered_slots(messages)[0]["slot_id"]


def _offer(messages: list[dict[str, Any]]) -> Text:
    return Text(f"I have {offered_slots(messages)[0]['spoken']}. Shall I book it?")


def _book(messages: list[dict[str, Any]]) -> ToolCalls:
    return ToolCalls(Call("book_appointment", {"slot_id": _first_slot(messages), "name": "Jane"}))


class Recorder:
    def __init__(self) -> None:
        self.first_tokens: list[float] = []
        self.tools: list[tuple[str, bool]] = []

    def model_first_token(self, seconds: float) -> None:
        self.first_tokens.append(seconds)

    def tool_call(self, name: str, seconds: float, ok: bool) -> None:
        assert seconds >= 0
        self.tools.append((name, ok))


async def test_a_restored_conversation_goes_on_with_the_whole_history(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler, llm: openai.AsyncOpenAI
) -> None:
    call_id = _call_row(scheduler)
    checkpoints: list[int] = []
    llm_server.script(
        _check(),
        _offer,
        lambda m: ToolCalls(Call("hold_slot", {"slot_id": _first_slot(m)})),
        _book,
        lambda m: Text(f"Booked for {last_result(m)['spoken']}."),
        Text("Anything else I can help with?"),
    )
    first = converse(context=_context(call_id), checkpoint=lambda: checkpoints.append(1))
    greeting = await first.greeting()
    await turn(first, "A cleaning on Tuesday, please.")
    assert len(checkpoints) == 1  # after the check_availability round entered the history
    await turn(first, "Yes, I'm Jane.")
    assert len(checkpoints) == 3  # hold, then book
    [appointment] = await scheduler.appointments(business_id="clinic", phone=CALLER)
    snapshot = first.snapshot()
    sent_before = llm_server.requests[-1]["messages"]

    second = _restore(snapshot, scheduler, llm, call_id)
    assert second.booked == [appointment.id]
    answer = await turn(second, "What time was that again?")
    assert spoken(answer) == "Anything else I can help with?"
    sent = llm_server.requests[-1]["messages"]
    assert sent[: len(sent_before)] == sent_before  # the whole earlier history, tool calls too
    assert sent[-1] == {"role": "user", "content": "What time was that again?"}
    assert sum(m["role"] == "system" for m in sent) == 1
    assert [m.get("content") for m in sent].count(greeting) == 1  # no second greeting
    assert [m["role"] for m in sent].count("tool") == 3
    assert [e["text"] for e in second.transcript][0] == greeting

    await second.finish()
    await second.finish()
    [lead] = await scheduler.leads(business_id="clinic")
    assert (lead.outcome, lead.appointment_id, lead.call_id) == ("booked", appointment.id, call_id)
    assert count_rows(scheduler.engine, "SELECT count(*) FROM appointment") == 1


async def test_a_snapshot_taken_mid_fallback_restores_into_the_fallback(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler, llm: openai.AsyncOpenAI
) -> None:
    llm_server.script(Fault.error(500))
    first = converse()
    await first.greeting()
    opening = await turn(first, "I need to talk about my bill.")
    assert "May I have your name" in spoken(opening)
    named = await turn(first, "My name is Jane Doe.")
    assert "what is your call about" in spoken(named).lower()
    requests = len(llm_server.requests)

    second = _restore(first.snapshot(), scheduler, llm, None)
    asked = await turn(second, "A question about my bill.")
    assert "best one to reach you" in spoken(asked)
    await turn(second, "Yes, that's right.")
    assert len(llm_server.requests) == requests  # the script, not the model, went on
    [lead] = await scheduler.leads(business_id="clinic")
    assert (lead.outcome, lead.name) == ("message", "Jane Doe")
    assert lead.reason is not None and "bill" in lead.reason


async def test_a_booking_missing_from_the_snapshot_is_adopted_and_a_retried_book_is_idempotent(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler, llm: openai.AsyncOpenAI
) -> None:
    call_id = _call_row(scheduler)
    llm_server.script(
        _check(), _offer, _book, lambda m: Text(f"Booked for {last_result(m)['spoken']}.")
    )
    first = converse(context=_context(call_id))
    await first.greeting()
    await turn(first, "A cleaning on Tuesday, please.")
    saved = first.snapshot()  # the last save before the worker died
    await turn(first, "Yes please, I'm Jane.")
    [appointment] = await scheduler.appointments(business_id="clinic", phone=CALLER)

    # The caller repeats themselves to the next worker; the model books the same slot again.
    second = _restore(saved, scheduler, llm, call_id)
    assert second.booked == []
    llm_server.script(
        lambda m: ToolCalls(Call("hold_slot", {"slot_id": _first_slot(m)})),
        lambda m: Text(json.dumps(last_result(m))),
    )
    held = json.loads(spoken(await turn(second, "Yes please.")))
    assert held["held"] is False and held["booked"] is True  # not "taken by someone else"
    assert held["appointment_id"] == appointment.id
    llm_server.script(_book, lambda m: Text(json.dumps(last_result(m))))
    answer = json.loads(spoken(await turn(second, "Yes please, I'm Jane.")))
    assert answer["booked"] is True and answer["appointment_id"] == appointment.id
    assert second.booked == [appointment.id]
    assert count_rows(scheduler.engine, "SELECT count(*) FROM appointment") == 1

    await second.finish()
    [lead] = await scheduler.leads(business_id="clinic")
    assert (lead.outcome, lead.appointment_id) == ("booked", appointment.id)


async def test_a_restored_conversation_that_only_finishes_adopts_the_booking(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler, llm: openai.AsyncOpenAI
) -> None:
    call_id = _call_row(scheduler)
    llm_server.script(_check(), _offer, _book, Text("Booked."))
    first = converse(context=_context(call_id))
    await first.greeting()
    await turn(first, "A cleaning on Tuesday, please.")
    saved = first.snapshot()
    await turn(first, "Yes please, I'm Jane.")
    [appointment] = await scheduler.appointments(business_id="clinic", phone=CALLER)

    second = _restore(saved, scheduler, llm, call_id)
    await second.finish()  # the call-expiry job: no turn, just the lead
    assert second.booked == [appointment.id]
    [lead] = await scheduler.leads(business_id="clinic")
    assert (lead.outcome, lead.appointment_id) == ("booked", appointment.id)
    assert lead.reason == "Booked: Teeth cleaning, Tuesday, December 1 at 9 AM with Dr. Lee"
    assert lead.name == "Jane"  # from the booking's contact


async def test_an_interrupted_turn_is_snapshotted_as_heard(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler, llm: openai.AsyncOpenAI
) -> None:
    llm_server.script(Text("We open at nine. We close at five. We are closed on Sunday."))
    first = converse()
    await first.greeting()
    await turn(first, "When are you open?")
    before = first.snapshot()
    first.interrupted("We open at nine. We close")
    # A snapshot is a copy: what happens to the conversation later does not reach into it.
    assert before["messages"][-1]["content"].endswith("We are closed on Sunday.")
    assert before["transcript"][-1]["text"].endswith("We are closed on Sunday.")
    snapshot = _through_json(first.snapshot())
    assert snapshot["messages"][-1] == {"role": "assistant", "content": "We open at nine. We close"}
    assert snapshot["transcript"][-1]["text"] == "We open at nine. We close"

    llm_server.script(Text("Yes."))
    second = _restore(snapshot, scheduler, llm, None)
    await turn(second, "And on Saturday?")
    sent = llm_server.requests[-1]["messages"]
    assert sent[-2] == {"role": "assistant", "content": "We open at nine. We close"}


async def test_a_damaged_snapshot_is_refused(scheduler: Scheduler, llm: openai.AsyncOpenAI) -> None:
    for bad in ({}, {"v": 99}, {"v": 1, "state": {"offered": {"slot_x": {"start": "nope"}}}}):
        try:
            _restore(bad, scheduler, llm, None)
        except ValueError:
            continue
        raise AssertionError(f"restored {bad!r}")


async def test_the_observer_hears_first_tokens_and_tool_calls(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    observer = Recorder()
    llm_server.script(
        _check(),
        ToolCalls(Call("hold_slot", {"slot_id": "slot_nope"})),
        Text("Sorry."),
    )
    conversation = converse(observer=observer)
    await conversation.greeting()
    await turn(conversation, "A cleaning on Tuesday.")
    assert len(observer.first_tokens) == 3 and all(s >= 0 for s in observer.first_tokens)
    assert observer.tools == [("check_availability", True), ("hold_slot", False)]
