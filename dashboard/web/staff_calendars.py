"""A staff member's linked calendars: what is connected and how its sync stands, with the links
into the connect flows (OAuth for Google and Microsoft, a form for CalDAV), disconnect,
"Sync now" (every calendar of the staff member read again at once, the page then saying what
changed in each), and which calendars of each account count: the ones whose busy time is read
(checkboxes) and the one bookings are written to (radio), "Reads: Work, Family · Writes: Work"."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlmodel import Session, col, select
from starlette.datastructures import FormData

from booking import errors
from booking.models import Staff
from calendars.base import CalendarInfo, NeedsRelink
from calendars.models import CalendarConnection
from calendars.selection import summary
from dashboard.http_errors import status_for
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
        .order_by(col(CalendarConnection.created_at))
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
    async with request.form() as raw:  # closes any uploaded file's temporary file
        try:
            connection_id = SyncForm.read_form(raw).connection
        except ValidationError:
            raise PageError(422, "The form named no calendar this page knows.") from None
    try:
        reports = await service.sync_now(
            business_id=user.business_id, staff_id=staff_id, connection_id=connection_id
        )
    except errors.NotFound:
        raise PageError(404, "There is no such linked calendar.") from None
    return await _page(request, staff_id, user, reports=reports)


CalendarId = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class SyncForm(BaseModel):
    """The "Sync now" form: every calendar of the staff member, or the one `connection` names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection: Annotated[str, StringConstraints(max_length=200)] | None = None

    @classmethod
    def read_form(cls, form: FormData) -> SyncForm:
        """Raises `ValidationError`; a repeated field, an unknown field or a file is invalid."""
        fields: dict[str, Any] = {}
        for key in {k for k, _ in form.multi_items() if k != "csrf_token"}:
            values = form.getlist(key)
            fields[key] = values if len(values) > 1 else values[0]
        if fields.get("connection") == "":
            fields["connection"] = None
        return cls.model_validate(fields)


class CalendarChoiceForm(BaseModel):
    """The "which calendars count" form: calendar ids to read, and the one to write ("" for
    none). The ids are checked against the account by the calendar service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    read: list[CalendarId] = Field(min_length=1, max_length=200)
    write: CalendarId | None = None

    @classmethod
    def read_form(cls, form: FormData) -> CalendarChoiceForm:
        """Raises `ValidationError`; a repeated `write`, an unknown field or a file is invalid."""
        fields: dict[str, Any] = {"read": list(form.getlist("read"))}
        writes = form.getlist("write")
        if writes:
            fields["write"] = writes if len(writes) > 1 else (writes[0] or None)
        fields.update(
            {k: v for k, v in form.multi_items() if k not in ("read", "write", "csrf_token")}
        )
        return cls.model_validate(fields)


def _problem(exc: ValidationError) -> str:
    for e in exc.errors():
        where = str(e["loc"][0]) if e["loc"] else ""
        if where == "read":
            return "Choose at least one calendar whose busy time counts."
        if where == "write":
            return "Choose one calendar for bookings, or none."
    return "The form had fields this page does not know."


@dataclass
class Choice:
    """What the page shows about one connection's calendars."""

    calendars: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""
    error: str | None = None  # the account's calendars could not be listed right now


@router.post(
    "/staff/{staff_id}/calendars/{connection_id}/choose", dependencies=[Depends(verify_csrf)]
)
async def choose(
    request: Request, staff_id: str, connection_id: str, user: CurrentUser
) -> Response:
    """Save which calendars of one connection are read and which one is written."""
    _, rows = await db.run(request, lambda s: _connections(s, user, staff_id))  # 404 unless allowed
    if connection_id not in {r.id for r in rows}:
        raise PageError(404, "There is no such linked calendar.")
    service = getattr(request.app.state, "calendar_service", None)
    if service is None:
        raise PageError(503, "Linked calendars are not available on this server.")
    async with request.form() as raw:  # closes any uploaded file's temporary file
        try:
            form = CalendarChoiceForm.read_form(raw)
        except ValidationError as exc:
            return await _page(
                request, staff_id, user, status_code=422, problem=(connection_id, _problem(exc))
            )
    try:
        await service.choose_calendars(
            connection_id, business_id=user.business_id, read=form.read, write=form.write
        )
    except errors.InvalidRequest as exc:  # an id the account does not have, a read-only one
        return await _page(
            request, staff_id, user, status_code=422, problem=(connection_id, exc.message)
        )
    except NeedsRelink as exc:  # the account's calendars could not be listed: nothing saved
        problem = f"Nothing was saved: this account needs re-linking ({exc.message}). Re-link it."
        return await _page(
            request, staff_id, user, status_code=status_for(exc), problem=(connection_id, problem)
        )
    except errors.CalendarUnavailable as exc:
        problem = (
            f"Nothing was saved: the account's calendars could not be read ({exc.message}). "
            "Try again in a moment."
        )
        return await _page(
            request, staff_id, user, status_code=status_for(exc), problem=(connection_id, problem)
        )
    # Saved (a failed first read after saving shows in the connection's status on the page).
    return RedirectResponse(f"/staff/{staff_id}/calendars", status_code=303)


async def _choices(service: Any, rows: Sequence[CalendarConnection]) -> dict[str, Choice]:
    """Each connection's calendars, listed by its provider (all at once)."""

    async def one(row: CalendarConnection) -> Choice:
        try:
            calendars: list[CalendarInfo] = await service.list_calendars(row.id)
        except (errors.CalendarUnavailable, errors.NotFound) as exc:
            return Choice(
                summary=summary([], row.read_calendars, row.write_calendar), error=exc.message
            )
        return Choice(
            calendars=[
                {
                    "id": c.id,
                    "name": c.name,
                    "primary": c.primary,
                    "writable": c.writable,
                    "read": c.id in row.read_calendars,
                    "write": c.id == row.write_calendar,
                }
                for c in calendars
            ],
            summary=summary(calendars, row.read_calendars, row.write_calendar),
        )

    found = await asyncio.gather(*(one(r) for r in rows))
    return {r.id: c for r, c in zip(rows, found, strict=True)}


async def _page(
    request: Request, staff_id: str, user: WebUser, *, status_code: int = 200, **extra: Any
) -> Response:
    def load(s: Session) -> tuple[Staff, list[CalendarConnection], str]:
        member = load_member(s, user, staff_id)
        staff, rows = _connections(s, user, staff_id)
        return staff, rows, member.tz.key

    member, rows, tz = await db.run(request, load)
    service = getattr(request.app.state, "calendar_service", None)
    feed = None
    choices: dict[str, Choice] = {}
    if service is not None:
        choices = await _choices(service, rows)
        if service.vault.ready:
            feed = service.feed_url(user.business_id, staff_id)
    return render(
        request,
        "calendars.html",
        status_code=status_code,
        member=member,
        connections=rows,
        providers=PROVIDERS,
        synced={r.id: sync_state(r, tz) for r in rows},
        choices=choices,
        feed=feed,
        **extra,
    )
