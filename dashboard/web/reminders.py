"""Reminder settings for owners: the business's reminders (on or off, the times before, the
wording, quiet hours) and each service's override, with every service's text previewed the way a
caller gets it and its SMS segment count.

Values are checked by `booking.reminders`' own models, so this page and `frontdesk import` accept
exactly the same settings; the planner reads the saved rows on its next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select
from starlette.datastructures import FormData

from booking.models import Business, Service, Staff
from booking.reminders import (
    DEFAULT_TEXT,
    MAX_TEXT,
    PLACEHOLDERS,
    ReminderSettings,
    Segments,
    ServiceReminders,
    format_offset,
    policy,
    render,
    segments,
)
from dashboard.models import audit
from dashboard.web import db
from dashboard.web.auth import OwnerUser, WebUser, verify_csrf
from dashboard.web.render import add_nav
from dashboard.web.render import render as render_page

router = APIRouter(include_in_schema=False)
add_nav("Reminders", "/reminders", position=45)

INHERIT, OWN, OFF = "inherit", "own", "off"
MODES = {INHERIT: "Same as the business", OWN: "Own times or text", OFF: "No reminders"}
FIELDS = {"enabled": "On", "before": "Times before", "text": "Text", "quiet_hours": "Quiet hours"}
SAMPLE_NAME = "Alexandrina"  # a long first name, so the preview's segment count is not optimistic


class FormProblem(ValueError):
    """A field the browser could not have sent (a file, or the same field twice)."""


def _field(form: FormData, name: str) -> str:
    values = form.getlist(name)
    if not values:
        return ""
    if len(values) > 1 or not isinstance(values[0], str):
        raise FormProblem(f"the form sent {name!r} in a way a browser does not; reload the page")
    return values[0]


def _times(typed: str) -> list[str]:
    """ "24h, 2h" -> ["24h", "2h"] (each checked by the settings model)."""
    return [part.strip() for part in typed.replace(";", ",").split(",") if part.strip()]


def _shown_times(minutes: list[int] | None) -> str:
    return ", ".join(format_offset(m) for m in minutes or [])


def _reason(error: Any) -> str:
    return str(error["msg"]).removeprefix("Value error, ")


@dataclass
class ServiceForm:
    """One service's override as typed."""

    id: str
    name: str
    mode: str = INHERIT
    before: str = ""
    text: str = ""
    always: bool = False  # own settings that go even while the business's reminders are off

    @classmethod
    def of(cls, row: Service) -> ServiceForm:
        stored = ServiceReminders.model_validate(row.reminders or {})
        if stored.enabled is False:
            return cls(row.id, row.name, OFF)
        if stored == ServiceReminders():
            return cls(row.id, row.name, INHERIT)
        return cls(
            row.id,
            row.name,
            OWN,
            before=_shown_times(stored.before),
            text=stored.text or "",
            always=stored.enabled is True,
        )


@dataclass
class RemindersForm:
    """The settings as typed, kept for redisplay (and the preview) when something is refused."""

    enabled: bool
    before: str
    text: str
    quiet_hours: str
    services: list[ServiceForm]
    problems: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, business: Business, services: list[Service]) -> RemindersForm:
        stored = ReminderSettings.model_validate(business.reminders or {})
        return cls(
            enabled=stored.enabled,
            before=_shown_times(stored.before),
            text=stored.text,
            quiet_hours=stored.quiet_hours or "",
            services=[ServiceForm.of(row) for row in services],
        )

    @classmethod
    def read(cls, raw: FormData, services: list[Service]) -> RemindersForm:
        """The posted form; a service the form does not mention keeps what it has (it was added
        after the page was loaded), a service id the business lacks is ignored."""
        form = cls(False, "", "", "", [ServiceForm.of(row) for row in services])
        try:
            form.enabled = _field(raw, "enabled") == "1"
            form.before = _field(raw, "before")
            form.text = _field(raw, "text")
            form.quiet_hours = _field(raw, "quiet_hours")
            for index, row in enumerate(services):
                prefix = f"svc-{row.id}-"
                if f"{prefix}mode" not in raw:
                    continue
                typed = ServiceForm(row.id, row.name, _field(raw, f"{prefix}mode"))
                typed.before = _field(raw, f"{prefix}before")
                typed.text = _field(raw, f"{prefix}text")
                typed.always = _field(raw, f"{prefix}always") == "1"
                form.services[index] = typed
        except FormProblem as exc:
            form.problems.append(str(exc)[:1].upper() + str(exc)[1:])
        return form


@dataclass(frozen=True)
class Checked:
    """What the form would store: the business's settings and each service's override."""

    business: dict[str, Any]
    services: dict[str, dict[str, Any] | None]


def check(form: RemindersForm, business: Business, services: list[Service]) -> Checked:
    """The values to store; a part that is refused keeps its stored value (so the preview
    still shows something) and adds a line to `form.problems`."""
    settings = _check_business(form)
    stored = {row.id: row.reminders for row in services}
    overrides: dict[str, dict[str, Any] | None] = {}
    for typed in form.services:
        if typed.id in stored:
            overrides[typed.id] = _check_service(typed, form, stored[typed.id])
    return Checked(
        business=settings.model_dump() if settings else dict(business.reminders or {}),
        services=overrides,
    )


def _check_business(form: RemindersForm) -> ReminderSettings | None:
    try:
        settings = ReminderSettings.model_validate(
            {
                "enabled": form.enabled,
                "before": _times(form.before),
                "text": form.text.strip() or DEFAULT_TEXT,
                "quiet_hours": form.quiet_hours.strip() or None,
            }
        )
    except ValidationError as exc:
        for e in exc.errors():
            where = FIELDS.get(str(e["loc"][0]) if e["loc"] else "", "Reminders")
            form.problems.append(f"{where}: {_reason(e)}")
        return None
    if settings.enabled and not settings.before:
        form.problems.append("Times before: list at least one, like 24h, 2h, or turn reminders off")
        return None
    return settings


def _check_service(
    typed: ServiceForm, form: RemindersForm, stored: dict[str, Any] | None
) -> dict[str, Any] | None:
    if typed.mode == INHERIT:
        return None
    if typed.mode == OFF:
        return {"enabled": False}
    if typed.mode != OWN:
        form.problems.append(f"{typed.name}: choose same as the business, own, or none")
        return stored
    try:
        override = ServiceReminders.model_validate(
            {
                "enabled": True if typed.always else None,
                "before": _times(typed.before) or None,
                "text": typed.text.strip() or None,
            }
        )
    except ValidationError as exc:
        for e in exc.errors():
            where = FIELDS.get(str(e["loc"][0]) if e["loc"] else "", "Reminders")
            form.problems.append(f"{typed.name}: {where.lower()}: {_reason(e)}")
        return stored
    return override.model_dump(exclude_none=True) or None


# ---- the preview ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    """One service's reminder as a caller would read it, or why it sends none."""

    service: str
    times: str  # "24h, 2h"; empty: no reminders
    body: str
    segments: Segments | None


def sample_start(now: datetime, tz: ZoneInfo) -> datetime:
    """An appointment to show the text for: 10:00 on a two-digit day soon, so the date is as
    long as it gets."""
    day = (now.astimezone(tz) + timedelta(days=1)).date()
    if day.day < 10:
        day = day.replace(day=10)
    return datetime.combine(day, time(10), tz)


def previews(
    business: Business,
    services: list[Service],
    staff: list[Staff],
    checked: Checked,
    now: datetime,
) -> list[Preview]:
    """Each service's reminder under the checked settings, rendered with sample values (a long
    caller name, the longest name among the service's staff)."""
    tz = ZoneInfo(business.timezone)
    draft = Business(
        id=business.id,
        name=business.name,
        timezone=business.timezone,
        address=business.address,
        reminders=checked.business,
    )
    names = {m.id: m.name for m in staff}
    rows = services or [
        Service(business_id=business.id, id="", name="Appointment", duration_minutes=0)
    ]
    out: list[Preview] = []
    for row in rows:
        rule = policy(draft, _draft_service(row, checked.services.get(row.id, row.reminders)))
        if not rule.before:
            out.append(Preview(row.name, "", "", None))
            continue
        people = [names[s] for s in row.staff_ids if s in names] or list(names.values())
        body = render(
            rule.text,
            name=SAMPLE_NAME,
            service=row.name,
            staff=max(people, key=len, default="Sam"),
            start=sample_start(now, tz),
            tz=tz,
            business=business.name,
            address=business.address,
        )
        out.append(Preview(row.name, _shown_times(list(rule.before)), body, segments(body)))
    return out


def _draft_service(row: Service, reminders: dict[str, Any] | None) -> Service:
    return Service(
        business_id=row.business_id,
        id=row.id,
        name=row.name,
        duration_minutes=row.duration_minutes,
        reminders=reminders,
    )


# ---- the pages --------------------------------------------------------------------------------


@dataclass
class Loaded:
    business: Business
    services: list[Service]
    staff: list[Staff]


def _load(s: Session, user: WebUser) -> Loaded:
    business = s.get(Business, user.business_id)
    assert business is not None
    services = s.exec(
        select(Service).where(Service.business_id == business.id).order_by(col(Service.position))
    )
    staff = s.exec(select(Staff).where(Staff.business_id == business.id))
    return Loaded(business, list(services), list(staff))


def _page(
    request: Request,
    loaded: Loaded,
    form: RemindersForm,
    *,
    saved: bool = False,
    live: bool = False,
    status_code: int = 200,
) -> Response:
    checked = check(replace(form, problems=[]), *_parts(loaded))
    context = {
        "business": loaded.business,
        "form": form,
        "saved": saved,
        "live": live,
        "modes": MODES,
        "previews": previews(*_parts(loaded), loaded.staff, checked, db.now(request)),
        "placeholders": PLACEHOLDERS,
        "max_text": MAX_TEXT,
    }
    template = "reminders_preview.html" if live else "reminders.html"
    return render_page(request, template, status_code=status_code, **context)


def _parts(loaded: Loaded) -> tuple[Business, list[Service]]:
    return loaded.business, loaded.services


@router.get("/reminders")
async def reminders_page(request: Request, user: OwnerUser, saved: bool = False) -> Response:
    loaded = await db.run(request, lambda s: _load(s, user))
    form = RemindersForm.of(loaded.business, loaded.services)
    return _page(request, loaded, form, saved=saved)


@router.post("/reminders/preview", dependencies=[Depends(verify_csrf)])
async def preview(request: Request, user: OwnerUser) -> Response:
    """The previews for the settings as typed, saving nothing: the live preview's fragment for
    htmx, the whole page for a browser without scripts."""
    loaded = await db.run(request, lambda s: _load(s, user))
    async with request.form() as raw:
        form = RemindersForm.read(raw, loaded.services)
    check(form, *_parts(loaded))  # fills in the problems to show beside the preview
    live = bool(request.headers.get("HX-Request"))
    return _page(request, loaded, form, live=live)


@router.post("/reminders", dependencies=[Depends(verify_csrf)])
async def save_reminders(request: Request, user: OwnerUser) -> Response:
    at = db.now(request)
    loaded = await db.run(request, lambda s: _load(s, user))
    async with request.form() as raw:  # closes any uploaded file's temporary file
        form = RemindersForm.read(raw, loaded.services)
    if await db.run(request, lambda s: _save(s, user, form, at), write=True):
        return RedirectResponse("/reminders?saved=1", status_code=303)
    loaded = await db.run(request, lambda s: _load(s, user))
    return _page(request, loaded, form, status_code=422)


def _save(s: Session, user: WebUser, form: RemindersForm, at: datetime) -> bool:
    loaded = _load(s, user)
    if form.problems:
        return False
    checked = check(form, *_parts(loaded))
    if form.problems:
        return False
    business = loaded.business
    business.reminders = checked.business
    s.add(business)
    changed: dict[str, dict[str, Any] | None] = {}
    for row in loaded.services:
        if row.id in checked.services and checked.services[row.id] != row.reminders:
            row.reminders = checked.services[row.id]
            changed[row.id] = row.reminders
            s.add(row)
    audit(
        s,
        business_id=business.id,
        actor=user.email,
        user_id=user.id,
        action="business.reminders",
        subject=business.id,
        details={"business": checked.business, "services": changed},
        at=at,
    )
    return True
