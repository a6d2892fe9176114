"""Try it: the owner chats with the agent in the browser through the phone's own engine, here
against the fake Chat Completions server and the real `openai` client."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from agent.fallback import OPENING
from booking.scheduler import Scheduler
from dashboard.web.auth import WebUser
from dashboard.web.tryit import WebChats
from frontdesk.app import create_app
from frontdesk.settings import Settings
from frontdesk.wiring import llm_config
from tests.dashboard.conftest import API_KEY, csrf_of, log_in
from tests.fakes.llm_server import Call, FakeLLM, Fault, Text, ToolCalls

CHAT_ID = re.compile(r'name="chat_id" value="([^"]+)"')


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


def llm_settings(llm: FakeLLM) -> Settings:
    return Settings(
        _env_file=None,
        api_key=SecretStr(API_KEY),  # type: ignore[call-arg]
        openai_base_url=llm.base_url,
        openai_api_key=SecretStr("test"),
        llm_model=llm.model,
        llm_timeout_seconds=3.0,
    )


@pytest.fixture
async def live_app(
    scheduler: Scheduler, accounts: dict[str, str], llm: FakeLLM
) -> AsyncIterator[FastAPI]:
    """The app with an LLM configured, its lifespan running (so chats are closed at the end)."""
    app = create_app(llm_settings(llm), scheduler=scheduler)
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def browser(app: FastAPI, email: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        assert (await log_in(client, email)).status_code == 303
        yield client


async def start(client: httpx.AsyncClient, caller: str = "") -> tuple[str, str, str]:
    """Start a call: the page, its chat id and CSRF token."""
    page = await client.get("/try")
    r = await client.post("/try/start", data={"caller": caller, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 200, r.text
    found = CHAT_ID.search(r.text)
    assert found, r.text
    return r.text, found.group(1), csrf_of(r.text)


async def say(client: httpx.AsyncClient, chat_id: str, csrf: str, text: str) -> httpx.Response:
    return await client.post(
        "/try/say",
        data={"chat_id": chat_id, "text": text},
        headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
    )


async def test_the_owner_chats_with_the_agent_and_it_remembers_the_call(
    live_app: FastAPI,
    llm: FakeLLM,
) -> None:
    llm.script(
        Text("Sure, a cleaning. Which day suits you?"), Text("Tuesday it is. Anything else?")
    )
    async with browser(live_app, "owner@clinic.test") as owner:
        page, chat_id, csrf = await start(owner)
        assert "Thank you for calling Clinic" in page
        r = await say(owner, chat_id, csrf, "I'd like a cleaning please")
        assert r.status_code == 200
        assert "I&#39;d like a cleaning please" in r.text
        assert "Sure, a cleaning." in r.text and "Which day suits you?" in r.text
        r = await say(owner, chat_id, csrf, "Tuesday")
        assert "Tuesday it is." in r.text
    # The second request carried the whole call so far: it is one conversation, server-side.
    roles = [(m["role"], m.get("content")) for m in llm.requests[1]["messages"][1:]]
    assert roles == [
        ("assistant", "Thank you for calling Clinic. How can I help you today?"),
        ("user", "I'd like a cleaning please"),
        ("assistant", "Sure, a cleaning. Which day suits you?"),
        ("user", "Tuesday"),
    ]
    assert "Clinic" in llm.system_prompt()  # the phone's prompt, with the business's facts


async def test_the_agent_uses_the_real_tools_and_calendar(
    live_app: FastAPI,
    llm: FakeLLM,
) -> None:
    llm.script(
        ToolCalls(Call("check_availability", {"service": "cleaning", "date": "2026-12-01"})),
        lambda m: Text(f"I have {_first_slot(m)}. Does that work?"),
    )
    async with browser(live_app, "owner@clinic.test") as owner:
        _, chat_id, csrf = await start(owner, caller="(202) 555-2200")  # typed nationally
        r = await say(owner, chat_id, csrf, "Any cleaning on Tuesday?")
    assert "I have Tuesday, December 1 at 9 AM with Dr. Lee." in r.text
    assert "+12025552200" in llm.system_prompt()  # the caller's number, as on a call


def _first_slot(messages: list[dict[str, Any]]) -> str:
    result = json.loads(next(m["content"] for m in messages if m["role"] == "tool"))
    return str(result["slots"][0]["spoken"])


async def test_when_the_llm_fails_the_agent_takes_a_message_and_ending_keeps_the_lead(
    live_app: FastAPI,
    llm: FakeLLM,
    scheduler: Scheduler,
) -> None:
    llm.script(Fault.error(500))
    async with browser(live_app, "owner@clinic.test") as owner:
        _, chat_id, csrf = await start(owner, caller="+12025552200")
        r = await say(owner, chat_id, csrf, "Hello?")
        assert OPENING.split(",")[0].replace("'", "&#39;") in r.text
        await say(owner, chat_id, csrf, "Jane Doe")
        r = await owner.post("/try/end", data={"chat_id": chat_id, "csrf_token": csrf})
        assert r.status_code == 200 and "Call ended" in r.text
        # The chat is gone: another turn says so.
        r = await say(owner, chat_id, csrf, "Still there?")
        assert r.status_code == 200 and "This call is over" in r.text
    [lead] = await scheduler.leads(business_id="clinic")
    assert lead.phone == "+12025552200"


async def test_a_chat_belongs_to_the_account_that_started_it(
    live_app: FastAPI,
    llm: FakeLLM,
) -> None:
    llm.script(Text("Hello there."))
    async with browser(live_app, "owner@clinic.test") as owner:
        _, chat_id, _ = await start(owner)
    async with browser(live_app, "owner@salon.test") as salon:
        page = await salon.get("/try")
        r = await say(salon, chat_id, csrf_of(page.text), "What is on the calendar?")
        assert "This call is over" in r.text
    assert llm.requests == []  # the salon's owner never reached the clinic's conversation


async def test_try_it_is_for_owners_and_checks_the_form(
    live_app: FastAPI,
    client_for: Any,
) -> None:
    async with browser(live_app, "lee@clinic.test") as staff:
        assert (await staff.get("/try")).status_code == 403
    async with browser(live_app, "owner@clinic.test") as owner:
        r = await owner.post("/try/start", data={"csrf_token": "forged"})
        assert r.status_code == 403
        page = await owner.get("/try")
        r = await owner.post(
            "/try/start", data={"caller": "call me", "csrf_token": csrf_of(page.text)}
        )
        assert r.status_code == 422 and "is not a phone number" in r.text
        r = await owner.post(
            "/try/start", data={"caller": "555 123 4567", "csrf_token": csrf_of(page.text)}
        )
        assert r.status_code == 422 and "is not a valid phone number" in r.text


async def test_without_an_llm_the_page_says_so(owner: httpx.AsyncClient) -> None:
    page = await owner.get("/try")
    assert page.status_code == 200
    assert "No LLM is configured" in page.text and "FRONTDESK_OPENAI_API_KEY" in page.text


async def test_idle_chats_expire_and_the_oldest_make_room(
    scheduler: Scheduler,
    llm: FakeLLM,
) -> None:
    now = [0.0]
    registry = WebChats(
        llm=llm_config(llm_settings(llm)),
        idle_seconds=60,
        limit=2,
        monotonic=lambda: now[0],
    )
    user = WebUser(
        id="usr_1", business_id="clinic", email="o@clinic.test", role="owner", staff_id=None
    )
    try:
        first, _ = await registry.start(user, scheduler=scheduler, caller_phone=None)
        now[0] = 30
        second, _ = await registry.start(user, scheduler=scheduler, caller_phone=None)
        now[0] = 40
        # The first makes room.
        third, _ = await registry.start(user, scheduler=scheduler, caller_phone=None)
        assert await registry.get(first.id, user) is None
        assert await registry.get(second.id, user) is second
        now[0] = 101  # both have been idle for 61 s
        assert await registry.get(third.id, user) is None
        assert len(registry) == 0
    finally:
        await registry.aclose()
