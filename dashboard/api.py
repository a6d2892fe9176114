"""The JSON API under /api/v1: availability, holds, appointments (and whether the caller came),
leads. Bearer-key protected."""

from __future__ import annotations

import json
import logging
import re
import secrets
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from sqlmodel import Session, col, select

from booking import errors, phones
from booking.db import in_session
from booking.idempotency import Claim, IdempotencyStore, Replay, fingerprint
from booking.models import Appointment, Attendance, Business, Contact, Hold, Lead, LeadOutcome
from booking.scheduler import Scheduler, check_phone
from dashboard import http_errors

log = logging.getLogger(__name__)


def get_scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler  # type: ignore[no-any-return]


def require_api_key(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    expected: str = request.app.state.api_key
    given = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not given or not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API key: send 'Authorization: Bearer <FRONTDESK_API_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


# Every date the API takes lies in these years: far enough for any booking, and far enough from
# the ends of `datetime` that converting zones or adding a day can never overflow.
FIRST_YEAR, LAST_YEAR = 1970, 2199
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def _in_range(value: date) -> date:
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise ValueError(f"must lie in the years {FIRST_YEAR} to {LAST_YEAR}")
    if isinstance(value, datetime) and value.tzinfo is not None:
        # Its local year is in range, so the conversion cannot overflow; UTC is what is stored.
        _in_range(value.astimezone(UTC).replace(tzinfo=None))
    return value


def _date_or_datetime(value: object) -> date | datetime:
    """A plain date, or an ISO 8601 date and time with or without an offset."""
    if isinstance(value, date):
        return _in_range(value)
    text = value.strip() if isinstance(value, str) else ""
    try:
        if _DATE.fullmatch(text):
            return _in_range(date.fromisoformat(text))
        if _DATETIME.match(text):
            return _in_range(datetime.fromisoformat(text))
    except ValueError as exc:
        if "years" in str(exc):
            raise
    raise ValueError(
        "give a date (2026-12-01) or a date and time (2026-12-01T09:00, "
        "with or without an offset such as -05:00)"
    )


# A stored instant: must say its offset, and lie in the supported years.
Instant = Annotated[AwareDatetime, AfterValidator(_in_range)]
# A calendar date, in the supported years.
Day = Annotated[date, AfterValidator(_in_range)]
# One end of a window: a date, or a time; without an offset it is the business's local time.
LocalBound = Annotated[
    date | datetime,
    PlainValidator(_date_or_datetime),
    WithJsonSchema(
        {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]}
    ),
]


def local_instant(value: date | datetime, tz: ZoneInfo, *, end: bool = False) -> datetime:
    """An aware instant for a window bound: a naive time is local to `tz`; a plain date is that
    day's start, or (as the window's `end`, which is inclusive of that day) the next day's."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=tz)
    day = value + timedelta(days=1) if end else value
    return datetime.combine(day, time(), tz)


class ProblemOut(BaseModel):
    field: str
    reason: str


class ErrorOut(BaseModel):
    """Every error answer: a stable `error` code and a reason a person can read."""

    error: str = Field(examples=["slot_taken"])
    message: str = Field(examples=["that time was just taken"])
    retryable: bool | None = Field(default=None, description="whether trying again may help")
    problems: list[ProblemOut] | None = Field(
        default=None, description="each invalid field (422 only)"
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in [
        (400, "the request names no business while there are several"),
        (401, "missing or wrong API key"),
        (403, "not allowed"),
        (404, "no such business, service, staff member, appointment, hold or lead"),
        (409, "the time is not bookable, or the appointment is no longer active"),
        (410, "the hold expired"),
        (422, "invalid input: each problem names its field"),
        (503, "a linked calendar or the database is busy; retry"),
    ]
}
router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
BusinessQ = Annotated[str | None, Query(description="business id; optional while there is one")]


class SlotOut(BaseModel):
    start: datetime
    end: datetime
    staff: str


class AvailabilityOut(BaseModel):
    timezone: str
    slots: list[SlotOut]


class HoldIn(BaseModel):
    business: str | None = None
    service: str
    staff: str
    start: Instant
    holder: str = Field(min_length=1, description="who holds it: a call id or phone number")


class HoldOut(BaseModel):
    id: str
    service: str
    staff: str
    start: datetime
    end: datetime
    expires_at: datetime

    @classmethod
    def of(cls, row: Hold, tz: ZoneInfo) -> HoldOut:
        return cls(
            id=row.id,
            service=row.service_id,
            staff=row.staff_id,
            start=row.start.astimezone(tz),
            end=row.end.astimezone(tz),
            expires_at=row.expires_at,
        )


class BookIn(BaseModel):
    business: str | None = None
    hold_id: str | None = None
    service: str | None = None
    staff: str | None = None
    start: Instant | None = None
    name: str = Field(min_length=1, max_length=200)
    phone: str
    email: str | None = None
    notes: str | None = Field(default=None, max_length=2000)


class RescheduleIn(BaseModel):
    start: Instant
    staff: str | None = None


class AttendanceIn(BaseModel):
    """Whether the caller came: `attended`, `no_show`, or null to unmark."""

    model_config = ConfigDict(extra="forbid")
    attendance: Attendance | None = Field(
        description="attended or no_show (once the appointment has started); null unmarks"
    )


class AppointmentOut(BaseModel):
    id: str
    service: str
    staff: str
    start: datetime
    end: datetime
    status: str
    contact_id: str
    booked_by: str
    notes: str | None
    rescheduled_from: str | None
    rescheduled_to: str | None
    calendar_sync: str = Field(
        description="synced, not_synced (the retry job will write it) or no_calendar"
    )
    attendance: Attendance | None = Field(
        default=None, description="attended or no_show, as marked by staff; null: not marked"
    )
    attendance_at: datetime | None = Field(default=None, description="when it was marked")
    caller_confirmed_at: datetime | None = Field(
        default=None, description="when the caller confirmed by replying C to a text"
    )

    @classmethod
    def of(cls, row: Appointment, tz: ZoneInfo) -> AppointmentOut:
        return cls(
            id=row.id,
            service=row.service_id,
            staff=row.staff_id,
            start=row.start.astimezone(tz),
            end=row.end.astimezone(tz),
            status=row.status,
            contact_id=row.contact_id,
            booked_by=row.booked_by,
            notes=row.notes,
            rescheduled_from=row.rescheduled_from,
            rescheduled_to=row.rescheduled_to,
            calendar_sync=row.sync_state,
            attendance=Attendance(row.attendance) if row.attendance else None,
            attendance_at=row.attendance_at,
            caller_confirmed_at=row.caller_confirmed_at,
        )


def _text(value: str | None) -> str | None:
    return (value or "").strip() or None


class LeadIn(BaseModel):
    """A lead says why the caller called, and who to call back: a name, a phone, or both."""

    business: str | None = None
    phone: Annotated[str | None, AfterValidator(_text)] = Field(
        default=None, max_length=40, examples=["+12025550123"]
    )
    name: Annotated[str | None, AfterValidator(_text)] = Field(default=None, max_length=200)
    reason: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)
    ] = Field(description="why the caller called", examples=["whitening price"])
    outcome: LeadOutcome = LeadOutcome.CALLBACK

    @model_validator(mode="after")
    def _who(self) -> LeadIn:
        if self.name is None and self.phone is None:
            raise ValueError("a lead needs the caller's name or phone number (or both)")
        return self


class LeadOut(BaseModel):
    id: str
    name: str | None
    phone: str | None
    reason: str | None
    outcome: str
    status: str
    appointment_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Lead) -> LeadOut:
        return cls(
            id=row.id,
            name=row.name,
            phone=row.phone,
            reason=row.reason,
            outcome=row.outcome,
            status=row.status,
            appointment_id=row.appointment_id,
            created_at=row.created_at,
        )


async def _zone(scheduler: Scheduler, business: str | None) -> ZoneInfo:
    return ZoneInfo((await scheduler.business(business)).timezone)


@router.get("/availability", response_model=AvailabilityOut)
async def availability(
    scheduler: SchedulerDep,
    service: str,
    from_: Annotated[Day, Query(alias="from", description="first date, business zone")],
    to: Annotated[Day, Query(description="last date (inclusive), business zone")],
    business: BusinessQ = None,
    staff: str | None = None,
    earliest: time | None = None,
    latest: time | None = None,
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
    now: Annotated[Instant | None, Query(description="search as if it were this time")] = None,
) -> AvailabilityOut:
    result = await scheduler.availability(
        business_id=business,
        service_id=service,
        staff_id=staff,
        first_day=from_,
        last_day=to,
        now=now,
        earliest=earliest,
        latest=latest,
        limit=limit,
    )
    tz = ZoneInfo(result.timezone)
    return AvailabilityOut(
        timezone=result.timezone,
        slots=[
            SlotOut(start=s.start.astimezone(tz), end=s.end.astimezone(tz), staff=s.staff_id)
            for s in result.slots
        ],
    )


@router.post("/holds", response_model=HoldOut, status_code=201)
async def create_hold(body: HoldIn, scheduler: SchedulerDep) -> HoldOut:
    row = await scheduler.hold(
        business_id=body.business,
        service_id=body.service,
        staff_id=body.staff,
        start=body.start,
        holder=body.holder,
    )
    return HoldOut.of(row, await _zone(scheduler, row.business_id))


@router.delete("/holds/{hold_id}", status_code=204)
async def delete_hold(hold_id: str, scheduler: SchedulerDep, business: BusinessQ = None) -> None:
    await scheduler.release_hold(business_id=business, hold_id=hold_id)


REPLAYED = "Idempotent-Replayed"
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7e]+$",
        description="Any unique string (a UUID, say; up to 255 printable ASCII characters). A "
        "retry with the same key and body gets the first answer again, with the header "
        f"`{REPLAYED}: true`, instead of booking twice; the same key with another body "
        "is a 422 `idempotency_key_reused`, and a retry while the first request is "
        "still running a 409 `request_in_progress`. Keys are kept for 24 hours; an "
        "answer the server could not give (5xx) is not kept.",
    ),
]


@router.post(
    "/appointments",
    response_model=AppointmentOut,
    status_code=201,
    responses={
        201: {
            "headers": {
                REPLAYED: {
                    "description": "`true` when this is the stored answer to an earlier "
                    "request with the same Idempotency-Key",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            }
        },
    },
)
async def create_appointment(
    body: BookIn, scheduler: SchedulerDep, idempotency_key: IdempotencyKey = None
) -> Any:
    """Book a slot, from a hold or straight; send an `Idempotency-Key` to retry safely."""
    if idempotency_key is None:
        return await _book(body, scheduler)
    business_id = await scheduler.resolve_business(body.business)
    store = IdempotencyStore(engine=scheduler.engine, clock=scheduler.clock)
    claim = await store.claim(
        business_id=business_id,
        key=idempotency_key,
        request_hash=(
            fingerprint(
                "POST /api/v1/appointments",
                body.model_dump(mode="json") | {"business": business_id},
            )
        ),
    )
    if isinstance(claim, Replay):
        return JSONResponse(
            json.loads(claim.body), status_code=claim.status, headers={REPLAYED: "true"}
        )
    try:
        # Taken over from a request that died: it may have booked before it could keep its
        # answer. Then that booking is the answer; booking again would only find it in the way.
        earlier = await _booked_by(claim, body, scheduler) if claim.abandoned_at else None
        out = earlier or await _book(body, scheduler)
    except errors.BookingError as exc:
        code = http_errors.status_for(exc)
        if code >= 500:
            await store.release(claim)
        else:  # a refusal is an answer too: a retry is refused the same way
            await store.finish(claim, status=code, body=json.dumps(http_errors.body_for(exc)))
        raise
    except Exception:
        await store.release(claim)
        raise
    content = out.model_dump(mode="json")
    try:
        kept = await store.finish(claim, status=201, body=json.dumps(content))
    except Exception:  # the booking stands: answer it; a retry after the lease finds it
        log.exception("booked %s but could not keep the answer for its Idempotency-Key", out.id)
    else:
        if not kept:
            log.warning("booked %s after its Idempotency-Key was taken over by a retry", out.id)
    return JSONResponse(content, status_code=201, headers={REPLAYED: "true"} if earlier else None)


async def _booked_by(claim: Claim, body: BookIn, scheduler: Scheduler) -> AppointmentOut | None:
    """The appointment the abandoned request of `claim` made, if it got that far: booked through
    the API for the request's caller (and slot, when it named one) since that request began."""
    assert claim.abandoned_at is not None
    since, until = claim.abandoned_at, claim.token

    def find(s: Session) -> Appointment | None:
        business = s.get(Business, claim.business_id)
        assert business is not None
        try:
            phone = check_phone(body.phone, phones.region_for(business.phone_numbers))
        except errors.InvalidRequest:
            return None  # it cannot have booked; booking again gives the refusal
        contact = s.exec(
            select(Contact).where(Contact.business_id == claim.business_id, Contact.phone == phone)
        ).first()
        if contact is None:
            return None
        q = select(Appointment).where(
            Appointment.business_id == claim.business_id,
            Appointment.contact_id == contact.id,
            Appointment.booked_by == "api",
            col(Appointment.created_at) >= since,
            col(Appointment.created_at) <= until,
        )
        if body.hold_id is None:  # a hold is gone once booked: its caller and time say enough
            q = q.where(
                Appointment.service_id == body.service,
                Appointment.staff_id == body.staff,
                Appointment.start == body.start,
            )
        return s.exec(q.order_by(col(Appointment.created_at))).first()

    row = await in_session(scheduler.engine, find)
    if row is None:
        return None
    log.info(
        "an Idempotency-Key taken over after its lease answers with %s, booked under it", row.id
    )
    return AppointmentOut.of(row, await _zone(scheduler, row.business_id))


async def _book(body: BookIn, scheduler: Scheduler) -> AppointmentOut:
    row = await scheduler.book(
        business_id=body.business,
        hold_id=body.hold_id,
        service_id=body.service,
        staff_id=body.staff,
        start=body.start,
        name=body.name,
        phone=body.phone,
        email=body.email,
        notes=body.notes,
        booked_by="api",
    )
    return AppointmentOut.of(row, await _zone(scheduler, row.business_id))


@router.get("/appointments", response_model=list[AppointmentOut])
async def list_appointments(
    scheduler: SchedulerDep,
    business: BusinessQ = None,
    from_: Annotated[
        LocalBound | None,
        Query(
            alias="from",
            description="appointments ending after this date or time; without an "
            "offset it is the business's local time",
        ),
    ] = None,
    to: Annotated[
        LocalBound | None,
        Query(
            description="appointments starting before this time, or by the end of this date "
            "(inclusive); without an offset it is the business's local time"
        ),
    ] = None,
    staff: str | None = None,
    phone: str | None = None,
    include_inactive: bool = False,
) -> list[AppointmentOut]:
    tz = await _zone(scheduler, business)
    rows = await scheduler.appointments(
        business_id=business,
        staff_id=staff,
        phone=phone,
        include_inactive=include_inactive,
        start=None if from_ is None else local_instant(from_, tz),
        end=None if to is None else local_instant(to, tz, end=True),
    )
    return [AppointmentOut.of(r, tz) for r in rows]


@router.get("/appointments/{appointment_id}", response_model=AppointmentOut)
async def get_appointment(
    appointment_id: str, scheduler: SchedulerDep, business: BusinessQ = None
) -> AppointmentOut:
    row = await scheduler.get_appointment(business_id=business, appointment_id=appointment_id)
    return AppointmentOut.of(row, await _zone(scheduler, row.business_id))


@router.post("/appointments/{appointment_id}/cancel", response_model=AppointmentOut)
async def cancel_appointment(
    appointment_id: str, scheduler: SchedulerDep, business: BusinessQ = None
) -> AppointmentOut:
    row = await scheduler.cancel(business_id=business, appointment_id=appointment_id)
    return AppointmentOut.of(row, await _zone(scheduler, row.business_id))


@router.post("/appointments/{appointment_id}/reschedule", response_model=AppointmentOut)
async def reschedule_appointment(
    appointment_id: str, body: RescheduleIn, scheduler: SchedulerDep, business: BusinessQ = None
) -> AppointmentOut:
    row = await scheduler.reschedule(
        business_id=business, appointment_id=appointment_id, start=body.start, staff_id=body.staff
    )
    return AppointmentOut.of(row, await _zone(scheduler, row.business_id))


@router.post("/appointments/{appointment_id}/attendance", response_model=AppointmentOut)
async def mark_attendance(
    appointment_id: str, body: AttendanceIn, scheduler: SchedulerDep, business: BusinessQ = None
) -> AppointmentOut:
    """Say whether the caller came (only once a confirmed appointment has started), or unmark."""
    row = await scheduler.mark_attendance(
        business_id=await scheduler.resolve_business(business),
        appointment_id=appointment_id,
        attendance=body.attendance,
    )
    return AppointmentOut.of(row, await _zone(scheduler, row.business_id))


@router.get("/leads", response_model=list[LeadOut])
async def list_leads(
    scheduler: SchedulerDep,
    business: BusinessQ = None,
    outcome: LeadOutcome | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[LeadOut]:
    rows = await scheduler.leads(
        business_id=business, outcome=outcome.value if outcome else None, limit=limit
    )
    return [LeadOut.of(r) for r in rows]


@router.post("/leads", response_model=LeadOut, status_code=201)
async def create_lead(body: LeadIn, scheduler: SchedulerDep) -> LeadOut:
    row = await scheduler.record_lead(
        business_id=body.business,
        phone=body.phone,
        name=body.name,
        reason=body.reason,
        outcome=body.outcome.value,
    )
    return LeadOut.of(row)
