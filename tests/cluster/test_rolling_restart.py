"""A rolling restart during 50 concurrent relay calls: both workers are stopped with SIGTERM (as a
deploy does) and started again, one after the other, while every call goes on. Callers whose
socket closed come back as Twilio's application reconnect does, to whichever worker the proxy
reaches, and say again what was cut off. No call, lead or transcript line is lost, and no slot is
booked twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from websockets.exceptions import WebSocketException

from telephony.relay import RECOVERED
from tests.cluster.harness import CLINIC, Cluster, call_form
from tests.cluster.test_calls_survive_workers import database, llm, rest, rows, running
from tests.fakes.llm_server import Call, FakeLLM, Text, ToolCalls
from tests.fakes.twilio_rest import FakeTwilioRest

__all__ = ["database", "llm", "rest"]  # the fixtures this module shares
pytestmark = pytest.mark.postgres

log = logging.getLogger(__name__)
CALLS = 50
ASK = re.compile(r"^Cleaning with Dr\. Lee on (\d{4}-\d\d-\d\d), please\.$")


def weekdays(first: date, count: int) -> list[str]:
    days: list[str] = []
    day = first
    while len(days) < count:
        if day.weekday() < 5 and day != date(2026, 12, 24):
            days.append(day.isoformat())
        day += timedelta(days=1)
    return days


DAYS = weekdays(date(2026, 12, 7), CALLS // 2)


def turns(n: int) -> list[str]:
    """Call n's three turns: half the calls book a day of their own, half only ask."""
    if n % 2 == 0:
        return [
            f"Cleaning with Dr. Lee on {DAYS[n // 2]}, please.",
            f"Yes please, my name is Caller {n}.",
            "That's all, thanks.",
        ]
    return [f"What are your hours? I'm caller {n}.", "And where are you?", "That's all, thanks."]


class Receptionist:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, messages: list[dict[str, Any]]) -> Text | ToolCalls:
        users = [str(m.get("content") or "") for m in messages if m["role"] == "user"]
        last = messages[-1]
        if last["role"] == "tool":
            result = json.loads(last["content"])
            if "slots" in result:
                return Text("The first opening that day is at 9 AM. Shall I book it?")
            return Text("You're booked. See you then.")
        said = users[-1]
        if match := ASK.match(said):
            return ToolCalls(Call("check_availability", {"service": "cleaning", "date": match[1]}))
        if said.startswith("Yes please"):
            results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
            slots = [r["slots"] for r in results if "slots" in r and r["slots"]]
            if not slots or not ASK.match(users[0]):
                self.problems.append(f"a booking turn without its history: {users}")
                return Text("Sorry, which day?")
            name = said.removeprefix("Yes please, my name is ").rstrip(".")
            return ToolCalls(
                Call("book_appointment", {"slot_id": slots[-1][0]["slot_id"], "name": name})
            )
        if said == "And where are you?" and not users[0].startswith("What are your hours"):
            self.problems.append(f"turn 2 without turn 1: {users}")
        if said == "That's all, thanks." and len(set(users)) < 3:
            self.problems.append(f"turn 3 without the earlier turns: {users}")
        return Text("We're open weekdays nine to five, on Main Street. Anything else?")


LIVE: set[int] = set()  # calls between ringing and hang-up
RECOVERIES: list[int] = []  # calls that heard the recovery line, once per reconnection


async def one_call(cluster: Cluster, n: int, restarted: asyncio.Event) -> list[str]:
    """Call n from ringing to hang-up, through every restart; what the caller heard. The caller
    says goodbye only once both workers have been restarted, so every call is live through both
    stops however slow the machine is."""
    await asyncio.sleep(n * 0.08)  # calls ring over four seconds
    LIVE.add(n)
    twilio = cluster.twilio
    assert twilio is not None
    sid = f"CA{n:032d}"
    caller = f"+1202555{1000 + n}"
    form = {**call_form(sid, CallStatus="ringing"), "From": caller}
    answer = None
    for _ in range(100):
        with contextlib.suppress(Exception):
            answer = await twilio.post("/twilio/voice", **form)
            if answer.status == 200:
                break
        await asyncio.sleep(0.2)
    assert answer is not None and answer.status == 200
    heard: list[str] = []
    script, done = turns(n), 0
    for _ in range(60):
        if done == len(script):
            break
        try:
            async with twilio.relay(
                answer.relay_url, call_sid=sid, from_number=caller, to_number=CLINIC
            ) as relay:
                while done < len(script):
                    if done == len(script) - 1:
                        await restarted.wait()
                    turn = await relay.say(script[done], wait=30)
                    if turn.text.strip() == RECOVERED:  # came back: then the answer
                        RECOVERIES.append(n)
                        turn = await relay.turn(wait=30)
                    heard.append(turn.text)
                    done += 1
                    await asyncio.sleep(1.5)  # the caller listens, then speaks again
        except (WebSocketException, OSError, TimeoutError):
            await asyncio.sleep(0.2)  # Twilio reconnects the application
    assert done == len(script), f"call {n} got stuck at turn {done}"
    for _ in range(100):
        with contextlib.suppress(Exception):
            hung = await twilio.post(
                "/twilio/status", **{**call_form(sid, CallStatus="completed"), "From": caller}
            )
            if hung.status == 204:
                break
        await asyncio.sleep(0.2)
    LIVE.discard(n)
    return heard


async def restart_each(cluster: Cluster, restarted: asyncio.Event) -> tuple[list[int], list[int]]:
    """Stop and start each worker in turn; their exit codes, and how many calls were live as
    each was stopped."""
    codes, live = [], []
    try:
        for name in ("a", "b"):
            await asyncio.sleep(2.0)
            live.append(len(LIVE))
            codes.append(await asyncio.to_thread(cluster.workers[name].terminate, 30))
            worker = cluster.restart(name)
            await asyncio.to_thread(worker.wait_ready)
    finally:
        restarted.set()
    return codes, live


async def test_a_rolling_restart_during_50_calls_loses_nothing(
    pg_url: str, database: Engine, llm: FakeLLM, rest: FakeTwilioRest, tmp_path: Path
) -> None:
    brain = Receptionist()
    llm.script(*([brain] * (CALLS * 12)))
    async with running(pg_url, llm, rest, tmp_path, names=("a", "b")) as cluster:
        restarted = asyncio.Event()
        calls = [asyncio.create_task(one_call(cluster, n, restarted)) for n in range(CALLS)]
        codes, live = await restart_each(cluster, restarted)
        heard = await asyncio.gather(*calls)
        assert all(live), f"calls live as each worker stopped: {live}"
        assert RECOVERIES, "no call was carried over to another worker"
        log.info("live calls at each stop: %s; reconnections heard: %d", live, len(RECOVERIES))
        # uvicorn re-raises the SIGTERM it handled once shut down: a clean stop ends by it.
        assert codes == [-signal.SIGTERM] * 2, cluster.logs_text()
        assert all(len(h) == 3 for h in heard)
        assert brain.problems == []
        assert rows(database, "SELECT count(*) FROM call WHERE status = 'completed'") == [(CALLS,)]
        assert rows(database, "SELECT count(*) FROM lead") == [(CALLS,)]
        booked = rows(database, "SELECT start FROM appointment WHERE status = 'confirmed'")
        assert len(booked) == CALLS // 2 and len(set(booked)) == CALLS // 2
        for sid, transcript in rows(database, "SELECT call_sid, transcript FROM call"):
            entries = transcript if isinstance(transcript, list) else json.loads(transcript)
            said = [e["text"] for e in entries if e["role"] == "caller"]
            n = int(sid[2:])
            assert [t for t in turns(n) if t in said] == turns(n), (sid, said)
        texts = await asyncio.to_thread(rest.wait_for, CALLS // 2, timeout=30)
        assert len(texts) == CALLS // 2
