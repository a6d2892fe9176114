"""Engines, sessions, migrations and the per-staff write lock that makes booking race-proof.

SQLite: every write transaction starts with BEGIN IMMEDIATE, so writers (also in other processes)
queue on the database lock and each re-check sees the previous writer's row. Within one process the
writers queue before that, on one writer thread (async callers) and a per-database lock (threads):
SQLite admits one writer at a time anyway, and a writer waiting in SQLite's busy handler sleeps
and retries, holding a worker thread that reads (a new turn's business facts) need. PostgreSQL: a
transaction-scoped advisory lock per staff member serialises the check-then-insert, and an
exclusion constraint over the appointment's block range is the final guard.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
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
        # Straight to the driver: this runs for every transaction, and SQLAlchemy's statement
        # path (events, compiled cache, result) costs more than SQLite's BEGIN itself.
        write = conn.get_execution_options().get("frontdesk_write")
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")

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


WRITER_WAIT_SECONDS = 30.0  # as long as SQLite's own busy timeout


@dataclass
class _Writers:
    """One SQLite database's writers in this process: a lock every write transaction holds, and
    the single thread that async callers' write transactions run on."""

    pid: int = field(default_factory=os.getpid)
    lock: threading.RLock = field(default_factory=threading.RLock)
    thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
    )


_writers: weakref.WeakKeyDictionary[Any, _Writers] = weakref.WeakKeyDictionary()
_writers_guard = threading.Lock()


def _sqlite_writers(engine: Engine) -> _Writers | None:
    if engine.dialect.name != "sqlite":
        return None
    pool = engine.pool  # shared by the engine and its execution_options() copies
    with _writers_guard:
        writers = _writers.get(pool)
        if writers is None or writers.pid != os.getpid():  # none yet, or inherited by a fork
            writers = _writers[pool] = _Writers()
        return writers


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error.

    `write=True` marks a transaction that will write: on SQLite it queues for the write lock first
    (this process's writers in turn, then SQLite's lock across processes).
    """
    writers = _sqlite_writers(engine) if write else None
    if writers is not None and not writers.lock.acquire(timeout=WRITER_WAIT_SECONDS):
        raise TimeoutError(f"no turn to write to the database in {WRITER_WAIT_SECONDS:.0f} s")
    try:
        bind = engine.execution_options(frontdesk_write=True) if write else engine
        with Session(bind, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
    finally:
        if writers is not None:
            writers.lock.release()


T = TypeVar("T")


async def in_session(engine: Engine, fn: Callable[[Session], T], *, write: bool = False) -> T:
    """Run `fn` in one transaction (see `session_scope`) in a worker thread, so the event loop
    never waits on the database. SQLite writes run on the database's one writer thread, so
    writers waiting their turn hold no thread that readers need."""

    def run() -> T:
        with session_scope(engine, write=write) as session:
            return fn(session)

    writers = _sqlite_writers(engine) if write else None
    if writers is None:
        return await asyncio.to_thread(run)
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(writers.thread, context.run, run)


def lock_staff(
    session: Session,
    business_id: str,
    staff_id: str,
    *,
    check: Callable[[], None] | None = None,
) -> None:
    """Serialise writers for one staff member until this transaction ends.

    With `check` (which raises when the caller has lost, e.g. their time is taken), a writer who
    finds the lock held on PostgreSQL first waits only for the writer holding it, and runs
    `check` once that one has committed: everyone who raced for the same time is refused at
    once and together, instead of queueing one by one for a lock they would only use to learn
    that. The caller checks again under the lock either way; that check is the guarantee."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        # SQLite: BEGIN IMMEDIATE already holds the database write lock; make sure it is taken.
        session.execute(sa.text("SELECT 1"))
        return
    digest = hashlib.blake2b(f"{business_id}\x00{staff_id}".encode(), digest_size=8).digest()
    key = {"k": int.from_bytes(digest, "big", signed=True)}
    if check is not None:
        if session.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), key).scalar_one():
            return
        # A shared lock is granted as soon as the holder commits, to all who wait at once. Taken
        # and let go in one statement: held on, two of them asking for the exclusive lock next
        # would deadlock; and a wait cancelled midway leaves nothing held on the connection.
        session.execute(
            sa.text("SELECT pg_advisory_lock_shared(:k), pg_advisory_unlock_shared(:k)"), key
        )
        check()  # each statement sees what the holder committed (READ COMMITTED)
    session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), key)
