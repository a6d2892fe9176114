"""Privacy for owners: find a contact, download everything about them as JSON, or erase them
(after a confirmation step). Both are recorded in the audit log."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session

from booking import errors
from dashboard import privacy
from dashboard.models import audit
from dashboard.web import db
from dashboard.web.auth import OwnerUser, PageError, WebUser, verify_csrf
from dashboard.web.render import add_nav, render

router = APIRouter(include_in_schema=False)
add_nav("Privacy", "/privacy")

CONFIRM_WORD = "DELETE"


def _records(s: Session, user: WebUser, contact_id: str) -> privacy.ContactRecords:
    try:
        return privacy.records(s, user.business_id, contact_id)
    except errors.NotFound:
        raise PageError(404, "There is no such contact.") from None


async def _tz(request: Request, user: WebUser) -> str:
    return (await db.scheduler(request).business(user.business_id)).timezone


@router.get("/privacy")
async def privacy_page(
    request: Request, user: OwnerUser, q: str = "", erased: str | None = None
) -> Response:
    contacts = await db.run(request, lambda s: privacy.find_contacts(s, user.business_id, q))
    return render(request, "privacy.html", contacts=contacts, q=q, erased=erased)


@router.get("/privacy/contacts/{contact_id}")
async def contact_page(request: Request, contact_id: str, user: OwnerUser) -> Response:
    found = await db.run(request, lambda s: _records(s, user, contact_id))
    return render(request, "privacy_contact.html", found=found, tz=await _tz(request, user))


@router.get("/privacy/contacts/{contact_id}/export.json")
async def export_contact(request: Request, contact_id: str, user: OwnerUser) -> Response:
    at = db.now(request)

    def read(s: Session) -> privacy.ContactRecords:
        found = _records(s, user, contact_id)
        # Who took a copy of someone's data is worth knowing later, like who erased it.
        audit(
            s,
            business_id=user.business_id,
            actor=user.email,
            user_id=user.id,
            action="contact.export",
            subject=found.contact.id,
            at=at,
        )
        return found

    found = await db.run(request, read, write=True)
    document = privacy.export(found, at=at)
    return Response(
        json.dumps(document, indent=2, ensure_ascii=False),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="contact-{contact_id}.json"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/privacy/contacts/{contact_id}/delete")
async def confirm_delete(request: Request, contact_id: str, user: OwnerUser) -> Response:
    found = await db.run(request, lambda s: _records(s, user, contact_id))
    return render(
        request,
        "privacy_delete.html",
        found=found,
        word=CONFIRM_WORD,
        error=None,
        tz=await _tz(request, user),
    )


@router.post("/privacy/contacts/{contact_id}/delete", dependencies=[Depends(verify_csrf)])
async def delete_contact(
    request: Request, contact_id: str, user: OwnerUser, confirm: Annotated[str, Form()] = ""
) -> Response:
    if confirm.strip() != CONFIRM_WORD:
        found = await db.run(request, lambda s: _records(s, user, contact_id))
        return render(
            request,
            "privacy_delete.html",
            status_code=422,
            found=found,
            word=CONFIRM_WORD,
            tz=await _tz(request, user),
            error=f"Type {CONFIRM_WORD} to confirm.",
        )
    at = db.now(request)

    def write(s: Session) -> privacy.Erasure:
        _records(s, user, contact_id)  # a 404 page for another business's contact
        return privacy.erase(
            s,
            business_id=user.business_id,
            contact_id=contact_id,
            actor=user.email,
            user_id=user.id,
            at=at,
        )

    await db.run(request, write, write=True)
    return RedirectResponse("/privacy?erased=1", status_code=303)
