"""What the relay websocket and the gather webhooks share: opening a call, running a turn through
the one conversation engine, texting confirmations, and closing the call when Twilio says it ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import openai

from agent.engine import CallContext, Conversation
from booking import errors, phones
from booking.calls import FINAL_STATUSES, CallLog
from booking.models import Appointment, AppointmentStatus, Business, LeadOutcome
from booking.scheduler import Scheduler
from telephony.sessions import CallSession, CallSessions
from telephony.signature import TwilioSignature
from telephony.sms import Change, Sms, SmsSender, confirmation_text
from telephony.speech_pace import SpeechPace
from telephony.wire import CallStatusUpdate

log = logging.getLogger(__name__)


@dataclass
class Switchboard:
    scheduler: Scheduler
    calls: CallLog
    llm: openai.AsyncOpenAI
    model: str
    signature: TwilioSignature
    voice_mode: str = "relay"
    language: str = "en-US"
    tts_voice: str | None = None
    llm_timeout: float = 8.0
    sms: SmsSender | None = None
    speech_pace: SpeechPace = field(default_factory=SpeechPace)
    sessions: CallSessions = field(default_factory=CallSessions)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    # ---- opening a call ---------------------------------------------------------------------

    async def business_for(self, to_number: str | None) -> Business:
        """The business answering `to_number`; `NotFound` if none does."""
        if not to_number:
            raise errors.NotFound("the call has no called number")
        try:
            return await self.scheduler.business_by_number(to_number)
        except errors.InvalidRequest:
            raise errors.NotFound(f"{to_number!r} is not a number we answer") from None

    async def open(
        self,
        *,
        business: Business,
        call_sid: str,
        from_number: str | None,
        to_number: str | None,
        channel: str,
        greet: bool = True,
    ) -> CallSession:
        """The session for `call_sid`: the live one, or a new one over an (idempotent) Call row."""
        self._expire_idle()
        live = self.sessions.get(call_sid)
        if live is not None:
            return live
        call = await self.calls.start_call(
            business_id=business.id, call_sid=call_sid, from_number=from_number, to_number=to_number
        )
        # Withheld, anonymous and SIP callers have no number: the agent asks for one.
        caller = phones.caller_number(from_number, phones.region_for(business.phone_numbers))
        session = CallSession(
            call_sid=call_sid,
            call_id=call.id,
            business=business,
            caller=caller,
            channel=channel,
            conversation=self._conversation(business, caller, call.id, channel),
        )
        session = self.sessions.add(session)
        if greet and not session.greeting:
            session.greeting = await session.conversation.greeting()
        return session

    def _conversation(
        self, business: Business, caller: str | None, call_id: str, channel: str
    ) -> Conversation:
        return Conversation(
            scheduler=self.scheduler,
            llm=self.llm,
            model=self.model,
            clock=self.scheduler.clock,
            context=CallContext(
                business_id=business.id, caller_phone=caller, call_id=call_id, channel=channel
            ),
            llm_timeout=self.llm_timeout,
        )

    def reopen(self, session: CallSession, *, said: str) -> None:
        """Carry a call on after it was handed to a person who did not answer.

        The engine ends a conversation for good at a hand-off, so the call goes on with the
        next one, which shares the call's state: the call still ends as one lead.
        """
        handoff = session.handoff
        reason = handoff.reason if handoff is not None else "the caller asked for a person"
        session.earlier_transcript.extend(session.conversation.transcript)
        session.earlier.append(session.conversation)
        session.conversation = session.conversation.carry_on(said=said, unanswered=reason)
        session.handoff = None

    async def resume(
        self, *, call_sid: str, from_number: str | None, to_number: str | None, channel: str
    ) -> CallSession:
        """The live session, or (after a restart) a fresh one that carries on without greeting."""
        live = self.sessions.get(call_sid)
        if live is not None:
            return live
        log.info("no live session for %s; continuing the call with a new conversation", call_sid)
        known = await self.calls.get_by_sid(call_sid)
        if known is not None:
            business = await self.scheduler.business(known.business_id)
        else:
            business = await self.business_for(to_number)
        return await self.open(
            business=business,
            call_sid=call_sid,
            from_number=from_number,
            to_number=to_number,
            channel=channel,
            greet=False,
        )

    # ---- after each turn ----------------------------------------------------------------------

    def turn_done(self, session: CallSession) -> None:
        """Text confirmations for the turn's changes and save the transcript, off the call path."""
        task = self._spawn(self._after_turn(session), name=f"after turn {session.call_sid}")
        session.pending.add(task)
        task.add_done_callback(session.pending.discard)

    async def _after_turn(self, session: CallSession) -> None:
        await self._confirm_changes(session)
        await self.calls.save_transcript(session.call_id, session.transcript)

    async def _confirm_changes(self, session: CallSession) -> None:
        """One text per booking, move or cancellation this call made (each sent once)."""
        if self.sms is None:
            return
        changed = [*session.booked, *session.cancelled]
        for appointment_id in changed:
            try:
                await self._text_about(session, appointment_id)
            except Exception:
                log.exception("could not send the confirmation for %s", appointment_id)

    async def _text_about(self, session: CallSession, appointment_id: str) -> None:
        business = session.business
        appointment = await self.scheduler.get_appointment(
            business_id=business.id, appointment_id=appointment_id
        )
        change = _change(appointment)
        key = f"{appointment_id}:{change}"
        if change is None or key in session.confirmed:
            return
        session.confirmed.add(key)
        contact = await self.scheduler.contact(appointment.contact_id)
        sender = next(iter(business.phone_numbers), None)
        if self.sms is None or contact is None or sender is None:
            return
        services = {s.id: s.name for s in await self.scheduler.services(business.id)}
        staff = {m.id: m.name for m in await self.scheduler.staff(business.id)}
        body = confirmation_text(
            change,
            business_name=business.name,
            service_name=services.get(appointment.service_id, appointment.service_id),
            staff_name=staff.get(appointment.staff_id, appointment.staff_id),
            start=appointment.start,
            timezone=business.timezone,
        )
        self.sms.send(Sms(to=contact.phone, from_=sender, body=body))

    # ---- closing --------------------------------------------------------------------------

    async def close(self, update: CallStatusUpdate) -> None:
        """Twilio's status callback: on a final status, finish the lead and close the Call."""
        if update.call_status not in FINAL_STATUSES:
            return
        session = self.sessions.pop(update.call_sid)
        outcome = None
        if session is not None:
            outcome = await self._finish(session)
        try:
            await self.calls.finish_call(
                update.call_sid,
                status=update.call_status,
                duration_seconds=update.call_duration,
                outcome=outcome,
            )
        except errors.NotFound:
            log.warning("status callback for unknown call %s", update.call_sid)

    async def _finish(self, session: CallSession) -> str | None:
        """Finalise the conversation's lead and store its transcript; returns the call outcome."""
        # Let earlier after-turn saves land first, so the final transcript is the one kept.
        await asyncio.gather(*list(session.pending), return_exceptions=True)
        for conversation in (*session.earlier, session.conversation):
            try:
                await conversation.finish()
            except Exception:
                log.exception("finishing a conversation of %s failed", session.call_sid)
        await self._confirm_changes(session)
        await self.calls.save_transcript(session.call_id, session.transcript)
        if session.booked:
            return LeadOutcome.BOOKED.value
        if session.handoff is not None and session.handoff.transfer_to:
            return "transferred"
        return None

    def _expire_idle(self) -> None:
        for session in self.sessions.expired():
            log.info("call %s idle too long; finishing its conversation", session.call_sid)
            self._spawn(self._finish(session), name=f"expire {session.call_sid}")

    def _spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(_logged(coro, name), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def drain(self) -> None:
        """Wait for background work (confirmations, transcripts) to finish."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        if self.sms is not None:
            await self.sms.drain()

    async def aclose(self) -> None:
        """Shutdown: finish live conversations so their leads are kept, then stop senders."""
        for session in self.sessions.drain():
            await self._finish(session)
        await self.drain()
        if self.sms is not None:
            await self.sms.aclose()
        await self.llm.close()


def _change(appointment: Appointment) -> Change | None:
    """What to tell the caller about this appointment; None once it has moved elsewhere."""
    if appointment.status == AppointmentStatus.RESCHEDULED:
        return None
    if appointment.status == AppointmentStatus.CANCELLED:
        return Change.CANCELLED
    if appointment.rescheduled_from:
        return Change.RESCHEDULED
    return Change.BOOKED


async def _logged(coro: Coroutine[Any, Any, Any], name: str) -> None:
    try:
        await coro
    except Exception:
        log.exception("background task %r failed", name)
