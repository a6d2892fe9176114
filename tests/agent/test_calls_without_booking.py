"""Messages, transfers, hang-ups, and the LLM failing: the call goes on and the lead is kept."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import pytest

from agent.engine import AgentEvent, Conversation, Handoff, Speech
from booking.scheduler import Scheduler
from tests.agent.conftest import CALLER, MakeConversation, client_for, last_result, spoken, turn
from tests.fakes.llm_server import Call, FakeLLM, Fault, Text, ToolCalls

OPEN = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)  # Monday 10 AM in New York: Dr. Lee is in
TRANSFER_NUMBER = "+12025550199"


async def test_the_model_takes_a_message(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    llm_server.script(
        ToolCalls(Call("take_message", {"name": "Jane Doe", "reason": "a billing question"})),
        Text("Thanks Jane, someone will call you back today."),
    )
    conversation = converse()
    events = await turn(conversation, "Can someone call me about my bill? I'm Jane Doe.")
    assert spoken(events) == "Thanks Jane, someone will call you back today."
    assert last_result(llm_server.requests[-1]["messages"])["saved"] is True

    await conversation.finish()
    await conversation.finish()
    [lead] = await scheduler.leads(business_id="clinic")
    assert (lead.outcome, lead.name, lead.reason, lead.phone) == (
        "message",
        "Jane Doe",
        "a billing question",
        CALLER,
    )


async def test_transfer_hands_off_to_the_business_number_while_open(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    llm_server.script(ToolCalls(Call("transfer_to_human", {"reason": "wants to talk to Dr. Lee"})))
    conversation = converse(now=OPEN)
    events = await turn(conversation, "Can I talk to a person?")
    assert events == [
        Speech("Please hold while I put you through."),
        Handoff(reason="wants to talk to Dr. Lee", transfer_to=TRANSFER_NUMBER),
    ]
    assert await turn(conversation, "Hello?") == []  # the conversation is over
    await conversation.finish()
    [lead] = await scheduler.leads(business_id="clinic")
    assert lead.outcome == "callback"


async def test_after_hours_transfer_becomes_a_message(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    llm_server.script(
        ToolCalls(Call("transfer_to_human", {"reason": "wants a person"})),
        lambda m: Text("No one is in right now. May I take a message?"),
    )
    conversation = converse()  # 7 AM in New York: nobody works yet
    events = await turn(conversation, "Put me through to someone.")
    assert not any(isinstance(e, Handoff) for e in events)
    assert "No one is available" in last_result(llm_server.requests[-1]["messages"])["error"]


async def test_end_call_hangs_up_after_the_goodbye(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    llm_server.script(ToolCalls(Call("end_call"), text="You're welcome, goodbye!"))
    conversation = converse()
    events = await turn(conversation, "That's all, thanks.")
    assert events == [
        Speech("You're welcome, goodbye!"),
        Handoff(reason="the conversation is finished", transfer_to=None),
    ]
    await conversation.finish()
    [lead] = await scheduler.leads(business_id="clinic")
    assert lead.outcome == "not_interested"


async def take_scripted_message(
    conversation: Conversation, first: list[AgentEvent]
) -> list[AgentEvent]:
    """Answer the scripted questions; return the last turn's events."""
    assert "take a message" in spoken(first) and "your name" in spoken(first)
    asked = spoken(await turn(conversation, "My name is Jane Doe."))
    assert asked == "Thank you, Jane Doe. And what is your call about?"
    asked = spoken(await turn(conversation, "I need a cleaning next week."))
    assert "the best one to reach you" in asked
    return await turn(conversation, "Yes, that's fine.")


async def assert_message_lead(scheduler: Scheduler) -> None:
    [lead] = await scheduler.leads(business_id="clinic")
    assert (lead.outcome, lead.name, lead.reason, lead.phone) == (
        "message",
        "Jane Doe",
        "I need a cleaning next week.",
        CALLER,
    )


@pytest.mark.parametrize(
    "fault",
    [Fault.error(500), Fault.error(429), Fault.hang(), Fault.garbage()],
    ids=["500", "429", "hang", "garbage"],
)
async def test_llm_failure_falls_back_to_taking_a_message(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler, fault: Fault
) -> None:
    llm_server.script(fault)
    conversation = converse(llm_timeout=0.3)
    assert await conversation.greeting()
    last = await take_scripted_message(conversation, await turn(conversation, "Hi there."))
    assert "passed your message on" in spoken(last)
    assert last[-1] == Handoff(reason="message taken", transfer_to=None)  # after hours
    await assert_message_lead(scheduler)
    await conversation.finish()
    await assert_message_lead(scheduler)  # one lead, not two
    assert len(llm_server.requests) == 1  # no LLM needed once the script took over


async def test_unreachable_llm_falls_back_to_taking_a_message(
    converse: MakeConversation, scheduler: Scheduler
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: nothing listens there
    llm = client_for(f"http://127.0.0.1:{port}/v1")
    try:
        conversation = converse(llm=llm)
        await take_scripted_message(conversation, await turn(conversation, "Hello?"))
    finally:
        await llm.close()
    await assert_message_lead(scheduler)


async def test_fallback_offers_the_transfer_while_open(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    llm_server.script(Fault.error(503))
    conversation = converse(now=OPEN)
    last = await take_scripted_message(conversation, await turn(conversation, "Hi."))
    assert "transfer you" in spoken(last)
    assert await turn(conversation, "Yes please.") == [
        Speech("Please hold while I put you through."),
        Handoff(reason="caller asked for a person", transfer_to=TRANSFER_NUMBER),
    ]


async def test_garbage_tool_arguments_twice_fall_back_to_a_message(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    llm_server.script(
        ToolCalls(Call("book_appointment", '{"slot_id": "slot_1", "name": ')),
        ToolCalls(Call("lookup_everything", {})),
    )
    conversation = converse()
    first = await turn(conversation, "Book me in.")
    messages = llm_server.requests[-1]["messages"]
    assert "not valid JSON" in last_result(messages)["error"]
    await take_scripted_message(conversation, first)
    await assert_message_lead(scheduler)
    # The history stayed valid: every tool call has its result.
    calls = [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    assert calls == [m["tool_call_id"] for m in messages if m["role"] == "tool"]


async def test_invalid_arguments_are_explained_to_the_model(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    llm_server.script(
        ToolCalls(Call("check_availability", {"service": "cleaning", "date": "next tuesday"})),
        Text("Which date is that?"),
    )
    events = await turn(converse(), "Next Tuesday?")
    assert spoken(events) == "Which date is that?"
    error = last_result(llm_server.requests[-1]["messages"])["error"]
    assert error.startswith("Invalid arguments for check_availability: date:")


async def test_a_model_going_in_circles_falls_back_to_a_message(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    llm_server.script(*[ToolCalls(Call("find_appointments"))] * 6)
    events = await turn(converse(), "What do I have booked?")
    assert "take a message" in spoken(events)
    assert len(llm_server.requests) == 6
