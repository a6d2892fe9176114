"""Appointments: a day or week per staff member, in their zone; cancel or move one through the
scheduler, the same functions the agent uses; its texts (confirmation, reminders) and whether
the caller came."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session, col, select

from booking import errors
from booking.models import (
    Appointment,
    Attendance,
    Business,
    Contact,
    Service,
    SmsMessage,
    Staff,
)
from booking.scheduler import staff_zone
from booking.slots import Slot
from dashboard.http_errors import status_for
from dashboard.web import db
from dashboard.web.auth import CurrentUser, PageError, WebUser, verify_csrf
from dashboard.web.render import add_nav, bookable, query_day, render

router = APIRouter(include_in_schema=False)
add_nav("Appointments", "/appointments", owner_only=False, position=20)


@dataclass
class Team:
    """The business and the staff members this user may look at."""

    business: Business
    staff: list[Staff]
    services: dict[str, Service]

    def member(self, staff_id: str | None) -> Staff:
        if not self.staff:
            raise PageError(404, "This business has no staff members yet.")
        if staff_id is None:
            return self.staff[0]
        for row in self.staff:
            if row.id == staff_id:
                return row
        raise PageError(404, "There is no such staff member.")

    def zone(self, member: Staff) -> ZoneInfo:
        return staff_zone(member, self.business)


def load_team(s: Session, user: WebUser) -> Team:
    business = s.get(Business, user.business_id)
    assert business is not None
    q = select(Staff).where(Staff.business_id == business.id).order_by(col(Staff.position))
    staff = [r for r in s.exec(q) if user.may_see_staff(r.id)]
    services = {r.id: r for r in s.exec(select(Service).where(Service.business_id == business.id))}
    return Team(business, staff, services)


@dataclass
class Row:
    appointment: Appointment
    contact: Contact | None
    service: Service | None


def window(view: str, day: date, tz: ZoneInfo) -> tuple[list[date], datetime, datetime]:
    """The days shown and their `[start, end)` in `tz`: one day, or the Monday-started week."""
    first = day if view == "day" else day - timedelta(days=day.weekday())
    days = [first + timedelta(days=i) for i in range(1 if view == "day" else 7)]
    start, end = bookable(
        datetime.combine(days[0], time(), tz),
        datetime.combine(days[-1] + timedelta(days=1), time(), tz),
    )
    return days, start, end


def _contacts(s: Session, rows: list[Appointment]) -> dict[str, Contact]:
    ids = {r.contact_id for r in rows}
    if not ids:
        return {}
    return {c.id: c for c in s.exec(select(Contact).where(Contact.id.in_(ids)))}  # type: ignore[attr-defined]


@router.get("/appointments")
async def appointments_page(
    request: Request,
    user: CurrentUser,
    staff: str | None = None,
    view: str = "week",
    day: str | None = None,
) -> Response:
    view = "day" if view == "day" else "week"
    team = await db.run(request, lambda s: load_team(s, user))
    member = team.member(staff or user.staff_id)
    tz = team.zone(member)
    shown = query_day(day, "day") or db.now(request).astimezone(tz).date()
    days, start, end = window(view, shown, tz)
    rows = await db.scheduler(request).appointments(
        business_id=team.business.id, start=start, end=end, staff_id=member.id
    )
    contacts = await db.run(request, lambda s: _contacts(s, rows))
    by_day: dict[date, list[Row]] = {d: [] for d in days}
    for row in rows:
        local_day = row.start.astimezone(tz).date()
        if local_day in by_day:
            by_day[local_day].append(
                Row(row, contacts.get(row.contact_id), team.services.get(row.service_id))
            )
    step = timedelta(days=1 if view == "day" else 7)
    return render(
        request,
        "appointments.html",
        team=team,
        member=member,
        tz=tz,
        view=view,
        days=days,
        by_day=by_day,
        today=db.now(request).astimezone(tz).date(),
        prev_day=(days[0] - step).isoformat(),
        next_day=(days[0] + step).isoformat(),
    )


# ---- one appointment --------------------------------------------------------------------------


@dataclass
class Detail:
    team: Team
    appointment: Appointment
    member: Staff
    contact: Contact | None
    service: Service | None


# What Twilio's delivery error codes mean, in the owner's words (the code is shown either way).
DELIVERY_ERRORS = {
    "21610": "the caller replied STOP",
    "30003": "the phone was off or out of reach",
    "30004": "the number blocks texts",
    "30005": "the number is unknown or no longer in use",
    "30006": "a landline, or a carrier that cannot take texts",
    "30007": "filtered by the carrier as spam",
    "30008": "unknown error at the carrier",
}


@dataclass(frozen=True)
class Text:
    """One text about the appointment, as the history shows it."""

    message: SmsMessage

    @property
    def problem(self) -> str:
        """Why it was not sent or delivered, if it was not."""
        code = self.message.delivery_error
        if code:
            meaning = DELIVERY_ERRORS.get(code)
            return f"error {code}" + (f": {meaning}" if meaning else "")
        return self.message.error or ""


def _detail(s: Session, user: WebUser, appointment_id: str) -> Detail:
    """The appointment, if this user may see it: its business's, and for staff their own."""
    row = s.get(Appointment, appointment_id)
    if row is None or row.business_id != user.business_id or not user.may_see_staff(row.staff_id):
        raise PageError(404, "There is no such appointment.")
    team = load_team(s, user)
    return Detail(
        team,
        row,
        team.member(row.staff_id),
        s.get(Contact, row.contact_id),
        team.services.get(row.service_id),
    )


async def _render_detail(
    request: Request,
    user: WebUser,
    appointment_id: str,
    *,
    error: str | None = None,
    move_day: date | None = None,
    status_code: int = 200,
) -> Response:
    detail = await db.run(request, lambda s: _detail(s, user, appointment_id))
    tz = detail.team.zone(detail.member)
    apt = detail.appointment
    move_day = move_day or apt.start.astimezone(tz).date()
    slots: list[Slot] = []
    if apt.status == "confirmed":
        # The times it can move to: the slot search the agent uses, ignoring this booking.
        try:
            start, end = bookable(
                datetime.combine(move_day, time(), tz),
                datetime.combine(move_day + timedelta(days=1), time(), tz),
            )
            found = await db.scheduler(request).search(
                business_id=apt.business_id,
                service_id=apt.service_id,
                staff_id=apt.staff_id,
                start=start,
                end=end,
            )
            slots = found.slots
        except errors.BookingError as exc:
            error = error or exc.message
    texts = await db.texts(request).history(apt.business_id, apt.id)
    missed = await db.scheduler(request).no_shows(
        business_id=apt.business_id, contact_ids=[apt.contact_id]
    )
    return render(
        request,
        "appointment.html",
        status_code=status_code,
        d=detail,
        tz=tz,
        slots=slots,
        move_day=move_day,
        error=error,
        texts=[Text(m) for m in texts],
        no_shows=missed.get(apt.contact_id, 0),
        started=apt.start <= db.now(request),
    )


@router.get("/appointments/{appointment_id}")
async def appointment_page(
    request: Request, appointment_id: str, user: CurrentUser, day: str | None = None
) -> Response:
    move_day = query_day(day, "day")
    return await _render_detail(request, user, appointment_id, move_day=move_day)


@router.post("/appointments/{appointment_id}/cancel", dependencies=[Depends(verify_csrf)])
async def cancel(request: Request, appointment_id: str, user: CurrentUser) -> Response:
    await db.run(request, lambda s: _detail(s, user, appointment_id))  # 404 unless theirs
    try:
        row = await db.scheduler(request).cancel(
            business_id=user.business_id, appointment_id=appointment_id
        )
    except errors.BookingError as exc:
        return await _render_detail(
            request, user, appointment_id, error=exc.message, status_code=status_for(exc)
        )
    await db.record(request, user, "appointment.cancel", row.id, {})
    return RedirectResponse(f"/appointments/{row.id}", status_code=303)


@router.post("/appointments/{appointment_id}/move", dependencies=[Depends(verify_csrf)])
async def move(
    request: Request, appointment_id: str, user: CurrentUser, start: Annotated[str, Form()] = ""
) -> Response:
    detail = await db.run(request, lambda s: _detail(s, user, appointment_id))
    tz = detail.team.zone(detail.member)
    try:
        when = _local_datetime(start, tz)
        row = await db.scheduler(request).reschedule(
            business_id=user.business_id, appointment_id=appointment_id, start=when
        )
    except errors.BookingError as exc:
        # A time that cannot be read or lies outside 1970-2199 is the form's fault (422); a
        # time that is taken or not offered is a conflict with the calendar (409).
        return await _render_detail(
            request, user, appointment_id, error=exc.message, status_code=status_for(exc)
        )
    await db.record(
        request,
        user,
        "appointment.move",
        appointment_id,
        {"to": row.id, "start": row.start.isoformat()},
    )
    return RedirectResponse(f"/appointments/{row.id}", status_code=303)


ATTENDANCE = {"attended": Attendance.ATTENDED, "no_show": Attendance.NO_SHOW, "none": None}


@router.post("/appointments/{appointment_id}/attendance", dependencies=[Depends(verify_csrf)])
async def attendance(
    request: Request,
    appointment_id: str,
    user: CurrentUser,
    attendance: Annotated[str, Form()] = "",
) -> Response:
    """Staff say whether the caller came (or take that back), once the appointment started."""
    await db.run(request, lambda s: _detail(s, user, appointment_id))  # 404 unless theirs
    try:
        if attendance not in ATTENDANCE:
            raise errors.InvalidRequest("choose attended, no-show or unmark")
        row = await db.scheduler(request).mark_attendance(
            business_id=user.business_id,
            appointment_id=appointment_id,
            attendance=ATTENDANCE[attendance],
        )
    except errors.BookingError as exc:
        return await _render_detail(
            request, user, appointment_id, error=exc.message, status_code=status_for(exc)
        )
    await db.record(request, user, "appointment.attendance", row.id, {"attendance": attendance})
    return RedirectResponse(f"/appointments/{row.id}", status_code=303)


def _local_datetime(value: str, tz: ZoneInfo) -> datetime:
    """A date and time from the form, read in the staff member's zone unless it has an offset."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise errors.InvalidRequest("choose a date and time like 2026-12-07 14:00") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tz)
