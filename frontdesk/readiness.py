"""Whether this server should get traffic (`/readyz`): the database answers, its schema is at
the newest migration, and the server is not shutting down.

`/healthz` says the process is alive; this says a load balancer may send it calls. The database
is asked off the event loop with a short timeout; the migration check is cached for a few
seconds, so a probe every second costs one `SELECT 1` and, now and then, one small query.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import lru_cache

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Engine

from booking.db import MIGRATIONS


@lru_cache(maxsize=1)
def migration_heads() -> frozenset[str]:
    """The newest revision(s) of the schema this code expects (read once per process)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return frozenset(ScriptDirectory.from_config(cfg).get_heads())


class Readiness:
    """The `/readyz` answer: None when ready, otherwise why not."""

    def __init__(
        self,
        engine: Engine,
        *,
        timeout: float = 2.0,
        cache_seconds: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.draining = False  # set when shutdown begins: stop sending new calls here
        self._monotonic = monotonic
        self._heads = migration_heads()
        self._schema_checked_at: float | None = None

    async def problem(self) -> str | None:
        if self.draining:
            return "shutting down"
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.to_thread(self._database_problem)
        except TimeoutError:
            return f"the database did not answer within {self.timeout:g} s"

    def _database_problem(self) -> str | None:
        now = self._monotonic()
        check_schema = (
            self._schema_checked_at is None or now - self._schema_checked_at >= self.cache_seconds
        )
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                current = (
                    frozenset(MigrationContext.configure(conn).get_current_heads())
                    if check_schema
                    else self._heads
                )
        except Exception as exc:
            return f"the database is unreachable ({type(exc).__name__})"
        if current != self._heads:
            self._schema_checked_at = None
            found = ", ".join(sorted(current)) or "none"
            return (
                f"the database schema is at revision {found}, not {', '.join(sorted(self._heads))}"
                ": run `frontdesk migrate`"
            )
        if check_schema:
            self._schema_checked_at = now
        return None
