"""`/metrics`: Prometheus's text format, behind the API key, with figures that move when a call
is answered, a turn is spoken, the agent asks the model and runs its tools, a confirmation is
texted, a webhook is attempted, a background job runs or falls behind and a calendar provider
is asked (or fails)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from booking import claims
from booking.db import session_scope
from booking.errors import CalendarUnavailable
from booking.scheduler import Scheduler
from calendars.base import Account
from dashboard.webhook_models import WebhookDelivery
from dashboard.webhooks import WebhookDispatcher, Webhooks
from frontdesk import jobs, metrics
from frontdesk.settings import Settings
from frontdesk.wiring import build_calendar_service, build_providers
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


async def figures(desk: Desk) -> Samples:
    return samples((await scrape(desk, authorization="Bearer k")).text)


def mover(before: Samples, after: Samples) -> Callable[..., float]:
    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    return moved


@pytest.fixture
async def quiet_desk(scheduler: Scheduler) -> AsyncIterator[Desk]:
    """A running desk whose own background jobs are off: the test runs them."""
    llm = FakeLLM().start()
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=TOKEN).start()
    try:
        async with running_desk(scheduler, llm, rest, run_jobs=False) as running:
            yield running
    finally:
        llm.stop()
        rest.stop()


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
        "frontdesk_model_first_token_seconds",
        "frontdesk_webhook_deliveries",
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
    # Four model requests (the availability call, its answer, the booking, its answer), each
    # timed to its first chunk; one run of each tool, both answered without an error.
    assert moved("frontdesk_model_first_token_seconds_count") == 4
    assert moved("frontdesk_model_first_token_seconds_sum") > 0
    for tool in ("check_availability", "book_appointment"):
        assert moved("frontdesk_tool_seconds_count", tool=tool, outcome="ok") == 1
        assert moved("frontdesk_tool_seconds_sum", tool=tool, outcome="ok") > 0
        assert moved("frontdesk_tool_seconds_count", tool=tool, outcome="error") == 0
    for name, labels in after:
        for label, _ in labels:
            assert label in {
                "channel",
                "outcome",
                "booked_by",
                "tool",
                "job",
                "provider",  # a calendar kind (google, microsoft, caldav, ics)
                "operation",  # a calendar provider's method
                "le",
            } or not name.startswith("frontdesk_")
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


async def test_a_tool_that_answers_an_error_is_counted_as_one(desk: Desk) -> None:
    before = await figures(desk)
    desk.llm.script(
        ToolCalls(Call("check_availability", {"service": "cleaning", "date": "someday soon"})),
        Text("Which day would suit you?"),
    )
    async with call(desk) as relay:
        turn = await relay.say("Do you have anything someday soon?")
        assert "Which day" in turn.text
    await hang_up(desk)
    moved = mover(before, await figures(desk))
    assert moved("frontdesk_tool_seconds_count", tool="check_availability", outcome="error") == 1
    assert moved("frontdesk_tool_seconds_count", tool="check_availability", outcome="ok") == 0
    assert moved("frontdesk_model_first_token_seconds_count") == 2


async def add_delivery(
    scheduler: Scheduler, hook_id: str, event_id: str, *, overdue: float, attempts: int = 0
) -> None:
    now = scheduler.clock.now()
    with session_scope(scheduler.engine, write=True) as s:
        s.add(
            WebhookDelivery(
                webhook_id=hook_id,
                event_id=event_id,
                event_type="booking.created",
                body="{}",
                attempts=attempts,
                next_attempt_at=now - timedelta(seconds=overdue),
                created_at=now,
            )
        )


async def test_webhook_outcomes_and_the_outbox_lag_are_scraped(
    quiet_desk: Desk, scheduler: Scheduler
) -> None:
    """Three deliveries, answered 204, 500 and 500 on their last try: delivered, retry and
    failed, through the observer the app gives its dispatchers. The lag is the most overdue
    delivery's wait, and 0 once nothing pending is due."""
    store = Webhooks(scheduler.engine)
    good = await store.create(
        business_id="clinic", url="http://hooks.test/ok", event_types=["booking.created"]
    )
    bad = await store.create(
        business_id="clinic", url="http://hooks.test/down", event_types=["booking.created"]
    )
    await add_delivery(scheduler, good.id, "evt_ok", overdue=30)
    await add_delivery(scheduler, bad.id, "evt_retry", overdue=10)
    await add_delivery(scheduler, bad.id, "evt_failed", overdue=5, attempts=1)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204 if request.url.path == "/ok" else 500)

    before = await figures(quiet_desk)
    dispatcher = WebhookDispatcher(
        scheduler.engine,
        clock=scheduler.clock,
        retry_delays=(60.0,),  # two attempts: the second failure gives up
        transport=httpx.MockTransport(answer),
        observer=jobs.webhook_outcome,
    )
    runner = jobs.JobRunner(scheduler=scheduler, webhooks=dispatcher)
    try:
        await runner.report_lag()
        lagging = await figures(quiet_desk)
        assert await dispatcher.deliver_due() == 3
        await runner.report_lag()
        after = await figures(quiet_desk)
    finally:
        await dispatcher.aclose()

    assert lagging[("frontdesk_job_lag_seconds", (("job", "webhooks"),))] == 30
    assert after[("frontdesk_job_lag_seconds", (("job", "webhooks"),))] == 0
    moved = mover(before, after)
    for outcome in ("delivered", "retry", "failed"):
        assert moved("frontdesk_webhook_deliveries_total", outcome=outcome) == 1, outcome


async def test_job_passes_are_timed_by_job_and_outcome(quiet_desk: Desk) -> None:
    """Call expiry, once with the desk's own switchboard (ok), then with one whose expiry
    raises (error): each pass is one observation of frontdesk_job_run_seconds."""

    class Broken:
        async def expire_idle(self) -> int:
            raise RuntimeError("the database went away")

    scheduler = quiet_desk.app.state.scheduler
    owner = claims.new_token()  # one worker's runners: the expiry lease is theirs to renew
    before = await figures(quiet_desk)
    for board, outcome in ((quiet_desk.board, "ok"), (Broken(), "error")):
        runner = jobs.JobRunner(
            scheduler=scheduler, switchboard=board, expire_every=3600, owner=owner
        )
        await runner.start()
        try:
            for _ in range(250):
                moved = mover(before, await figures(quiet_desk))
                if moved("frontdesk_job_run_seconds_count", job="calls.expire", outcome=outcome):
                    break
                await asyncio.sleep(0.02)
        finally:
            await runner.aclose()
    moved = mover(before, await figures(quiet_desk))
    assert moved("frontdesk_job_run_seconds_count", job="calls.expire", outcome="ok") == 1
    assert moved("frontdesk_job_run_seconds_count", job="calls.expire", outcome="error") == 1
    assert moved("frontdesk_job_run_seconds_sum", job="calls.expire", outcome="ok") > 0


def test_the_job_lag_of_several_workers_is_the_latest_reading(tmp_path: Path) -> None:
    """Every worker reads the same outbox: the scrape shows the freshest reading of any of them
    (multiprocess mode "mostrecent"), not the highest one a worker left behind."""
    code = (
        "import sys\n"
        "from frontdesk import metrics\n"
        "metrics.job_lag('webhooks', float(sys.argv[1]))\n"
        "print(metrics.scrape().decode())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code, lag], env=env, capture_output=True, text=True, check=True
        ).stdout
        for lag in ("30", "5")
    ]
    key = ("frontdesk_job_lag_seconds", (("job", "webhooks"),))
    assert [samples(out)[key] for out in outputs] == [30, 5]


FEED = b"""BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//Frontdesk tests//EN\r
BEGIN:VEVENT\r
UID:lee-dentist\r
DTSTAMP:20261101T000000Z\r
DTSTART:20261207T150000Z\r
DTEND:20261207T160000Z\r
SUMMARY:Own dentist\r
END:VEVENT\r
END:VCALENDAR\r
"""


def calendar_settings() -> Settings:
    return Settings(secret_key=SecretStr(Fernet.generate_key().decode()), allow_private_urls=True)


async def test_calendar_provider_calls_are_timed_by_provider_and_operation(
    clinic: Engine, tmp_path: Path
) -> None:
    """Linking an ICS feed and syncing it go through the provider the composition root built:
    each call is one observation, labelled with the provider's kind, never the account."""
    feed = tmp_path / "lee.ics"
    feed.write_bytes(FEED)
    service = build_calendar_service(calendar_settings(), clinic)
    before = samples(metrics.scrape().decode())
    try:
        assert isinstance(service.provider("ics"), metrics.MeteredProvider)
        assert service.provider("ics").writable is False  # read from the wrapped provider
        conn = await service.link_ics(
            business_id="clinic", staff_id="lee", source=str(feed), allow_files=True
        )
        linked = samples(metrics.scrape().decode())
        await service.refresh(conn.id, full=True)
        after = samples(metrics.scrape().decode())
    finally:
        await service.close()
    syncs = mover(linked, after)
    assert syncs("frontdesk_calendar_request_seconds_count", provider="ics", operation="sync") == 1
    assert syncs("frontdesk_calendar_request_seconds_sum", provider="ics", operation="sync") > 0
    assert (
        syncs(
            "frontdesk_calendar_request_seconds_bucket", provider="ics", operation="sync", le="+Inf"
        )
        == 1
    )
    moved = mover(before, after)
    assert moved("frontdesk_calendar_request_seconds_count", provider="ics", operation="sync") >= 1
    assert moved("frontdesk_calendar_errors_total", provider="ics", operation="sync") == 0
    # Every operation's error counter is scraped from 0 once the provider is built.
    for operation in metrics.CALENDAR_OPERATIONS:
        key = (("operation", operation), ("provider", "ics"))
        assert ("frontdesk_calendar_errors_total", key) in after, operation
    for name, labels in after:
        if name.startswith("frontdesk_calendar_"):
            found = dict(labels)
            assert found["provider"] in metrics.CALENDAR_KINDS
            assert found["operation"] in metrics.CALENDAR_OPERATIONS
    assert conn.id not in str(after)


async def test_a_provider_error_is_counted_and_raised_unchanged(tmp_path: Path) -> None:
    providers = build_providers(calendar_settings())
    ics = providers["ics"]
    gone = Account(id="feed", provider="ics", settings={"source": str(tmp_path / "gone.ics")})
    before = samples(metrics.scrape().decode())
    try:
        with pytest.raises(CalendarUnavailable) as raised:
            await ics.sync(
                gone,
                calendar_id="feed",
                tz=ZoneInfo("America/Chicago"),
                cursor=None,
                start=datetime(2026, 12, 7, tzinfo=UTC),
                end=datetime(2026, 12, 8, tzinfo=UTC),
            )
        after = samples(metrics.scrape().decode())
    finally:
        for provider in providers.values():
            await provider.aclose()
    assert type(raised.value) is CalendarUnavailable
    moved = mover(before, after)
    assert moved("frontdesk_calendar_errors_total", provider="ics", operation="sync") == 1
    assert moved("frontdesk_calendar_request_seconds_count", provider="ics", operation="sync") == 1
    assert moved("frontdesk_calendar_errors_total", provider="ics", operation="busy") == 0
    assert moved("frontdesk_calendar_errors_total", provider="google", operation="sync") == 0


def test_a_dead_workers_active_calls_stop_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed with SIGKILL leaves its live-gauge file behind; a scrape forgets it, and
    keeps the files of workers still running."""
    child = (
        "import os, signal\n"
        "from prometheus_client import Gauge\n"
        "Gauge('frontdesk_active_calls', 'x', multiprocess_mode='livesum').set(3)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    dead = subprocess.run([sys.executable, "-c", child], env=env, check=False)
    assert dead.returncode == -9
    (dead_file,) = tmp_path.glob("gauge_livesum_*.db")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        alive_file = tmp_path / f"gauge_livesum_{alive.pid}.db"
        alive_file.write_bytes(dead_file.read_bytes())
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        page = metrics.scrape().decode()
        assert not dead_file.exists()
        assert alive_file.exists()
        assert "frontdesk_active_calls 3.0" in page  # the live worker's, counted once
    finally:
        alive.kill()
        alive.wait()
