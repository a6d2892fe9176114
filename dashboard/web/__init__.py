"""The dashboard's web UI: server-rendered pages for owners and staff.

`router` holds every page; `install(app)` mounts the static files and the handlers that answer
page errors with HTML (the JSON API keeps its JSON errors).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from dashboard.web import (
    appointments,
    business,
    home,
    integrations,
    lead_api,
    leads,
    login,
    privacy,
    reminders,
    staff,
    staff_calendars,
    tryit,
    waitlist,
)
from dashboard.web.auth import LoginRequired, PageError, login_url
from dashboard.web.render import STATIC, render

router = APIRouter()
router.include_router(login.router)
router.include_router(home.router)
router.include_router(leads.router)
router.include_router(lead_api.router)
router.include_router(appointments.router)
router.include_router(staff.router)
router.include_router(staff_calendars.router)
router.include_router(business.router)
router.include_router(reminders.router)
router.include_router(waitlist.router)
router.include_router(integrations.router)
router.include_router(integrations.api_router)
router.include_router(tryit.router)
router.include_router(privacy.router)


def install(app: FastAPI) -> None:
    """Static files and HTML error pages; call once, after `http_errors.install`."""
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if request.headers.get("HX-Request"):
            # htmx swaps responses in place; ask it to load the log-in page instead.
            return Response(status_code=401, headers={"HX-Redirect": login_url(exc.next_url)})
        return RedirectResponse(login_url(exc.next_url), status_code=303)

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> Response:
        return render(request, "error.html", status_code=exc.status_code, message=exc.detail)
