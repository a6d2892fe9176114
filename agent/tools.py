"""The agent's tools: what the model may do on a call, bound to one business and one caller.

Each tool is a method taking a pydantic model of its arguments; the method's docstring and the
fields' descriptions are the model's prompt for it. A tool answers a dict (sent to the model as
JSON) or raises one of two kinds of error:

- `ToolError`: a message meant for the model ("that time was just taken; offer these instead").
  Domain errors from `booking` become one in `model_message`, the one place that words them.
- anything else: logged, and the model only hears a generic apology.

Scoping is structural, not a matter of prompting: the toolbox knows only its business and the
caller's number. Slots are opaque `slot_id`s that check_availability handed out in this call, and
appointments are looked up by the caller's number, so no argument can reach another caller's data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import time as timer
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.telemetry import AgentObserver
from booking import errors, phones
from booking.clock import Clock
from booking.models import Appointment, Business, LeadOutcome, Service, Staff
from booking.rules import working_ranges
from booking.scheduler import Scheduler, staff_spec
from booking.slots import Slot
from booking.waitlist import Waitlist
from prompts import spoken_clock

log = logging.getLogger(__name__)

OPTIONS = 3  # slots offered per search: enough to choose from, few enough to say aloud
LOOKAHEAD_DAYS = 14  # how far past an empty window to look for the next free times
APOLOGY = (
    "Something went wrong on our side with that request. Apologize briefly, and offer to "
    "take a message or transfer the caller."
)


class ToolError(Exception):
    """A tool failure whose message is written for the model to act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedCall(Exception):
    """The model called a tool that does not exist or sent arguments that are not JSON."""


def model_message(exc: errors.BookingError) -> str:
    """What the model hears for a domain error: the one translation of `booking.errors`."""
    match exc:
        case errors.SlotTaken():
            return "That time was just taken by someone else, so it is NOT booked."
        case errors.OutsideHours():
            return "That time is not offered for this service, so it is NOT booked."
        case errors.TooSoon() | errors.TooFarAhead():
            return f"That time cannot be booked ({exc.message}), so it is NOT booked."
        case errors.HoldExpired():
            return "The hold on that time ran out. Check availability again."
        case errors.NotYourAppointment():
            return NOT_THEIRS
        case errors.AppointmentNotActive():
            return "That appointment is already cancelled or moved; nothing was changed."
        case errors.CalendarUnavailable():
            return (
                "The calendar cannot be read right now. Apologize, and offer to take a "
                "message so someone calls back."
            )
        case _:
            return exc.message


NOT_THEIRS = (
    "No appointment with that id belongs to this caller. You can only see and change "
    "the caller's own appointments: use find_appointments. Nothing was changed."
)


# ---- arguments ------------------------------------------------------------------------------


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


Day = date  # the field below is called `date`, which would shadow the type in its annotation


class CheckAvailability(Args):
    service: str = Field(description="The service id from the system prompt, e.g. 'cleaning'.")
    date: Day = Field(
        description="The first day to search, YYYY-MM-DD, in the business's "
        "calendar (see the dates in the system prompt)."
    )
    days: int = Field(
        default=1,
        ge=1,
        le=14,
        description="How many days to search from `date` (1 = that day only).",
    )
    staff: str | None = Field(
        default=None, description="A staff id, only if the caller asked for someone."
    )
    earliest_time: time | None = Field(
        default=None,
        description="Only times starting at or after this, HH:MM 24-hour local time, e.g. '13:00'.",
    )
    latest_time: time | None = Field(
        default=None,
        description="Only times starting at or before this, "
        "HH:MM 24-hour local time, e.g. '11:30'.",
    )


class SlotArgs(Args):
    slot_id: str = Field(description="A slot_id returned by check_availability in this call.")


class BookAppointment(Args):
    slot_id: str = Field(
        description="The slot_id of the time the caller chose, from "
        "check_availability in this call."
    )
    name: str = Field(min_length=1, description="The caller's full name, as they said it.")
    notes: str | None = Field(
        default=None, description="Anything the business should know, briefly."
    )
    phone: str | None = Field(
        default=None,
        description="Only if the caller wants a different contact number "
        "than the one they call from: the digits as they "
        "said them, e.g. '202 555 0123', or with a country "
        "code, '+44 20 7946 0018'.",
    )


class AppointmentArgs(Args):
    appointment_id: str = Field(description="An appointment_id from find_appointments.")


class Reschedule(Args):
    appointment_id: str = Field(description="The appointment_id to move, from find_appointments.")
    slot_id: str = Field(description="The new time's slot_id, from check_availability.")


class TakeMessage(Args):
    name: str = Field(min_length=1, description="The caller's name.")
    reason: str = Field(min_length=1, description="What the call is about, in a sentence.")
    callback_number: str | None = Field(
        default=None,
        description="Where to call back, if not the number they "
        "call from: the digits as they said them, "
        "e.g. '202 555 0123'.",
    )


class JoinWaitlist(Args):
    service: str = Field(description="The service id from the system prompt.")
    first_date: Day = Field(description="The first day the caller could come, YYYY-MM-DD.")
    last_date: Day = Field(description="The last day the caller could come, YYYY-MM-DD.")
    name: str = Field(min_length=1, description="The caller's name.")
    staff: str | None = Field(
        default=None, description="A staff id, only if the caller wants only that person."
    )


class Transfer(Args):
    reason: str = Field(min_length=1, description="Why the caller needs a person, briefly.")


class NoArgs(Args):
    pass


# ---- the state of one call ------------------------------------------------------------------


@dataclass(frozen=True)
class Offered:
    """A slot this call was offered, behind its opaque `slot_id`."""

    service_id: str
    staff_id: str
    start: datetime

    def to_json(self) -> dict[str, str]:
        return {
            "service_id": self.service_id,
            "staff_id": self.staff_id,
            "start": self.start.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Offered:
        start = datetime.fromisoformat(str(data["start"]))
        if start.tzinfo is None:
            raise ValueError("an offered slot's start must be timezone-aware")
        return cls(str(data["service_id"]), str(data["staff_id"]), start)


@dataclass(frozen=True)
class Ending:
    """How the call should end: a transfer to `transfer_to`, or a hang-up when it is None."""

    reason: str
    transfer_to: str | None

    def to_json(self) -> dict[str, str | None]:
        return {"reason": self.reason, "transfer_to": self.transfer_to}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ending:
        to = data.get("transfer_to")
        return cls(str(data["reason"]), str(to) if to is not None else None)


@dataclass
class CallState:
    """What the tools did in this call; the engine reads it for the lead and the hand-off."""

    offered: dict[str, Offered] = field(default_factory=dict)
    booked: list[str] = field(default_factory=list)
    booked_summary: str | None = None
    cancelled: list[str] = field(default_factory=list)
    caller_name: str | None = None
    lead: str | None = None  # the call's one lead, once recorded (take_message records it early)
    ending: Ending | None = None
    unanswered_transfer: str | None = None  # why the caller wanted the person who did not answer
    hold_id: str | None = None  # the hold this call has on a time it has not booked yet

    def to_json(self) -> dict[str, Any]:
        """A JSON-able copy, for the conversation store."""
        return {
            "offered": {k: v.to_json() for k, v in self.offered.items()},
            "booked": list(self.booked),
            "booked_summary": self.booked_summary,
            "cancelled": list(self.cancelled),
            "caller_name": self.caller_name,
            "lead": self.lead,
            "ending": self.ending.to_json() if self.ending else None,
            "unanswered_transfer": self.unanswered_transfer,
            "hold_id": self.hold_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallState:
        def opt(name: str) -> str | None:
            value = data.get(name)
            return str(value) if value is not None else None

        ending = data.get("ending")
        return cls(
            offered={
                str(k): Offered.from_json(v) for k, v in dict(data.get("offered") or {}).items()
            },
            booked=[str(a) for a in data.get("booked") or []],
            booked_summary=opt("booked_summary"),
            cancelled=[str(a) for a in data.get("cancelled") or []],
            caller_name=opt("caller_name"),
            lead=opt("lead"),
            ending=Ending.from_json(ending) if ending else None,
            unanswered_transfer=opt("unanswered_transfer"),
            hold_id=opt("hold_id"),
        )

    def slot_id(self, offered: Offered) -> str:
        """The id for `offered`: the same id each time the same slot comes up."""
        for key, value in self.offered.items():
            if value == offered:
                return key
        key = f"slot_{secrets.token_hex(3)}"
        self.offered[key] = offered
        return key


@dataclass(frozen=True)
class BusinessFacts:
    """The business as the agent sees it, loaded once per call."""

    business: Business
    services: list[Service]
    staff: list[Staff]

    @classmethod
    async def load(cls, scheduler: Scheduler, business_id: str) -> BusinessFacts:
        business, services, staff = await scheduler.business_with_team(business_id)
        return cls(business=business, services=services, staff=staff)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.business.timezone)

    def staff_name(self, staff_id: str) -> str:
        return next((m.name for m in self.staff if m.id == staff_id), staff_id)

    def service_name(self, service_id: str) -> str:
        return next((s.name for s in self.services if s.id == service_id), service_id)

    def is_open(self, now: datetime) -> bool:
        """Whether any staff member is working at `now` (someone could take a transfer)."""
        for member in self.staff:
            spec = staff_spec(member, self.business)
            today = now.astimezone(spec.tz).date()
            if any(s <= now < e for s, e in working_ranges(spec.availability, spec.tz, today)):
                return True
        return False


# ---- the tools ------------------------------------------------------------------------------

A = TypeVar("A", bound=Args)
ToolMethod = Callable[[Any, A], Awaitable[dict[str, Any]]]
_TOOLS: dict[str, tuple[type[Args], Callable[..., Awaitable[dict[str, Any]]]]] = {}


def tool(args: type[A]) -> Callable[[ToolMethod[A]], ToolMethod[A]]:
    """Register a `Toolbox` method as a tool named after it, taking `args`."""

    def register(method: ToolMethod[A]) -> ToolMethod[A]:
        _TOOLS[method.__name__] = (args, method)
        return method

    return register


class Toolbox:
    """The tools of one call, bound to one business and one caller."""

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        facts: BusinessFacts,
        caller_phone: str | None,
        call_id: str | None,
        holder: str,
        clock: Clock,
        state: CallState | None = None,
        observer: AgentObserver | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.facts = facts
        self.caller_phone = caller_phone
        self.call_id = call_id
        self.holder = holder
        self.clock = clock
        self.state = state or CallState()
        self.observer = observer

    @property
    def business_id(self) -> str:
        return self.facts.business.id

    @staticmethod
    def specs() -> list[dict[str, Any]]:
        """The tools in Chat Completions' `tools` format."""
        return [
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": _describe(method),
                    "parameters": _schema(args),
                },
            }
            for name, (args, method) in _TOOLS.items()
        ]

    async def call(self, name: str, arguments: str) -> str:
        """Run one tool call from the model; the answer is the tool message's content (JSON).

        Raises `MalformedCall` for an unknown tool or arguments that are not a JSON object.
        """
        if name not in _TOOLS:
            raise MalformedCall(f"there is no tool named {name!r}")
        try:
            raw = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            raise MalformedCall(f"the arguments for {name} are not valid JSON") from None
        if not isinstance(raw, dict):
            raise MalformedCall(f"the arguments for {name} must be a JSON object")
        args_model, method = _TOOLS[name]
        started = timer.perf_counter()
        try:
            args = args_model.model_validate(raw)
            result = await method(self, args)
        except ValidationError as exc:
            result = {"error": f"Invalid arguments for {name}: {_problems(exc)}"}
        except ToolError as exc:
            result = {"error": exc.message}
        except errors.BookingError as exc:
            log.info("%s refused: %s (%s)", name, exc.code, exc.message)
            result = {"error": model_message(exc)}
        except Exception:
            log.exception("tool %s failed", name)
            result = {"error": APOLOGY}
        if self.observer is not None:
            self.observer.tool_call(name, timer.perf_counter() - started, "error" not in result)
        return json.dumps(result)

    # ---- finding and holding times --------------------------------------------------------

    @tool(CheckAvailability)
    async def check_availability(self, args: CheckAvailability) -> dict[str, Any]:
        """Find free appointment times. Returns a few well-spread options, each with a slot_id
        and a `spoken` phrase to read to the caller. Offer two or three of them; never offer a
        time this tool did not return. These are free times, not bookings."""
        service = self._service(args.service)
        staff_id = self._staff(args.staff, service) if args.staff else None
        today = self.clock.now().astimezone(self.facts.tz).date()
        if args.date < today:
            raise ToolError(f"{args.date} has passed; today is {today:%A, %B} {today.day}.")
        last = args.date + timedelta(days=args.days - 1)
        slots = await self._search(
            service.id,
            args.date,
            last,
            staff_id=staff_id,
            earliest=args.earliest_time,
            latest=args.latest_time,
        )
        result: dict[str, Any] = {"service": service.name, "slots": self._offer(service.id, slots)}
        if slots:
            return result
        later = await self._search(
            service.id,
            last + timedelta(days=1),
            last + timedelta(days=LOOKAHEAD_DAYS),
            staff_id=staff_id,
            earliest=args.earliest_time,
            latest=args.latest_time,
        )
        result["slots"] = self._offer(service.id, later)
        result["note"] = "Nothing is free in the window asked for. " + (
            "These are the next free times after it."
            if later
            else f"Nothing is free in the {LOOKAHEAD_DAYS} days after it either."
        )
        return result

    @tool(SlotArgs)
    async def hold_slot(self, args: SlotArgs) -> dict[str, Any]:
        """Hold a time for a few minutes while you confirm the details with the caller, so no one
        else takes it. A hold is NOT a booking: call book_appointment to book."""
        offered = self._offered(args.slot_id)
        try:
            hold = await self.scheduler.hold(
                business_id=self.business_id,
                service_id=offered.service_id,
                staff_id=offered.staff_id,
                start=offered.start,
                holder=self.holder,
            )
        except errors.SlotUnavailable as exc:
            mine = await self._booked_by_this_call(offered)
            if mine is not None:  # booked already, by this call before it moved to this worker
                return {
                    "held": False,
                    "booked": True,
                    "appointment_id": mine.id,
                    "spoken": self.spoken(offered),
                    "note": "This time is already booked for the caller in this call; "
                    "do not book it again. Confirm it to the caller.",
                }
            raise ToolError(await self._with_alternatives(exc, offered)) from None
        self.state.hold_id = hold.id
        return {
            "held": True,
            "slot_id": args.slot_id,
            "spoken": self.spoken(offered),
            "minutes": self.scheduler.hold_minutes,
            "note": "Held, not booked yet. Confirm the details, then call book_appointment.",
        }

    # ---- booking --------------------------------------------------------------------------

    @tool(BookAppointment)
    async def book_appointment(self, args: BookAppointment) -> dict[str, Any]:
        """Book the chosen time for the caller. Only after this succeeds may you tell the
        caller the appointment is booked. The contact number is the one they call from unless
        they give another."""
        offered = self._offered(args.slot_id)
        phone = self._phone(args.phone) if args.phone else self.caller_phone
        if phone is None:
            raise ToolError(
                "The caller's number is withheld: ask for a phone number and pass "
                "it as `phone`. Nothing is booked yet."
            )
        try:
            row = await self.scheduler.book(
                business_id=self.business_id,
                name=args.name,
                phone=phone,
                service_id=offered.service_id,
                staff_id=offered.staff_id,
                start=offered.start,
                holder=self.holder,
                notes=args.notes,
                booked_by="agent",
                call_id=self.call_id,
            )
        except errors.SlotUnavailable as exc:
            # A retried booking (the worker that made it died before saving the call's state)
            # finds this call's own appointment in the slot: that is the booking, not a clash.
            mine = await self._booked_by_this_call(offered)
            if mine is None:
                raise ToolError(await self._with_alternatives(exc, offered)) from None
            row = mine
        self.state.hold_id = None
        spoken = self.spoken(offered)
        if row.id not in self.state.booked:
            self.state.booked.append(row.id)
        self.state.caller_name = args.name
        self.state.booked_summary = f"{self.facts.service_name(row.service_id)}, {spoken}"
        answer = {
            "booked": True,
            "appointment_id": row.id,
            "service": self.facts.service_name(row.service_id),
            "spoken": spoken,
            "name": args.name,
            "note": "Booked. Confirm it to the caller in one sentence.",
        }
        if args.phone:
            answer["contact_number"] = phone
            answer["read_back"] = phones.spoken(phone, self.region)
            answer["note"] = (
                "Booked. Confirm it in one sentence, and read the contact number "
                "back exactly as in read_back, digit by digit."
            )
        return answer

    @tool(NoArgs)
    async def find_appointments(self, args: NoArgs) -> dict[str, Any]:
        """List the caller's own upcoming appointments (matched by the number they call from).
        There is no way to see anyone else's appointments."""
        rows = await self._own_appointments()
        return {"appointments": [self._describe_appointment(r) for r in rows]}

    @tool(Reschedule)
    async def reschedule_appointment(self, args: Reschedule) -> dict[str, Any]:
        """Move one of the caller's appointments to a new time from check_availability (search
        with the same service). The new time is secured before the old one is released."""
        current = await self._own_appointment(args.appointment_id)
        offered = self._offered(args.slot_id)
        if offered.service_id != current.service_id:
            raise ToolError(
                f"That slot is for {self.facts.service_name(offered.service_id)}, "
                f"but the appointment is for "
                f"{self.facts.service_name(current.service_id)}. Search again with "
                f"service '{current.service_id}'."
            )
        try:
            row = await self.scheduler.reschedule(
                business_id=self.business_id,
                appointment_id=current.id,
                start=offered.start,
                staff_id=offered.staff_id,
                phone=self.caller_phone,
                holder=self.holder,
            )
        except errors.SlotUnavailable as exc:
            raise ToolError(await self._with_alternatives(exc, offered)) from None
        self.state.hold_id = None
        spoken = self.spoken(offered)
        self.state.booked.append(row.id)
        self.state.booked_summary = f"moved to {self.facts.service_name(row.service_id)}, {spoken}"
        return {
            "rescheduled": True,
            "appointment_id": row.id,
            "spoken": spoken,
            "note": "Moved. The old time is released. Confirm the new time to the caller.",
        }

    @tool(AppointmentArgs)
    async def cancel_appointment(self, args: AppointmentArgs) -> dict[str, Any]:
        """Cancel one of the caller's appointments, after they confirmed which one."""
        current = await self._own_appointment(args.appointment_id)
        row = await self.scheduler.cancel(
            business_id=self.business_id, appointment_id=current.id, phone=self.caller_phone
        )
        self.state.cancelled.append(row.id)
        return {
            "cancelled": True,
            "appointment_id": row.id,
            "spoken": self._describe_appointment(row)["spoken"],
        }

    # ---- people ---------------------------------------------------------------------------

    @tool(TakeMessage)
    async def take_message(self, args: TakeMessage) -> dict[str, Any]:
        """Leave a message for the business so someone calls the caller back. Ask for the
        name, the reason and the best callback number first."""
        number = self._phone(args.callback_number) if args.callback_number else None
        number = number or self.caller_phone
        if number is None:
            raise ToolError(
                "The caller's number is withheld: ask for a callback number and "
                "pass it as `callback_number`. No message was saved yet."
            )
        await self.record_lead(
            name=args.name, phone=number, reason=args.reason, outcome=LeadOutcome.MESSAGE
        )
        answer = {
            "saved": True,
            "callback_number": number,
            "note": "The message is saved. Tell the caller someone will call them back.",
        }
        if args.callback_number:
            answer["read_back"] = phones.spoken(number, self.region)
            answer["note"] = (
                "The message is saved. Tell the caller someone will call them "
                "back, and read the number back exactly as in read_back, digit "
                "by digit."
            )
        return answer

    @tool(JoinWaitlist)
    async def join_waitlist(self, args: JoinWaitlist) -> dict[str, Any]:
        """Put the caller on the waitlist when no time suits them: they get a text if a time
        opens up between the two dates (held for them briefly; they reply YES to book it).
        Only when they agree to it; ask their name first."""
        service = self._service(args.service)
        staff_id = self._staff(args.staff, service) if args.staff else None
        if self.caller_phone is None:
            raise ToolError(
                "The caller's number is withheld, so no text can reach them: offer to take a "
                "message instead. Nobody was put on the waitlist."
            )
        try:
            entry = await Waitlist(self.scheduler).join(
                business_id=self.business_id,
                phone=self.caller_phone,
                name=args.name,
                service_id=service.id,
                first_day=args.first_date,
                last_day=args.last_date,
                staff_id=staff_id,
                now=self.clock.now(),
            )
        except errors.InvalidRequest as exc:
            raise ToolError(f"{exc}. Nobody was put on the waitlist.") from None
        if self.state.caller_name is None:
            self.state.caller_name = args.name
        return {
            "waiting": True,
            "service": service.name,
            "from": entry.first_day.isoformat(),
            "to": entry.last_day.isoformat(),
            "note": "Tell the caller they are on the waitlist and will get a text if a time "
            "opens up; nothing is booked yet.",
        }

    @tool(Transfer)
    async def transfer_to_human(self, args: Transfer) -> dict[str, Any]:
        """Transfer the call to a person at the business, when the caller asks for one or you
        cannot help. If no one is available, this says so; then take a message instead."""
        number = self.facts.business.transfer_number
        if not number or not self.facts.is_open(self.clock.now()):
            raise ToolError(
                "No one is available to take the call right now. Say so, and offer "
                "to take a message: ask name, reason and callback number, then call "
                "take_message."
            )
        self.state.ending = Ending(reason=args.reason, transfer_to=number)
        return {"transferring": True, "note": "Tell the caller you are putting them through."}

    @tool(NoArgs)
    async def end_call(self, args: NoArgs) -> dict[str, Any]:
        """Hang up, once the caller has said goodbye and nothing is left to do."""
        self.state.ending = Ending(reason="the conversation is finished", transfer_to=None)
        return {"ending": True}

    async def record_lead(
        self,
        *,
        name: str | None,
        phone: str | None,
        reason: str,
        outcome: LeadOutcome,
        appointment_id: str | None = None,
    ) -> None:
        """Record the call's lead, unless the call already has one: one call, one lead.

        A message is recorded as soon as it is taken, so it survives a crash; a booking made
        later turns that lead into a booked one, while anything else the call does later (a
        second message, a failed transfer) stays in its transcript.
        """
        self.state.caller_name = name or self.state.caller_name
        if self.state.lead is not None:
            if outcome is LeadOutcome.BOOKED and appointment_id:
                # The call's lead (a message taken earlier) becomes a booked lead.
                await self.scheduler.record_lead(
                    business_id=self.business_id,
                    phone=phone,
                    name=name,
                    reason=reason,
                    outcome=outcome.value,
                    appointment_id=appointment_id,
                    call_id=self.call_id,
                )
                return
            log.info(
                "call %s already has lead %s; not recording another", self.call_id, self.state.lead
            )
            return
        lead = await self.scheduler.record_lead(
            business_id=self.business_id,
            phone=phone,
            name=name,
            reason=reason,
            outcome=outcome.value,
            appointment_id=appointment_id,
            call_id=self.call_id,
        )
        self.state.lead = lead.id

    async def release_hold(self) -> None:
        """Give back a hold the caller did not book, so the time is free again at once."""
        if self.state.hold_id is None:
            return
        hold_id, self.state.hold_id = self.state.hold_id, None
        # Booked, replaced or already gone: then there is nothing to give back.
        with contextlib.suppress(errors.NotFound):
            await self.scheduler.release_hold(business_id=self.business_id, hold_id=hold_id)

    # ---- internals ------------------------------------------------------------------------

    def _service(self, wanted: str) -> Service:
        for service in self.facts.services:
            if _matches(wanted, service.id, service.name):
                return service
        names = ", ".join(f"{s.name} (id: {s.id})" for s in self.facts.services)
        raise ToolError(f"There is no service {wanted!r}. The services are: {names}.")

    def _staff(self, wanted: str, service: Service) -> str:
        for member in self.facts.staff:
            if _matches(wanted, member.id, member.name):
                if member.id not in service.staff_ids:
                    raise ToolError(f"{member.name} does not do {service.name}.")
                return member.id
        names = ", ".join(
            f"{m.name} (id: {m.id})" for m in self.facts.staff if m.id in service.staff_ids
        )
        raise ToolError(
            f"There is no staff member {wanted!r} for {service.name}. Those who do it: {names}."
        )

    def _offered(self, slot_id: str) -> Offered:
        offered = self.state.offered.get(slot_id)
        if offered is None:
            raise ToolError(
                f"Unknown slot_id {slot_id!r}. Use only a slot_id that "
                "check_availability returned in this call; search again if needed."
            )
        return offered

    @property
    def region(self) -> str:
        """The country the caller's national numbers are read in: the business's."""
        return phones.region_for(self.facts.business.phone_numbers)

    def _phone(self, number: str) -> str:
        try:
            return phones.to_e164(number, self.region)
        except errors.InvalidRequest:
            raise ToolError(
                f"{number!r} is not a valid phone number. Ask the caller for it "
                "again, with the area code."
            ) from None

    async def _search(
        self,
        service_id: str,
        first: date,
        last: date,
        *,
        staff_id: str | None,
        earliest: time | None,
        latest: time | None,
    ) -> list[Slot]:
        result = await self.scheduler.availability(
            business_id=self.business_id,
            service_id=service_id,
            first_day=first,
            last_day=last,
            staff_id=staff_id,
            earliest=earliest,
            latest=latest,
            holder=self.holder,
            limit=OPTIONS,
            now=self.clock.now(),
        )
        return result.slots

    def _offer(self, service_id: str, slots: list[Slot]) -> list[dict[str, str]]:
        return [self._slot_entry(Offered(service_id, s.staff_id, s.start)) for s in slots]

    def _slot_entry(self, offered: Offered) -> dict[str, str]:
        return {
            "slot_id": self.state.slot_id(offered),
            "start": offered.start.astimezone(self.facts.tz).isoformat(),
            "spoken": self.spoken(offered),
        }

    def spoken(self, offered: Offered) -> str:
        local = offered.start.astimezone(self.facts.tz)
        return (
            f"{local:%A}, {local:%B} {local.day} at {spoken_clock(local)} "
            f"with {self.facts.staff_name(offered.staff_id)}"
        )

    async def _with_alternatives(self, exc: errors.SlotUnavailable, offered: Offered) -> str:
        """The refusal for a time that is gone, with the next free times to offer instead."""
        day = offered.start.astimezone(self.facts.tz).date()
        slots = await self._search(
            offered.service_id, day, day, staff_id=None, earliest=None, latest=None
        )
        if not slots:  # nothing else that day: the next free times after it
            slots = await self._search(
                offered.service_id,
                day + timedelta(days=1),
                day + timedelta(days=LOOKAHEAD_DAYS),
                staff_id=None,
                earliest=None,
                latest=None,
            )
        options = self._offer(offered.service_id, slots)
        if not options:
            return model_message(exc) + " There are no other free times soon; offer a message."
        listed = "; ".join(f"{o['spoken']} (slot_id {o['slot_id']})" for o in options)
        return f"{model_message(exc)} Offer these instead: {listed}."

    async def _booked_by_this_call(self, offered: Offered) -> Appointment | None:
        """This call's active appointment in exactly the `offered` slot, if it has one."""
        if self.call_id is None:
            return None
        rows = await self.scheduler.call_appointments(
            business_id=self.business_id, call_id=self.call_id
        )
        for row in rows:
            if Offered(row.service_id, row.staff_id, row.start) == offered:
                return row
        return None

    async def _own_appointments(self) -> list[Appointment]:
        if self.caller_phone is None:
            raise ToolError(
                "The caller's number is withheld, so their appointments cannot be "
                "looked up. Offer to take a message or transfer them."
            )
        return await self.scheduler.appointments(
            business_id=self.business_id, phone=self.caller_phone, start=self.clock.now()
        )

    async def _own_appointment(self, appointment_id: str) -> Appointment:
        for row in await self._own_appointments():
            if row.id == appointment_id:
                return row
        raise ToolError(NOT_THEIRS)

    def _describe_appointment(self, row: Appointment) -> dict[str, str]:
        offered = Offered(row.service_id, row.staff_id, row.start)
        return {
            "appointment_id": row.id,
            "service": self.facts.service_name(row.service_id),
            "start": row.start.astimezone(self.facts.tz).isoformat(),
            "spoken": self.spoken(offered),
        }


def _describe(method: Callable[..., Any]) -> str:
    return " ".join((method.__doc__ or "").split())


def _schema(args: type[Args]) -> dict[str, Any]:
    """The JSON schema of `args` without pydantic's titles, which only cost tokens."""
    schema = args.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
    )


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower())) - {"dr", "mr", "mrs", "ms", "the"}


def _matches(wanted: str, ident: str, name: str) -> bool:
    """Whether the model's `wanted` names this id or name ('lee', 'Dr. Lee', 'cleaning')."""
    words = _words(wanted)
    return (
        wanted.lower() in (ident.lower(), name.lower())
        or bool(words)
        and (words <= _words(name) or words <= _words(ident))
    )
