"""`frontdesk chat`: the terminal door into the same engine."""

from __future__ import annotations

import io

import pytest

from agent.chat import chat, run_chat
from booking import errors
from booking.db import session_scope
from booking.models import Business
from booking.scheduler import Scheduler
from frontdesk.settings import Settings
from frontdesk.wiring import llm_config
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
    settings = Settings(
        _env_file=None,
        openai_base_url=llm_server.base_url,  # type: ignore[call-arg]
        openai_api_key="k",
        llm_model="fake-model",
    )
    out = io.StringIO()
    await run_chat(
        llm=llm_config(settings),
        scheduler=scheduler,
        business_id=None,
        caller=CALLER,
        lines=io.StringIO("hi\n"),
        out=out,
    )  # EOF ends the chat
    assert "agent> Hello from the model." in out.getvalue()
    assert llm_server.requests[0]["model"] == "fake-model"


LONDON_NATIONAL = "020 7946 0018"  # a London number as a caller in the UK writes it
LONDON_E164 = "+442079460018"


def add_salon(scheduler: Scheduler) -> None:
    """A London salon next to the seeded (US) clinic: its national numbers are UK ones."""
    with session_scope(scheduler.engine, write=True) as s:
        s.add(
            Business(
                id="salon", name="Salon", timezone="Europe/London", phone_numbers=["+442079460000"]
            )
        )


async def test_a_lead_reads_a_national_number_in_its_business_country(
    scheduler: Scheduler,
) -> None:
    add_salon(scheduler)
    lead = await scheduler.record_lead(
        business_id="salon", phone=LONDON_NATIONAL, name="Jane", reason="a colour appointment"
    )
    assert lead.phone == LONDON_E164
    us = await scheduler.record_lead(
        business_id="clinic", phone="(202) 555-0123", name="Sam", reason="billing"
    )
    assert us.phone == "+12025550123"  # the clinic's own country is still the US
    with pytest.raises(errors.InvalidRequest):  # a UK national number means nothing in the US
        await scheduler.record_lead(business_id="clinic", phone=LONDON_NATIONAL, name="Jo")


async def test_chat_reads_the_callers_national_number_in_the_business_country(
    scheduler: Scheduler,
) -> None:
    add_salon(scheduler)
    out = io.StringIO()
    await run_chat(
        llm=llm_config(Settings(_env_file=None)),  # type: ignore[call-arg]
        scheduler=scheduler,
        business_id="salon",
        caller=LONDON_NATIONAL,
        lines=io.StringIO("Jane Smith\na colour appointment\nyes\n"),
        out=out,
    )
    assert "[the agent hung up: message taken]" in out.getvalue()
    [lead] = await scheduler.leads(business_id="salon")
    assert (lead.phone, lead.name) == (LONDON_E164, "Jane Smith")
