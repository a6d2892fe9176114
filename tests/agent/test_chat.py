"""`frontdesk chat`: the terminal door into the same engine."""

from __future__ import annotations

import io

from agent.chat import chat, run_chat
from booking.scheduler import Scheduler
from frontdesk.settings import Settings
from tests.agent.conftest import CALLER, MakeConversation
from tests.fakes.llm_server import FakeLLM, Text


async def test_chat_prints_the_agent_and_records_the_lead_on_quit(
    converse: MakeConversation, llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    llm_server.script(Text("We're open weekdays. Anything else?"))
    out = io.StringIO()
    await chat(converse(), lines=io.StringIO("When are you open?\nquit\n"), out=out)
    assert "agent> Thank you for calling Clinic. How can I help you today?" in out.getvalue()
    assert "agent> We're open weekdays.\nagent> Anything else?" in out.getvalue()
    [lead] = await scheduler.leads(business_id="clinic")
    assert lead.phone == CALLER


async def test_run_chat_builds_the_client_from_settings(
    llm_server: FakeLLM, scheduler: Scheduler
) -> None:
    llm_server.script(Text("Hello from the model."))
    settings = Settings(_env_file=None, openai_base_url=llm_server.base_url,  # type: ignore[call-arg]
                        openai_api_key="k", llm_model="fake-model")
    out = io.StringIO()
    await run_chat(settings=settings, scheduler=scheduler, business_id=None, caller=CALLER,
                   lines=io.StringIO("hi\n"), out=out)  # EOF ends the chat
    assert "agent> Hello from the model." in out.getvalue()
    assert llm_server.requests[0]["model"] == "fake-model"
