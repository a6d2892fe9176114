"""The ConversationRelay websocket (`/twilio/relay`), per Twilio's documented message protocol.

Twilio does the speech recognition and synthesis; this socket gets the caller's turns as text and
streams the answer back as `text` tokens, sentence by sentence as the engine produces them:

    Twilio → us   setup · prompt (act on last=true) · interrupt · dtmf · error
    us → Twilio   {"type":"text","token":...,"last":false} ... then {"type":"text","token":"",
                  "last":true} to close the turn
                  {"type":"end","handoffData":"{...}"} to transfer or hang up

One turn runs at a time per socket, as a task: a new final prompt, an interrupt or a DTMF
transfer cancels it at once. On an interrupt the engine learns what the caller actually heard.

Twilio ends the session as soon as it gets `end`, whatever it is still saying, and the socket
never says when speech has finished. So a hand-off sends the goodbye's text and `last`, then
waits until Twilio can have spoken everything sent (`speech_pace.SpeechPace`), and only then
sends `end`; the caller talking over the goodbye cuts that wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from agent.engine import Filler, Handoff, Speech
from booking import errors
from telephony.sessions import CallSession
from telephony.signature import HEADER, SignatureInvalid
from telephony.switchboard import Switchboard
from telephony.wire import (
    Dtmf,
    EndSession,
    Inbound,
    Interrupt,
    Prompt,
    RelayError,
    Setup,
    TextToken,
    Unknown,
    dump_outbound,
    parse_inbound,
)
from telephony.wire import Handoff as HandoffData

log = logging.getLogger(__name__)
router = APIRouter()

PATH = "/twilio/relay"
HUMAN_DIGIT = "0"
MAX_FRAME = 64 * 1024  # Twilio's messages are well under a kilobyte
TROUBLE = "Sorry, I'm having trouble on my side. Could you say that again?"
# What a caller hears when the call's websocket came back (to this or another worker) mid-call.
RECOVERED = "Sorry, we got cut off for a moment. Could you say that last part again?"
RESUMED = "resumed"  # in the socket's query: Twilio's welcome greeting already said RECOVERED
PUTTING_THROUGH = "Please hold while I put you through."


class CallObserver(Protocol):
    """Where calls are counted and timed (`app.state.call_observer`, if set)."""

    def call_started(self, channel: str) -> None: ...
    def relay_opened(self) -> None: ...
    def relay_closed(self) -> None: ...
    def first_token(self, channel: str, seconds: float) -> None: ...


@router.websocket("/relay")
async def relay(websocket: WebSocket) -> None:
    board: Switchboard = websocket.app.state.switchboard
    query = websocket.scope.get("query_string", b"").decode("latin-1")
    try:
        board.signature.check_websocket(
            path=PATH, query=query, signature=websocket.headers.get(HEADER)
        )
    except SignatureInvalid:
        # Closing before accept() answers the upgrade with HTTP 403.
        await websocket.close(code=1008)
        return
    await websocket.accept()
    observer: CallObserver | None = getattr(websocket.app.state, "call_observer", None)
    params = dict(parse_qsl(query))
    relay_call = RelayCall(
        websocket, board, observer, resumed=RESUMED in params, call_id=params.get("call")
    )
    await relay_call.run()


def inbound(frame: Mapping[str, Any]) -> Inbound | None:
    """The message in one websocket frame, or None (logged) for anything Twilio would not send:
    binary or oversized frames, JSON that is not an object of a known shape."""
    raw = frame.get("text")
    if not isinstance(raw, str):
        log.warning("ignoring a binary relay frame")
        return None
    if len(raw) > MAX_FRAME:
        log.warning("ignoring a relay frame of %d characters", len(raw))
        return None
    try:
        return parse_inbound(raw)
    except ValidationError as exc:
        # The error's type only: its input is what the sender chose to put in the log.
        first = exc.errors(include_input=False, include_url=False)[:1]
        log.warning("malformed relay message: %s", [(e["type"], e["loc"]) for e in first])
        return None


class RelayCall:
    """One relay session: reads Twilio's messages and runs the caller's turns."""

    def __init__(
        self,
        websocket: WebSocket,
        board: Switchboard,
        observer: CallObserver | None = None,
        *,
        resumed: bool = False,
        call_id: str | None = None,
    ) -> None:
        self.ws = websocket
        self.call_id = call_id  # ours, from the socket's (signed) query
        self.resumed = resumed  # opened by the <Connect action> answer after a failed session
        self.board = board
        self.observer = observer
        self.turn_started: float | None = None  # loop time of the running turn's prompt
        self.session: CallSession | None = None
        self.turn: asyncio.Task[None] | None = None
        self.heard: list[str] = []  # what the running turn has sent to be spoken
        self.spoken_by = 0.0  # loop time when Twilio will have spoken all we sent, at the latest
        self.closing: asyncio.Event | None = None  # set: stop waiting for the goodbye, end now
        self.ended = False

    async def run(self) -> None:
        try:
            while not self.ended:
                frame = await self.ws.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                message = inbound(frame)
                if message is not None:
                    await self.handle(message)
        except WebSocketDisconnect:
            pass
        finally:
            await self.stop_turn()
            if self.session is not None:
                await self.hand_over(self.session)
                if self.observer is not None:
                    self.observer.relay_closed()

    async def hand_over(self, session: CallSession) -> None:
        """The socket closed (hang-up, a dropped connection, a shutdown): let tools still running
        finish and save the call, so whichever worker Twilio reconnects to goes on from here."""
        if self.board.store is None:
            return
        with contextlib.suppress(Exception):  # logged by the save
            await session.conversation.settle()
            await self.board.save(session)

    async def handle(self, message: Inbound) -> None:
        if isinstance(message, Setup):
            await self.setup(message)
        elif isinstance(message, RelayError):
            log.warning("ConversationRelay error: %s", message.description)
        elif isinstance(message, Unknown):
            log.info("ignoring relay message of type %r", message.type)
        elif self.session is None and not await self.reattach():
            log.warning("relay message %r before setup; ignored", message.type)
        elif self.closing is not None:
            self.closing.set()  # the caller talks over the goodbye: they are not listening
        elif isinstance(message, Prompt):
            await self.prompt(message)
        elif isinstance(message, Interrupt):
            await self.interrupt(message)
        else:
            await self.dtmf(message)

    async def setup(self, message: Setup) -> None:
        if self.session is not None:
            return
        try:
            session = await self.board.resume(
                call_sid=message.call_sid,
                from_number=message.from_number,
                to_number=message.to_number,
                channel="relay",
            )
        except errors.NotFound:
            log.warning(
                "relay for call %s: no business answers %s", message.call_sid, message.to_number
            )
            await self.end(HandoffData(reason="number not in service"))
            return
        await self.opened(session)

    async def opened(self, session: CallSession, *, replayed: bool = False) -> None:
        """This socket serves `session` from now on. A socket of a call that had one before is a
        reconnection: the caller hears a short line, never the greeting again (unless Twilio's
        welcome greeting said it, or the socket opened with the caller's replayed words, which
        are answered at once)."""
        self.session = session
        if self.observer is not None:
            self.observer.relay_opened()
        session.relay_connects += 1
        if session.relay_connects > 1 or self.resumed or replayed:
            log.info("call %s: relay reconnected", session.call_sid)
            if not replayed:
                session.conversation.said(RECOVERED)
            if not (self.resumed or replayed):
                await self.say(RECOVERED)
                await self.send(TextToken(token="", last=True))
        self.board.persist(session)

    async def reattach(self) -> bool:
        """A reconnected socket whose first message is a replayed event, not `setup`: find the
        call by the id its URL carries. True if this socket now has its call."""
        if not self.call_id or self.ended:
            return False
        try:
            session = await self.board.resume_call(self.call_id)
        except errors.NotFound:
            session = None
        if session is None:
            self.call_id = None  # do not look again
            return False
        await self.opened(session, replayed=True)
        return True

    async def prompt(self, message: Prompt) -> None:
        if not message.last:
            return  # a partial transcript; the final one follows
        text = message.voice_prompt.strip()
        if not text:
            return
        await self.start_turn(text)

    async def interrupt(self, message: Interrupt) -> None:
        assert self.session is not None
        self.spoken_by = 0.0  # Twilio stopped speaking
        await self.stop_turn(tell_engine=False)
        self.session.conversation.interrupted(message.utterance_until_interrupt)
        self.board.persist(self.session)  # what the caller actually heard

    async def dtmf(self, message: Dtmf) -> None:
        assert self.session is not None
        number = self.session.business.transfer_number
        if message.digit == HUMAN_DIGIT and number:
            await self.stop_turn()
            self.heard = []
            handoff = Handoff(reason="caller pressed 0", transfer_to=number)
            self.turn = asyncio.create_task(self.put_through(handoff), name="relay transfer")
            return
        await self.start_turn(f"(I pressed {message.digit} on my keypad.)")

    async def put_through(self, handoff: Handoff) -> None:
        await self.say(PUTTING_THROUGH)
        await self.hand_off(handoff)

    # ---- turns --------------------------------------------------------------------------

    async def start_turn(self, text: str) -> None:
        await self.stop_turn()
        self.heard = []
        self.turn_started = asyncio.get_running_loop().time()
        self.turn = asyncio.create_task(self.run_turn(text), name="relay turn")

    async def stop_turn(self, *, tell_engine: bool = True) -> None:
        """Cancel the running turn; the engine keeps only what was sent to be spoken."""
        turn, self.turn = self.turn, None
        if turn is None or turn.done():
            return
        turn.cancel()
        await asyncio.gather(turn, return_exceptions=True)
        # Once closing, the conversation is over: there is nothing left to correct.
        if tell_engine and self.session is not None and self.closing is None:
            self.session.conversation.interrupted(" ".join(self.heard))

    async def run_turn(self, text: str) -> None:
        session = self.session
        assert session is not None
        try:
            async with contextlib.aclosing(session.conversation.reply(text)) as events:
                async for event in events:
                    if isinstance(event, Speech | Filler):
                        await self.say(event.text)
                    elif isinstance(event, Handoff):
                        session.handoff = event
                        await self.board.save(session)
                        await self.hand_off(event)
                        return
            # The turn is durable before Twilio hears it is over: the next may reach any worker.
            await self.board.save(session)
            await self.send(TextToken(token="", last=True))
        except (asyncio.CancelledError, WebSocketDisconnect):
            raise
        except Exception:
            log.exception("turn failed on call %s", session.call_sid)
            with contextlib.suppress(Exception):
                await self.say(TROUBLE)
                await self.send(TextToken(token="", last=True))
        finally:
            self.board.turn_done(session)

    # ---- sending --------------------------------------------------------------------------

    async def say(self, text: str) -> None:
        token = text if text.endswith((" ", "\n")) else text + " "
        await self.send(TextToken(token=token))
        self.heard.append(text)
        now = asyncio.get_running_loop().time()
        if self.turn_started is not None and self.observer is not None:
            self.observer.first_token("relay", now - self.turn_started)
        self.turn_started = None
        pace = self.board.speech_pace
        # Twilio speaks what it gets in order: after what it is still saying, or after the lead.
        self.spoken_by = max(self.spoken_by, now + pace.lead) + pace.seconds(text)

    async def hand_off(self, handoff: Handoff) -> None:
        """Close the turn, let Twilio finish speaking it, then end the session with `handoff`."""
        assert self.session is not None
        self.session.handoff = handoff
        await self.send(TextToken(token="", last=True))
        self.closing = asyncio.Event()
        delay = self.spoken_by - asyncio.get_running_loop().time()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(delay, 0.0)):
                await self.closing.wait()
        await self.end(HandoffData(reason=handoff.reason, transfer_to=handoff.transfer_to))

    async def end(self, handoff: HandoffData) -> None:
        await self.send(EndSession(handoff_data=handoff.dump()))
        self.ended = True

    async def send(self, message: TextToken | EndSession) -> None:
        await self.ws.send_text(dump_outbound(message))
