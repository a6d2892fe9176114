"""Leads for owners: the filtered list (callers who missed an appointment among the filters),
CSV export of the same filter, a lead's page with its call, and status changes kept as
history."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Annotated
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session, col, select

from booking.models import (
    Appointment,
    Attendance,
    Business,
    Call,
    Lead,
    LeadOutcome,
    Service,
    Staff,
)
from dashboard.models import LeadStatus, LeadStatusChange, audit
from dashboard.web import db
from dashboard.web.auth import OwnerUser, PageError, WebUser, verify_csrf
from dashboard.web.render import add_nav, parse_day, render

router = APIRouter(include_in_schema=False)
add_nav("Leads", "/leads", position=10)

PAGE_SIZE = 200
CSV_LIMIT = 50_000
NOTE_MAX = 2000


class LeadStatusError(ValueError):
    """A status change that cannot be made; the message is shown to the owner."""


@dataclass(frozen=True)
class LeadFilter:
    """What the owner asked to see; dates are days in the business's zone, inclusive."""

    outcome: str | None = None
    status: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    q: str | None = None
    no_show: bool = False  # only callers who missed an appointment
    problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(
        cls,
        *,
        outcome: str | None,
        status: str | None,
        date_from: str | None,
        date_to: str | None,
        q: str | None,
        no_show: str | None = None,
    ) -> LeadFilter:
        """Read the filter form; a bad value is dropped and reported, never a crash."""
        problems: list[str] = []
        outcomes = {o.value for o in LeadOutcome}
        if outcome and outcome not in outcomes:
            problems.append(f"unknown outcome {outcome!r}")
            outcome = None
        if status and status not in {s.value for s in LeadStatus}:
            problems.append(f"unknown status {status!r}")
            status = None
        first, last = _day(date_from, "from", problems), _day(date_to, "to", problems)
        if first and last and last < first:
            problems.append("the 'to' date is before the 'from' date")
        return cls(
            outcome=outcome or None,
            status=status or None,
            date_from=first,
            date_to=last,
            q=(q or "").strip() or None,
            no_show=bool(no_show),
            problems=problems,
        )

    def query_string(self) -> str:
        pairs = {
            "outcome": self.outcome,
            "status": self.status,
            "from": self.date_from.isoformat() if self.date_from else None,
            "to": self.date_to.isoformat() if self.date_to else None,
            "q": self.q,
            "no_show": "1" if self.no_show else None,
        }
        return urlencode({k: v for k, v in pairs.items() if v})


def _day(value: str | None, name: str, problems: list[str]) -> date | None:
    if not value:
        return None
    try:
        return parse_day(value, f"'{name}' date")
    except ValueError as exc:
        problems.append(str(exc))
        return None


def find_leads(
    s: Session, business_id: str, flt: LeadFilter, tz: ZoneInfo, *, limit: int
) -> list[Lead]:
    """The business's leads matching `flt`, newest first."""
    q = select(Lead).where(Lead.business_id == business_id)
    if flt.outcome:
        q = q.where(Lead.outcome == flt.outcome)
    if flt.status:
        q = q.where(Lead.status == flt.status)
    if flt.date_from:
        q = q.where(Lead.created_at >= datetime.combine(flt.date_from, time(), tz))
    if flt.date_to:
        q = q.where(Lead.created_at < datetime.combine(flt.date_to + timedelta(days=1), time(), tz))
    if flt.q:
        q = q.where(_search(flt.q))
    if flt.no_show:
        missed = select(Appointment.contact_id).where(
            Appointment.business_id == business_id,
            Appointment.attendance == Attendance.NO_SHOW.value,
        )
        q = q.where(col(Lead.contact_id).in_(missed))
    return list(s.exec(q.order_by(col(Lead.created_at).desc(), col(Lead.id).desc()).limit(limit)))


def _search(text: str) -> sa.ColumnElement[bool]:
    """Name contains the text (any case), or the number contains its digits."""
    name = sa.func.lower(sa.func.coalesce(Lead.name, "")).contains(text.lower(), autoescape=True)
    digits = re.sub(r"\D", "", text)
    if len(digits) < 3:
        return name
    return sa.or_(name, sa.func.coalesce(Lead.phone, "").contains(digits, autoescape=True))


def _business(s: Session, user: WebUser) -> Business:
    row = s.get(Business, user.business_id)
    assert row is not None  # an account's business cannot be deleted under it
    return row


# ---- list and CSV -----------------------------------------------------------------------------


def filter_args(
    outcome: str | None = None,
    status: str | None = None,
    date_from: Annotated[str | None, Query(alias="from")] = None,
    date_to: Annotated[str | None, Query(alias="to")] = None,
    q: str | None = None,
    no_show: str | None = None,
) -> LeadFilter:
    return LeadFilter.parse(
        outcome=outcome, status=status, date_from=date_from, date_to=date_to, q=q, no_show=no_show
    )


Filter = Annotated[LeadFilter, Depends(filter_args)]


@router.get("/leads")
async def leads_page(request: Request, user: OwnerUser, flt: Filter) -> Response:
    def load(s: Session) -> tuple[Business, list[Lead], dict[str, str]]:
        business = _business(s, user)
        rows = find_leads(s, business.id, flt, ZoneInfo(business.timezone), limit=PAGE_SIZE)
        return business, rows, channels_of(s, [r.call_id for r in rows if r.call_id])

    business, rows, channels = await db.run(request, load)
    missed = await db.scheduler(request).no_shows(
        business_id=business.id, contact_ids=sorted({r.contact_id for r in rows if r.contact_id})
    )
    return render(
        request,
        "leads.html",
        business=business,
        leads=rows,
        no_shows=missed,
        channels=channels,
        flt=flt,
        outcomes=list(LeadOutcome),
        statuses=list(LeadStatus),
        page_size=PAGE_SIZE,
    )


def channels_of(s: Session, call_ids: list[str]) -> dict[str, str]:
    """How each conversation came in, by call id: "relay" or "gather" (a phone call), "sms" (a
    text thread), "web" (the Try-it chat)."""
    if not call_ids:
        return {}
    rows = s.exec(select(Call.id, Call.channel).where(col(Call.id).in_(call_ids)))
    return {call_id: channel or "" for call_id, channel in rows}


CSV_COLUMNS = ["time", "outcome", "status", "name", "phone", "reason", "appointment_id", "id"]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PHONE = re.compile(r"^\+\d{8,15}$")


def csv_cell(value: object) -> str:
    """A cell a spreadsheet shows as text: a leading =, +, -, @ would start a formula.

    E.164 numbers are left alone: they are only digits, so no formula can hide in them."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) and not _PHONE.match(text):
        return "'" + text
    return text


def leads_csv(rows: list[Lead], tz: ZoneInfo) -> str:
    out = io.StringIO()
    # Every cell quoted: a spreadsheet splitting on ";" (most of Europe) could otherwise see
    # a formula start in the middle of a field.
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                csv_cell(v)
                for v in (
                    row.created_at.astimezone(tz).isoformat(timespec="minutes"),
                    row.outcome,
                    row.status,
                    row.name,
                    row.phone,
                    row.reason,
                    row.appointment_id,
                    row.id,
                )
            ]
        )
    return out.getvalue()


@router.get("/leads.csv")
async def leads_export(request: Request, user: OwnerUser, flt: Filter) -> Response:
    def load(s: Session) -> tuple[Business, list[Lead]]:
        business = _business(s, user)
        return business, find_leads(
            s, business.id, flt, ZoneInfo(business.timezone), limit=CSV_LIMIT
        )

    business, rows = await db.run(request, load)
    stamp = db.now(request).astimezone(ZoneInfo(business.timezone)).strftime("%Y%m%d-%H%M")
    return Response(
        leads_csv(rows, ZoneInfo(business.timezone)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="leads-{stamp}.csv"'},
    )


# ---- one lead ---------------------------------------------------------------------------------


@dataclass
class LeadPage:
    business: Business
    lead: Lead
    call: Call | None
    appointment: Appointment | None
    service: Service | None
    staff: Staff | None
    history: list[LeadStatusChange]
    no_shows: int = 0


def load_lead(s: Session, business_id: str, lead_id: str) -> Lead:
    """The lead, if it is this business's; another business's id is simply not found."""
    row = s.get(Lead, lead_id)
    if row is None or row.business_id != business_id:
        raise PageError(404, "There is no such lead.")
    return row


def _lead_page(s: Session, user: WebUser, lead_id: str) -> LeadPage:
    business = _business(s, user)
    lead = load_lead(s, business.id, lead_id)
    call = s.get(Call, lead.call_id) if lead.call_id else None
    appointment = s.get(Appointment, lead.appointment_id) if lead.appointment_id else None
    service = staff = None
    if appointment is not None:
        service = s.get(Service, (business.id, appointment.service_id))
        staff = s.get(Staff, (business.id, appointment.staff_id))
    history = list(
        s.exec(
            select(LeadStatusChange)
            .where(LeadStatusChange.lead_id == lead.id)
            .order_by(col(LeadStatusChange.at).desc(), col(LeadStatusChange.id).desc())
        )
    )
    return LeadPage(business, lead, call, appointment, service, staff, history)


async def _load_page(request: Request, user: WebUser, lead_id: str) -> LeadPage:
    page = await db.run(request, lambda s: _lead_page(s, user, lead_id))
    if page.lead.contact_id:
        missed = await db.scheduler(request).no_shows(
            business_id=page.business.id, contact_ids=[page.lead.contact_id]
        )
        page.no_shows = missed.get(page.lead.contact_id, 0)
    return page


@router.get("/leads/{lead_id}")
async def lead_page(request: Request, lead_id: str, user: OwnerUser) -> Response:
    page = await _load_page(request, user, lead_id)
    return render(request, "lead.html", page=page, statuses=list(LeadStatus), error=None)


def change_status(
    s: Session,
    *,
    business_id: str,
    lead_id: str,
    status: str,
    note: str | None,
    actor: str,
    user_id: str | None,
    at: datetime,
) -> LeadStatusChange:
    """Move a lead to `status`, keeping the step and its note in the lead's history."""
    if status not in {v.value for v in LeadStatus}:
        raise LeadStatusError("choose new, contacted, won or lost")
    note = (note or "").strip() or None
    if note and len(note) > NOTE_MAX:
        raise LeadStatusError(f"the note is too long (at most {NOTE_MAX} characters)")
    lead = load_lead(s, business_id, lead_id)
    if lead.status == status and not note:
        raise LeadStatusError(f"the lead is already {status}; add a note to record something")
    step = LeadStatusChange(
        business_id=business_id,
        lead_id=lead.id,
        from_status=lead.status,
        to_status=status,
        note=note,
        user_id=user_id,
        actor=actor,
        at=at,
    )
    lead.status = status
    s.add(lead)
    s.add(step)
    audit(
        s,
        business_id=business_id,
        actor=actor,
        user_id=user_id,
        action="lead.status",
        subject=lead.id,
        details={"from": step.from_status, "to": status, "note": note},
        at=at,
    )
    s.flush()
    return step


@router.post("/leads/{lead_id}/status", dependencies=[Depends(verify_csrf)])
async def lead_status(
    request: Request,
    lead_id: str,
    user: OwnerUser,
    status: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
) -> Response:
    at = db.now(request)
    try:
        await db.run(
            request,
            lambda s: change_status(
                s,
                business_id=user.business_id,
                lead_id=lead_id,
                status=status,
                note=note,
                actor=user.email,
                user_id=user.id,
                at=at,
            ),
            write=True,
        )
    except LeadStatusError as exc:
        page = await _load_page(request, user, lead_id)
        return render(
            request,
            "lead.html",
            status_code=422,
            page=page,
            statuses=list(LeadStatus),
            error=str(exc),
        )
    return RedirectResponse(f"/leads/{lead_id}", status_code=303)
