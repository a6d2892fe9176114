"""Keeping linked calendars fresh over time: the background job (`run_forever`: due refreshes,
channel renewals, write-back retries, expired OAuth flows) and the explicit sync (`sync_now`:
the CLI's `calendars sync`, the dashboard's "Sync now"), which refreshes at once, however
recent the last refresh, and reports what changed.

Connections without push notifications (CalDAV, ICS, or one whose channel is missing) are
polled every `poll`: cheap while nothing changed (CalDAV compares the collection's sync-token /
ctag first, ICS feeds answer a conditional GET).

Every worker may run the job over one database (`booking.claims`): a due connection is claimed
per row before it is refreshed, so workers split the due connections and each is refreshed
once; channel renewals, write-back retries and the OAuth clean-up run under a singleton lease
(`UPKEEP_LEASE`) that its holder renews every pass and a dead holder lets lapse.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel import Session, col, select

from booking import claims, errors
from calendars import cache_store
from calendars.busy_cache import BusyCache
from calendars.channels import Channels
from calendars.models import CalendarChannel, CalendarConnection, OAuthFlow
from calendars.runtime import CalendarRuntime
from calendars.write_back import WriteBack

log = logging.getLogger(__name__)

T = TypeVar("T")
CONNECTIONS: sa.Table = CalendarConnection.__table__  # type: ignore[attr-defined]
UPKEEP_LEASE = "calendars.upkeep"


@dataclass(frozen=True)
class SyncReport:
    """What an explicit sync did to one connection's busy cache."""

    connection_id: str
    business_id: str
    staff_id: str
    name: str
    provider: str
    added: int = 0  # busy intervals now cached that were not before
    removed: int = 0  # busy intervals cached before that are gone
    busy: int = 0  # busy intervals cached now
    error: str | None = None

    @property
    def outcome(self) -> str:
        """In words: "unchanged", "2 busy intervals added, 1 removed", or "failed: ..."."""
        if self.error is not None:
            return f"failed: {self.error}"
        if not self.added and not self.removed:
            return "unchanged"
        parts = []
        if self.added:
            parts.append(f"{self.added} busy interval{'s' * (self.added != 1)} added")
        if self.removed:
            noun = "" if parts else f" busy interval{'s' * (self.removed != 1)}"
            parts.append(f"{self.removed}{noun} removed")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.connection_id,
            "business": self.business_id,
            "staff": self.staff_id,
            "name": self.name,
            "provider": self.provider,
            "added": self.added,
            "removed": self.removed,
            "busy": self.busy,
            "error": self.error,
            "outcome": self.outcome,
        }


class CalendarJobs:
    """The background job's passes and the explicit sync.

    Connections are refreshed `concurrency` at a time, so one server that hangs until its time
    limit does not delay the others."""

    concurrency = 8

    def __init__(
        self,
        runtime: CalendarRuntime,
        cache: BusyCache,
        channels: Channels,
        write_back: WriteBack,
    ) -> None:
        self.runtime = runtime
        self.cache = cache
        self.channels = channels
        self.write_back = write_back
        self.owner = claims.new_token()  # this worker, as the holder of leases
        # How long a claimed refresh may take before another worker may take it over, and how
        # long the upkeep lease lasts without renewal (the job runner sets it from its period).
        self.claim_for = timedelta(minutes=5)
        self.upkeep_ttl = timedelta(minutes=15)

    async def sync_now(
        self,
        *,
        business_id: str | None = None,
        staff_id: str | None = None,
        connection_id: str | None = None,
    ) -> list[SyncReport]:
        """Refresh every connection (of a business, a staff member, or the one given) now,
        however recently it was refreshed, and say what that changed in each busy cache.

        A connection that fails is reported with its error; the others go on."""

        def load(s: Session) -> list[CalendarConnection]:
            query = select(CalendarConnection).where(CalendarConnection.status != "disconnected")
            if business_id is not None:
                query = query.where(CalendarConnection.business_id == business_id)
            if staff_id is not None:
                query = query.where(CalendarConnection.staff_id == staff_id)
            if connection_id is not None:
                query = query.where(CalendarConnection.id == connection_id)
            return list(s.exec(query.order_by(col(CalendarConnection.created_at))))

        db = self.runtime.db
        conns = await db(load)
        if connection_id is not None and not conns:
            raise errors.NotFound(f"no calendar connection {connection_id}")

        async def one(conn: CalendarConnection) -> SyncReport:
            before = await db(partial(cache_store.busy_rows, connection_id=conn.id))
            error = None
            try:
                await self.cache.refresh(conn.id)
            except errors.CalendarUnavailable as exc:
                error = str(exc) or type(exc).__name__
            except Exception:  # one broken connection must not stop the others
                log.exception("sync of %s failed", conn.id)
                error = "unexpected error (see the server log)"
            after = await db(partial(cache_store.busy_rows, connection_id=conn.id))
            return SyncReport(
                connection_id=conn.id,
                business_id=conn.business_id,
                staff_id=conn.staff_id,
                name=conn.name,
                provider=conn.provider,
                added=sum((after - before).values()),
                removed=sum((before - after).values()),
                busy=sum(after.values()),
                error=error,
            )

        return await self._each(conns, one)

    async def tick(self, *, poll: timedelta | None = None) -> None:
        """One pass of the background job: refresh due caches, renew channels, retry writes.

        `poll` is how old the cache of a connection without push notifications may grow
        (CalDAV, ICS, or one whose channel is missing); None: as old as the others."""
        now = self.runtime.now()
        await self.refresh_due(poll=poll)
        if not await self.runtime.db(
            lambda s: claims.hold_lease(
                s, UPKEEP_LEASE, owner=self.owner, now=now, ttl=self.upkeep_ttl
            ),
            write=True,
        ):
            return  # another worker does the upkeep
        await self.upkeep()
        await self.runtime.db(
            lambda s: s.execute(sa.delete(OAuthFlow).where(col(OAuthFlow.expires_at) < now)),
            write=True,
        )

    async def refresh_due(self, *, poll: timedelta | None = None) -> int:
        """Refresh the connections that are due: changed (a notification came), or read longer
        ago than `max_age / 3`, or than `poll` for connections without push. Cheap when
        nothing changed: CalDAV compares the collection's sync-token / ctag first, Google and
        Graph ask for changes since their cursor. Returns how many were refreshed."""
        tried: set[str] = set()

        async def one(conn_id: str, token: str) -> None:
            try:
                await self.cache.refresh(conn_id)
            except errors.CalendarUnavailable as exc:
                log.info("scheduled sync of %s failed: %s", conn_id, exc)
            except Exception:  # one broken connection must not stop the others
                log.exception("scheduled sync of %s failed", conn_id)
            finally:
                await self.runtime.db(
                    lambda s: claims.release_rows(s, CONNECTIONS, [conn_id], token=token),
                    write=True,
                )

        refreshed = 0
        while True:
            now = self.runtime.now()
            token, ids, others = await self.runtime.db(
                partial(self._claim_due, now=now, poll=poll, skip=frozenset(tried)), write=True
            )
            if not ids:
                if not others:
                    return refreshed
                # Due rows that another worker is claiming this instant: look again shortly.
                await asyncio.sleep(0.05)
                continue
            tried.update(ids)
            refreshed += len(ids)
            await asyncio.gather(*(one(i, token) for i in ids))

    def _claim_due(
        self, s: Session, *, now: datetime, poll: timedelta | None, skip: frozenset[str]
    ) -> tuple[str, list[str], bool]:
        """Claim up to `concurrency` due connections nobody holds (none in `skip`, tried
        already in this pass): the claim's token, their ids, and whether other due ones were
        seen (locked by a worker claiming them now)."""
        free: list[sa.ColumnElement[bool]] = [
            CONNECTIONS.c.status != "disconnected",
            claims.claimable(CONNECTIONS, now),
        ]
        if skip:
            free.append(CONNECTIONS.c.id.not_in(skip))
        pushed = set(
            s.exec(select(CalendarChannel.connection_id).where(CalendarChannel.expires_at > now))
        )
        conns = s.exec(
            select(CalendarConnection).where(*free).order_by(col(CalendarConnection.created_at))
        )
        due = [c.id for c in conns if self._due(c, now=now, poll=poll, pushed=pushed)]
        if not due:
            return "", [], False
        # Lock and read again the rows about to be claimed: one that another worker refreshed
        # since the read above is no longer due.
        fresh = select(CalendarConnection).where(col(CalendarConnection.id).in_(due), *free)
        if s.get_bind().dialect.name == "postgresql":
            fresh = fresh.with_for_update(skip_locked=True)
        locked = s.exec(
            fresh.order_by(col(CalendarConnection.created_at))
            .limit(self.concurrency)
            .execution_options(populate_existing=True)
        )
        still = [c.id for c in locked if self._due(c, now=now, poll=poll, pushed=pushed)]
        if not still:
            return "", [], True
        token, ids = claims.claim_rows(
            s,
            CONNECTIONS,
            where=[CONNECTIONS.c.id.in_(still)],
            now=now,
            lease=self.claim_for,
            limit=self.concurrency,
        )
        return token, ids, True

    def _due(
        self,
        conn: CalendarConnection,
        *,
        now: datetime,
        poll: timedelta | None,
        pushed: set[str],
    ) -> bool:
        if conn.status == "needs_relink" or not conn.read_calendars:
            return False
        provider = self.runtime.providers.get(conn.provider)
        push = provider is not None and provider.notifies and conn.id in pushed
        max_age = self.runtime.max_age
        limit = max_age / 3 if push or poll is None else min(poll, max_age / 3)
        # A little slack: a pass every `poll` finds the last read just about `poll` old.
        return conn.dirty_at is not None or any(
            now - _synced_at(conn, c) >= limit * 0.9 for c in conn.read_calendars
        )

    async def _each(
        self, conns: list[CalendarConnection], fn: Callable[[CalendarConnection], Awaitable[T]]
    ) -> list[T]:
        """`fn` for every connection, up to `concurrency` at once; results in the given order.

        A slow or unreachable server (a time limit and retries per request) then holds up only
        its own connection, not the freshness of every other one in the pass."""
        gate = asyncio.Semaphore(self.concurrency)

        async def bounded(conn: CalendarConnection) -> T:
            async with gate:
                return await fn(conn)

        return list(await asyncio.gather(*(bounded(c) for c in conns)))

    async def upkeep(self) -> None:
        """Renew expiring notification channels and retry calendar writes that failed."""
        steps: list[tuple[str, Callable[[], Awaitable[int]]]] = [
            ("renew_channels", self.channels.renew_channels),
            ("retry_pending", self.write_back.retry_pending),
        ]
        for name, step in steps:
            try:
                await step()
            except Exception:
                log.exception("calendar background step %s failed", name)

    async def run_forever(self, every: float, *, poll: float | None = None) -> None:
        """The background job: a full pass (`tick`) every `every` seconds and, when `poll` is
        shorter, a pass over the connections due (`refresh_due`) every `poll` seconds, so
        calendars without push notifications are about `poll` seconds fresh."""
        age = timedelta(seconds=poll) if poll else None
        wake = min(every, poll) if poll else every
        loop = asyncio.get_running_loop()
        last_full: float | None = None
        while True:
            started = loop.time()
            try:
                if last_full is None or started - last_full >= every * 0.99:
                    last_full = started
                    await self.tick(poll=age)
                else:
                    await self.refresh_due(poll=age)
            except Exception:
                log.exception("calendar background pass failed")
            await asyncio.sleep(wake)


def _synced_at(conn: CalendarConnection, calendar_id: str) -> datetime:
    state = conn.sync.get(calendar_id) or {}
    return datetime.fromisoformat(state.get("synced_at", "1970-01-01T00:00:00+00:00"))
