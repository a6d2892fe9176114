"""Engines, sessions, migrations and the per-staff write lock that makes booking race-proof.

SQLite: every write transaction starts with BEGIN IMMEDIATE, so writers (also in other processes)
queue on the database lock and each re-check sees the previous writer's row. PostgreSQL: a
transaction-scoped advisory lock per staff member serialises the check-then-insert, and an
exclusion constraint over the appointment's block range is the final guard.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, **kw: Any) -> Engine:
    """An engine for `url`, with SQLite set up for multi-process writers."""
    url = _normalise(url)
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True, **kw)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kw)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so BEGIN IMMEDIATE below is ours to issue.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if ":memory:" not in url and "mode=memory" not in url:
            cur.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL is still consistent and durable across a crash or kill -9 of
            # the process (only a power cut may lose the newest commits); FULL would fsync every
            # commit, and a call saves at every turn.
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that read first would
        # fail with SQLITE_BUSY_SNAPSHOT under WAL instead of waiting its turn.
        mode = "IMMEDIATE" if conn.get_execution_options().get("frontdesk_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _normalise(url: str) -> str:
    # Accept plain postgresql:// URLs and use psycopg 3, the driver we install.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration not yet applied (safe to run on every start)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.execution_options(frontdesk_write=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes starting at once must not both create the schema.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7424119)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error.

    `write=True` marks a transaction that will write: on SQLite it queues for the write lock first.
    """
    bind = engine.execution_options(frontdesk_write=True) if write else engine
    with Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


T = TypeVar("T")


async def in_session(engine: Engine, fn: Callable[[Session], T], *, write: bool = False) -> T:
    """Run `fn` in one transaction (see `session_scope`) in a worker thread, so the event loop
    never waits on the database."""

    def run() -> T:
        with session_scope(engine, write=write) as session:
            return fn(session)

    return await asyncio.to_thread(run)


def lock_staff(session: Session, business_id: str, staff_id: str) -> None:
    """Serialise writers for one staff member until this transaction ends."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        # SQLite: BEGIN IMMEDIATE already holds the database write lock; make sure it is taken.
        session.execute(sa.text("SELECT 1"))
        return
    digest = hashlib.blake2b(f"{business_id}\x00{staff_id}".encode(), digest_size=8).digest()
    key = int.from_bytes(digest, "big", signed=True)
    session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
