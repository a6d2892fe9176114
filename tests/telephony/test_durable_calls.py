"""Calls that outlive their worker: two running apps over one database stand for two workers
behind Twilio's load balancer (each has its own switchboard and in-memory sessions). A call's
turns, relay sockets, `<Connect action>` callback, status callback and idle expiry may each reach
either one, and the call still goes on as one conversation and ends as one lead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy

from booking.clock import FixedClock
from booking.conversations import StoredConversation, call_key
from booking.models import Call as CallRow
from booking.scheduler import Scheduler
from telephony.relay import RECOVERED
from tests.conftest import count_rows
from tests.fakes.llm_server import Call, FakeLLM, Text, ToolCalls
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_voice import TwiML
from tests.telephony.conftest import CALLER, CLINIC, PUBLIC_URL, Desk, running_desk
from tests.telephony.test_relay import MONDAY, book_first

SID = "CA" + "d" * 32
CHECK_MONDAY = ToolCalls(
    Call("check_availability", {"service": "cleaning", "date": MONDAY, "staff": "lee"})
)


class Sockets:
    """The app's call observer, here to tell when a relay socket has handed its call over."""

    def __init__(self) -> None:
        self.closed = 0
        self.changed = asyncio.Event()

    def call_started(self, channel: str) -> None:
        pass

    def relay_opened(self) -> None:
        pass

    def relay_closed(self) -> None:
        self.closed += 1
        self.changed.set()

    def first_token(self, channel: str, seconds: float) -> None:
        pass


@asynccontextmanager
async def two_workers(
    scheduler: Scheduler, llm: FakeLLM, rest: FakeTwilioRest, mode: str
) -> AsyncIterator[tuple[Desk, Desk]]:
    """Workers A and B: two apps, each with its own scheduler object, over the same database
    and the same (fixed) clock; the background jobs are off (the tests run them by hand)."""
    other = Scheduler(engine=scheduler.engine, clock=scheduler.clock)
    async with (
        running_desk(scheduler, llm, rest, voice_mode=mode, run_jobs=False) as a,
        running_desk(other, llm, rest, voice_mode=mode, run_jobs=False) as b,
    ):
        for desk in (a, b):
            desk.app.state.call_observer = Sockets()
        yield a, b


@pytest.fixture
async def gather_pair(
    scheduler: Scheduler, llm: FakeLLM, rest: FakeTwilioRest
) -> AsyncIterator[tuple[Desk, Desk]]:
    async with two_workers(scheduler, llm, rest, "gather") as pair:
        yield pair


@pytest.fixture
async def relay_pair(
    scheduler: Scheduler, llm: FakeLLM, rest: FakeTwilioRest
) -> AsyncIterator[tuple[Desk, Desk]]:
    async with two_workers(scheduler, llm, rest, "relay") as pair:
        yield pair


def form(**extra: str) -> dict[str, str]:
    return {"CallSid": SID, "From": CALLER, "To": CLINIC, "CallStatus": "in-progress", **extra}


async def ring(desk: Desk) -> TwiML:
    answer = await desk.twilio.post("/twilio/voice", **form(CallStatus="ringing"))
    assert answer.status == 200, answer.xml
    return answer


def relay_socket(desk: Desk, url: str, *, setup: bool = True) -> Any:
    return desk.twilio.relay(url, call_sid=SID, from_number=CALLER, to_number=CLINIC, setup=setup)


async def handed_over(desk: Desk, sockets: int = 1) -> None:
    """Wait until `sockets` relay sockets of `desk` closed and saved their call."""
    observer: Sockets = desk.app.state.call_observer
    async with asyncio.timeout(5):
        while observer.closed < sockets:
            observer.changed.clear()
            await observer.changed.wait()
    await desk.board.drain()


async def gather(desk: Desk, words: str) -> TwiML:
    answer = await desk.twilio.post("/twilio/gather", **form(), SpeechResult=words)
    assert answer.verbs == ["Gather"], answer.xml
    return answer


async def hang_up(desk: Desk, *others: Desk) -> None:
    closed = await desk.twilio.post(
        "/twilio/status", **form(CallStatus="completed"), CallDuration="95"
    )
    assert closed.status == 204
    for d in (desk, *others):
        await d.board.drain()
        if d.board.texts is not None:
            await d.board.texts.drain()  # type: ignore[attr-defined]


def spoken(request: dict[str, Any]) -> list[str]:
    """What was said in the history a model request carried (no system prompt, no tools)."""
    return [
        m["content"]
        for m in request["messages"]
        if m["role"] in ("user", "assistant") and m.get("content")
    ]


async def stored(desk: Desk) -> StoredConversation:
    call = await desk.board.calls.get_by_sid(SID)
    assert call is not None and desk.board.store is not None
    found = await desk.board.store.load(call_key(call.id))
    assert found is not None
    return found


async def call_row(desk: Desk) -> CallRow:
    call = await desk.board.calls.get_by_sid(SID)
    assert call is not None
    return call


def said_by(call: CallRow, role: str) -> list[str]:
    return [e["text"] for e in call.transcript if e["role"] == role]


def rows(desk: Desk, sql: str) -> list[tuple[Any, ...]]:
    with desk.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sqlalchemy.text(sql))]


def leads(desk: Desk, where: str = "1=1", **params: object) -> int:
    return count_rows(desk.engine, f"SELECT count(*) FROM lead WHERE {where}", **params)


# ---- gather: every turn may reach another worker ----------------------------------------------


async def test_gather_turns_alternating_between_workers_are_one_conversation(
    gather_pair: tuple[Desk, Desk],
) -> None:
    a, b = gather_pair
    llm = a.llm
    greeting = (await ring(a)).find("Gather/Say").text
    assert greeting
    turns = [
        (
            a,
            "I'd like a teeth cleaning with Dr. Lee on Monday.",
            [CHECK_MONDAY, Text("Dr. Lee has Monday at 9 AM. Shall I book that?")],
        ),
        (
            b,
            "Yes please, my name is Ann Smith.",
            [book_first("Ann Smith"), Text("You're booked for Monday at 9 AM with Dr. Lee.")],
        ),
        (a, "Where are you?", [Text("We're at 1 Main Street. Anything else?")]),
        (b, "No, that's all.", [Text("Thanks for calling. Goodbye!")]),
    ]
    history = [greeting]
    for desk, words, script in turns:
        llm.script(*script)
        first = len(llm.requests)
        answer = await gather(desk, words)
        assert llm.remaining == 0
        # The model saw every earlier turn, whichever worker took it, and the greeting once.
        assert spoken(llm.requests[first]) == [*history, words]
        history += [words, answer.said]

    await hang_up(a, b)  # on A, whose copy is older than B's last turn
    [(appointment_id, status)] = rows(a, "SELECT id, status FROM appointment")
    assert status == "confirmed"
    assert leads(a) == 1
    assert leads(a, "outcome = 'booked' AND appointment_id = :a", a=appointment_id) == 1
    [sms] = await asyncio.to_thread(a.rest.wait_for, 1)
    assert sms.to == CALLER and "booked for Mon Dec 7 at 9:00 AM" in sms.body
    assert len(a.rest.messages) == 1
    assert rows(a, "SELECT key FROM sms_message") == [(f"{appointment_id}:booked",)]
    call = await call_row(a)
    assert (call.status, call.outcome, call.duration_seconds) == ("completed", "booked", 95)
    assert said_by(call, "caller") == [words for _, words, _ in turns]
    assert said_by(call, "agent") == history[::2]
    assert len(a.board.sessions) == 0 and (await stored(b)).ended_at is not None


# ---- relay: a socket that comes back to another worker ----------------------------------------


async def test_a_relay_socket_reconnected_to_another_worker_says_it_was_cut_off(
    relay_pair: tuple[Desk, Desk],
) -> None:
    a, b = relay_pair
    llm = a.llm
    opened = await ring(a)
    greeting = opened.find("Connect/ConversationRelay").attrib["welcomeGreeting"]
    llm.script(Text("Sure. Which day suits you?"), Text("Monday works. Morning or afternoon?"))
    async with relay_socket(a, opened.relay_url) as relay:
        one = await relay.say("I'd like a checkup.")
        two = await relay.say("Monday, please.")
    await handed_over(a)  # the socket dropped

    llm.script(Text("Morning it is. Can I have your name?"))
    async with relay_socket(b, opened.relay_url) as relay:  # Twilio reconnects, to B
        back = await relay.turn()
        assert (back.text, back.end) == (RECOVERED, None)
        first = len(llm.requests)
        three = await relay.say("In the morning.")
    await handed_over(b)
    assert spoken(llm.requests[first]) == [
        greeting,
        "I'd like a checkup.",
        one.text,
        "Monday, please.",
        two.text,
        RECOVERED,
        "In the morning.",
    ]
    assert len(llm.requests) == first + 1

    await hang_up(a, b)
    assert leads(a) == 1
    call = await call_row(b)
    assert said_by(call, "agent") == [greeting, one.text, two.text, RECOVERED, three.text]
    assert call.status == "completed" and call.ended_at is not None


async def test_a_failed_relay_session_reconnects_through_connect_action_on_any_worker(
    relay_pair: tuple[Desk, Desk],
) -> None:
    a, b = relay_pair
    llm = a.llm
    opened = await ring(a)
    greeting = opened.find("Connect/ConversationRelay").attrib["welcomeGreeting"]
    llm.script(Text("Happy to help. What would you like to book?"))
    async with relay_socket(a, opened.relay_url) as relay:
        one = await relay.say("Hello, I need an appointment.")
    await handed_over(a)

    # Twilio: the websocket dropped (64105); the call is still up. B never saw this call.
    answer = await b.twilio.post(
        "/twilio/connect-action",
        **form(SessionId="VX" + "d" * 32, SessionStatus="failed"),
        ErrorCode="64105",
        ErrorMessage="WebSocket connection closed unexpectedly",
    )
    assert answer.verbs == ["Connect"], answer.xml
    connect = answer.find("Connect")
    assert connect.attrib["action"] == f"{PUBLIC_URL}/twilio/connect-action"
    relay_el = answer.find("Connect/ConversationRelay")
    assert relay_el.attrib["welcomeGreeting"] == RECOVERED
    query = parse_qs(urlsplit(answer.relay_url).query)
    assert query["resumed"] == ["1"] and query["call"] == [(await call_row(a)).id]

    llm.script(Text("A checkup, then. Which day?"))
    async with relay_socket(b, answer.relay_url) as relay:
        # Twilio's welcome greeting said RECOVERED: the socket's first words answer the caller.
        first = len(llm.requests)
        two = await relay.say("A checkup, please.")
        assert RECOVERED not in two.text and two.text == "A checkup, then. Which day?"
    await handed_over(b)
    assert spoken(llm.requests[first]) == [
        greeting,
        "Hello, I need an appointment.",
        one.text,
        RECOVERED,  # heard from the welcome greeting, so in the history once
        "A checkup, please.",
    ]

    # A session that ended without a hand-off (the caller hung up): nothing to go on with.
    done = await a.twilio.post("/twilio/connect-action", **form(SessionStatus="completed"))
    assert done.verbs == ["Hangup"], done.xml
    await hang_up(b, a)
    assert leads(a) == 1
    assert said_by(await call_row(a), "agent") == [greeting, one.text, RECOVERED, two.text]


async def test_a_replayed_prompt_before_setup_is_answered_from_the_saved_call(
    relay_pair: tuple[Desk, Desk],
) -> None:
    a, b = relay_pair
    llm = a.llm
    opened = await ring(a)
    greeting = opened.find("Connect/ConversationRelay").attrib["welcomeGreeting"]
    llm.script(Text("Of course. Which service?"))
    async with relay_socket(a, opened.relay_url) as relay:
        one = await relay.say("Can I book something?")
    await handed_over(a)

    # applicationReconnect: Twilio replays what it buffered, with no setup first.
    llm.script(Text("Yes, I'm here. A cleaning takes 45 minutes."))
    async with relay_socket(b, opened.relay_url, setup=False) as relay:
        first = len(llm.requests)
        two = await relay.say("A cleaning. Hello, are you there?")
        assert two.text == "Yes, I'm here. A cleaning takes 45 minutes."
    await handed_over(b)
    assert spoken(llm.requests[first]) == [
        greeting,
        "Can I book something?",
        one.text,
        "A cleaning. Hello, are you there?",
    ]
    await hang_up(a, b)
    assert leads(a) == 1
    assert said_by(await call_row(a), "caller") == [
        "Can I book something?",
        "A cleaning. Hello, are you there?",
    ]


# ---- the end of a call that nobody closed -----------------------------------------------------


async def test_an_idle_call_is_ended_once_by_racing_workers(
    gather_pair: tuple[Desk, Desk], scheduler: Scheduler
) -> None:
    a, b = gather_pair
    await ring(a)
    a.llm.script(Text("Sure, I'll have someone call you back. What's your name?"))
    await gather(b, "Could someone call me back about a cleaning?")
    await b.board.drain()
    assert await a.board.expire_idle() == 0  # not idle yet

    assert isinstance(scheduler.clock, FixedClock)
    scheduler.clock.at += timedelta(seconds=a.board.call_idle_seconds + 1)
    ended = await asyncio.gather(a.board.expire_idle(), b.board.expire_idle())
    assert sorted(ended) == [0, 1]
    assert await a.board.expire_idle() == 0 and await b.board.expire_idle() == 0
    assert leads(a) == 1
    assert leads(a, "outcome = 'callback' AND reason LIKE '%call me back%'") == 1
    call = await call_row(a)
    assert call.status == "completed" and call.ended_at is not None
    assert said_by(call, "caller") == ["Could someone call me back about a cleaning?"]
    assert (await stored(a)).ended_at is not None

    await hang_up(a, b)  # the status callback after all, late: nothing changes
    assert leads(a) == 1
    assert (await call_row(b)).ended_at == call.ended_at


# ---- a worker whose copy is older than the store's --------------------------------------------


async def test_a_stale_copy_never_overwrites_a_newer_turn_and_is_replaced_by_it(
    gather_pair: tuple[Desk, Desk],
) -> None:
    a, b = gather_pair
    llm = a.llm
    await ring(a)
    llm.script(Text("Hello! How can I help?"))
    await gather(a, "Hi there.")
    await a.board.drain()
    old = a.board.sessions.get(SID)
    assert old is not None and old.version == (await stored(a)).version

    llm.script(Text("We're open nine to five."))
    await gather(b, "When are you open?")
    await b.board.drain()
    newer = await stored(b)
    assert newer.version > old.version

    # A's next resume restores B's version; its own copy is given up, not saved over B's.
    again = await a.board.resume(
        call_sid=SID, from_number=CALLER, to_number=CLINIC, channel="gather"
    )
    assert again is not old and old.stale
    assert again.version == newer.version
    assert [e["text"] for e in again.transcript if e["role"] == "caller"] == [
        "Hi there.",
        "When are you open?",
    ]
    await a.board.save(old)
    assert (await stored(a)).version == newer.version

    # B takes another turn; A's copy (not yet known to be stale) is saved late: it loses.
    llm.script(Text("Yes, on Saturdays too."))
    await gather(b, "Saturdays too?")
    await b.board.drain()
    latest = await stored(b)
    again.silences += 1  # a change of A's (a copy with none writes nothing)
    await a.board.save(again)
    assert again.stale and a.board.sessions.get(SID) is None
    assert (await stored(a)).version == latest.version
    assert latest.state == (await stored(a)).state

    llm.script(Text("Goodbye!"))
    first = len(llm.requests)
    await gather(a, "Thanks, bye.")
    assert spoken(llm.requests[first])[-3:] == [
        "Saturdays too?",
        "Yes, on Saturdays too.",
        "Thanks, bye.",
    ]
    await hang_up(b, a)
    assert leads(a) == 1
    assert said_by(await call_row(a), "caller") == [
        "Hi there.",
        "When are you open?",
        "Saturdays too?",
        "Thanks, bye.",
    ]
