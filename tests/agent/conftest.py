"""Fixtures for the agent: the fake Chat Completions server, a real `openai` client pointed at it,
and conversations with a caller of the seeded clinic."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any

import openai
import pytest

from agent.engine import AgentEvent, CallContext, Conversation, Speech
from agent.llm import LlmConfig, make_llm
from booking.clock import FixedClock
from booking.scheduler import Scheduler
from tests.conftest import NOW
from tests.fakes.llm_server import FakeLLM

CALLER = "+12025552200"
OTHER_CALLER = "+12025552299"
MakeConversation = Callable[..., Conversation]


@pytest.fixture
def llm_server() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


def client_for(base_url: str, *, timeout: float = 5.0) -> openai.AsyncOpenAI:
    return make_llm(LlmConfig(base_url=base_url, api_key="test-key", timeout=timeout))


@pytest.fixture
async def llm(llm_server: FakeLLM) -> AsyncIterator[openai.AsyncOpenAI]:
    client = client_for(llm_server.base_url)
    yield client
    await client.close()


@pytest.fixture
def converse(scheduler: Scheduler, llm: openai.AsyncOpenAI) -> MakeConversation:
    """Make a conversation for the clinic; keyword arguments override the defaults."""

    def make(*, caller: str | None = CALLER, now: datetime = NOW, **overrides: Any) -> Conversation:
        options: dict[str, Any] = {
            "scheduler": scheduler,
            "llm": llm,
            "model": "fake-model",
            "context": CallContext(
                business_id="clinic", caller_phone=caller, call_id=None, channel="terminal"
            ),
            "clock": FixedClock(now),
            "llm_timeout": 2.0,
            "filler_after": 5.0,
        }
        options.update(overrides)
        return Conversation(**options)

    return make


async def turn(conversation: Conversation, text: str) -> list[AgentEvent]:
    """Everything the agent does in answer to one caller turn."""
    return [event async for event in conversation.reply(text)]


def spoken(events: list[AgentEvent]) -> str:
    return " ".join(e.text for e in events if isinstance(e, Speech))


def tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool results the model was sent, parsed, oldest first."""
    return [json.loads(m["content"]) for m in messages if m["role"] == "tool"]


def last_result(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return tool_results(messages)[-1]


def offered_slots(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The slots of the latest check_availability result."""
    return next(r["slots"] for r in reversed(tool_results(messages)) if "slots" in r)


def slot_ids_in(text: str) -> list[str]:
    return re.findall(r"slot_[0-9a-f]+", text)
