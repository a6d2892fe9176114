"""`/readyz`: ready only while the database answers, its schema is at the newest migration and
the server is not shutting down; `/healthz` only says the process is alive."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import Engine

from booking.db import make_engine, migrate
from booking.scheduler import Scheduler
from frontdesk.app import create_app
from frontdesk.readiness import Readiness, migration_heads
from frontdesk.settings import Settings


def app_over(engine: Engine) -> FastAPI:
    return create_app(Settings(api_key=SecretStr("k")), scheduler=Scheduler(engine=engine))


async def get(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await client.get(path)


@pytest.fixture
def fresh(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")


async def test_a_migrated_database_is_ready(engine: Engine) -> None:
    answer = await get(app_over(engine), "/readyz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ready"})


async def test_a_database_without_the_schema_is_not_ready(fresh: Engine) -> None:
    app = app_over(fresh)
    answer = await get(app, "/readyz")
    assert answer.status_code == 503
    assert answer.json()["status"] == "unavailable"
    assert "frontdesk migrate" in answer.json()["reason"]
    assert (await get(app, "/healthz")).status_code == 200  # alive all the same


async def test_a_database_at_an_older_revision_is_not_ready(fresh: Engine) -> None:
    migrate(fresh)
    [head] = migration_heads()
    with fresh.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    answer = await get(app_over(fresh), "/readyz")
    assert answer.status_code == 503
    reason = answer.json()["reason"]
    assert "revision older" in reason and head in reason


async def test_readiness_follows_the_schema_once_the_cache_expires(fresh: Engine) -> None:
    now = [0.0]
    readiness = Readiness(fresh, cache_seconds=5, monotonic=lambda: now[0])
    assert await readiness.problem() is not None
    migrate(fresh)
    assert await readiness.problem() is None  # a failed check is never cached
    with fresh.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    now[0] = 4.0
    assert await readiness.problem() is None  # the good answer is kept a few seconds
    now[0] = 5.0
    assert "revision older" in (await readiness.problem() or "")


async def test_an_unreachable_database_is_not_ready(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    problem = await Readiness(engine).problem()
    assert problem is not None and "unreachable" in problem


async def test_a_database_that_hangs_is_not_ready_after_the_timeout(engine: Engine) -> None:
    readiness = Readiness(engine, timeout=0.2)
    release = threading.Event()
    real = readiness._database_problem

    def hangs() -> str | None:
        release.wait(5)
        return real()

    readiness._database_problem = hangs  # type: ignore[method-assign]
    try:
        problem = await asyncio.wait_for(readiness.problem(), 2)
    finally:
        release.set()
    assert problem == "the database did not answer within 0.2 s"


async def test_a_server_shutting_down_is_not_ready(engine: Engine) -> None:
    app = app_over(engine)
    seen: dict[str, int] = {}
    async with app.router.lifespan_context(app):
        seen["serving"] = (await get(app, "/readyz")).status_code
        readiness: Readiness = app.state.readiness
    assert readiness.draining
    answer = await get(app, "/readyz")
    assert seen == {"serving": 200}
    assert (answer.status_code, answer.json()["reason"]) == (503, "shutting down")
