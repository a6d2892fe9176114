"""Shared fixtures: databases (SQLite always, PostgreSQL when FRONTDESK_TEST_DATABASE_URL is set),
a seeded demo-like business and a scheduler with a fixed clock."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from booking.clock import FixedClock
from booking.db import make_engine, migrate, session_scope
from booking.models import Business, Service, Staff
from booking.scheduler import Scheduler

# The suite runs the same whatever the developer's shell or `.env` holds: no FRONTDESK_ setting
# leaks in (only the test switches below), and no dotenv file is read, in this process or in the
# servers and CLIs the tests start (they inherit this environment).
_TEST_SWITCHES = {
    "FRONTDESK_TEST_DATABASE_URL",
    "FRONTDESK_REQUIRE_POSTGRES",
    "FRONTDESK_REQUIRE_BROWSER",
}
for _name in [n for n in os.environ if n.startswith("FRONTDESK_") and n not in _TEST_SWITCHES]:
    del os.environ[_name]
os.environ["FRONTDESK_ENV_FILE"] = ""

PG_URL = os.environ.get("FRONTDESK_TEST_DATABASE_URL")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # Monday 07:00 in New York


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    if not PG_URL:
        if os.environ.get("FRONTDESK_REQUIRE_POSTGRES"):
            pytest.fail("FRONTDESK_REQUIRE_POSTGRES is set but FRONTDESK_TEST_DATABASE_URL is not")
        pytest.skip("FRONTDESK_TEST_DATABASE_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS btree_gist SCHEMA public")
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield _pg_schema_url(PG_URL, schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'frontdesk.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    # PostgreSQL without a pool: a worker thread of a test's background task that finishes
    # after the test closes its connection at once, instead of leaving it open in a disposed
    # pool for the garbage collector to complain about during some later test.
    options = {"poolclass": NullPool} if db_url.startswith("postgresql") else {}
    eng = make_engine(db_url, **options)
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    eng = make_engine(f"sqlite:///{tmp_path / 'frontdesk.db'}")
    migrate(eng)
    yield eng
    eng.dispose()


def seed_clinic(engine: Engine) -> None:
    """A small clinic: Lee (New York, lunch break), Rivera (Chicago); cleaning and checkup."""
    with session_scope(engine, write=True) as s:
        s.add(
            Business(
                id="clinic",
                name="Clinic",
                timezone="America/New_York",
                phone_numbers=["+12025550100"],
                transfer_number="+12025550199",
            )
        )
        s.flush()
        s.add(
            Service(
                business_id="clinic",
                id="cleaning",
                name="Teeth cleaning",
                duration_minutes=45,
                buffer_after_minutes=15,
                min_notice_minutes=120,
                max_days_ahead=60,
                slot_step_minutes=15,
                staff_ids=["lee", "rivera"],
            )
        )
        s.add(
            Service(
                business_id="clinic",
                id="checkup",
                name="Checkup",
                duration_minutes=30,
                slot_step_minutes=30,
                staff_ids=["lee"],
                position=1,
            )
        )
        week = {d: ["09:00-12:00", "13:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}
        s.add(
            Staff(
                business_id="clinic",
                id="lee",
                name="Dr. Lee",
                weekly_hours=week,
                overrides=[{"date": "2026-12-24", "hours": []}],
            )
        )
        s.add(
            Staff(
                business_id="clinic",
                id="rivera",
                name="Sam Rivera",
                timezone="America/Chicago",
                weekly_hours={"mon": ["08:00-12:00"]},
                position=1,
            )
        )


@pytest.fixture
def clinic(engine: Engine) -> Engine:
    seed_clinic(engine)
    return engine


@pytest.fixture
def scheduler(clinic: Engine) -> Scheduler:
    return Scheduler(engine=clinic, clock=FixedClock(NOW))


def count_rows(engine: Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())
