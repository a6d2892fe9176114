"""A call outlives the worker serving it. Three real `frontdesk serve` processes share one
PostgreSQL database behind a loopback proxy; a call books in three turns and the worker serving it
is killed with SIGKILL (a) between turns, (b) while `book_appointment` waits on the database, (c)
while the answer streams. The simulated Twilio comes back to another worker, both ways Twilio
does: reconnecting the application websocket (`applicationReconnect`), or asking the
`<Connect action>` URL for TwiML after the session failed (error 64105). The scripted LLM checks
that every request carries the call's earlier turns; the call ends on a third worker with exactly
one booking, one lead and one confirmation text, and the greeting said once. The same with
Gather turns moving between workers, a killed worker's turn retried on another."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from websockets.exceptions import ConnectionClosed

from booking.db import make_engine, migrate
from telephony.relay import RECOVERED
from tests.cluster.harness import CALLER, CLINIC, Cluster, call_form, env_without_frontdesk
from tests.conftest import seed_clinic
from tests.fakes.llm_server import Call, FakeLLM, Text, ToolCalls
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_voice import RelayClient

pytestmark = pytest.mark.postgres

TURN1 = "Hi, I'd like a teeth cleaning with Dr. Lee on Monday."
TURN2 = "Yes please, my name is Ann Smith."
TURN3 = "That's all, thanks."
MONDAY = "2026-12-07"
BOOKED = "You're booked for Monday at 9 AM with Dr. Lee. "
TEXTED = "We'll text you a confirmation."


class Receptionist:
    """The scripted model: answers from the request's messages (so a repeated or replayed turn
    gets the same answer), and notes every request that lacks the call's earlier turns."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.gate: threading.Event | None = None  # hold the booking's answer after a sentence

    def __call__(self, messages: list[dict[str, Any]]) -> Text | ToolCalls:
        users = [str(m.get("content") or "") for m in messages if m["role"] == "user"]
        results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
        last = messages[-1]
        if last["role"] == "tool":
            if "slots" in json.loads(last["content"]):
                return Text("Dr. Lee has Monday at 9 AM. Shall I book that?")
            if self.gate is not None:
                return Text(BOOKED, TEXTED, gate=self.gate)
            return Text(BOOKED + TEXTED)
        said = users[-1] if users else ""
        if said == TURN1:
            return ToolCalls(
                Call("check_availability", {"service": "cleaning", "date": MONDAY, "staff": "lee"})
            )
        if said == TURN2:
            slots = [r["slots"] for r in results if "slots" in r]
            if TURN1 not in users or not slots:
                self.problems.append(f"turn 2 without turn 1's history: {users}")
                return Text("Sorry, what would you like?")
            slot = slots[-1][0]["slot_id"]
            return ToolCalls(Call("book_appointment", {"slot_id": slot, "name": "Ann Smith"}))
        if said == TURN3:
            if TURN1 not in users or TURN2 not in users:
                self.problems.append(f"turn 3 without the earlier turns: {users}")
            return Text("Glad to help. Goodbye!")
        return Text("How can I help?")


@pytest.fixture
def llm() -> AsyncIterator[FakeLLM]:
    server = FakeLLM().start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
def rest() -> AsyncIterator[FakeTwilioRest]:
    from tests.cluster.harness import ACCOUNT_SID, TOKEN

    server = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=TOKEN).start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
def database(pg_url: str) -> AsyncIterator[Engine]:
    engine = make_engine(pg_url)
    migrate(engine)
    seed_clinic(engine)
    yield engine  # type: ignore[misc]
    engine.dispose()


@contextlib.asynccontextmanager
async def running(
    pg_url: str,
    llm: FakeLLM,
    rest: FakeTwilioRest,
    logs: Path,
    names: tuple[str, ...] = ("a", "b", "c"),
    **settings: str,
) -> AsyncIterator[Cluster]:
    env = {**env_without_frontdesk(), "FRONTDESK_DATABASE_URL": pg_url, **settings}
    c = Cluster(env, logs, llm, rest)
    try:
        await c.start(list(names))
        yield c
    finally:
        await c.aclose()


@pytest.fixture
async def cluster(
    pg_url: str, database: Engine, llm: FakeLLM, rest: FakeTwilioRest, tmp_path: Path
) -> AsyncIterator[Cluster]:
    async with running(pg_url, llm, rest, tmp_path) as c:
        yield c


@pytest.fixture
async def gather_cluster(
    pg_url: str, database: Engine, llm: FakeLLM, rest: FakeTwilioRest, tmp_path: Path
) -> AsyncIterator[Cluster]:
    async with running(pg_url, llm, rest, tmp_path, FRONTDESK_VOICE_MODE="gather") as c:
        yield c


def rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql)).all())


async def until(check: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.05)


def waiting_on_a_lock(engine: Engine) -> bool:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    return bool(rows(engine, sql)[0][0])


@contextlib.contextmanager
def appointments_locked(engine: Engine) -> Any:
    """Hold a lock that makes every booking's INSERT wait (reads go on)."""
    conn = engine.connect()
    tx = conn.begin()
    conn.execute(sa.text("LOCK TABLE appointment IN EXCLUSIVE MODE"))
    try:
        yield
    finally:
        tx.rollback()
        conn.close()


async def text_until(relay: RelayClient, words: str) -> None:
    """Read the tokens Twilio gets until one contains `words`."""
    while True:
        message = await relay.receive(wait=15)
        if message["type"] == "text" and words in message["token"]:
            return


async def dropped(relay: RelayClient) -> None:
    """The socket closes under Twilio (the proxy lost the worker)."""
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            await relay.receive(wait=10)


async def finish(cluster: Cluster, sid: str, engine: Engine, llm: Receptionist) -> None:
    """Hang up through the third worker, then check the call ended whole, once."""
    assert cluster.twilio is not None
    cluster.target = "c"
    done = await cluster.twilio.post(
        "/twilio/status", **call_form(sid, CallStatus="completed", CallDuration="90")
    )
    assert done.status == 204, done.xml
    assert llm.problems == []
    assert rows(engine, "SELECT count(*) FROM appointment WHERE status = 'confirmed'") == [(1,)]
    assert rows(engine, "SELECT outcome FROM lead") == [("booked",)]
    assert rows(engine, "SELECT status, outcome FROM call") == [("completed", "booked")]
    texts = await asyncio.to_thread(cluster.rest.wait_for, 1, timeout=15)
    await asyncio.sleep(1.0)  # a second text would come from a retry or another worker
    assert len(cluster.rest.messages) == 1, [m.body for m in cluster.rest.messages]
    assert texts[0].to == CALLER and "Dec 7" in texts[0].body
    [(transcript,)] = rows(engine, "SELECT transcript FROM call")
    entries = transcript if isinstance(transcript, list) else json.loads(transcript)
    spoken = [e["text"] for e in entries if e["role"] == "agent"]
    callers = [e["text"] for e in entries if e["role"] == "caller"]
    assert sum("Clinic" in t for t in spoken[:1]) == 1  # the greeting opens the transcript
    assert sum(t == spoken[0] for t in spoken) == 1, spoken  # ... once
    assert TURN1 in callers and TURN2 in callers and TURN3 in callers
    assert any("Glad to help" in t for t in spoken)


@pytest.mark.parametrize("way", ["reconnect", "action"])
@pytest.mark.parametrize("kill", ["between turns", "while booking", "while answering"])
async def test_a_relay_call_survives_its_worker_being_killed(
    cluster: Cluster, database: Engine, llm: FakeLLM, kill: str, way: str
) -> None:
    brain = Receptionist()
    llm.script(*([brain] * 40))
    twilio = cluster.twilio
    assert twilio is not None
    sid = "CA" + "5" * 32
    cluster.target = "a"
    answer = await twilio.post("/twilio/voice", **call_form(sid, CallStatus="ringing"))
    assert answer.status == 200, answer.xml
    greeting = answer.find(".//ConversationRelay").attrib["welcomeGreeting"]
    assert "Clinic" in greeting
    url = answer.relay_url
    repeat = True  # the caller says turn 2 (again) on the new worker
    async with twilio.relay(url, call_sid=sid, from_number=CALLER, to_number=CLINIC) as relay:
        first = await relay.say(TURN1)
        assert "Monday at 9 AM" in first.text
        if kill == "between turns":
            cluster.workers["a"].kill()
        elif kill == "while booking":
            with appointments_locked(database):
                await relay.prompt(TURN2)
                await until(lambda: waiting_on_a_lock(database))
                cluster.workers["a"].kill()
        else:
            brain.gate = threading.Event()
            await relay.prompt(TURN2)
            await text_until(relay, "booked")  # the caller hears the first sentence...
            cluster.workers["a"].kill()  # ... and the worker dies before the second
            brain.gate.set()
        await dropped(relay)
    brain.gate = None
    cluster.target = "b"
    if way == "action":
        # Twilio's <Connect action> callback after the session failed: TwiML that reconnects.
        after = await twilio.post(
            "/twilio/connect-action",
            **call_form(sid),
            SessionId="VX" + "5" * 32,
            SessionStatus="failed",
            SessionDuration="20",
            ErrorCode="64105",
            ErrorMessage="ConversationRelay: Websocket ended",
        )
        assert after.status == 200, after.xml
        relay_noun = after.find(".//ConversationRelay")
        assert relay_noun.attrib["welcomeGreeting"] == RECOVERED  # Twilio says it, not us
        url = relay_noun.attrib["url"]
    async with twilio.relay(url, call_sid=sid, from_number=CALLER, to_number=CLINIC) as relay:
        if way == "reconnect":
            recovered = await relay.turn()
            assert recovered.text.strip() == RECOVERED
        if repeat:
            second = await relay.say(TURN2)
            assert "booked" in second.text, second.text
        third = await relay.say(TURN3)
        assert "Goodbye" in third.text
    await finish(cluster, sid, database, brain)


@pytest.mark.parametrize("kill", ["between turns", "while booking", "while answering"])
async def test_gather_turns_move_between_workers_and_survive_a_kill(
    gather_cluster: Cluster, database: Engine, llm: FakeLLM, kill: str
) -> None:
    cluster = gather_cluster
    brain = Receptionist()
    llm.script(*([brain] * 40))
    twilio = cluster.twilio
    assert twilio is not None
    sid = "CA" + "6" * 32

    async def gather(worker: str, speech: str) -> str:
        cluster.target = worker
        answer = await twilio.post("/twilio/gather", **call_form(sid), SpeechResult=speech)
        assert answer.status == 200, answer.xml
        return answer.said

    cluster.target = "a"
    first = await twilio.post("/twilio/voice", **call_form(sid, CallStatus="ringing"))
    assert first.status == 200 and "Clinic" in first.said, first.xml
    assert "Monday at 9 AM" in await gather("b", TURN1)
    if kill == "between turns":
        cluster.workers["b"].kill()
        second = await gather("a", TURN2)
    else:
        if kill == "while booking":
            with appointments_locked(database):
                turn = asyncio.create_task(gather("b", TURN2))
                await until(lambda: waiting_on_a_lock(database))
                cluster.workers["b"].kill()
        else:
            brain.gate = threading.Event()
            turn = asyncio.create_task(gather("b", TURN2))
            # Turn 1 made two model requests; turn 2's second is the booking's answer, which
            # streams its first sentence and is held there.
            await until(lambda: len(llm.requests) >= 4)
            await asyncio.sleep(0.3)
            cluster.workers["b"].kill()
            brain.gate.set()
        with pytest.raises(httpx.HTTPError):
            await turn  # Twilio gets no answer from the dead worker ...
        brain.gate = None
        second = await gather("a", TURN2)  # ... and asks again (its fallback URL, another worker)
    assert "booked" in second, second
    assert "Goodbye" in await gather("a", TURN3)
    await finish(cluster, sid, database, brain)


async def test_sigterm_lets_the_turn_in_flight_finish_then_hands_the_call_over(
    cluster: Cluster, database: Engine, llm: FakeLLM
) -> None:
    """A deploy stops worker a while it streams an answer: a stops taking calls (/readyz 503),
    finishes the answer, closes the socket (1012) and exits; the call goes on on b."""
    brain = Receptionist()
    llm.script(*([brain] * 40))
    twilio = cluster.twilio
    assert twilio is not None
    sid = "CA" + "8" * 32
    cluster.target = "a"
    answer = await twilio.post("/twilio/voice", **call_form(sid, CallStatus="ringing"))
    async with twilio.relay(
        answer.relay_url, call_sid=sid, from_number=CALLER, to_number=CLINIC
    ) as relay:
        assert "9 AM" in (await relay.say(TURN1)).text
        brain.gate = threading.Event()
        await relay.prompt(TURN2)
        await text_until(relay, "booked")
        worker = cluster.workers["a"]
        assert worker.process is not None
        worker.process.send_signal(signal.SIGTERM)
        port = worker.port
        await until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 503, 5
        )
        brain.gate.set()
        rest_of_turn = await relay.turn()  # the answer ends whole ...
        assert TEXTED in rest_of_turn.text
        with pytest.raises(ConnectionClosed) as closed:
            await relay.receive(wait=15)  # ... then the socket closes as a restart does
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert await asyncio.to_thread(worker.process.wait, 30) == -signal.SIGTERM
    brain.gate = None
    cluster.target = "b"
    async with twilio.relay(
        answer.relay_url, call_sid=sid, from_number=CALLER, to_number=CLINIC
    ) as relay:
        assert (await relay.turn()).text.strip() == RECOVERED
        assert "Goodbye" in (await relay.say(TURN3)).text
    await finish(cluster, sid, database, brain)
