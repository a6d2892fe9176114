"""Builds the running product from settings: engine, migrations, scheduler, web app."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from booking.busy import CalendarBusy
from booking.clock import Clock, SystemClock
from booking.db import make_engine, migrate
from booking.scheduler import Scheduler
from calendars.registry import CalendarRegistry
from dashboard import api, http_errors
from frontdesk.settings import Settings
from telephony import voice

log = logging.getLogger(__name__)


def build_scheduler(
    settings: Settings,
    *,
    engine: Engine | None = None,
    calendars: CalendarBusy | None = None,
    clock: Clock | None = None,
) -> Scheduler:
    """The scheduler over a migrated database; every entry point (web, CLI) builds it here."""
    engine = engine or make_engine(settings.database_url)
    migrate(engine)
    return Scheduler(
        engine=engine,
        calendars=calendars or CalendarRegistry(),
        clock=clock or SystemClock(),
        hold_minutes=settings.hold_minutes,
        calendar_timeout=settings.calendar_timeout_seconds,
    )


def create_app(settings: Settings, *, scheduler: Scheduler | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "scheduler", None) is None:
            app.state.scheduler = build_scheduler(settings)
        yield
        app.state.scheduler.engine.dispose()

    app = FastAPI(title="Frontdesk", version="0.1.0", lifespan=lifespan)
    app.state.scheduler = scheduler
    app.state.settings = settings
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if not key:
        key = secrets.token_urlsafe(24)
        log.warning("FRONTDESK_API_KEY is not set; generated a key for this run only")
    app.state.api_key = key
    http_errors.install(app)
    app.include_router(api.router)
    app.include_router(voice.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
