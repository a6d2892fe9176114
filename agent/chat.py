"""`frontdesk chat`: talk to the agent in a terminal, through the same engine as a phone call."""

from __future__ import annotations

import asyncio
from typing import TextIO

from agent.engine import CallContext, Conversation, Filler, Handoff, Speech
from agent.llm import make_llm
from booking.scheduler import Scheduler, check_phone
from frontdesk.settings import Settings

QUIT = {"quit", "exit", "bye!"}


async def chat(conversation: Conversation, *, lines: TextIO, out: TextIO) -> None:
    """Read the caller's turns from `lines` until `quit`, EOF or a hand-off; then finish."""
    try:
        out.write(f"agent> {await conversation.greeting()}\n")
        while True:
            out.write("you> ")
            out.flush()
            line = (await asyncio.to_thread(lines.readline))
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
    *, settings: Settings, scheduler: Scheduler, business_id: str | None, caller: str | None,
    lines: TextIO, out: TextIO,
) -> None:
    """Build a conversation from settings and chat until the caller is done."""
    phone = check_phone(caller) if caller else None
    business = await scheduler.resolve_business(business_id)
    llm = make_llm(settings)
    try:
        conversation = Conversation(
            scheduler=scheduler, llm=llm, model=settings.llm_model,
            context=CallContext(business_id=business, caller_phone=phone, call_id=None,
                                channel="terminal"),
            clock=scheduler.clock, llm_timeout=settings.llm_timeout_seconds)
        await chat(conversation, lines=lines, out=out)
    finally:
        await llm.close()
