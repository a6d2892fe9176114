"""Busy time for slot search: booking's `CalendarBusy` port, read from the busy cache.

Slot search (`busy(..., live=False)`) reads the per-connection busy cache in the database,
filled when a connection is linked and kept fresh by change notifications (`channels`), by the
background job (`jobs`), and here on demand when the cache does not cover a window or is older
than `max_age`. A provider that is down leaves the last cache in use; a connection that needs
re-linking and has no cache fails the read of its own staff member only (slot search goes on
without them). The booking re-check (`live=True`) reads the provider itself, so a stale cache
can never cause a double booking.

Events Frontdesk wrote itself are left out of busy time read back from a calendar: the
appointment already blocks its time in the database, and a reschedule must not collide with the
event of the very appointment it moves.

Links stored in a business file (`Staff.calendars`: ICS feeds, CalDAV with a password) are read
live through their provider each time (providers keep their own short caches).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from booking import errors
from booking.busy import StaffCalendars
from booking.rules import Interval, merge
from calendars import cache_store
from calendars.accounts import Accounts
from calendars.base import NeedsRelink
from calendars.links import link_account
from calendars.models import CalendarConnection
from calendars.runtime import Background, CalendarRuntime

log = logging.getLogger(__name__)


class BusyCache:
    """Reads busy time (cached or live) and brings connections' busy caches up to date."""

    def __init__(
        self, runtime: CalendarRuntime, accounts: Accounts, background: Background
    ) -> None:
        self.runtime = runtime
        self.accounts = accounts
        self.background = background
        self._locks: dict[str, asyncio.Lock] = {}

    # ---- reading busy time --------------------------------------------------------------

    async def busy(
        self, calendars: StaffCalendars, *, start: datetime, end: datetime, live: bool = False
    ) -> list[Interval]:
        conn_ids = [
            str(link["connection_id"]) for link in calendars.links if "connection_id" in link
        ]
        reads = [
            self._link_busy(calendars, i, link, start, end)
            for i, link in enumerate(calendars.links)
            if "connection_id" not in link
        ]
        if conn_ids:
            reads.append(self._connections_busy(calendars, conn_ids, start, end, live=live))
        results = await asyncio.gather(*reads, return_exceptions=True)
        intervals: list[Interval] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            intervals += result
        return merge(intervals)

    async def _link_busy(
        self,
        calendars: StaffCalendars,
        index: int,
        link: dict[str, Any],
        start: datetime,
        end: datetime,
    ) -> list[Interval]:
        account = link_account(link, staff_id=calendars.staff_id, index=index)
        provider = self.runtime.provider(account.provider)
        return await provider.busy(account, calendar_ids=[], tz=calendars.tz, start=start, end=end)

    async def _connections_busy(
        self,
        calendars: StaffCalendars,
        conn_ids: list[str],
        start: datetime,
        end: datetime,
        *,
        live: bool,
    ) -> list[Interval]:
        db = self.runtime.db
        if live:
            conns = await db(lambda s: cache_store.connections(s, conn_ids))
            for conn in [c for c in conns if c.status == "needs_relink"]:
                # Its grant is gone: it cannot be read, and it must not stop every booking.
                log.warning(
                    "booking for %s without re-checking %s: it needs re-linking",
                    calendars.staff_id,
                    conn.id,
                )
            conns = [c for c in conns if c.status != "needs_relink"]
            parts = await asyncio.gather(
                *(self._live_busy(c, calendars.tz, start, end) for c in conns)
            )
            return [iv for part in parts for iv in part]
        conns, cached = await db(
            lambda s: cache_store.read_cache(s, calendars, conn_ids, start, end)
        )
        for conn in conns:
            if conn.status == "needs_relink" and not self._has_cache(conn, start, end):
                # Not read again on every search: a refused password, tried over and over,
                # can lock the account. Only this staff member's times are affected.
                # NeedsRelink: not retryable, asking again cannot help until someone re-links.
                raise NeedsRelink(
                    f"{conn.name} of {calendars.staff_id} needs re-linking: "
                    f"{conn.last_error or 'its grant no longer works'}"
                )
        stale = [c for c in conns if not self._covers(c, start, end)]
        if not stale:
            return cached
        # Shielded: a search that gives up waiting must not cancel the fill for the next one.
        results = await asyncio.gather(
            *(asyncio.shield(self._refresh_task(c.id)) for c in stale), return_exceptions=True
        )
        for conn, result in zip(stale, results, strict=True):
            if isinstance(result, BaseException):
                if not self._has_cache(conn, start, end):
                    if isinstance(result, NeedsRelink):
                        raise NeedsRelink(
                            f"{conn.name} of {calendars.staff_id} needs re-linking: {result}"
                        ) from result
                    raise errors.CalendarUnavailable(
                        f"{conn.name} of {calendars.staff_id} cannot be read right now: {result}"
                    ) from result
                # An old picture beats none: the booking re-checks live anyway.
                log.warning("using the cached busy time of %s: %s", conn.id, result)
        _, cached = await db(lambda s: cache_store.read_cache(s, calendars, conn_ids, start, end))
        return cached

    def _covers(self, conn: CalendarConnection, start: datetime, end: datetime) -> bool:
        if conn.status == "needs_relink" or conn.dirty_at is not None:
            return conn.status == "needs_relink" and self._has_cache(conn, start, end)
        for cal in conn.read_calendars:
            state = conn.sync.get(cal)
            if not state or not cache_store.window_has(state, start, end):
                return False
            if self.runtime.now() - datetime.fromisoformat(state["synced_at"]) > (
                self.runtime.max_age
            ):
                return False
        return True

    def _has_cache(self, conn: CalendarConnection, start: datetime, end: datetime) -> bool:
        return all(
            conn.sync.get(cal) and cache_store.window_has(conn.sync[cal], start, end)
            for cal in conn.read_calendars
        )

    async def _live_busy(
        self, conn: CalendarConnection, tz: ZoneInfo, start: datetime, end: datetime
    ) -> list[Interval]:
        account = await self.accounts.account(conn)
        provider = self.runtime.provider(conn.provider)
        own_ids = asyncio.ensure_future(
            self.runtime.db(lambda s: cache_store.own_event_ids(s, conn.id))
        )
        try:
            results = await asyncio.gather(
                *(
                    provider.sync(
                        account, calendar_id=cal, tz=tz, cursor=None, start=start, end=end
                    )
                    for cal in conn.read_calendars
                )
            )
            own = await own_ids
        except NeedsRelink as exc:
            await asyncio.gather(own_ids, return_exceptions=True)
            await self.accounts.mark(conn.id, "needs_relink", str(exc))
            raise
        except BaseException:
            await asyncio.gather(own_ids, return_exceptions=True)
            raise
        return [
            iv for r in results for key, ivs in r.changed.items() if key not in own for iv in ivs
        ]

    # ---- keeping the cache fresh --------------------------------------------------------

    async def refresh(self, connection_id: str, *, full: bool = False) -> None:
        """Bring one connection's busy cache up to date (incremental where the provider can)."""
        runtime = self.runtime
        lock = self._locks.setdefault(connection_id, asyncio.Lock())
        async with lock:
            conn = await runtime.db(lambda s: s.get(CalendarConnection, connection_id))
            if conn is None or conn.status == "disconnected":
                return
            provider = runtime.provider(conn.provider)
            account = await self.accounts.account(conn)
            tz = await runtime.db(lambda s: cache_store.connection_zone(s, conn))
            now = runtime.now()
            lo, hi = now - timedelta(days=1), now + runtime.horizon
            dirty_seen = conn.dirty_at
            try:
                for cal in conn.read_calendars:
                    state = conn.sync.get(cal) or {}
                    drifted = cache_store.drifted(state, now, runtime.horizon)
                    cursor = None if full or drifted else state.get("cursor")
                    window = (
                        (lo, hi)
                        if cursor is None
                        else (
                            datetime.fromisoformat(state["from"]),
                            datetime.fromisoformat(state["to"]),
                        )
                    )
                    result = await provider.sync(
                        account,
                        calendar_id=cal,
                        tz=tz,
                        cursor=cursor,
                        start=window[0],
                        end=window[1],
                    )
                    store = partial(
                        cache_store.store_sync,
                        connection_id=conn.id,
                        calendar_id=cal,
                        result=result,
                        window=window,
                        now=runtime.now(),
                    )
                    await runtime.db(store, write=True)
                # Every calendar is stored: the notifications seen before we began are
                # answered; one that came in during the sync stays pending.
                if dirty_seen is not None:
                    await runtime.db(
                        lambda s: cache_store.clear_dirty(s, conn.id, dirty_seen), write=True
                    )
            except NeedsRelink as exc:
                await self.accounts.mark(conn.id, "needs_relink", str(exc))
                raise
            except errors.CalendarUnavailable as exc:
                await self.accounts.mark(conn.id, "error", str(exc))
                raise
            if conn.status != "ok":
                await self.accounts.mark(conn.id, "ok", None)

    def _refresh_task(self, connection_id: str) -> asyncio.Future[None]:
        key = f"fill:{connection_id}"
        return self.background.running(key) or self.background.start(
            key, self.refresh(connection_id)
        )

    def poke(self, connection_id: str) -> None:
        """Refresh a connection soon, in the background (after a change notification)."""
        if self.background.running(connection_id) is not None:
            return

        async def run() -> None:
            try:
                await self.refresh(connection_id)
            except Exception as exc:  # logged; the scheduled sync tries again
                log.warning("refresh of %s after a notification failed: %s", connection_id, exc)

        self.background.start(connection_id, run())

    async def find(self, connection_id: str) -> CalendarConnection | None:
        conn = await self.runtime.db(lambda s: s.get(CalendarConnection, connection_id))
        return conn if conn is not None and conn.status != "disconnected" else None
