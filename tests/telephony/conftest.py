"""A running Frontdesk (uvicorn on 127.0.0.1, in the test's event loop) wired to a fake LLM, a fake
Twilio REST API and a simulated Twilio Voice that signs what it sends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from booking.scheduler import Scheduler
from frontdesk.app import create_app
from frontdesk.settings import Settings
from telephony.speech_pace import SpeechPace
from tests.fakes.llm_server import FakeLLM
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_voice import FakeTwilioVoice

if TYPE_CHECKING:
    from telephony.switchboard import Switchboard

ACCOUNT_SID = "AC" + "0" * 32
TOKEN = "test-auth-token"
PUBLIC_URL = "https://desk.example.com"
CLINIC = "+12025550100"
TRANSFER = "+12025550199"
CALLER = "+12025554321"
INSTANT_SPEECH = SpeechPace(lead=0.0, words_per_second=1e9)


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def rest() -> Iterator[FakeTwilioRest]:
    server = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=TOKEN).start()
    yield server
    server.stop()


def make_settings(llm: FakeLLM, rest: FakeTwilioRest, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "api_key": SecretStr("k"),
        "openai_base_url": llm.base_url,
        "openai_api_key": SecretStr("test"),
        "llm_model": llm.model,
        "llm_timeout_seconds": 3.0,
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": SecretStr(TOKEN),
        "twilio_api_base_url": rest.base_url,
        "public_base_url": PUBLIC_URL,
        "voice_mode": "relay",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Desk:
    """The running app and everything around it."""

    app: FastAPI
    url: str
    twilio: FakeTwilioVoice
    llm: FakeLLM
    rest: FakeTwilioRest
    engine: Engine

    @property
    def board(self) -> Switchboard:
        board: Switchboard = self.app.state.switchboard
        return board


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run `app` under uvicorn on a free local port until the block ends."""
    # IPPROTO_TCP, not 0: only then does asyncio turn Nagle's algorithm off on the connections.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws="websockets-sansio", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def running_desk(
    scheduler: Scheduler, llm: FakeLLM, rest: FakeTwilioRest, **overrides: object
) -> AsyncIterator[Desk]:
    app = create_app(make_settings(llm, rest, **overrides), scheduler=scheduler)
    async with serve(app) as url:
        board: Switchboard = app.state.switchboard
        assert board.sms is not None
        board.sms.backoff = 0.01  # retry at once: the fake fails on purpose
        board.speech_pace = INSTANT_SPEECH  # tests that time the goodbye set their own
        twilio = FakeTwilioVoice(app_url=url, public_url=PUBLIC_URL, auth_token=TOKEN)
        try:
            yield Desk(app=app, url=url, twilio=twilio, llm=llm, rest=rest, engine=scheduler.engine)
        finally:
            await twilio.aclose()


@pytest.fixture
async def desk(scheduler: Scheduler, llm: FakeLLM, rest: FakeTwilioRest) -> AsyncIterator[Desk]:
    async with running_desk(scheduler, llm, rest) as d:
        yield d


@pytest.fixture
async def gather_desk(
    scheduler: Scheduler, llm: FakeLLM, rest: FakeTwilioRest
) -> AsyncIterator[Desk]:
    async with running_desk(scheduler, llm, rest, voice_mode="gather") as d:
        yield d
