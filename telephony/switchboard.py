"""What the relay websocket and the gather webhooks share: opening a call, running a turn through
the one conversation engine, texting confirmations, and closing the call when Twilio says it ended.

With a conversation store (`store`, the app sets one) a call outlives the worker serving it: its
session is saved as each turn completes (and after each round of tools, so a booking is durable
before it is announced), and any worker rebuilds it from the store: the next gather turn, a
reconnected relay websocket, the `<Connect action>` callback or the status callback. Saves are
compare-and-set on the stored version, so a worker holding an older copy never overwrites a newer
one; the call is finished (its lead recorded) by the one worker that claims its end, or, when
Twilio's status callback never comes, by the idle-call job (`expire_idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

import openai

from agent.engine import CallContext, Conversation
from agent.telemetry import AgentObserver
from booking import errors, phones
from booking.calls import FINAL_STATUSES, CallLog
from booking.conversations import (
    ConversationStore,
    StaleConversation,
    StoredConversation,
    call_key,
)
from booking.models import Appointment, AppointmentStatus, Business, Call, LeadOutcome
from booking.scheduler import Scheduler
from telephony.sessions import CallSession, CallSessions, handoff_of
from telephony.signature import TwilioSignature
from telephony.sms import Change, Sms, SmsSender, confirmation_text
from telephony.speech_pace import SpeechPace
from telephony.wire import CallStatusUpdate

log = logging.getLogger(__name__)

CALL_IDLE_SECONDS = 2 * 3600  # a call with no turn for this long is over, callback or not
KEEP_ENDED = timedelta(days=7)  # an ended conversation's saved state, for late callbacks


class Texts(Protocol):
    """The durable SMS outbox (`telephony.sms_outbox.SmsOutbox`): one text per key, ever."""

    async def queue(
        self,
        *,
        business_id: str,
        key: str,
        sms: Sms,
        kind: str | None = None,
        appointment_id: str | None = None,
    ) -> bool: ...


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
    store: ConversationStore | None = None  # None: calls live in this process only
    texts: Texts | None = None  # the durable outbox; else confirmations go through `sms`
    agent_observer: AgentObserver | None = None
    call_idle_seconds: float = CALL_IDLE_SECONDS
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
        """The session for `call_sid`: the live one, the stored one (a retried webhook reaching
        another worker), or a new one over an (idempotent) Call row, saved before it is used."""
        self._expire_idle()
        live = self.sessions.get(call_sid)
        if live is not None and not live.stale:
            return live
        call, created = await self.calls.begin_call(
            business_id=business.id,
            call_sid=call_sid,
            from_number=from_number,
            to_number=to_number,
            channel=channel,
        )
        if self.store is not None and not created:
            stored = await self.store.load(call_key(call.id))
            if stored is not None:
                return self.sessions.replace(await self._restored(stored, business, call))
        # Withheld, anonymous and SIP callers have no number: the agent asks for one.
        caller = phones.caller_number(from_number, phones.region_for(business.phone_numbers))
        session = CallSession(
            call_sid=call_sid,
            call_id=call.id,
            business=business,
            caller=caller,
            channel=channel,
            conversation=self._conversation(business, caller, call.id, channel, call_sid),
        )
        session = self.sessions.add(session)
        if greet and not session.greeting:
            session.greeting = await session.conversation.greeting()
        elif not greet:
            session.greeting = "-"  # it was greeted where it began: never again
        await self.save(session)
        if session.stale:  # another worker stored this call first: go on with theirs
            return await self._latest(call_sid, business)
        return session

    def _conversation(
        self, business: Business, caller: str | None, call_id: str, channel: str, call_sid: str
    ) -> Conversation:
        return Conversation(
            scheduler=self.scheduler,
            llm=self.llm,
            model=self.model,
            clock=self.scheduler.clock,
            context=self._context(business.id, caller, call_id, channel),
            llm_timeout=self.llm_timeout,
            checkpoint=partial(self._checkpoint, call_sid),
            observer=self.agent_observer,
        )

    @staticmethod
    def _context(business_id: str, caller: str | None, call_id: str, channel: str) -> CallContext:
        return CallContext(
            business_id=business_id, caller_phone=caller, call_id=call_id, channel=channel
        )

    async def _restored(
        self, stored: StoredConversation, business: Business | None, call: Call | None = None
    ) -> CallSession:
        """The session `stored` saved, going on in this worker (never greeting again)."""
        state = stored.state
        if business is None or business.id != stored.business_id:
            business = await self.scheduler.business(stored.business_id)
        call_sid = str(state.get("call_sid") or (call.call_sid if call is not None else ""))
        caller = state.get("caller") if isinstance(state.get("caller"), str) else None
        call_id = stored.call_id or (call.id if call is not None else "")
        context = self._context(business.id, caller, call_id, stored.channel)
        snapshot = state.get("conversation")
        try:
            conversation = Conversation.restore(
                snapshot if isinstance(snapshot, dict) else {},
                scheduler=self.scheduler,
                llm=self.llm,
                model=self.model,
                context=context,
                clock=self.scheduler.clock,
                llm_timeout=self.llm_timeout,
                checkpoint=partial(self._checkpoint, call_sid),
                observer=self.agent_observer,
            )
        except ValueError as exc:
            # Saved by a version that wrote another shape: go on without the history.
            log.warning("call %s: its saved conversation cannot be read (%s)", call_sid, exc)
            conversation = self._conversation(business, caller, call_id, stored.channel, call_sid)
        confirmed = state.get("confirmed")
        earlier = state.get("earlier_transcript")
        return CallSession(
            call_sid=call_sid,
            call_id=call_id,
            business=business,
            caller=caller,
            channel=stored.channel,
            conversation=conversation,
            greeting=str(state.get("greeting") or "-"),
            handoff=handoff_of(state),
            silences=_int(state.get("silences")),
            confirmed={str(k) for k in confirmed} if isinstance(confirmed, list) else set(),
            earlier_transcript=[dict(e) for e in earlier if isinstance(e, dict)]
            if isinstance(earlier, list)
            else [],
            relay_connects=_int(state.get("relay_connects")),
            version=stored.version,
            saved=state,
        )

    async def _latest(self, call_sid: str, business: Business | None = None) -> CallSession:
        """This call's stored session (the store must hold it)."""
        assert self.store is not None
        call = await self.calls.get_by_sid(call_sid)
        if call is None:
            raise errors.NotFound(f"no call {call_sid}")
        stored = await self.store.load(call_key(call.id))
        if stored is None:
            raise errors.NotFound(f"call {call_sid} has no saved conversation")
        return self.sessions.replace(await self._restored(stored, business, call))

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
        session.relay_connects = 0  # the relay that opens next is expected, not a reconnect

    async def resume(
        self, *, call_sid: str, from_number: str | None, to_number: str | None, channel: str
    ) -> CallSession:
        """The call's latest session: this worker's copy while no other worker has saved a newer
        one, else the stored one; a call nobody stored (a restart without a store) carries on
        with a new conversation that does not greet."""
        live = self.sessions.get(call_sid)
        if self.store is None:
            if live is not None:
                return live
        else:
            if live is not None and not live.stale:
                if await self.store.version(call_key(live.call_id)) in (live.version, None):
                    return live
                live.stale = True  # another worker took a turn since: theirs is newer
            known = await self.calls.get_by_sid(call_sid)
            if known is not None:
                stored = await self.store.load(call_key(known.id))
                if stored is not None:
                    business = live.business if live is not None else None
                    return self.sessions.replace(await self._restored(stored, business, known))
        log.info("no saved session for %s; continuing the call with a new conversation", call_sid)
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

    async def resume_call(self, call_id: str) -> CallSession | None:
        """The session of the call with our id `call_id` (a relay socket's query names it), or
        None if there is no such call."""
        call = await self.calls.get(call_id)
        if call is None or not call.call_sid:
            return None
        return await self.resume(
            call_sid=call.call_sid,
            from_number=call.from_number,
            to_number=call.to_number,
            channel="relay",
        )

    # ---- durable state ------------------------------------------------------------------------

    def persist(self, session: CallSession) -> asyncio.Task[None] | None:
        """Save `session` in the background; saves asked for while one runs are coalesced into
        the next. Returns the save's task (None without a store)."""
        if self.store is None or session.stale:
            return None
        session.dirty = True
        task = session.saving
        if task is None or task.done():
            task = self._spawn(self._write(session), name=f"save {session.call_sid}")
            session.saving = task
        return task

    async def save(self, session: CallSession) -> None:
        """Save `session` now and wait until it is stored (a cancelled caller does not stop
        the write)."""
        task = self.persist(session)
        if task is not None:
            await asyncio.shield(task)

    async def _write(self, session: CallSession) -> None:
        assert self.store is not None
        while session.dirty and not session.stale:
            session.dirty = False
            state = session.to_state()  # a consistent copy, on the loop
            if state == session.saved:
                # Nothing changed (a socket closing after its turn was saved): writing anyway
                # would make the copy of a worker Twilio already reconnected to look stale.
                continue
            try:
                session.version = await self.store.save(
                    call_key(session.call_id),
                    business_id=session.business.id,
                    call_id=session.call_id,
                    channel=session.channel,
                    state=state,
                    version=session.version,
                )
                session.saved = state
            except StaleConversation:
                log.warning("call %s was saved by another worker meanwhile", session.call_sid)
                session.stale = True
                self.sessions.discard(session)
            except Exception:
                session.dirty = True  # kept for the next save
                raise

    def _checkpoint(self, call_sid: str) -> None:
        """After a round of tools: the round's effects are saved before the answer is spoken."""
        session = self.sessions.get(call_sid)
        if session is not None:
            self.persist(session)

    # ---- after each turn ----------------------------------------------------------------------

    def turn_done(self, session: CallSession) -> None:
        """Text confirmations for the turn's changes (and without a store, keep the transcript),
        off the call path."""
        task = self._spawn(self._after_turn(session), name=f"after turn {session.call_sid}")
        session.pending.add(task)
        task.add_done_callback(session.pending.discard)

    async def _after_turn(self, session: CallSession) -> None:
        await self._confirm_changes(session)
        if self.store is None:
            await self.calls.save_transcript(session.call_id, session.transcript)
        # With a store the turn was saved (its transcript in the state) before its answer was
        # released, and nothing is saved after that: the call's next turn may already be running on
        # another worker from that version, and a save from here would make its turn the stale
        # one. The texts' keys (`confirmed`) ride along with this call's next save; the outbox
        # sends each key once whoever queues it again.

    async def _confirm_changes(self, session: CallSession) -> None:
        """One text per booking, move or cancellation this call made (each sent once: with the
        outbox, once across workers, by its key)."""
        if self.sms is None and self.texts is None:
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
        if contact is None or sender is None:
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
        sms = Sms(to=contact.phone, from_=sender, body=body)
        if self.texts is not None:
            await self.texts.queue(
                business_id=business.id,
                key=key,
                sms=sms,
                kind="confirmation",
                appointment_id=appointment_id,
            )
        elif self.sms is not None:
            self.sms.send(sms)

    # ---- closing --------------------------------------------------------------------------

    async def close(self, update: CallStatusUpdate) -> None:
        """Twilio's status callback: on a final status, finish the lead and close the Call."""
        if update.call_status not in FINAL_STATUSES:
            return
        session = self.sessions.pop(update.call_sid)
        outcome = None
        if self.store is None:
            if session is not None:
                outcome = await self._finish(session)
        else:
            outcome = await self._finish_stored(update.call_sid, session)
        try:
            await self.calls.finish_call(
                update.call_sid,
                status=update.call_status,
                duration_seconds=update.call_duration,
                outcome=outcome,
            )
        except errors.NotFound:
            log.warning("status callback for unknown call %s", update.call_sid)

    async def _finish_stored(self, call_sid: str, session: CallSession | None) -> str | None:
        """Finish a stored call once across workers: whoever claims its end finishes it, from
        this worker's copy when it is the latest, else from the store."""
        assert self.store is not None
        if session is not None:
            await asyncio.gather(*list(session.pending), return_exceptions=True)
            await self._flush(session)
        call = await self.calls.get_by_sid(call_sid)
        if call is None:
            return None
        key = call_key(call.id)
        if not await self.store.end(key):
            return None  # another worker (or an earlier callback) finished it
        stored = await self.store.load(key)
        if session is None or session.stale or stored is None or stored.version != session.version:
            if stored is None:
                return None
            session = await self._restored(stored, None, call)
        return await self._finish(session)

    async def _flush(self, session: CallSession) -> None:
        with contextlib.suppress(Exception):  # logged by the save's task
            await self.save(session)

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
        if self.store is not None and not session.stale:
            await self._flush(session)
        # The saved state carries the transcript while the call goes on (any worker finishing
        # it reads it from there); the call's row gets it once, here.
        await self.calls.save_transcript(session.call_id, session.transcript)
        if session.booked:
            return LeadOutcome.BOOKED.value
        if session.handoff is not None and session.handoff.transfer_to:
            return "transferred"
        return None

    def _expire_idle(self) -> None:
        for session in self.sessions.expired():
            if self.store is not None:
                continue  # stored calls are ended by `expire_idle`, once across workers
            log.info("call %s idle too long; finishing its conversation", session.call_sid)
            self._spawn(self._finish(session), name=f"expire {session.call_sid}")

    async def expire_idle(self, *, limit: int = 50) -> int:
        """The idle-call job: end the stored calls with no turn for `call_idle_seconds` (their
        status callback never came), recording each one's lead once. Returns how many."""
        self._expire_idle()
        if self.store is None:
            return 0
        before = self.scheduler.clock.now() - timedelta(seconds=self.call_idle_seconds)
        ended = 0
        for stored in await self.store.idle(before=before, limit=limit, prefix="call:"):
            if not await self.store.end(stored.key):
                continue
            call = await self.calls.get(stored.call_id) if stored.call_id else None
            try:
                session = await self._restored(stored, None, call)
                sid = call.call_sid if call is not None else None
                if sid:
                    self.sessions.discard(self.sessions.get(sid) or session)
                outcome = await self._finish(session)
                if sid:
                    await self.calls.finish_call(sid, status="completed", outcome=outcome)
            except Exception:
                log.exception("ending idle call %s failed", stored.key)
                continue
            log.info("call %s had no turn since %s; ended", stored.key, stored.updated_at)
            ended += 1
        now = self.scheduler.clock.now()
        await self.store.end_idle(prefix="web:", before=before)  # abandoned try-it chats
        await self.store.purge(ended_before=now - KEEP_ENDED)
        return ended

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
        """Shutdown. Stored calls are saved and left to the next worker Twilio reaches; calls
        kept only in this process are finished so their leads are kept. Then stop senders."""
        for session in self.sessions.drain():
            if self.store is not None:
                await asyncio.gather(*list(session.pending), return_exceptions=True)
                await self._flush(session)
            else:
                await self._finish(session)
        await self.drain()
        if self.sms is not None:
            await self.sms.aclose()
        await self.llm.close()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


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
