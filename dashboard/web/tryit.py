"""Try it: the owner talks to the agent as a caller would, through the phone's own engine.

Each chat is an `agent.engine.Conversation` (channel "web") with the same LLM settings, tools and
prompt as a call, under an opaque id that only its owner's account may use. With a conversation
store (the app sets one) every turn is saved, so the chat's next turn may land on any worker: a
worker that does not hold the chat's latest version restores it from the store. A worker keeps
its copies in memory and drops them after a while without a turn. Bookings and messages made
here are real, as they are in `frontdesk chat`; "End call" records the lead the way hanging up
does, once across workers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import openai
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from agent.engine import AgentEvent, CallContext, Conversation, Filler, Handoff, Speech
from agent.llm import LlmConfig, make_llm
from booking import errors, phones
from booking.conversations import ConversationStore, StaleConversation, chat_key
from booking.scheduler import Scheduler
from dashboard.http_errors import status_for
from dashboard.web import db
from dashboard.web.auth import OwnerUser, WebUser, verify_csrf
from dashboard.web.render import add_nav, render

log = logging.getLogger(__name__)

IDLE_SECONDS = 30 * 60  # a chat nobody has typed into for this long is dropped
MAX_CHATS = 200  # per process; the oldest goes first
MAX_TURN_CHARS = 1000


@dataclass
class WebChat:
    """One browser conversation with the agent."""

    id: str
    user_id: str
    conversation: Conversation
    llm: openai.AsyncOpenAI
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ended: bool = False
    version: int = 0  # the stored version this worker last read or wrote (0: not stored)


@dataclass(frozen=True)
class Line:
    """A line of the chat as the page shows it."""

    who: str  # "caller" | "agent" | "filler" | "handoff"
    text: str


class WebChats:
    """The chats of this process, by id, with idle expiry, talking to the model `llm` names.

    Built by the application (`app.state.tryit_chats`), which closes it at shutdown; the LLM
    client is made on the first chat."""

    def __init__(
        self,
        *,
        llm: LlmConfig,
        idle_seconds: float = IDLE_SECONDS,
        limit: int = MAX_CHATS,
        monotonic: Callable[[], float] = time.monotonic,
        store: ConversationStore | None = None,
    ) -> None:
        self.llm = llm
        self.store = store  # None: chats live in this process only
        self.idle_seconds = idle_seconds
        self.limit = limit
        self._monotonic = monotonic
        self._chats: dict[str, WebChat] = {}
        self._llm: openai.AsyncOpenAI | None = None  # one client (and TLS setup) per process

    def __len__(self) -> int:
        return len(self._chats)

    async def start(
        self, user: WebUser, *, scheduler: Scheduler, caller_phone: str | None
    ) -> tuple[WebChat, str]:
        """A new chat for `user`'s business, and the agent's greeting."""
        await self._sweep(room=1)
        llm = self._client()
        conversation = Conversation(
            scheduler=scheduler,
            llm=llm,
            model=self.llm.model,
            context=CallContext(
                business_id=user.business_id, caller_phone=caller_phone, call_id=None, channel="web"
            ),
            clock=scheduler.clock,
            llm_timeout=self.llm.timeout,
        )
        chat = WebChat(
            id=secrets.token_urlsafe(24),
            user_id=user.id,
            conversation=conversation,
            llm=llm,
            last_used=self._monotonic(),
        )
        self._chats[chat.id] = chat
        try:
            greeting = await conversation.greeting()
            await self._save(chat)
        except BaseException:
            await self._drop(chat)
            raise
        return chat, greeting

    async def get(
        self, chat_id: str, user: WebUser, *, scheduler: Scheduler | None = None
    ) -> WebChat | None:
        """The chat, if it is `user`'s and still live: this worker's copy while it is the latest
        stored version, else restored from the store (which needs `scheduler`)."""
        await self._sweep()
        chat = self._chats.get(chat_id)
        if chat is not None and not secrets.compare_digest(chat.user_id, user.id):
            return None
        if self.store is not None and chat_id:
            stored = await self.store.version(chat_key(chat_id))
            if stored is None:
                await self._forget(chat)
                return None
            if chat is None or stored != chat.version:
                await self._forget(chat)  # another worker took a turn since: theirs is newer
                chat = await self._restore(chat_id, user, scheduler)
        if chat is None:
            return None
        chat.last_used = self._monotonic()
        return chat

    async def say(self, chat: WebChat, text: str) -> list[Line]:
        """One caller turn; everything the agent says or does in answer, saved before it is
        shown."""
        async with chat.lock:
            events: list[AgentEvent] = [e async for e in chat.conversation.reply(text)]
            chat.last_used = self._monotonic()
            await self._save(chat)
        lines = [_line(e) for e in events]
        if any(isinstance(e, Handoff) for e in events):
            await self.end(chat)
        return lines

    async def end(self, chat: WebChat) -> None:
        """Hang up: record the lead as a call's end does (once, whichever worker ends it), and
        forget the chat."""
        async with chat.lock:
            if chat.ended:
                return
            chat.ended = True
            try:
                if self.store is None or await self.store.end(chat_key(chat.id)):
                    await chat.conversation.finish()
            finally:
                await self._drop(chat)

    def _client(self) -> openai.AsyncOpenAI:
        if self._llm is None:
            self._llm = make_llm(self.llm)
        return self._llm

    async def _save(self, chat: WebChat) -> None:
        """Store the chat's conversation as its next version. A worker that lost the race to
        another keeps the answer it gave but forgets its copy: the next turn restores theirs."""
        if self.store is None:
            return
        state = {
            "user_id": chat.user_id,
            "caller_phone": chat.conversation.context.caller_phone,
            "conversation": chat.conversation.snapshot(),
        }
        try:
            chat.version = await self.store.save(
                chat_key(chat.id),
                business_id=chat.conversation.context.business_id,
                call_id=None,
                channel="web",
                state=state,
                version=chat.version,
            )
        except StaleConversation:
            log.warning("try-it chat %s was saved by another worker meanwhile", chat.id[:6])
            await self._drop(chat)

    async def _restore(
        self, chat_id: str, user: WebUser, scheduler: Scheduler | None
    ) -> WebChat | None:
        """The stored chat `chat_id`, if it is `user`'s and not ended."""
        assert self.store is not None
        stored = await self.store.load(chat_key(chat_id))
        if stored is None or stored.ended_at is not None or scheduler is None:
            return None
        owner = stored.state.get("user_id")
        if not isinstance(owner, str) or not secrets.compare_digest(owner, user.id):
            return None
        if stored.business_id != user.business_id:
            return None
        snapshot = stored.state.get("conversation")
        caller = _caller_of(stored.state)
        llm = self._client()
        try:
            conversation = Conversation.restore(
                snapshot if isinstance(snapshot, dict) else {},
                scheduler=scheduler,
                llm=llm,
                model=self.llm.model,
                context=CallContext(
                    business_id=stored.business_id, caller_phone=caller, call_id=None, channel="web"
                ),
                clock=scheduler.clock,
                llm_timeout=self.llm.timeout,
            )
        except ValueError as exc:
            log.warning("try-it chat %s cannot be restored: %s", chat_id[:6], exc)
            return None
        await self._sweep(room=1)
        chat = WebChat(
            id=chat_id,
            user_id=user.id,
            conversation=conversation,
            llm=llm,
            last_used=self._monotonic(),
            version=stored.version,
        )
        self._chats[chat_id] = chat
        return chat

    async def _forget(self, chat: WebChat | None) -> None:
        if chat is not None:
            await self._drop(chat)

    async def aclose(self) -> None:
        for chat in list(self._chats.values()):
            await self._drop(chat)
        if self._llm is not None:
            await self._llm.close()
            self._llm = None

    async def _drop(self, chat: WebChat) -> None:
        if self._chats.get(chat.id) is chat:
            del self._chats[chat.id]

    async def _sweep(self, *, room: int = 0) -> None:
        """Drop idle chats (their holds run out on their own), and the oldest to make `room`."""
        now = self._monotonic()
        live = sorted(self._chats.values(), key=lambda c: c.last_used)
        stale = [c for c in live if now - c.last_used > self.idle_seconds]
        live = [c for c in live if c not in stale]
        stale += live[: max(0, len(live) + room - self.limit)]
        for chat in stale:
            log.info("dropping try-it chat %s", chat.id[:6])
            await self._drop(chat)


def _caller_of(state: dict[str, Any]) -> str | None:
    """The caller's number a stored chat was started with."""
    caller = state.get("caller_phone")
    return caller if isinstance(caller, str) else None


def _line(event: AgentEvent) -> Line:
    match event:
        case Speech(text=text):
            return Line("agent", text)
        case Filler(text=text):
            return Line("filler", text)
        case Handoff(reason=reason, transfer_to=None):
            return Line("handoff", f"The agent hung up: {reason}.")
        case Handoff(reason=reason, transfer_to=number):
            return Line("handoff", f"The agent would transfer the call to {number}: {reason}.")
    raise AssertionError(event)


def chats(request: Request) -> WebChats:
    """This app's chats (`app.state.tryit_chats`, built by the application)."""
    registry: WebChats = request.app.state.tryit_chats
    return registry


router = APIRouter(include_in_schema=False)
add_nav("Try it", "/try")
Chats = Annotated[WebChats, Depends(chats)]


def _page(request: Request, *, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("chat", None)
    context.setdefault("lines", [])
    context.setdefault("error", None)
    context.setdefault("notice", None)
    context.setdefault("caller", "")
    return render(
        request,
        "tryit.html",
        status_code=status_code,
        llm_ready=chats(request).llm.configured,
        **context,
    )


@router.get("/try")
async def tryit_page(request: Request, user: OwnerUser) -> Response:
    return _page(request)


@router.post("/try/start", dependencies=[Depends(verify_csrf)])
async def start_chat(
    request: Request, user: OwnerUser, registry: Chats, caller: Annotated[str, Form()] = ""
) -> Response:
    try:
        business = await db.scheduler(request).business(user.business_id)
        region = phones.region_for(business.phone_numbers)
        phone = phones.to_e164(caller, region) if caller.strip() else None
    except errors.InvalidRequest as exc:
        return _page(request, status_code=status_for(exc), error=exc.message, caller=caller)
    chat, greeting = await registry.start(user, scheduler=db.scheduler(request), caller_phone=phone)
    return _page(request, chat=chat, lines=[Line("agent", greeting)], caller=phone or "")


@router.post("/try/say", dependencies=[Depends(verify_csrf)])
async def say(
    request: Request,
    user: OwnerUser,
    registry: Chats,
    chat_id: Annotated[str, Form()] = "",
    text: Annotated[str, Form()] = "",
) -> Response:
    chat = await registry.get(chat_id, user, scheduler=db.scheduler(request))
    if chat is None:
        return render(request, "tryit_turn.html", lines=[], gone=True)
    text = " ".join(text.split())[:MAX_TURN_CHARS]
    if not text:
        return render(request, "tryit_turn.html", lines=[], gone=False)
    lines = [Line("caller", text), *await registry.say(chat, text)]
    return render(request, "tryit_turn.html", lines=lines, gone=chat.ended)


@router.post("/try/end", dependencies=[Depends(verify_csrf)])
async def end_chat(
    request: Request, user: OwnerUser, registry: Chats, chat_id: Annotated[str, Form()] = ""
) -> Response:
    chat = await registry.get(chat_id, user, scheduler=db.scheduler(request))
    if chat is not None:
        await registry.end(chat)
    return _page(request, notice="Call ended. Its lead is in the lead list, as after a real call.")
