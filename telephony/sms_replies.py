"""What a caller's text to the business number does: carrier keywords, replies to a reminder or
confirmation, and everything else.

Carrier keywords are whole messages (case and surrounding punctuation ignored), as Twilio and
the carriers match them:
- STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT opt the number out of every text
  from the business number it texted (Twilio sends its own confirmation and blocks later texts;
  we record it, void what is queued and check it before every send);
- START, UNSTOP, YES opt back in (YES also books a time the waitlist holds for them, or
  else confirms, below; NO passes a waitlist offer on);
- HELP, INFO get the business's name, how to confirm or cancel, and how to stop.

A bare CANCEL is the carrier's opt-out word, so our texts never ask for it: they say "Reply C to
confirm or X to cancel". C (or CONFIRM, YES) marks the caller's appointment confirmed by them;
X, or any longer message with the word "cancel" in it ("cancel my appointment"), cancels it
through the same booking function as the phone and the dashboard (calendar write-back,
webhooks) and answers with the cancellation text. Only the caller's own appointments count,
matched by the number they text from: the one we last texted them about, else their next.
Anything else ("can I move my cleaning to Friday?") is a text conversation with the agent
(`telephony.sms_threads`).

A retried webhook (the same MessageSid) is answered from what was recorded the first time.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from booking import errors, phones
from booking.models import Appointment, Business, WaitlistEntry
from booking.scheduler import Scheduler
from booking.sms_outbox import SmsStore
from booking.waitlist import Waitlist
from telephony.sms import Change, confirmation_text
from telephony.sms_threads import SmsThreads
from telephony.wire import IncomingSms

log = logging.getLogger(__name__)

OPT_OUT = frozenset(
    {"stop", "stopall", "stop all", "unsubscribe", "cancel", "end", "quit", "revoke", "optout"}
)
OPT_IN = frozenset({"start", "unstop"})
HELP = frozenset({"help", "info"})
CONFIRM = frozenset({"c", "confirm", "confirmed", "y"})
CANCEL_APPOINTMENT = frozenset({"x"})
DECLINE = frozenset({"no", "n", "nope", "no thanks", "no thank you", "pass"})
_EDGES = re.compile(r"^[\s.!?,;:'\"]+|[\s.!?,;:'\"]+$")
_CANCEL_WORD = re.compile(r"\bcancel(?:led|ling|ed)?\b")


class Reply(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    YES = "yes"  # opt back in, and confirm
    HELP = "help"
    CONFIRM = "confirm"
    CANCEL = "cancel"
    NO = "no"  # declines a waitlist offer; else a message for the agent
    WAITLIST_BOOKED = "waitlist_booked"
    WAITLIST_DECLINED = "waitlist_declined"
    OTHER = "other"
    UNKNOWN_NUMBER = "unknown_number"


def classify(body: str) -> Reply:
    words = " ".join(_EDGES.sub("", body).casefold().split())
    if words in OPT_OUT:
        return Reply.OPT_OUT
    if words in OPT_IN:
        return Reply.OPT_IN
    if words == "yes":
        return Reply.YES
    if words in HELP:
        return Reply.HELP
    if words in CONFIRM:
        return Reply.CONFIRM
    if words in CANCEL_APPOINTMENT or _CANCEL_WORD.search(words):
        return Reply.CANCEL
    if words in DECLINE:
        return Reply.NO
    return Reply.OTHER


def _when(start: datetime, tz: ZoneInfo) -> str:
    local = start.astimezone(tz)
    return f"{local:%a %b} {local.day} at {local:%I:%M %p}".replace(" 0", " ")


@dataclass
class SmsReplies:
    scheduler: Scheduler
    store: SmsStore
    threads: SmsThreads | None = None  # text conversations with the agent; None: "call us"

    async def handle(self, form: IncomingSms) -> str | None:
        """Act on one inbound text; the reply to send back (None: no reply)."""
        try:
            business = await self.scheduler.business_by_number(form.to_number)
        except (errors.NotFound, errors.InvalidRequest):
            log.warning("a text to %s, which no business answers", form.to_number)
            return None
        try:
            phone = phones.to_e164(form.from_number)
        except errors.InvalidRequest:
            phone = form.from_number  # a short code or alphanumeric sender: no appointments
        sender = phones.to_e164(form.to_number)
        earlier = await self.store.receive(
            message_sid=form.message_sid,
            business_id=business.id,
            from_number=phone,
            to_number=sender,
            body=form.body,
        )
        if earlier is not None:
            log.info("text %s was handled before (%s)", form.message_sid, earlier.handled_as)
            return earlier.reply
        kind = classify(form.body)
        appointment: Appointment | None = None
        reply: str | None = None
        if kind in (Reply.OPT_OUT, Reply.OPT_IN, Reply.YES):
            await self.store.set_opt_out(
                business_id=business.id,
                sender=sender,
                phone=phone,
                opted_out=kind is Reply.OPT_OUT,
                source=" ".join(form.body.split()).upper()[:40] or kind.value,
            )
        if kind in (Reply.YES, Reply.NO):
            # An offer from the waitlist held for them comes first.
            waitlist = Waitlist(self.scheduler)
            offer = await waitlist.open_offer(business_id=business.id, phone=phone)
            if offer is not None:
                kind, appointment, reply = await self._answer_offer(
                    waitlist, offer, business, sender, yes=kind is Reply.YES
                )
            elif kind is Reply.NO:
                kind = Reply.OTHER
        if kind in (Reply.WAITLIST_BOOKED, Reply.WAITLIST_DECLINED):
            pass
        elif kind is Reply.HELP:
            reply = self._help(business, sender)
        elif kind in (Reply.CONFIRM, Reply.YES, Reply.CANCEL):
            appointment, reply = await self._about_appointment(business, sender, phone, kind)
        elif kind is Reply.OTHER and self.threads is not None:
            reply = await self.threads.reply(
                business=business,
                phone=phone,
                sender=sender,
                body=form.body,
                message_sid=form.message_sid,
            )
        elif kind is Reply.OTHER:
            reply = (
                f"{business.name}: to book or change an appointment, call {sender}. "
                "Reply C to confirm or X to cancel your next appointment."
            )
        await self.store.answered(
            form.message_sid,
            handled_as=kind.value,
            reply=reply,
            appointment_id=appointment.id if appointment is not None else None,
        )
        log.info("text %s from a caller handled as %s", form.message_sid, kind.value)
        return reply

    async def _answer_offer(
        self,
        waitlist: Waitlist,
        offer: WaitlistEntry,
        business: Business,
        sender: str,
        *,
        yes: bool,
    ) -> tuple[Reply, Appointment | None, str]:
        names = {s.id: s.name for s in await self.scheduler.services(business.id)}
        service = names.get(offer.service_id, offer.service_id)
        if not yes:
            await waitlist.decline(offer)
            return (
                Reply.WAITLIST_DECLINED,
                None,
                (
                    f"{business.name}: no problem, we'll offer it to someone else. You're still on "
                    f"the waitlist for a {service}; reply STOP to stop texts."
                ),
            )
        try:
            booked = await waitlist.accept(offer)
        except (errors.SlotUnavailable, errors.InvalidRequest, errors.NotFound) as exc:
            log.info("waitlist offer %s could not be booked: %s", offer.id, exc)
            return (
                Reply.WAITLIST_DECLINED,
                None,
                (
                    f"{business.name}: sorry, that time is no longer available. You're "
                    f"still on the waitlist; call {sender} to book another time."
                ),
            )
        staff = {m.id: m.name for m in await self.scheduler.staff(business.id)}
        return (
            Reply.WAITLIST_BOOKED,
            booked,
            confirmation_text(
                Change.BOOKED,
                business_name=business.name,
                service_name=service,
                staff_name=staff.get(booked.staff_id, booked.staff_id),
                start=booked.start,
                timezone=business.timezone,
            ),
        )

    def _help(self, business: Business, sender: str) -> str:
        return (
            f"{business.name}: appointment texts. Reply C to confirm, X to cancel, STOP to opt "
            f"out. Questions? Call {sender}."
        )

    async def _about_appointment(
        self, business: Business, sender: str, phone: str, kind: Reply
    ) -> tuple[Appointment | None, str | None]:
        try:
            appointment = await self.scheduler.next_for_caller(business_id=business.id, phone=phone)
        except errors.InvalidRequest:
            appointment = None
        if appointment is None:
            if kind is Reply.YES:
                return None, None  # a plain opt-in; Twilio confirms it
            return None, (
                f"{business.name}: we found no upcoming appointment for this number. "
                f"Call {sender} to book."
            )
        tz = ZoneInfo(business.timezone)
        names = {s.id: s.name for s in await self.scheduler.services(business.id)}
        service = names.get(appointment.service_id, appointment.service_id)
        try:
            if kind is Reply.CANCEL:
                done = await self.scheduler.cancel(
                    business_id=business.id, appointment_id=appointment.id, phone=phone
                )
                return done, confirmation_text(
                    Change.CANCELLED,
                    business_name=business.name,
                    service_name=service,
                    staff_name="",
                    start=done.start,
                    timezone=business.timezone,
                )
            done = await self.scheduler.confirm_by_caller(
                business_id=business.id, appointment_id=appointment.id, phone=phone
            )
        except errors.AppointmentNotActive:
            return appointment, f"{business.name}: that appointment is no longer booked."
        return done, (
            f"{business.name}: thanks, your {service} on {_when(done.start, tz)} is confirmed. "
            "See you then!"
        )
