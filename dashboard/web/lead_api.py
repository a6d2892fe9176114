"""The lead status workflow through the JSON API (`/api/v1`, Bearer key), beside dashboard.api."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from booking import errors
from booking.models import Lead
from dashboard.api import ERRORS, LeadOut, require_api_key
from dashboard.models import LeadStatus, LeadStatusChange
from dashboard.web import db
from dashboard.web.auth import PageError
from dashboard.web.leads import NOTE_MAX, LeadStatusError, change_status, load_lead

router = APIRouter(
    prefix="/api/v1", dependencies=[Depends(require_api_key)], tags=["leads"], responses=ERRORS
)
BusinessQ = Annotated[str | None, Query(description="business id; optional while there is one")]


class StatusIn(BaseModel):
    status: LeadStatus
    note: str | None = Field(default=None, max_length=NOTE_MAX)


class StatusStepOut(BaseModel):
    from_status: str
    to_status: str
    note: str | None
    actor: str
    at: datetime


class LeadDetailOut(LeadOut):
    call_id: str | None
    history: list[StatusStepOut]


def _detail(s: Session, business_id: str, lead_id: str) -> LeadDetailOut:
    try:
        lead: Lead = load_lead(s, business_id, lead_id)
    except PageError:
        raise errors.NotFound(f"no lead {lead_id}") from None
    steps = s.exec(
        select(LeadStatusChange)
        .where(LeadStatusChange.lead_id == lead.id)
        .order_by(col(LeadStatusChange.at), col(LeadStatusChange.id))
    )
    return LeadDetailOut(
        **LeadOut.of(lead).model_dump(),
        call_id=lead.call_id,
        history=[
            StatusStepOut(
                from_status=r.from_status,
                to_status=r.to_status,
                note=r.note,
                actor=r.actor,
                at=r.at,
            )
            for r in steps
        ],
    )


@router.get("/leads/{lead_id}", response_model=LeadDetailOut)
async def get_lead(request: Request, lead_id: str, business: BusinessQ = None) -> LeadDetailOut:
    bid = await db.scheduler(request).resolve_business(business)
    return await db.run(request, lambda s: _detail(s, bid, lead_id))


@router.post("/leads/{lead_id}/status", response_model=LeadDetailOut)
async def set_lead_status(
    request: Request, lead_id: str, body: StatusIn, business: BusinessQ = None
) -> LeadDetailOut:
    """Move a lead along (new, contacted, won, lost) with an optional note, kept in history."""
    bid = await db.scheduler(request).resolve_business(business)
    at = db.now(request)

    def write(s: Session) -> LeadDetailOut:
        try:
            change_status(
                s,
                business_id=bid,
                lead_id=lead_id,
                status=body.status.value,
                note=body.note,
                actor="api",
                user_id=None,
                at=at,
            )
        except PageError:
            raise errors.NotFound(f"no lead {lead_id}") from None
        except LeadStatusError as exc:
            raise errors.InvalidRequest(str(exc)) from None
        return _detail(s, bid, lead_id)

    return await db.run(request, write, write=True)
