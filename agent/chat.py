"""`frontdesk chat`: talk to the agent in a terminal, through the same engine as a phone call."""

from __future__ import annotations

import asyncio
import uuid
from typing import TextIO

from agent.engine import DEFAULT_GREETING, CallContext, Conversation, Filler, Handoff, Speech
from agent.fallback import NO_MODEL_OPENING, MessageTaking
from agent.llm import LlmConfig, make_llm
from agent.tools import BusinessFacts, Toolbox
from booking import phones
from booking.scheduler import Scheduler, check_phone

QUIT = {"quit", "exit", "bye!"}
NO_MODEL = (
    "[No language model is configured. Set FRONTDESK_OPENAI_API_KEY to use OpenAI, or "
    "FRONTDESK_OPENAI_BASE_URL to use another OpenAI-compatible server (e.g. "
    "http://localhost:11434/v1 for Ollama). Until then the agent can only take a message.]"
)


async def chat(conversation: Conversation, *, lines: TextIO, out: TextIO) -> None:
    """Read the caller's turns from `lines` until `quit`, EOF or a hand-off; then finish."""
    try:
        out.write(f"agent> {await conversation.greeting()}\n")
        while True:
            out.write("you> ")
            out.flush()
            line = await asyncio.to_thread(lines.readline)
            if not line or line.strip().lower() in QUIT:
                out.write("\n")
                return
            if not line.strip():
                continue
            async for event in conversation.reply(line.strip()):
                out.write(_show(event))
                out.flush()
                if isinstance(event, Handoff):
                    return
    finally:
        await conversation.finish()


def _show(event: Speech | Filler | Handoff) -> str:
    match event:
        case Speech(text=text):
            return f"agent> {text}\n"
        case Filler(text=text):
            return f"agent> ({text})\n"
        case Handoff(reason=reason, transfer_to=None):
            return f"[the agent hung up: {reason}]\n"
        case Handoff(reason=reason, transfer_to=number):
            return f"[transferring to {number}: {reason}]\n"
    raise AssertionError(event)


async def run_chat(
    *,
    llm: LlmConfig,
    scheduler: Scheduler,
    business_id: str | None,
    caller: str | None,
    lines: TextIO,
    out: TextIO,
) -> None:
    """Build a conversation with the model `llm` names and chat until the caller is done."""
    business = await scheduler.resolve_business(business_id)
    phone = None
    if caller:  # a national number is read in the business's country
        own = (await scheduler.business(business)).phone_numbers
        phone = check_phone(caller, phones.region_for(own))
    if not llm.configured:
        await take_message(
            scheduler=scheduler, business_id=business, caller=phone, lines=lines, out=out
        )
        return
    client = make_llm(llm)
    try:
        conversation = Conversation(
            scheduler=scheduler,
            llm=client,
            model=llm.model,
            context=CallContext(
                business_id=business, caller_phone=phone, call_id=None, channel="terminal"
            ),
            clock=scheduler.clock,
            llm_timeout=llm.timeout,
        )
        await chat(conversation, lines=lines, out=out)
    finally:
        await client.close()


async def take_message(
    *,
    scheduler: Scheduler,
    business_id: str,
    caller: str | None,
    lines: TextIO,
    out: TextIO,
) -> None:
    """Without a model: say so plainly, then run the scripted message-taking a call falls back
    to (name, reason, callback number; the message is saved as a lead)."""
    facts = await BusinessFacts.load(scheduler, business_id)
    toolbox = Toolbox(
        scheduler=scheduler,
        facts=facts,
        caller_phone=caller,
        call_id=None,
        holder=f"conv:{uuid.uuid4()}",
        clock=scheduler.clock,
    )
    script = MessageTaking(toolbox, apology=NO_MODEL_OPENING)
    out.write(f"{NO_MODEL}\n")
    greeting = facts.business.greeting or DEFAULT_GREETING.format(name=facts.business.name)
    out.write(f"agent> {greeting}\nagent> {script.opening()}\n")
    while True:
        out.write("you> ")
        out.flush()
        line = await asyncio.to_thread(lines.readline)
        if not line or line.strip().lower() in QUIT:
            out.write("\n")
            return
        if not line.strip():
            continue
        turn = await script.answer(line.strip())
        out.write(f"agent> {turn.say}\n")
        if turn.ending is not None:
            out.write(
                _show(Handoff(reason=turn.ending.reason, transfer_to=turn.ending.transfer_to))
            )
            return
