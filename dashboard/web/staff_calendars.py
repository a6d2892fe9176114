"""A staff member's linked calendars: what is connected and how its sync stands, with the links
into the connect flows (OAuth for Google and Microsoft, a form for CalDAV), disconnect, and
"Sync now" (every calendar of the staff member read again at once, the page then saying what
changed in each)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlmodel import Session, select

from booking import errors
from booking.models import CalendarConnection, Staff
from dashboard.web import db
from dashboard.web.auth import CurrentUser, PageError, WebUser, verify_csrf
from dashboard.web.render import local, render
from dashboard.web.staff import load_member

router = APIRouter(include_in_schema=False)

PROVIDERS = {
    "google": "Google Calendar",
    "microsoft": "Microsoft 365",
    "caldav": "CalDAV",
    "icloud": "iCloud",
    "ics": "ICS feed",
}


def _connections(
    s: Session, user: WebUser, staff_id: str
) -> tuple[Staff, list[CalendarConnection]]:
    member = load_member(s, user, staff_id)  # 404 unless this user may see them
    rows = s.exec(
        select(CalendarConnection)
        .where(
            CalendarConnection.business_id == user.business_id,
            CalendarConnection.staff_id == staff_id,
            CalendarConnection.status != "disconnected",
        )
        .order_by(CalendarConnection.created_at)
    )
    return member.staff, list(rows)


def sync_state(row: CalendarConnection, tz: str) -> str:
    """How the connection's sync stands, in words."""
    if row.status != "ok":
        return "stopped: relink needed" if row.status == "needs_relink" else "failing"
    if row.dirty_at is not None:
        return f"changes pending since {local(row.dirty_at, tz, '%d %b %H:%M')}"
    if not row.sync:
        return "not synced yet"
    return f"up to date ({local(row.updated_at, tz, '%d %b %H:%M')})"


@router.get("/staff/{staff_id}/calendars")
async def calendars_page(request: Request, staff_id: str, user: CurrentUser) -> Response:
    return await _page(request, staff_id, user)


@router.post("/staff/{staff_id}/calendars/sync", dependencies=[Depends(verify_csrf)])
async def sync_now(request: Request, staff_id: str, user: CurrentUser) -> Response:
    """Read every calendar of the staff member again now (or the one `connection` names)."""
    await db.run(request, lambda s: load_member(s, user, staff_id))  # 404 unless allowed
    service = getattr(request.app.state, "calendar_service", None)
    if service is None:
        raise PageError(503, "Linked calendars are not available on this server.")
    form = await request.form()
    chosen = form.get("connection")
    connection_id = chosen if isinstance(chosen, str) and chosen else None
    try:
        reports = await service.sync_now(
            business_id=user.business_id, staff_id=staff_id, connection_id=connection_id
        )
    except errors.NotFound:
        raise PageError(404, "There is no such linked calendar.") from None
    return await _page(request, staff_id, user, reports=reports)


async def _page(request: Request, staff_id: str, user: WebUser, **extra: Any) -> Response:
    def load(s: Session) -> tuple[Staff, list[CalendarConnection], str]:
        member = load_member(s, user, staff_id)
        staff, rows = _connections(s, user, staff_id)
        return staff, rows, member.tz.key

    member, rows, tz = await db.run(request, load)
    service = getattr(request.app.state, "calendar_service", None)
    feed = None
    if service is not None and service.vault.ready:
        feed = service.feed_url(user.business_id, staff_id)
    return render(
        request,
        "calendars.html",
        member=member,
        connections=rows,
        providers=PROVIDERS,
        synced={r.id: sync_state(r, tz) for r in rows},
        feed=feed,
        **extra,
    )
