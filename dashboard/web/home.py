"""The landing page: owners go to their leads, staff to their own schedule."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

from dashboard.web.auth import CurrentUser

router = APIRouter(include_in_schema=False)


@router.get("/")
async def home(user: CurrentUser) -> RedirectResponse:
    if user.is_owner:
        return RedirectResponse("/leads", status_code=303)
    return RedirectResponse(f"/staff/{user.staff_id}", status_code=303)
