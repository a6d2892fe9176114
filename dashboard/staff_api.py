"""Staff availability through the JSON API: what the dashboard's hours page edits, for scripts.

`GET /api/v1/staff` lists staff with their rules; `PUT /api/v1/staff/{id}/availability` replaces
a staff member's weekly hours, date overrides and time off, validated by the same rules as the
business file (`booking.business_file.StaffEntry`), effective for the next slot search.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field, ValidationError
from sqlmodel import Session, select

from booking import errors
from booking.business_file import StaffEntry, staff_values
from booking.db import in_session
from booking.models import Staff
from booking.scheduler import Scheduler
from dashboard.api import ERRORS, get_scheduler, require_api_key

router = APIRouter(
    prefix="/api/v1", dependencies=[Depends(require_api_key)], tags=["staff"], responses=ERRORS
)
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
BusinessQ = Annotated[str | None, Query(description="business id; optional while there is one")]


class StaffOut(BaseModel):
    id: str
    name: str
    timezone: str | None
    weekly_hours: dict[str, list[str]]
    overrides: list[dict[str, Any]]
    time_off: list[dict[str, Any]]

    @classmethod
    def of(cls, row: Staff) -> StaffOut:
        return cls(
            id=row.id,
            name=row.name,
            timezone=row.timezone,
            weekly_hours=row.weekly_hours,
            overrides=row.overrides,
            time_off=row.time_off,
        )


class AvailabilityIn(BaseModel):
    weekly_hours: dict[str, list[str]] = Field(
        default_factory=dict, examples=[{"mon": ["09:00-12:00", "13:00-17:00"]}]
    )
    overrides: list[dict[str, Any]] = Field(
        default_factory=list, examples=[[{"date": "2026-12-24", "hours": []}]]
    )
    time_off: list[dict[str, Any]] = Field(
        default_factory=list,
        examples=[[{"start": "2026-12-25T00:00", "end": "2026-12-26T00:00", "reason": "Holiday"}]],
    )
    timezone: str | None = None


@router.get("/staff", response_model=list[StaffOut])
async def list_staff(scheduler: SchedulerDep, business: BusinessQ = None) -> list[StaffOut]:
    business_id = await scheduler.resolve_business(business)
    return [StaffOut.of(row) for row in await scheduler.staff(business_id)]


@router.put("/staff/{staff_id}/availability", response_model=StaffOut)
async def set_availability(
    staff_id: str, body: AvailabilityIn, scheduler: SchedulerDep, business: BusinessQ = None
) -> StaffOut:
    business_id = await scheduler.resolve_business(business)

    def find(s: Session) -> Staff:
        row = s.exec(
            select(Staff).where(Staff.business_id == business_id, Staff.id == staff_id)
        ).first()
        if row is None:
            raise errors.NotFound(f"no staff member {staff_id!r}")
        return row

    # Validated (recurring rules compiled) in a worker thread before the write transaction, so
    # neither the event loop nor the database's write lock waits on it.
    current = await in_session(scheduler.engine, find)
    values = await asyncio.to_thread(_validated, current, body)

    def write(s: Session) -> Staff:
        row = find(s)
        keys = ("weekly_hours", "overrides", "time_off")
        for key in keys + (("timezone",) if body.timezone is not None else ()):
            setattr(row, key, values[key])
        s.add(row)
        return row

    return StaffOut.of(await in_session(scheduler.engine, write, write=True))


def _validated(row: Staff, body: AvailabilityIn) -> dict[str, Any]:
    """The stored form of the new rules, or a 422 naming the field (`time_off[0].rrule`).

    Only the fields the body replaces are validated: the staff member's linked calendars were
    checked when they were imported (a file source against its business file's folder, which
    is not known here) and are left as they are.
    """
    try:
        entry = StaffEntry.model_validate(
            {
                "id": row.id,
                "name": row.name,
                "timezone": body.timezone if body.timezone is not None else row.timezone,
                "weekly_hours": body.weekly_hours,
                "overrides": body.overrides,
                "time_off": body.time_off,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        where = where.removeprefix(".")
        reason = str(first["msg"]).removeprefix("Value error, ")
        raise HTTPException(422, f"{where}: {reason}") from None
    return staff_values(entry)
