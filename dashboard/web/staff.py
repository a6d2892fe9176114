"""Staff availability: weekly hours, date overrides and time off edited in the browser, checked
by the business file's own rules, and shown as the week's bookable times in the staff member's
zone, straight from slot search. The scheduler keys its parsed rules on the stored rules, so a
saved change is what the very next caller's search sees."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select
from starlette.datastructures import FormData

from booking import errors
from booking.business_file import StaffEntry, staff_values
from booking.models import Appointment, Business, Contact, Service, Staff
from booking.rules import DAYS, STORED, Availability, working_ranges
from booking.scheduler import staff_zone
from booking.slots import Slot
from dashboard.models import audit
from dashboard.web import db
from dashboard.web.auth import CurrentUser, OwnerUser, PageError, WebUser, verify_csrf
from dashboard.web.render import (
    DayOutOfRange,
    add_nav,
    bookable,
    parse_day,
    query_day,
    render,
)

router = APIRouter(include_in_schema=False)
add_nav("Staff", "/staff", position=30)

DAY_NAMES = dict(
    zip(
        DAYS,
        ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
        strict=True,
    )
)
BLANK_ROWS = 2  # empty override and time-off rows offered for adding
TIME_OFF_COLUMNS = {"start": "From", "end": "To", "rrule": "Repeat", "reason": "Reason"}


@dataclass
class HoursForm:
    """The hours form's values as typed, so a refused form comes back as the person left it."""

    weekly: dict[str, str]
    overrides: list[tuple[str, str]]  # (date, "09:00-12:00, 13:00-15:00" or "" for closed)
    time_off: list[dict[str, str]]  # start, end, rrule, reason
    problems: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, row: Staff, tz: ZoneInfo) -> HoursForm:
        weekly = {d: ", ".join(row.weekly_hours.get(d, [])) for d in DAYS}
        overrides = [(str(o["date"]), ", ".join(o.get("hours", []))) for o in row.overrides]
        time_off = [
            {
                "start": _wall(t["start"], tz),
                "end": _wall(t["end"], tz),
                "rrule": t.get("rrule") or "",
                "reason": t.get("reason") or "",
            }
            for t in row.time_off
        ]
        return cls(weekly, overrides, time_off)

    @classmethod
    def read(cls, form: FormData) -> HoursForm:
        weekly = {d: str(form.get(f"hours_{d}", "")).strip() for d in DAYS}
        dates, hours = form.getlist("ov_date"), form.getlist("ov_hours")
        overrides = [
            (str(d).strip(), str(h).strip())
            for d, h in zip(dates, hours, strict=False)
            if str(d).strip()
        ]
        columns = [form.getlist(f"off_{k}") for k in ("start", "end", "rrule", "reason")]
        time_off = [
            dict(
                zip(
                    ("start", "end", "rrule", "reason"),
                    (str(v).strip() for v in values),
                    strict=True,
                )
            )
            for values in zip(*columns, strict=False)
        ]
        time_off = [t for t in time_off if t["start"] or t["end"]]
        return cls(weekly, overrides, time_off)

    def rules(self) -> dict[str, Any]:
        """The availability as the business file writes it."""
        return {
            "weekly_hours": {d: _ranges(v) for d, v in self.weekly.items() if v},
            "overrides": [{"date": d, "hours": _ranges(h)} for d, h in self.overrides],
            "time_off": [{k: v for k, v in t.items() if v} for t in self.time_off],
        }

    def rows(self) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
        blank_off = {"start": "", "end": "", "rrule": "", "reason": ""}
        return (
            [*self.overrides, *[("", "")] * BLANK_ROWS],
            [*self.time_off, *[dict(blank_off) for _ in range(BLANK_ROWS)]],
        )


def _ranges(text: str) -> list[str]:
    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]


def _wall(value: str, tz: ZoneInfo) -> str:
    """A stored time-off instant as the staff member's wall time for a datetime-local input."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is not None:
        with suppress(OverflowError):  # saved before dates were limited to 1970-2199: as stored
            parsed = parsed.astimezone(tz)
        parsed = parsed.replace(tzinfo=None)
    return parsed.isoformat(timespec="minutes")


def _where(loc: tuple[int | str, ...]) -> str:
    """A validation error's path in the form's words: `weekly_hours.mon.0` -> Monday."""
    if loc and loc[0] == "weekly_hours" and len(loc) > 1:
        return DAY_NAMES.get(str(loc[1]), str(loc[1]))
    if loc and loc[0] == "overrides":
        return f"Date override {int(loc[1]) + 1}" if len(loc) > 1 else "Date overrides"
    if loc and loc[0] == "time_off":
        if len(loc) < 2:
            return "Time off"
        column = TIME_OFF_COLUMNS.get(str(loc[2])) if len(loc) > 2 else None
        return f"Time off {int(loc[1]) + 1}" + (f", {column}" if column else "")
    return ".".join(str(p) for p in loc)


def _reason(error: Any) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _override_years(form: HoursForm) -> list[str]:
    """Override dates outside 1970-2199, which no slot search can reach (time off is checked
    by the file's rules; a date that is no date at all is reported by them too)."""
    problems = []
    for number, (text, _) in enumerate(form.overrides, 1):
        try:
            parse_day(text)
        except DayOutOfRange as exc:
            problems.append(f"Date override {number}: {exc}")
        except ValueError:
            continue
    return problems


def validate(row: Staff, form: HoursForm) -> dict[str, Any] | None:
    """The new stored rules, or None with `form.problems` filled in (same rules as the file)."""
    form.problems = _override_years(form)
    try:
        entry = StaffEntry.model_validate(
            {"id": row.id, "name": row.name, "timezone": row.timezone, **form.rules()}
        )
    except ValidationError as exc:
        form.problems += [f"{_where(e['loc'])}: {_reason(e)}" for e in exc.errors()]
    if form.problems:
        return None
    values = staff_values(entry)
    return {k: values[k] for k in ("weekly_hours", "overrides", "time_off")}


# ---- pages ------------------------------------------------------------------------------------


@dataclass
class Member:
    business: Business
    staff: Staff
    services: list[Service]

    @property
    def tz(self) -> ZoneInfo:
        return staff_zone(self.staff, self.business)


def load_member(s: Session, user: WebUser, staff_id: str) -> Member:
    """The staff member, if this user may see them: their business's, and staff only their own."""
    business = s.get(Business, user.business_id)
    row = s.get(Staff, (user.business_id, staff_id))
    if business is None or row is None or not user.may_see_staff(staff_id):
        raise PageError(404, "There is no such staff member.")
    services = [
        sv
        for sv in s.exec(
            select(Service)
            .where(Service.business_id == business.id)
            .order_by(col(Service.position))
        )
        if staff_id in sv.staff_ids
    ]
    return Member(business, row, services)


@router.get("/staff")
async def staff_list(request: Request, user: OwnerUser) -> Response:
    def load(s: Session) -> list[Staff]:
        return list(
            s.exec(
                select(Staff)
                .where(Staff.business_id == user.business_id)
                .order_by(col(Staff.position))
            )
        )

    return render(request, "staff_list.html", staff=await db.run(request, load), days=DAYS)


@dataclass
class WeekGrid:
    """One week of a staff member's bookable times for one service, in their zone."""

    service: Service | None
    days: list[date]
    hours: dict[date, list[str]]
    slots: dict[date, list[Slot]]
    error: str | None = None


async def week_grid(
    request: Request, member: Member, service_id: str | None, first: date
) -> WeekGrid:
    tz = member.tz
    days = [first + timedelta(days=i) for i in range(7)]
    rules = Availability.model_validate(
        {
            "weekly_hours": member.staff.weekly_hours,
            "overrides": member.staff.overrides,
            "time_off": member.staff.time_off,
        },
        context=STORED,
    )
    hours = {
        d: [
            f"{a.astimezone(tz):%H:%M}–{b.astimezone(tz):%H:%M}"
            for a, b in working_ranges(rules, tz, d)
        ]
        for d in days
    }
    service = next((sv for sv in member.services if sv.id == service_id), None)
    service = service or (member.services[0] if member.services else None)
    grid = WeekGrid(service, days, hours, {d: [] for d in days})
    if service is None:
        return grid
    try:
        start, end = bookable(
            datetime.combine(days[0], time(), tz),
            datetime.combine(days[-1] + timedelta(days=1), time(), tz),
        )
        found = await db.scheduler(request).search(
            business_id=member.business.id,
            service_id=service.id,
            staff_id=member.staff.id,
            start=start,
            end=end,
        )
    except errors.BookingError as exc:
        grid.error = exc.message
        return grid
    for slot in found.slots:
        grid.slots.setdefault(slot.start.astimezone(tz).date(), []).append(slot)
    return grid


async def _upcoming(request: Request, member: Member) -> list[tuple[Appointment, str, str]]:
    now = db.now(request)
    rows = await db.scheduler(request).appointments(
        business_id=member.business.id,
        start=now,
        end=now + timedelta(days=60),
        staff_id=member.staff.id,
    )
    names = {sv.id: sv.name for sv in member.services}

    def contacts(s: Session) -> dict[str, Contact]:
        ids = {r.contact_id for r in rows}
        q = select(Contact).where(Contact.id.in_(ids))  # type: ignore[attr-defined]
        return {c.id: c for c in s.exec(q)} if ids else {}

    found = await db.run(request, contacts)
    return [
        (
            r,
            names.get(r.service_id, r.service_id),
            (found[r.contact_id].name or found[r.contact_id].phone)
            if r.contact_id in found
            else "",
        )
        for r in rows[:20]
    ]


async def _render_member(
    request: Request,
    user: WebUser,
    staff_id: str,
    *,
    form: HoursForm | None = None,
    service: str | None = None,
    week: str | None = None,
    saved: bool = False,
    status_code: int = 200,
) -> Response:
    member = await db.run(request, lambda s: load_member(s, user, staff_id))
    tz = member.tz
    shown = query_day(week, "week") or db.now(request).astimezone(tz).date()
    first = shown - timedelta(days=shown.weekday())
    form = form or HoursForm.of(member.staff, tz)
    overrides, time_off = form.rows()
    return render(
        request,
        "staff.html",
        status_code=status_code,
        m=member,
        tz=tz,
        form=form,
        override_rows=overrides,
        time_off_rows=time_off,
        day_names=DAY_NAMES,
        grid=await week_grid(request, member, service, first),
        upcoming=await _upcoming(request, member),
        saved=saved,
        prev_week=(first - timedelta(days=7)).isoformat(),
        next_week=(first + timedelta(days=7)).isoformat(),
        today=db.now(request).astimezone(tz).date(),
    )


@router.get("/staff/{staff_id}")
async def staff_page(
    request: Request,
    staff_id: str,
    user: CurrentUser,
    service: str | None = None,
    week: str | None = None,
    saved: bool = False,
) -> Response:
    return await _render_member(request, user, staff_id, service=service, week=week, saved=saved)


@router.post("/staff/{staff_id}/hours", dependencies=[Depends(verify_csrf)])
async def save_hours(request: Request, staff_id: str, user: CurrentUser) -> Response:
    form = HoursForm.read(await request.form())
    at = db.now(request)

    # Rules are checked (recurring ones compiled) in a read transaction, so the write below
    # holds the database's write lock only for the update itself.
    def check(s: Session) -> dict[str, Any] | None:
        return validate(load_member(s, user, staff_id).staff, form)

    values = await db.run(request, check)
    if values is None:
        return await _render_member(request, user, staff_id, form=form, status_code=422)

    def write(s: Session) -> None:
        row = load_member(s, user, staff_id).staff
        before = {
            "weekly_hours": row.weekly_hours,
            "overrides": row.overrides,
            "time_off": row.time_off,
        }
        row.weekly_hours = values["weekly_hours"]
        row.overrides = values["overrides"]
        row.time_off = values["time_off"]
        s.add(row)
        audit(
            s,
            business_id=user.business_id,
            actor=user.email,
            user_id=user.id,
            action="staff.hours",
            subject=staff_id,
            details={"before": before, "after": values},
            at=at,
        )

    await db.run(request, write, write=True)
    return RedirectResponse(f"/staff/{staff_id}?saved=1", status_code=303)
