"""Builds the web app from settings; the scheduler and calendar service come from `wiring`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request

from booking.scheduler import Scheduler
from calendars import web as calendar_web
from dashboard import api, http_errors, staff_api, web, webhooks
from dashboard.web import auth as web_auth
from frontdesk import web_security
from frontdesk.settings import Settings
from frontdesk.wiring import build_scheduler, calendar_service
from telephony import voice

log = logging.getLogger(__name__)

__all__ = ["build_scheduler", "calendar_service", "create_app"]


async def _authorize_linking(request: Request, staff_id: str) -> str:
    """Dashboard users link their own calendars (owners anyone's); scripts use the API key."""
    user = await web_auth.optional_user(request)
    if user is not None:
        if not user.may_see_staff(staff_id):
            raise HTTPException(403, "you may only link your own calendars")
        return user.business_id
    try:
        api.require_api_key(
            request, request.headers.get("authorization"), request.headers.get("x-api-key")
        )
    except HTTPException:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise web_auth.LoginRequired(path) from None
    scheduler: Scheduler = request.app.state.scheduler
    return await scheduler.resolve_business(request.query_params.get("business"))


async def _verify_linking_form(request: Request) -> None:
    if await web_auth.optional_user(request) is not None:
        await web_auth.verify_csrf(request)
    # Otherwise the API key is checked by `_authorize_linking`: no cookie, no CSRF.


def create_app(settings: Settings, *, scheduler: Scheduler | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "scheduler", None) is None:
            app.state.scheduler = build_scheduler(settings)
        service = calendar_service(app.state.scheduler)
        app.state.calendar_service = service
        job = None
        if service is not None and settings.calendar_sync_seconds:
            job = asyncio.create_task(
                service.run_forever(
                    settings.calendar_sync_seconds, poll=settings.calendar_poll_seconds
                )
            )
        webhooks.start_dispatcher(app)
        yield
        await webhooks.stop_dispatcher(app)
        if job is not None:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
        if service is not None:
            await service.close()
        app.state.scheduler.engine.dispose()

    # The docs pages are added by web_security, each with the policy its CDN scripts need.
    app = web_security.SecureFastAPI(
        title="Frontdesk",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        allowed_hosts=settings.hosts_answered(),
        trusted_proxies=settings.trusted_proxies,
    )
    web_security.add_docs(app)
    app.state.scheduler = scheduler
    app.state.settings = settings
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if not key:
        key = secrets.token_urlsafe(24)
        log.warning("FRONTDESK_API_KEY is not set; generated a key for this run only")
    app.state.api_key = key
    http_errors.install(app)
    app.include_router(api.router)
    app.include_router(staff_api.router)
    app.include_router(voice.router)
    app.include_router(web.router)
    app.include_router(calendar_web.router)
    app.state.calendar_guard = calendar_web.CalendarGuard(
        authorize=_authorize_linking, verify_form=_verify_linking_form
    )
    web.install(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
