"""Twilio's voice webhooks: the incoming call, gather turns, transfers and status callbacks.

    POST /twilio/voice           a call rings: open the Call, answer with ConversationRelay/Gather
    POST /twilio/gather          gather mode: one caller turn in, one <Say> answer out
    POST /twilio/connect-action  a relay session ended: transfer (<Dial>) or hang up
    POST /twilio/dial-status     the transfer's outcome; nobody answered → back to taking a message
    POST /twilio/status          the call ended: close the Call and finalise the lead

Every request's body is capped (413) and must be a UTF-8 form (400); then its signature is checked
(403), and a signed form that lacks a field or has a malformed one is a 400. None of these reads or
writes anything.

The switchboard the routes use is `app.state.switchboard`, built and closed by the application's
lifespan (`frontdesk.app`).
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import ValidationError
from twilio.twiml.voice_response import Connect, Gather, VoiceResponse

from agent.engine import Filler, Handoff, Speech
from booking import errors
from telephony import relay
from telephony.sessions import CallSession
from telephony.signature import HEADER, SignatureInvalid
from telephony.switchboard import Switchboard
from telephony.wire import (
    CallStatusUpdate,
    ConnectAction,
    DialAction,
    GatherResult,
    IncomingCall,
    WebhookForm,
)

log = logging.getLogger(__name__)
F = TypeVar("F", bound=WebhookForm)

NOT_IN_SERVICE = "Sorry, this number is not set up to take calls yet. Goodbye."
TRANSFER_FAILED = (
    "Sorry, nobody could come to the phone just now. I can take a message and "
    "have someone call you back. What's your name, and what is it about?"
)
TRANSFER_FAILED_MESSAGE_TAKEN = (
    "Sorry, nobody could come to the phone just now. I've passed "
    "your message on, and someone will call you back. Is there "
    "anything else I can help with?"
)
SILENCE = "Sorry, I didn't catch that. How can I help?"
GOODBYE = "I'll let you go. Feel free to call back any time. Goodbye."
TROUBLE = "Sorry, I'm having trouble right now. Please call back in a little while. Goodbye."
MAX_SILENCES = 3
DIAL_TIMEOUT_SECONDS = 20
MAX_BODY = 64 * 1024  # Twilio's forms are a few hundred bytes; a long SpeechResult a few KB
MAX_FIELDS = 200


# Every webhook's body is capped by FastAPI (413 past MAX_BODY, declared or streamed).
router = APIRouter(
    prefix="/twilio",
    tags=["twilio"],
    include_in_schema=False,
    max_body_size=MAX_BODY,
)
router.include_router(relay.router)


# ---- plumbing -------------------------------------------------------------------------------


def switchboard(request: Request) -> Switchboard:
    """The app's switchboard (`app.state.switchboard`, built by the app's lifespan)."""
    board: Switchboard = request.app.state.switchboard
    return board


def parse_form(body: bytes) -> dict[str, str]:
    """A urlencoded form whose bytes and percent-escapes are all UTF-8 (400 otherwise)."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise HTTPException(status_code=400, detail="the form is not UTF-8") from None
    except ValueError:
        raise HTTPException(status_code=400, detail="the form has too many fields") from None
    return dict(pairs)


async def signed(request: Request, model: type[F]) -> F:
    """The request's form as `model`, once its Twilio signature checks out.

    Oversized bodies get 413 and bytes that are not UTF-8 get 400 before the signature is
    checked (403); a signed form that does not fit `model` gets 400. None of them touches
    anything.
    """
    # Twilio posts application/x-www-form-urlencoded; parsed here, every field kept for the
    # signature, without a multipart parser.
    form = parse_form(await request.body())  # capped by the router: 413 past MAX_BODY
    route_path = request.scope["route"].path
    query = request.scope.get("query_string", b"").decode("latin-1")
    try:
        switchboard(request).signature.check_form(
            path=route_path, query=query, form=form, signature=request.headers.get(HEADER)
        )
    except SignatureInvalid:
        raise HTTPException(status_code=403, detail="invalid Twilio signature") from None
    try:
        return model.parse(form)
    except ValidationError as exc:
        raise HTTPException(status_code=400, detail=form_problem(exc)) from None


def form_problem(exc: ValidationError) -> str:
    """One line naming the fields that are missing or malformed (never their values)."""
    fields = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]})
    return "missing or malformed Twilio field(s): " + ", ".join(fields or ["(form)"])


def twiml(response: VoiceResponse) -> Response:
    return Response(content=response.to_xml(), media_type="application/xml")


def say(board: Switchboard, response: VoiceResponse | Gather, text: str) -> None:
    response.say(text, voice=board.tts_voice, language=board.language)


def relay_twiml(
    board: Switchboard, session: CallSession, greeting: str, *, resumed: bool = False
) -> VoiceResponse:
    """Connect the call to our relay websocket; `resumed`: it goes on after a failed session
    (the greeting is the recovery line, and the socket knows not to say it again)."""
    response = VoiceResponse()
    connect = Connect(action=board.signature.url("/twilio/connect-action"))
    query = {"call": session.call_id} | ({relay.RESUMED: "1"} if resumed else {})
    connect.conversation_relay(
        url=board.signature.ws_url("/twilio/relay", urlencode(query)),
        welcome_greeting=greeting,
        language=board.language,
        voice=board.tts_voice,
        dtmf_detection=True,
        interruptible="any",
        # Twilio (changelog 2026-10-28, "Application Reconnect"): over an unexpected drop of the
        # websocket it buffers up to 500 events, reconnects and replays them.
        application_reconnect=True,
    )
    response.append(connect)
    return response


def gather_twiml(board: Switchboard, text: str) -> VoiceResponse:
    response = VoiceResponse()
    gather = Gather(
        input="speech",
        action=board.signature.url("/twilio/gather"),
        method="POST",
        speech_timeout="auto",
        language=board.language,
        action_on_empty_result=True,
    )
    if text:
        say(board, gather, text)
    response.append(gather)
    return response


def conversation_twiml(board: Switchboard, session: CallSession, text: str) -> VoiceResponse:
    """Carry the conversation on after `text`, in the call's channel."""
    if session.channel == "relay":
        return relay_twiml(board, session, text)
    return gather_twiml(board, text)


def goodbye(board: Switchboard, text: str) -> VoiceResponse:
    response = VoiceResponse()
    say(board, response, text)
    response.hangup()
    return response


def dial(board: Switchboard, number: str, before: str = "") -> VoiceResponse:
    response = VoiceResponse()
    if before:
        say(board, response, before)
    response.dial(
        number,
        action=board.signature.url("/twilio/dial-status"),
        method="POST",
        timeout=DIAL_TIMEOUT_SECONDS,
    )
    return response


# ---- routes ---------------------------------------------------------------------------------


@router.post("/voice")
async def incoming_call(request: Request) -> Response:
    form = await signed(request, IncomingCall)
    board = switchboard(request)
    try:
        business = await board.business_for(form.to_number)
    except errors.NotFound:
        log.warning("call %s to %s: no business answers that number", form.call_sid, form.to_number)
        return twiml(goodbye(board, NOT_IN_SERVICE))
    session = await board.open(
        business=business,
        call_sid=form.call_sid,
        from_number=form.from_number,
        to_number=form.to_number,
        channel=board.voice_mode,
    )
    observer: relay.CallObserver | None = getattr(request.app.state, "call_observer", None)
    if observer is not None:
        observer.call_started(session.channel)
    log.info(
        "call %s from %s to %s (%s)",
        form.call_sid,
        form.from_number,
        business.id,
        session.channel,
        extra={"call_sid": form.call_sid, "business_id": business.id},
    )
    return twiml(conversation_twiml(board, session, session.greeting))


@router.post("/gather")
async def gather_turn(request: Request) -> Response:
    form = await signed(request, GatherResult)
    board = switchboard(request)
    try:
        session = await board.resume(
            call_sid=form.call_sid,
            from_number=form.from_number,
            to_number=form.to_number,
            channel="gather",
        )
    except errors.NotFound:
        return twiml(goodbye(board, NOT_IN_SERVICE))
    heard = form.speech_result.strip()
    if not heard:
        session.silences += 1
        await board.save(session)
        if session.silences >= MAX_SILENCES:
            return twiml(goodbye(board, GOODBYE))
        return twiml(gather_twiml(board, SILENCE))
    session.silences = 0
    started = time.monotonic()
    async with session.turn_lock:
        answer = await _answer(board, session, heard)
    observer: relay.CallObserver | None = getattr(request.app.state, "call_observer", None)
    if observer is not None:  # gather answers whole: its first words come with the last
        observer.first_token("gather", time.monotonic() - started)
    return twiml(answer)


async def _answer(board: Switchboard, session: CallSession, heard: str) -> VoiceResponse:
    """Run one turn through the engine and answer it as a whole (gather cannot stream)."""
    spoken: list[str] = []
    handoff: Handoff | None = None
    try:
        async with aclosing(session.conversation.reply(heard)) as events:
            async for event in events:
                if isinstance(event, Speech):
                    spoken.append(event.text)
                elif isinstance(event, Handoff):
                    handoff = event
                    break
                elif not isinstance(event, Filler):  # a filler only helps while streaming
                    log.warning("unexpected engine event %r", event)
    except Exception:
        log.exception("the conversation failed on call %s", session.call_sid)
        await board.save(session)  # what the caller said, for whichever worker ends the call
        return goodbye(board, TROUBLE)
    finally:
        board.turn_done(session)
    session.handoff = handoff or session.handoff
    # Saved before Twilio hears the answer: the call's next turn may reach any worker.
    await board.save(session)
    text = " ".join(spoken)
    if handoff is None:
        return gather_twiml(board, text)
    if handoff.transfer_to:
        return dial(board, handoff.transfer_to, before=text)
    response = VoiceResponse()
    if text:
        say(board, response, text)
    response.hangup()
    return response


@router.post("/connect-action")
async def relay_ended(request: Request) -> Response:
    form = await signed(request, ConnectAction)
    board = switchboard(request)
    handoff = form.handoff()
    if handoff is not None and handoff.transfer_to:
        log.info(
            "call %s: transferring to %s (%s)", form.call_sid, handoff.transfer_to, handoff.reason
        )
        return twiml(dial(board, handoff.transfer_to))
    if handoff is None and form.session_status == "failed" and form.call_status == "in-progress":
        # The websocket dropped (Twilio error 64105: a worker died or restarted). Any worker
        # answers: a new relay session for the same call, going on from the saved state.
        log.warning(
            "call %s: relay session %s failed (%s %s); reconnecting",
            form.call_sid,
            form.session_id,
            form.error_code,
            form.error_message,
        )
        try:
            session = await board.resume(
                call_sid=form.call_sid,
                from_number=form.from_number,
                to_number=form.to_number,
                channel="relay",
            )
        except errors.NotFound:
            session = None
        if session is not None:
            return twiml(relay_twiml(board, session, relay.RECOVERED, resumed=True))
    response = VoiceResponse()
    response.hangup()
    return twiml(response)


@router.post("/dial-status")
async def transfer_result(request: Request) -> Response:
    form = await signed(request, DialAction)
    board = switchboard(request)
    if form.connected:
        response = VoiceResponse()
        response.hangup()
        return twiml(response)
    log.info(
        "call %s: transfer ended %s; taking a message instead", form.call_sid, form.dial_call_status
    )
    try:
        session = await board.resume(
            call_sid=form.call_sid,
            from_number=form.from_number,
            to_number=form.to_number,
            channel=board.voice_mode,
        )
    except errors.NotFound:
        return twiml(goodbye(board, NOT_IN_SERVICE))
    said = TRANSFER_FAILED_MESSAGE_TAKEN if session.conversation.lead_recorded else TRANSFER_FAILED
    if session.handoff is not None:
        board.reopen(session, said=said)
        await board.save(session)
    return twiml(conversation_twiml(board, session, said))


@router.post("/status")
async def call_status(request: Request) -> Response:
    form = await signed(request, CallStatusUpdate)
    await switchboard(request).close(form)
    return Response(status_code=204)
