"""Try it across workers: two app instances over one database share each chat through the
conversation store, so a turn may land on either; the chat stays its owner's, and ends once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from sqlalchemy.pool import NullPool

from booking.clock import FixedClock
from booking.conversations import ConversationStore, chat_key
from booking.db import make_engine
from booking.scheduler import Scheduler
from dashboard.web.auth import WebUser
from dashboard.web.tryit import WebChats
from frontdesk.app import create_app
from frontdesk.wiring import llm_config
from tests.conftest import NOW, count_rows
from tests.dashboard.conftest import csrf_of
from tests.dashboard.test_tryit import browser, llm, llm_settings, say, start
from tests.fakes.llm_server import FakeLLM, Fault, Text

pytestmark = pytest.mark.usefixtures("accounts")
__all__ = ["llm"]  # the fake LLM server fixture, shared with test_tryit


@pytest.fixture
async def two_apps(
    scheduler: Scheduler, db_url: str, llm: FakeLLM
) -> AsyncIterator[tuple[FastAPI, FastAPI]]:
    """Two workers: each its own app, scheduler and engine, over the same database."""
    options = {"poolclass": NullPool} if db_url.startswith("postgresql") else {}
    other = Scheduler(engine=make_engine(db_url, **options), clock=FixedClock(NOW))
    a = create_app(llm_settings(llm), scheduler=scheduler)
    b = create_app(llm_settings(llm), scheduler=other)
    try:
        async with a.router.lifespan_context(a), b.router.lifespan_context(b):
            yield a, b
    finally:
        other.engine.dispose()


def _history(llm: FakeLLM, request: int) -> list[tuple[str, str | None]]:
    return [(m["role"], m.get("content")) for m in llm.requests[request]["messages"][1:]]


async def test_a_chat_goes_on_in_another_worker_and_ends_once(
    two_apps: tuple[FastAPI, FastAPI], llm: FakeLLM, scheduler: Scheduler
) -> None:
    app_a, app_b = two_apps
    llm.script(
        Text("Sure, a cleaning. Which day suits you?"),
        Text("Tuesday it is. Anything else?"),
        Text("Goodbye then."),
    )
    greeting = "Thank you for calling Clinic. How can I help you today?"
    async with (
        browser(app_a, "owner@clinic.test") as on_a,
        browser(app_b, "owner@clinic.test") as on_b,
    ):
        _, chat_id, csrf_a = await start(on_a, caller="+12025552200")
        r = await say(on_a, chat_id, csrf_a, "I'd like a cleaning please")
        assert "Which day suits you?" in r.text
        csrf_b = csrf_of((await on_b.get("/try")).text)
        r = await say(on_b, chat_id, csrf_b, "Tuesday")
        assert r.status_code == 200 and "Tuesday it is." in r.text
        assert _history(llm, 1) == [
            ("assistant", greeting),
            ("user", "I'd like a cleaning please"),
            ("assistant", "Sure, a cleaning. Which day suits you?"),
            ("user", "Tuesday"),
        ]
        # Back on A: its copy is a version behind, so it takes B's turn from the store.
        r = await say(on_a, chat_id, csrf_a, "No, that's all")
        assert "Goodbye then." in r.text
        assert _history(llm, 2)[-3:] == [
            ("user", "Tuesday"),
            ("assistant", "Tuesday it is. Anything else?"),
            ("user", "No, that's all"),
        ]
        assert "+12025552200" in llm.system_prompt(2)  # the caller's number came along

        r = await on_b.post("/try/end", data={"chat_id": chat_id, "csrf_token": csrf_b})
        assert r.status_code == 200 and "Call ended" in r.text
        r = await on_a.post("/try/end", data={"chat_id": chat_id, "csrf_token": csrf_a})
        assert r.status_code == 200
        r = await say(on_a, chat_id, csrf_a, "Still there?")
        assert "This call is over" in r.text
    assert count_rows(scheduler.engine, "SELECT count(*) FROM lead") == 1
    assert len(llm.requests) == 3


async def test_the_scripted_fallback_goes_on_in_another_worker(
    two_apps: tuple[FastAPI, FastAPI], llm: FakeLLM, scheduler: Scheduler
) -> None:
    app_a, app_b = two_apps
    llm.script(Fault.error(500))
    async with (
        browser(app_a, "owner@clinic.test") as on_a,
        browser(app_b, "owner@clinic.test") as on_b,
    ):
        _, chat_id, csrf_a = await start(on_a, caller="+12025552200")
        r = await say(on_a, chat_id, csrf_a, "Hello?")
        assert "May I have your name" in r.text
        csrf_b = csrf_of((await on_b.get("/try")).text)
        r = await say(on_b, chat_id, csrf_b, "Jane Doe")
        assert "Thank you, Jane Doe." in r.text
    assert len(llm.requests) == 1


async def test_another_users_chat_id_is_refused_in_every_worker(
    two_apps: tuple[FastAPI, FastAPI], llm: FakeLLM
) -> None:
    app_a, app_b = two_apps
    llm.script(Text("Hello there."))
    async with browser(app_a, "owner@clinic.test") as on_a:
        _, chat_id, _ = await start(on_a)
    for app in (app_a, app_b):
        async with browser(app, "owner@salon.test") as salon:
            csrf = csrf_of((await salon.get("/try")).text)
            r = await say(salon, chat_id, csrf, "What is on the calendar?")
            assert r.status_code == 200 and "This call is over" in r.text
            r = await salon.post("/try/end", data={"chat_id": chat_id, "csrf_token": csrf})
            assert r.status_code == 200
    assert llm.requests == []
    # The owner's chat is untouched by the attempts and goes on.
    async with browser(app_b, "owner@clinic.test") as on_b:
        csrf = csrf_of((await on_b.get("/try")).text)
        r = await say(on_b, chat_id, csrf, "Hi")
        assert "Hello there." in r.text


async def test_a_worker_that_lost_a_turn_race_forgets_its_copy(
    scheduler: Scheduler, llm: FakeLLM
) -> None:
    store = ConversationStore.over(scheduler.engine, scheduler.clock)
    config = llm_config(llm_settings(llm))
    a, b = WebChats(llm=config, store=store), WebChats(llm=config, store=store)
    user = WebUser(
        id="usr_1", business_id="clinic", email="o@clinic.test", role="owner", staff_id=None
    )
    llm.script(Text("From B."), Text("From A."), Text("Again."))
    try:
        on_a, _ = await a.start(user, scheduler=scheduler, caller_phone=None)
        on_b = await b.get(on_a.id, user, scheduler=scheduler)
        assert on_b is not None and on_b is not on_a and on_b.version == on_a.version == 1
        await b.say(on_b, "first")  # B saves version 2
        lines = await a.say(on_a, "racing")  # A's turn ran on version 1: its save is refused
        assert [line.text for line in lines] == ["From A."]
        assert len(a) == 0  # A forgot its stale copy
        stored = await store.load(chat_key(on_a.id))
        assert stored is not None and stored.version == 2
        again = await a.get(on_a.id, user, scheduler=scheduler)
        assert again is not None and again.version == 2
        await a.say(again, "next")
        sent = [m.get("content") for m in llm.requests[-1]["messages"]]
        assert "From B." in sent and "From A." not in sent  # B's saved turn, not A's lost one
    finally:
        await a.aclose()
        await b.aclose()
