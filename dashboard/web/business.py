"""Business settings for owners: greeting, policies, numbers and services, checked by the business
file's own schema so the browser and `frontdesk import` accept exactly the same values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlmodel import Session, col, select
from starlette.datastructures import FormData

from booking import errors, phones
from booking.business_file import BusinessInfo, ServiceEntry
from booking.models import Appointment, AppointmentStatus, Business, Service, Staff
from dashboard.models import audit
from dashboard.web import db
from dashboard.web.auth import OwnerUser, WebUser, verify_csrf
from dashboard.web.render import add_nav, render

router = APIRouter(include_in_schema=False)
add_nav("Settings", "/settings", position=40)

SERVICE_FIELDS = {
    "name": "name",
    "duration_minutes": "duration",
    "buffer_before_minutes": "buffer before",
    "buffer_after_minutes": "buffer after",
}
BUSINESS_FIELDS = {
    "name": "Business name",
    "phone_numbers": "Phone numbers",
    "transfer_number": "Transfer number",
    "greeting": "Greeting",
    "policies": "Policies",
}


@dataclass
class SettingsForm:
    """The settings as typed, kept for redisplay when something is refused."""

    business: dict[str, str]
    services: list[dict[str, str]]
    problems: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, business: Business, services: list[Service]) -> SettingsForm:
        return cls(
            business={
                "name": business.name,
                "greeting": business.greeting or "",
                "policies": business.policies or "",
                "transfer_number": business.transfer_number or "",
                "phone_numbers": "\n".join(business.phone_numbers),
            },
            services=[
                {"id": sv.id, **{k: str(getattr(sv, k)) for k in SERVICE_FIELDS}} for sv in services
            ],
        )

    def phone_numbers(self, region: str = phones.DEFAULT_REGION) -> list[str]:
        """The numbers typed, one a line, in E.164 where they are real numbers (national ones
        read in `region`); the others as typed, for the schema to refuse by name."""
        text = self.business["phone_numbers"].replace(",", "\n")
        return [_in_e164(n.strip(), region) for n in text.splitlines() if n.strip()]

    @classmethod
    def read(cls, form: FormData) -> SettingsForm:
        business = {k: str(form.get(k, "")).strip() for k in BUSINESS_FIELDS}
        columns = {k: form.getlist(f"svc_{k}") for k in ("id", *SERVICE_FIELDS)}
        services = [
            {k: str(columns[k][i]).strip() for k in columns}
            for i in range(len(columns["id"]))
            if all(i < len(v) for v in columns.values())
        ]
        return cls(business, services)


def _reason(error: Any) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _in_e164(typed: str, region: str) -> str:
    try:
        return phones.to_e164(typed, region)
    except errors.InvalidRequest:
        return typed


def _check_business(row: Business, form: SettingsForm) -> dict[str, Any] | None:
    values = form.business
    region = phones.region_for(row.phone_numbers)
    numbers = form.phone_numbers(region)
    transfer = _in_e164(values["transfer_number"], region) if values["transfer_number"] else None
    try:
        info = BusinessInfo.model_validate(
            {
                "id": row.id,
                "name": values["name"],
                "timezone": row.timezone,
                "phone_numbers": numbers,
                "transfer_number": transfer,
                "greeting": values["greeting"] or None,
                "policies": values["policies"] or None,
            }
        )
    except ValidationError as exc:
        for e in exc.errors():
            where = BUSINESS_FIELDS.get(str(e["loc"][0]), str(e["loc"][0]))
            form.problems.append(f"{where}: {_reason(e)}")
        return None
    return info.model_dump(exclude={"id", "timezone"})


def _check_service(
    row: Service, typed: dict[str, str], form: SettingsForm
) -> dict[str, Any] | None:
    values: dict[str, Any] = {"name": typed.get("name", "")}
    for key in list(SERVICE_FIELDS)[1:]:
        try:
            values[key] = int(typed.get(key, ""))
        except ValueError:
            form.problems.append(
                f"{row.name}: the {SERVICE_FIELDS[key]} must be a whole number of minutes"
            )
            return None
    try:
        ServiceEntry.model_validate(
            {
                "id": row.id,
                "min_notice_minutes": row.min_notice_minutes,
                "max_days_ahead": row.max_days_ahead,
                "slot_step_minutes": row.slot_step_minutes,
                "staff": row.staff_ids,
                **values,
            }
        )
    except ValidationError as exc:
        for e in exc.errors():
            field_name = SERVICE_FIELDS.get(str(e["loc"][0]) if e["loc"] else "", "service")
            form.problems.append(f"{row.name}: the {field_name} {_reason(e)}")
        return None
    values["name"] = values["name"].strip()
    return values


def _numbers_taken(s: Session, business_id: str, numbers: list[str]) -> list[str]:
    taken = []
    for other in s.exec(select(Business).where(Business.id != business_id)):
        taken += [n for n in numbers if n in other.phone_numbers]
    return taken


def _save(s: Session, user: WebUser, form: SettingsForm, at: Any) -> bool:
    business = s.get(Business, user.business_id)
    assert business is not None
    services = {
        sv.id: sv for sv in s.exec(select(Service).where(Service.business_id == business.id))
    }
    info = _check_business(business, form)
    region = phones.region_for(business.phone_numbers)
    for number in _numbers_taken(s, business.id, form.phone_numbers(region)):
        form.problems.append(f"Phone numbers: {number} already answers another business")
    changes: list[tuple[Service, dict[str, Any]]] = []
    for typed in form.services:
        row = services.get(typed["id"])
        if row is None:
            form.problems.append("a service on the form no longer exists; reload the page")
            continue
        values = _check_service(row, typed, form)
        if values is not None:
            changes.append((row, values))
    if form.problems or info is None:
        return False
    for key, value in info.items():
        setattr(business, key, value)
    s.add(business)
    for row, values in changes:
        for key, value in values.items():
            setattr(row, key, value)
        s.add(row)
    audit(
        s,
        business_id=business.id,
        actor=user.email,
        user_id=user.id,
        action="business.settings",
        subject=business.id,
        details={"business": info, "services": {r.id: v for r, v in changes}},
        at=at,
    )
    return True


def _load(s: Session, user: WebUser) -> tuple[Business, list[Service]]:
    business = s.get(Business, user.business_id)
    assert business is not None
    services = list(
        s.exec(
            select(Service)
            .where(Service.business_id == business.id)
            .order_by(col(Service.position))
        )
    )
    return business, services


async def _staff(request: Request, user: WebUser) -> list[Staff]:
    return await db.run(
        request,
        lambda s: list(
            s.exec(
                select(Staff)
                .where(Staff.business_id == user.business_id)
                .order_by(col(Staff.position))
            )
        ),
    )


@router.get("/settings")
async def settings_page(request: Request, user: OwnerUser, saved: bool = False) -> Response:
    business, services = await db.run(request, lambda s: _load(s, user))
    return render(
        request,
        "settings.html",
        business=business,
        form=SettingsForm.of(business, services),
        saved=saved,
        staff=await _staff(request, user),
    )


@router.post("/settings", dependencies=[Depends(verify_csrf)])
async def save_settings(request: Request, user: OwnerUser) -> Response:
    async with request.form() as raw:  # closes any uploaded file's temporary file
        form = SettingsForm.read(raw)
    at = db.now(request)
    if await db.run(request, lambda s: _save(s, user, form, at), write=True):
        return RedirectResponse("/settings?saved=1", status_code=303)
    business, _ = await db.run(request, lambda s: _load(s, user))
    return render(
        request,
        "settings.html",
        status_code=422,
        business=business,
        form=form,
        saved=False,
        staff=await _staff(request, user),
    )


class NewServiceForm(BaseModel):
    """The add-a-service form as typed: text fields (stripped) and the staff ticked.

    A field sent as a file, or a text field sent twice, is refused by name; the values are then
    checked by the business file's own `ServiceEntry`."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str = ""
    name: str = ""
    duration_minutes: str = ""
    buffer_before_minutes: str = ""
    buffer_after_minutes: str = ""
    staff: list[str] = []

    @classmethod
    def read(cls, form: FormData) -> NewServiceForm:
        """The form's fields (ValidationError names any that is not text)."""
        values: dict[str, Any] = {"staff": form.getlist("staff")}
        for key in cls.model_fields:
            if key != "staff" and key in form:
                items = form.getlist(key)
                values[key] = items[0] if len(items) == 1 else items
        return cls.model_validate(values)

    def minutes(self, name: str) -> int:
        """A duration field as whole minutes (blank: 0); ValueError when it is not a number."""
        text: str = getattr(self, name)
        return int(text or 0)


def _problems(exc: ValidationError) -> list[str]:
    return [
        f"New service: the {'.'.join(str(p) for p in e['loc']) or 'value'} {_reason(e)}"
        for e in exc.errors()
    ]


def _add_service(s: Session, user: WebUser, form: FormData, at: Any) -> list[str]:
    """Create a service from the add form; the problems, or none when it was saved."""
    business_id = user.business_id
    try:
        typed = NewServiceForm.read(form)
    except ValidationError as exc:
        return _problems(exc)
    staff_ids = {m.id for m in s.exec(select(Staff).where(Staff.business_id == business_id))}
    chosen = [v for v in typed.staff if v in staff_ids]
    try:
        entry = ServiceEntry.model_validate(
            {
                "id": typed.id,
                "name": typed.name,
                "staff": chosen,
                "duration_minutes": typed.minutes("duration_minutes"),
                "buffer_before_minutes": typed.minutes("buffer_before_minutes"),
                "buffer_after_minutes": typed.minutes("buffer_after_minutes"),
            }
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        if isinstance(exc, ValidationError):
            return _problems(exc)
        return ["New service: durations and buffers are whole numbers of minutes"]
    if not chosen:
        return ["New service: choose who does it"]
    if s.get(Service, (business_id, entry.id)) is not None:
        return [f"New service: there is already a service with the id {entry.id}"]
    last = s.exec(
        select(Service.position)
        .where(Service.business_id == business_id)
        .order_by(col(Service.position).desc())
    ).first()
    values = entry.model_dump(exclude={"staff"})
    s.add(Service(business_id=business_id, staff_ids=chosen, position=(last or 0) + 1, **values))
    audit(
        s,
        business_id=business_id,
        actor=user.email,
        user_id=user.id,
        action="service.add",
        subject=entry.id,
        details=values,
        at=at,
    )
    return []


def _remove_service(s: Session, user: WebUser, service_id: str, at: Any) -> list[str]:
    row = s.get(Service, (user.business_id, service_id))
    if row is None:
        return ["That service no longer exists; reload the page"]
    upcoming = s.exec(
        select(Appointment.id).where(
            Appointment.business_id == user.business_id,
            Appointment.service_id == service_id,
            Appointment.status == AppointmentStatus.CONFIRMED.value,
            Appointment.end > at,
        )
    ).first()
    if upcoming is not None:
        return [f"{row.name} still has upcoming appointments: cancel or move them first"]
    s.delete(row)  # past appointments keep its id; the agent stops offering it at once
    audit(
        s,
        business_id=user.business_id,
        actor=user.email,
        user_id=user.id,
        action="service.remove",
        subject=service_id,
        details={"name": row.name},
        at=at,
    )
    return []


async def _after(request: Request, user: WebUser, problems: list[str]) -> Response:
    if not problems:
        return RedirectResponse("/settings?saved=1", status_code=303)
    business, services = await db.run(request, lambda s: _load(s, user))
    form = SettingsForm.of(business, services)
    form.problems = problems
    return render(
        request,
        "settings.html",
        status_code=422,
        business=business,
        form=form,
        saved=False,
        staff=await _staff(request, user),
    )


@router.post("/settings/services", dependencies=[Depends(verify_csrf)])
async def add_service(request: Request, user: OwnerUser) -> Response:
    at = db.now(request)
    async with request.form() as form:  # closes any uploaded file's temporary file
        problems = await db.run(request, lambda s: _add_service(s, user, form, at), write=True)
    return await _after(request, user, problems)


@router.post("/settings/services/{service_id}/remove", dependencies=[Depends(verify_csrf)])
async def remove_service(request: Request, service_id: str, user: OwnerUser) -> Response:
    at = db.now(request)
    return await _after(
        request,
        user,
        await db.run(request, lambda s: _remove_service(s, user, service_id, at), write=True),
    )
