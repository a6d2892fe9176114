"""The engine's mechanics: the prompt it sends, fillers, barge-in and the history it keeps."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.engine import Filler, Speech
from booking.scheduler import Scheduler, SlotSearch
from tests.agent.conftest import CALLER, MakeConversation, spoken, turn
from tests.fakes.llm_server import Call, FakeLLM, Text, ToolCalls

LATE_MONDAY = datetime(2026, 12, 1, 3, 30, tzinfo=UTC)  # still Monday, 10:30 PM, in New York
CHECK = ToolCalls(Call("check_availability", {"service": "cleaning", "date": "2026-12-01"}))


def assistant_texts(messages: list[dict[str, Any]]) -> list[str | None]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


async def test_a_turn_is_one_streamed_chat_completion_with_the_key_and_the_tools(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    llm_server.script(Text("Hello!"))
    await turn(converse(), "Hi")
    [body] = llm_server.requests
    assert (body["model"], body["stream"]) == ("fake-model", True)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][-1]["content"] == "Hi"
    assert {t["function"]["name"] for t in body["tools"]} >= {"check_availability", "end_call"}
    assert llm_server.headers[0]["authorization"] == "Bearer test-key"
    assert llm_server.headers[0]["content-type"] == "application/json"


async def test_system_prompt_has_the_calendar_in_the_business_zone(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    llm_server.script(Text("Hello!"))
    conversation = converse(now=LATE_MONDAY)
    await turn(conversation, "Hi")
    prompt = llm_server.system_prompt()
    assert "Monday, November 30, 2026, 10:30 PM (America/New_York)" in prompt
    assert "Today: Monday, November 30, 2026 (2026-11-30)" in prompt
    assert "- Tuesday, December 1, 2026 (2026-12-01)" in prompt
    assert "- Monday, December 14, 2026 (2026-12-14)" in prompt
    assert "December 15" not in prompt
    assert f"The caller's number: {CALLER}" in prompt
    assert "Teeth cleaning (id: cleaning, 45 minutes; with Dr. Lee or Sam Rivera)" in prompt
    assert "Checkup (id: checkup, 30 minutes; with Dr. Lee)" in prompt
    assert "Never say or imply that an appointment is booked" in prompt
    assert "Clinic" in prompt
    tools = {t["function"]["name"] for t in llm_server.requests[0]["tools"]}
    assert tools == {
        "check_availability",
        "hold_slot",
        "book_appointment",
        "find_appointments",
        "reschedule_appointment",
        "cancel_appointment",
        "take_message",
        "join_waitlist",
        "transfer_to_human",
        "end_call",
    }
    assert llm_server.requests[0]["stream"] is True


async def test_the_prompt_opens_the_same_for_every_call_of_a_business(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    """Model servers cache the longest common prefix of a prompt: the calendar, then the clock
    and the caller come last, after the instructions, services, staff and policies every call
    shares."""
    llm_server.script(Text("Hello!"), Text("Hello!"), Text("Sure."))
    first = converse(now=LATE_MONDAY)
    await turn(first, "Hi")
    await turn(converse(now=LATE_MONDAY + timedelta(days=1, minutes=17), caller=None), "Hi")
    await turn(first, "Can I book?")
    one, other, again = (llm_server.requests[n] for n in range(3))
    a, b = llm_server.system_prompt(0), llm_server.system_prompt(1)
    shared = a.index("Today: ")
    assert a[:shared] == b[:shared] and a[shared:] != b[shared:]
    assert "Right now" not in a[:shared] and "caller's number" not in a[:shared]
    assert "Policies:" in a[:shared] and "Services" in a[:shared]
    assert one["tools"] == other["tools"] == again["tools"]
    # A later turn of the same call repeats the earlier request whole, then adds to it.
    assert again["messages"][: len(one["messages"])] == one["messages"]


async def test_greeting_opens_the_history_and_transcript(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    llm_server.script(Text("Sure."))
    conversation = converse()
    greeting = await conversation.greeting()
    assert greeting == "Thank you for calling Clinic. How can I help you today?"
    await turn(conversation, "A cleaning please.")
    messages = llm_server.requests[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "assistant", "user"]
    assert [(e["role"], e["text"]) for e in conversation.transcript] == [
        ("agent", greeting),
        ("caller", "A cleaning please."),
        ("agent", "Sure."),
    ]
    assert conversation.transcript[0]["at"] == "2026-11-30T12:00:00+00:00"


async def test_interrupted_keeps_only_what_the_caller_heard(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    llm_server.script(
        Text("I have Tuesday at 9 AM. I also have Wednesday at 1 PM. Which one?"),
        Text("Okay."),
    )
    conversation = converse()
    events = await turn(conversation, "When are you free?")
    assert len(events) == 3
    conversation.interrupted("I have Tuesday at 9 AM. I also")
    await turn(conversation, "Tuesday!")
    messages = llm_server.requests[1]["messages"]
    assert assistant_texts(messages) == ["I have Tuesday at 9 AM. I also"]
    assert messages[-1] == {"role": "user", "content": "Tuesday!"}
    agent = [e["text"] for e in conversation.transcript if e["role"] == "agent"]
    assert agent == ["I have Tuesday at 9 AM. I also", "Okay."]


async def test_barge_in_mid_stream_leaves_a_valid_history(
    converse: MakeConversation, llm_server: FakeLLM
) -> None:
    gate = threading.Event()
    llm_server.script(
        Text("Let me see. ", "Tuesday works. Anything else?", gate=gate), Text("Sure.")
    )
    conversation = converse()
    replies = conversation.reply("Is Tuesday free?")
    assert await anext(replies) == Speech("Let me see.")
    await replies.aclose()  # the caller barged in: the consumer stops listening
    gate.set()
    conversation.interrupted("Let me")
    await turn(conversation, "Actually, Wednesday.")
    messages = llm_server.requests[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert assistant_texts(messages) == ["Let me"]


class SlowScheduler(Scheduler):
    """The clinic's scheduler, but availability waits until the test lets it answer."""

    gate: asyncio.Event
    entered: asyncio.Event

    async def availability(self, **kwargs: Any) -> SlotSearch:  # type: ignore[override]
        self.entered.set()
        await asyncio.wait_for(self.gate.wait(), 10)
        return await super().availability(**kwargs)


def slow(scheduler: Scheduler) -> SlowScheduler:
    slow = SlowScheduler(engine=scheduler.engine, clock=scheduler.clock)
    slow.gate, slow.entered = asyncio.Event(), asyncio.Event()
    return slow


async def test_a_slow_tool_gets_a_filler_once(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    llm_server.script(CHECK, CHECK, Text("I have 9 AM."))
    slow_scheduler = slow(scheduler)
    events = []
    async for event in converse(scheduler=slow_scheduler, filler_after=0.05).reply("Tuesday?"):
        events.append(event)
        if isinstance(event, Filler):
            slow_scheduler.gate.set()
    assert events == [Filler("One moment while I check."), Speech("I have 9 AM.")]


async def test_barge_in_during_a_tool_keeps_its_result(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    llm_server.script(CHECK, Text("Okay, Wednesday then."))
    slow_scheduler = slow(scheduler)
    conversation = converse(scheduler=slow_scheduler, filler_after=0.05)

    async def listen() -> None:
        async for _ in conversation.reply("Tuesday?"):
            pass

    task = asyncio.create_task(listen())
    await asyncio.wait_for(slow_scheduler.entered.wait(), 5)  # the tool is running
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    slow_scheduler.gate.set()
    events = await turn(conversation, "Actually, Wednesday.")
    assert spoken(events) == "Okay, Wednesday then."
    messages = llm_server.requests[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[2]["tool_calls"][0]["id"] == messages[3]["tool_call_id"]
    assert '"slots"' in messages[3]["content"]
