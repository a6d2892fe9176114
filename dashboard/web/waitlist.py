"""The waitlist for staff and owners: who is waiting for which service and days, in the order
they will be offered a freed time, the offer each holds (and until when), and what came of
earlier entries; staff put a caller on the list (as the agent's `join_waitlist` tool does) or take
one off, through `booking.waitlist.Waitlist`, so the same rules hold as on the phone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session, col, select

from booking import errors
from booking.models import Business, Service, Staff, WaitlistEntry, WaitlistStatus
from booking.waitlist import MAX_RANGE_DAYS, Waitlist
from dashboard.http_errors import status_for
from dashboard.web import db
from dashboard.web.auth import CurrentUser, WebUser, verify_csrf
from dashboard.web.render import add_nav, parse_day, render

router = APIRouter(include_in_schema=False)
add_nav("Waitlist", "/waitlist", owner_only=False, position=25)

ACTIVE = (WaitlistStatus.WAITING.value, WaitlistStatus.OFFERED.value)
PAST_SHOWN = 50  # finished entries (booked, removed) shown under the queue


@dataclass(frozen=True)
class Entered:
    """The add form as typed, kept to show again beside an error."""

    name: str = ""
    phone: str = ""
    service: str = ""
    staff: str = ""
    first_day: str = ""
    last_day: str = ""


@dataclass
class WaitlistPage:
    business: Business
    active: list[WaitlistEntry]
    past: list[WaitlistEntry]
    services: dict[str, Service]
    staff: dict[str, Staff]


def _load(s: Session, user: WebUser) -> WaitlistPage:
    business = s.get(Business, user.business_id)
    assert business is not None
    entries = select(WaitlistEntry).where(WaitlistEntry.business_id == business.id)
    active = s.exec(
        entries.where(col(WaitlistEntry.status).in_(ACTIVE)).order_by(
            col(WaitlistEntry.created_at), col(WaitlistEntry.id)
        )
    )
    past = s.exec(
        entries.where(col(WaitlistEntry.status).not_in(ACTIVE))
        .order_by(col(WaitlistEntry.updated_at).desc(), col(WaitlistEntry.id))
        .limit(PAST_SHOWN)
    )
    services = s.exec(
        select(Service).where(Service.business_id == business.id).order_by(col(Service.position))
    )
    staff = s.exec(select(Staff).where(Staff.business_id == business.id))
    return WaitlistPage(
        business,
        list(active),
        list(past),
        {row.id: row for row in services},
        {row.id: row for row in staff},
    )


async def _render(
    request: Request,
    user: WebUser,
    *,
    entered: Entered | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    page = await db.run(request, lambda s: _load(s, user))
    return render(
        request,
        "waitlist.html",
        status_code=status_code,
        page=page,
        tz=page.business.timezone,
        entered=entered or Entered(),
        error=error,
        max_days=MAX_RANGE_DAYS,
        today=db.now(request).astimezone(ZoneInfo(page.business.timezone)).date(),
    )


@router.get("/waitlist")
async def waitlist_page(request: Request, user: CurrentUser) -> Response:
    return await _render(request, user)


def _day(value: str, name: str) -> date:
    try:
        day = parse_day(value, name)
    except ValueError as exc:
        raise errors.InvalidRequest(str(exc)) from None
    if day is None:
        raise errors.InvalidRequest(f"choose the {name}")
    return day


@router.post("/waitlist", dependencies=[Depends(verify_csrf)])
async def add_entry(
    request: Request,
    user: CurrentUser,
    name: Annotated[str, Form(max_length=200)] = "",
    phone: Annotated[str, Form(max_length=40)] = "",
    service: Annotated[str, Form(max_length=64)] = "",
    staff: Annotated[str, Form(max_length=64)] = "",
    first_day: Annotated[str, Form(max_length=20)] = "",
    last_day: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Put a caller on the list, as the agent does when told there is nothing then."""
    entered = Entered(name, phone, service, staff, first_day, last_day)
    try:
        if not service:
            raise errors.InvalidRequest("choose a service")
        entry = await Waitlist(db.scheduler(request)).join(
            business_id=user.business_id,
            phone=phone,
            name=name.strip() or None,
            service_id=service,
            staff_id=staff or None,
            first_day=_day(first_day, "first day"),
            last_day=_day(last_day, "last day"),
        )
    except errors.BookingError as exc:
        return await _render(
            request, user, entered=entered, error=exc.message, status_code=status_for(exc)
        )
    await db.record(request, user, "waitlist.join", entry.id, {"service": entry.service_id})
    return RedirectResponse("/waitlist", status_code=303)


@router.post("/waitlist/{entry_id}/remove", dependencies=[Depends(verify_csrf)])
async def remove_entry(request: Request, entry_id: str, user: CurrentUser) -> Response:
    """Take a caller off the list; a time held for their offer is let go for the next."""
    try:
        await Waitlist(db.scheduler(request)).remove(user.business_id, entry_id)
    except errors.BookingError as exc:
        return await _render(request, user, error=exc.message, status_code=status_for(exc))
    await db.record(request, user, "waitlist.remove", entry_id, {})
    return RedirectResponse("/waitlist", status_code=303)
