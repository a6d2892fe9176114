"""`/metrics`: Prometheus's text format, behind the API key, with figures that move when a call
is answered, a turn is spoken and a confirmation is texted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from booking.scheduler import Scheduler
from tests.fakes.llm_server import Call, FakeLLM, Text, ToolCalls
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.telephony.conftest import ACCOUNT_SID, CALLER, CLINIC, TOKEN, Desk, running_desk
from tests.telephony.test_relay import MONDAY, book_first, call, hang_up, sent

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
async def desk(scheduler: Scheduler) -> AsyncIterator[Desk]:
    """The telephony tests' running desk (a fake LLM and a fake Twilio REST API)."""
    llm = FakeLLM().start()
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=TOKEN).start()
    try:
        async with running_desk(scheduler, llm, rest) as running:
            yield running
    finally:
        llm.stop()
        rest.stop()


async def scrape(desk: Desk, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=desk.url) as client:
        return await client.get("/metrics", headers=headers)


async def test_metrics_need_the_api_key(desk: Desk) -> None:
    assert (await scrape(desk)).status_code == 401
    assert (await scrape(desk, authorization="Bearer wrong")).status_code == 401
    assert (await scrape(desk, **{"x-api-key": "k"})).status_code == 200
    answer = await scrape(desk, authorization="Bearer k")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(answer.text)}
    assert {
        "frontdesk_calls",
        "frontdesk_active_calls",
        "frontdesk_turn_first_token_seconds",
        "frontdesk_sms",
        "frontdesk_bookings",
        "frontdesk_leads",
    } <= names


async def test_a_booked_relay_call_moves_the_figures(desk: Desk) -> None:
    before = samples((await scrape(desk, authorization="Bearer k")).text)
    desk.llm.script(
        ToolCalls(
            Call("check_availability", {"service": "cleaning", "date": MONDAY, "staff": "lee"})
        ),
        Text("Dr. Lee has Monday at 9 AM. Shall I book that?"),
        book_first("Ann Smith"),
        Text("You're booked for Monday at 9 AM with Dr. Lee. Goodbye!"),
    )
    async with call(desk) as relay:
        await relay.say("I'd like a teeth cleaning with Dr. Lee on Monday.")
        during = samples((await scrape(desk, authorization="Bearer k")).text)
        await relay.say("Yes please, my name is Ann Smith.")
    await sent(desk, 1)
    await hang_up(desk)
    for _ in range(100):  # the socket's close reaches the server a moment later
        after = samples((await scrape(desk, authorization="Bearer k")).text)
        if after[("frontdesk_active_calls", ())] == before[("frontdesk_active_calls", ())]:
            break
        await asyncio.sleep(0.02)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("frontdesk_calls_total", channel="relay") == 1
    assert during[("frontdesk_active_calls", ())] == before[("frontdesk_active_calls", ())] + 1
    assert after[("frontdesk_active_calls", ())] == before[("frontdesk_active_calls", ())]
    assert moved("frontdesk_turn_first_token_seconds_count", channel="relay") == 2
    assert moved("frontdesk_turn_first_token_seconds_sum", channel="relay") > 0
    assert moved("frontdesk_sms_total", outcome="sent") == 1
    assert moved("frontdesk_sms_total", outcome="failed") == 0
    assert moved("frontdesk_bookings_total", booked_by="agent") == 1
    assert moved("frontdesk_leads_total", outcome="booked") == 1
    for name, labels in after:
        for label, _ in labels:
            assert label in {"channel", "outcome", "booked_by", "le"} or not name.startswith(
                "frontdesk_"
            )
    assert CALLER not in str(after) and CLINIC not in str(after)


async def test_a_gather_call_is_counted_and_its_turn_timed(scheduler: Scheduler) -> None:
    llm = FakeLLM().start()
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=TOKEN).start()
    call_form = {"CallSid": "CA" + "8" * 32, "From": CALLER, "To": CLINIC}
    try:
        async with running_desk(scheduler, llm, rest, voice_mode="gather") as desk:
            before = samples((await scrape(desk, authorization="Bearer k")).text)
            await desk.twilio.post("/twilio/voice", **call_form, CallStatus="ringing")
            desk.llm.script(Text("We're open nine to five, Monday to Friday. Anything else?"))
            turn = await desk.twilio.post(
                "/twilio/gather",
                **call_form,
                CallStatus="in-progress",
                SpeechResult="When are you open?",
                Confidence="0.93",
            )
            assert "nine to five" in turn.said
            after = samples((await scrape(desk, authorization="Bearer k")).text)
    finally:
        llm.stop()
        rest.stop()

    def moved(name: str, channel: str) -> float:
        key = (name, (("channel", channel),))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("frontdesk_calls_total", "gather") == 1
    assert moved("frontdesk_calls_total", "relay") == 0
    assert moved("frontdesk_turn_first_token_seconds_count", "gather") == 1


def test_several_workers_share_one_multiprocess_directory(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, every process writes its figures there and a scrape
    from any of them sums them all."""
    code = (
        "from frontdesk import metrics\n"
        "metrics.CallMetrics().call_started('gather')\n"
        "print(metrics.scrape().decode())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    ]
    assert list(tmp_path.iterdir()), "the workers wrote no metric files"
    first, second = (samples(out) for out in outputs)
    key = ("frontdesk_calls_total", (("channel", "gather"),))
    assert (first[key], second[key]) == (1, 2)
