"""The app's lifespan closes everything it started, even when one close raises or start-up fails
half-way: the calendar service, its sync job, the webhook dispatcher and the database engine."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from booking.scheduler import Scheduler
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from frontdesk import app as web_app
from frontdesk.app import build_switchboard, create_app
from frontdesk.settings import Settings


class Closed:
    """What the lifespan closed (the engine's `dispose` and the service's `close` recorded)."""

    def __init__(self, app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine = False
        self.service = False
        self.job_cancelled = False
        scheduler: Scheduler = app.state.scheduler
        service = scheduler.calendars
        assert isinstance(service, CalendarService)
        dispose, close = scheduler.engine.dispose, service.close

        def disposed() -> None:
            self.engine = True
            dispose()

        async def closed() -> None:
            self.service = True
            await close()

        async def run_forever(every: float, *, poll: float | None = None) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.job_cancelled = True
                raise

        monkeypatch.setattr(scheduler.engine, "dispose", disposed)
        monkeypatch.setattr(service, "close", closed)
        monkeypatch.setattr(service, "run_forever", run_forever)


def _app(engine: Engine) -> FastAPI:
    service = CalendarService(engine=engine, vault=Vault(new_key()), providers={})
    settings = Settings(api_key=SecretStr("k"), calendar_sync_seconds=600)
    return create_app(settings, scheduler=Scheduler(engine=engine, calendars=service))


async def test_a_switchboard_that_fails_to_close_does_not_keep_the_rest_open(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(engine)
    switchboard = build_switchboard(app.state.settings, app.state.scheduler)
    app.state.switchboard = switchboard
    real_close = switchboard.aclose

    async def broken() -> None:
        await real_close()
        raise RuntimeError("the switchboard failed to close")

    monkeypatch.setattr(switchboard, "aclose", broken)
    closed = Closed(app, monkeypatch)
    with pytest.raises(RuntimeError, match="failed to close"):
        async with app.router.lifespan_context(app):
            await asyncio.sleep(0)  # the sync job starts
            assert not app.state.readiness.draining
    assert closed.job_cancelled and closed.service and closed.engine
    assert app.state.readiness.draining
    assert app.state.webhook_dispatcher is None  # stopped


async def test_a_start_up_that_fails_after_the_job_started_closes_what_it_built(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(engine)

    async def no_warm_up(llm: Any) -> None:
        await asyncio.sleep(0)  # the sync job starts
        raise RuntimeError("the LLM client could not be made")

    monkeypatch.setattr(web_app, "warm_up", no_warm_up)
    closed = Closed(app, monkeypatch)
    with pytest.raises(RuntimeError, match="could not be made"):
        async with app.router.lifespan_context(app):
            pytest.fail("served although start-up failed")
    assert closed.job_cancelled and closed.service and closed.engine
    assert app.state.webhook_dispatcher is None  # stopped
