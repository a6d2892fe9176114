"""Linked calendars at work: the busy cache slot search reads, sync, write-back, and linking.

`CalendarService` is booking's `CalendarBusy` and `CalendarWriter` ports in one:

- Slot search (`busy(..., live=False)`) reads the per-connection busy cache in the database
  (table `calendar_busy`), filled when a connection is linked and kept fresh by change
  notifications (Google watch channels, Graph subscriptions), by incremental sync (Google
  syncToken, Graph delta) on a schedule, by polling every minute or so where there is no push
  (CalDAV compares the collection's sync-token / ctag first, ICS feeds answer a conditional
  GET), and on demand when the cache does not cover a window or is older than `max_age`. A
  provider that is down leaves the last cache in use; a connection that needs re-linking and
  has no cache fails the read of its own staff member only (slot search goes on without them).
- An explicit sync (`sync_now`: the CLI's `calendars sync`, the dashboard's "Sync now")
  refreshes at once, however recent the last refresh, and reports what changed.
- The booking re-check (`live=True`) reads the provider itself, so a stale cache can never
  cause a double booking.
- `sync_appointment` writes a booking, cancellation or reschedule into the staff member's
  chosen calendar, idempotently (the provider's own means, keyed by the first appointment id of
  a reschedule chain); a failure leaves the appointment `not_synced` for `retry_pending`.

Events Frontdesk wrote itself are left out of busy time read back from a calendar: the
appointment already blocks its time in the database, and a reschedule must not collide with the
event of the very appointment it moves.

Links stored in a business file (`Staff.calendars`: ICS feeds, CalDAV with a password) are read
live through their provider each time (providers keep their own short caches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import icalendar
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from booking import errors
from booking.busy import StaffCalendars
from booking.db import in_session, lock_staff
from booking.models import (
    Appointment,
    AppointmentStatus,
    Business,
    CalendarBusyBlock,
    CalendarChannel,
    CalendarConnection,
    CalendarEvent,
    Contact,
    OAuthFlow,
    Service,
    Staff,
    SyncState,
)
from booking.rules import Interval, merge
from booking.scheduler import staff_zone
from calendars.base import (
    Account,
    CalendarInfo,
    CalendarProvider,
    Channel,
    EventSpec,
    NeedsRelink,
    OAuthClient,
    SyncReset,
    SyncResult,
    TokenSet,
)
from calendars.links import link_account
from calendars.netguard import check_public_url
from calendars.secrets import SecretKeyMissing, Vault
from calendars.tokens import OAuthTokens

log = logging.getLogger(__name__)
T = TypeVar("T")

OAUTH_PROVIDERS = ("google", "microsoft")
FLOW_TTL = timedelta(minutes=15)
# Back-off between write-back attempts of one appointment: 30 s, 1, 2, 4 ... up to 60 minutes.
RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(minutes=60)
RENEW_BEFORE = timedelta(hours=12)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Notice:
    """A provider's "this channel changed", and once checked, what it is worth."""

    channel_id: str
    token: str | None
    resync: bool = False  # the provider lost changes (Graph's `missed`): read everything again
    verdict: str = "unchecked"  # then "ok", "unknown" or "forged"
    connection_id: str | None = None


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


@dataclass
class CalendarService:
    engine: Engine
    vault: Vault
    providers: Mapping[str, CalendarProvider]
    oauth: Mapping[str, OAuthClient] = field(default_factory=dict)
    public_base_url: str = "http://127.0.0.1:8000"  # Settings: http://HOST:PORT by default
    now: Callable[[], datetime] = _now
    horizon: timedelta = timedelta(days=90)
    max_age: timedelta = timedelta(minutes=15)
    timeout: float = 10.0
    write_lease: timedelta = timedelta(seconds=90)
    allow_private_urls: bool = True  # the app passes FRONTDESK_ALLOW_PRIVATE_URLS

    def __post_init__(self) -> None:
        self._accounts: dict[str, tuple[str, Account]] = {}  # id -> (sealed secret, account)
        self._locks: dict[str, asyncio.Lock] = {}
        self._pokes: dict[str, asyncio.Task[None]] = {}

    async def _db(self, fn: Callable[[Session], T], *, write: bool = False) -> T:
        return await in_session(self.engine, fn, write=write)

    def provider(self, name: str) -> CalendarProvider:
        provider = self.providers.get(name)
        if provider is None:
            raise errors.CalendarUnavailable(f"calendar provider {name!r} is not configured")
        return provider

    # ---- busy time (booking's CalendarBusy port) ----------------------------------------

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
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return merge([iv for result in results for iv in result])  # type: ignore[union-attr]

    async def _link_busy(
        self,
        calendars: StaffCalendars,
        index: int,
        link: dict[str, Any],
        start: datetime,
        end: datetime,
    ) -> list[Interval]:
        account = link_account(link, staff_id=calendars.staff_id, index=index)
        provider = self.provider(account.provider)
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
        if live:
            conns = await self._db(lambda s: _connections(s, conn_ids))
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
        conns, cached = await self._db(lambda s: _read_cache(s, calendars, conn_ids, start, end))
        for conn in conns:
            if conn.status == "needs_relink" and not self._has_cache(conn, start, end):
                # Not read again on every search: a refused password, tried over and over,
                # can lock the account. Only this staff member's times are affected.
                raise errors.CalendarUnavailable(
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
                    raise errors.CalendarUnavailable(
                        f"{conn.name} of {calendars.staff_id} cannot be read right now: {result}"
                    ) from result
                # An old picture beats none: the booking re-checks live anyway.
                log.warning("using the cached busy time of %s: %s", conn.id, result)
        _, cached = await self._db(lambda s: _read_cache(s, calendars, conn_ids, start, end))
        return cached

    def _covers(self, conn: CalendarConnection, start: datetime, end: datetime) -> bool:
        if conn.status == "needs_relink" or conn.dirty_at is not None:
            return conn.status == "needs_relink" and self._has_cache(conn, start, end)
        for cal in conn.read_calendars:
            state = conn.sync.get(cal)
            if not state or not _window_has(state, start, end):
                return False
            if self.now() - datetime.fromisoformat(state["synced_at"]) > self.max_age:
                return False
        return True

    def _has_cache(self, conn: CalendarConnection, start: datetime, end: datetime) -> bool:
        return all(
            conn.sync.get(cal) and _window_has(conn.sync[cal], start, end)
            for cal in conn.read_calendars
        )

    async def _live_busy(
        self, conn: CalendarConnection, tz: ZoneInfo, start: datetime, end: datetime
    ) -> list[Interval]:
        account = await self.account(conn)
        provider = self.provider(conn.provider)
        own_ids = asyncio.ensure_future(self._db(lambda s: _own_event_ids(s, conn.id)))
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
            await self._mark(conn.id, "needs_relink", str(exc))
            raise
        except BaseException:
            await asyncio.gather(own_ids, return_exceptions=True)
            raise
        return [
            iv for r in results for key, ivs in r.changed.items() if key not in own for iv in ivs
        ]

    # ---- the busy cache -----------------------------------------------------------------

    async def refresh(self, connection_id: str, *, full: bool = False) -> None:
        """Bring one connection's busy cache up to date (incremental where the provider can)."""
        lock = self._locks.setdefault(connection_id, asyncio.Lock())
        async with lock:
            conn = await self._db(lambda s: s.get(CalendarConnection, connection_id))
            if conn is None or conn.status == "disconnected":
                return
            provider = self.provider(conn.provider)
            account = await self.account(conn)
            tz = await self._db(lambda s: _staff_zone(s, conn))
            now = self.now()
            lo, hi = now - timedelta(days=1), now + self.horizon
            dirty_seen = conn.dirty_at
            try:
                for cal in conn.read_calendars:
                    state = conn.sync.get(cal) or {}
                    cursor = (
                        None if full or _drifted(state, now, self.horizon) else state.get("cursor")
                    )
                    window = (
                        (lo, hi)
                        if cursor is None
                        else (
                            datetime.fromisoformat(state["from"]),
                            datetime.fromisoformat(state["to"]),
                        )
                    )
                    try:
                        result = await provider.sync(
                            account,
                            calendar_id=cal,
                            tz=tz,
                            cursor=cursor,
                            start=window[0],
                            end=window[1],
                        )
                    except SyncReset:
                        window = (lo, hi)
                        result = await provider.sync(
                            account, calendar_id=cal, tz=tz, cursor=None, start=lo, end=hi
                        )
                    await self._db(
                        lambda s, cal=cal, result=result, window=window: _store_sync(
                            s, conn.id, cal, result, window, self.now()
                        ),
                        write=True,
                    )
                # Every calendar is stored: the notifications seen before we began are
                # answered; one that came in during the sync stays pending.
                if dirty_seen is not None:
                    await self._db(lambda s: _clear_dirty(s, conn.id, dirty_seen), write=True)
            except NeedsRelink as exc:
                await self._mark(conn.id, "needs_relink", str(exc))
                raise
            except errors.CalendarUnavailable as exc:
                await self._mark(conn.id, "error", str(exc))
                raise
            if conn.status != "ok":
                await self._mark(conn.id, "ok", None)

    async def _mark(self, connection_id: str, status: str, error: str | None) -> None:
        def write(s: Session) -> None:
            row = s.get(CalendarConnection, connection_id)
            if row is not None and row.status != "disconnected":
                row.status, row.last_error, row.updated_at = status, error, self.now()
                s.add(row)

        await self._db(write, write=True)
        if status == "needs_relink":
            log.warning("calendar connection %s needs re-linking: %s", connection_id, error)

    def _refresh_task(self, connection_id: str) -> asyncio.Future[None]:
        key = f"fill:{connection_id}"
        task = self._pokes.get(key)
        if task is None or task.done():
            task = asyncio.ensure_future(self.refresh(connection_id))
            self._pokes[key] = task
        return task

    def poke(self, connection_id: str) -> None:
        """Refresh a connection soon, in the background (after a change notification)."""
        task = self._pokes.get(connection_id)
        if task is not None and not task.done():
            return

        async def run() -> None:
            try:
                await self.refresh(connection_id)
            except Exception as exc:  # logged; the scheduled sync tries again
                log.warning("refresh of %s after a notification failed: %s", connection_id, exc)

        self._pokes[connection_id] = asyncio.create_task(run())

    def renew_soon(self, channel_id: str) -> None:
        async def run() -> None:
            try:
                await self.renew_channels(only=channel_id)
            except Exception as exc:  # logged; the scheduled pass renews before expiry
                log.warning("renewing channel %s failed: %s", channel_id, exc)

        self._pokes[f"renew:{channel_id}"] = asyncio.create_task(run())

    async def find(self, connection_id: str) -> CalendarConnection | None:
        conn = await self._db(lambda s: s.get(CalendarConnection, connection_id))
        return conn if conn is not None and conn.status != "disconnected" else None

    async def close(self) -> None:
        """Stop background refreshes and let providers close their kept connections."""
        for task in self._pokes.values():
            task.cancel()
        await asyncio.gather(*self._pokes.values(), return_exceptions=True)
        for provider in self.providers.values():
            closer = getattr(provider, "aclose", None) or getattr(provider, "close", None)
            if closer is not None:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result

    async def wait_pokes(self) -> None:
        await asyncio.gather(*self._pokes.values(), return_exceptions=True)

    # ---- accounts and tokens ------------------------------------------------------------

    async def account(self, conn: CalendarConnection) -> Account:
        cached = self._accounts.get(conn.id)
        if cached is not None and cached[0] == conn.secret:
            return cached[1]
        try:
            secret = self.vault.open(conn.secret)
        except SecretKeyMissing as exc:
            raise errors.CalendarUnavailable(f"{conn.name}: {exc}") from None
        tokens = None
        if conn.provider in OAUTH_PROVIDERS:
            client = self.oauth.get(conn.provider)
            if client is None:
                raise errors.CalendarUnavailable(
                    f"{conn.provider} is not configured (FRONTDESK_{conn.provider.upper()}_*)"
                )
            stored = TokenSet(
                access_token=secret.get("access_token", ""),
                refresh_token=secret.get("refresh_token"),
                expires_at=datetime.fromisoformat(
                    secret.get("expires_at", "1970-01-01T00:00:00+00:00")
                ),
                account=secret.get("account"),
            )

            async def save(new: TokenSet, conn_id: str = conn.id) -> None:
                await self._save_tokens(conn_id, new)

            tokens = OAuthTokens(client, stored, save)  # token expiry is real time
        account = Account(
            id=conn.id,
            provider=conn.provider,
            settings=dict(conn.settings),
            secret={k: v for k, v in secret.items() if k == "password"},
            tokens=tokens,
            name=conn.name,
        )
        self._accounts[conn.id] = (conn.secret, account)
        return account

    async def _save_tokens(self, connection_id: str, new: TokenSet) -> None:
        sealed = self.vault.seal(_token_secret(new))

        def write(s: Session) -> None:
            row = s.get(CalendarConnection, connection_id)
            if row is not None and row.status != "disconnected":
                row.secret, row.updated_at = sealed, self.now()
                s.add(row)

        await self._db(write, write=True)
        cached = self._accounts.get(connection_id)
        if cached is not None:
            self._accounts[connection_id] = (sealed, cached[1])

    # ---- write-back (booking's CalendarWriter port) ---------------------------------------

    async def sync_appointment(self, appointment_id: str) -> str:
        """Make the calendar match the appointment's reschedule chain as it stands now.

        One writer at a time per chain (a lease in the database, so across processes too); a
        writer that finds the lease taken leaves the appointment `not_synced`, and the writer
        holding it notices the change when it finishes and writes again."""
        target_id = appointment_id
        for _ in range(4):
            plan = await self._db(
                lambda s, a=target_id: _plan(s, a, self.now(), self.write_lease), write=True
            )
            if plan.state is not None:
                return (
                    plan.state if plan.appointment_id == appointment_id else SyncState.SYNCED.value
                )
            try:
                event_id = await self._apply(plan)
            except BaseException as exc:
                message = str(exc) or type(exc).__name__
                await asyncio.shield(
                    self._db(
                        lambda s, m=message, p=plan: _write_failed(s, p, m, self.now()), write=True
                    )
                )
                if isinstance(exc, NeedsRelink) and plan.target is not None:
                    await self._mark(plan.target.id, "needs_relink", str(exc))
                if isinstance(exc, errors.CalendarUnavailable | asyncio.CancelledError):
                    raise
                raise errors.CalendarUnavailable(f"calendar write failed: {message}") from exc
            done = await self._db(
                lambda s, eid=event_id, p=plan: _write_done(s, p, eid, self.now()), write=True
            )
            if done:
                return SyncState.SYNCED.value
            target_id = plan.appointment_id  # the chain's head: it changed while we wrote
        return SyncState.NOT_SYNCED.value

    async def _apply(self, plan: _Plan) -> str | None:
        """Carry out one write plan against the provider(s); returns the event id written."""
        if plan.remove is not None:  # the event lives where it should not (any more)
            conn, cal, event_id = plan.remove
            provider = self.provider(conn.provider)
            account = await self.account(conn)
            if event_id is None:
                # An earlier write's answer was lost: it may have landed. The idempotent create
                # finds it (or makes it), so it can be deleted by its id.
                assert plan.spec is not None
                event_id = await provider.put_event(
                    account, calendar_id=cal, event=plan.spec, event_id=None
                )
                plan.remove = (conn, cal, event_id)
            await provider.delete_event(account, calendar_id=cal, event_id=event_id)
        if plan.target is None or plan.spec is None:
            return None
        conn = plan.target
        assert conn.write_calendar is not None
        return await self.provider(conn.provider).put_event(
            await self.account(conn),
            calendar_id=conn.write_calendar,
            event=plan.spec,
            event_id=plan.event_id,
        )

    async def retry_pending(self, *, limit: int = 50) -> int:
        """Finish write-backs that failed or never ran; returns how many now synced."""
        now = self.now()
        ids = await self._db(lambda s: _pending(s, now, limit))
        done = 0
        for appointment_id in ids:
            try:
                if await self.sync_appointment(appointment_id) == SyncState.SYNCED:
                    done += 1
            except errors.CalendarUnavailable as exc:
                log.info("write-back of %s still failing: %s", appointment_id, exc)
            except Exception:  # one bad appointment must not block the rest
                log.exception("write-back of %s failed", appointment_id)
        return done

    # ---- change notifications -------------------------------------------------------------

    def callback_url(self, provider: str) -> str:
        return f"{self.public_base_url.rstrip('/')}/calendars/notify/{provider}"

    async def watch(self, connection_id: str) -> list[Channel]:
        """Subscribe to changes of every read calendar of a connection that has none yet."""
        conn = await self._db(lambda s: s.get(CalendarConnection, connection_id))
        if conn is None:
            raise errors.NotFound(f"no calendar connection {connection_id}")
        provider = self.provider(conn.provider)
        if not provider.notifies:
            return []
        existing = await self._db(
            lambda s: {
                c.calendar_id
                for c in s.exec(
                    select(CalendarChannel).where(CalendarChannel.connection_id == connection_id)
                )
            }
        )
        account = await self.account(conn)
        made: list[Channel] = []
        for cal in conn.read_calendars:
            if cal in existing:
                continue
            channel = await provider.watch(
                account,
                calendar_id=cal,
                callback_url=self.callback_url(conn.provider),
                token=secrets.token_urlsafe(24),
            )
            if channel is not None:
                await self._db(lambda s, ch=channel: s.add(_channel_row(conn.id, ch)), write=True)
                made.append(channel)
        return made

    async def renew_channels(self, only: str | None = None) -> int:
        """Replace subscriptions that expire soon (Google never renews a channel for you),
        or just the channel `only` (Graph asked for reauthorization, or removed it)."""
        soon = self.now() + RENEW_BEFORE
        query = (
            select(CalendarChannel).where(CalendarChannel.expires_at < soon)
            if only is None
            else select(CalendarChannel).where(CalendarChannel.id == only)
        )
        rows = await self._db(lambda s: list(s.exec(query)))
        renewed = 0
        for row in rows:
            # Claim the channel first, so two processes never both replace it.
            claimed = await self._db(lambda s, r=row: _claim_channel(s, r, self.now()), write=True)
            if not claimed:
                continue
            conn = await self._db(lambda s, r=row: s.get(CalendarConnection, r.connection_id))
            if conn is None or conn.status == "disconnected":
                continue
            provider = self.provider(conn.provider)
            account = await self.account(conn)
            renew = getattr(provider, "renew", None)
            if renew is not None:  # Graph extends a subscription in place
                try:
                    extended = await renew(account, _channel_of(row))
                except errors.CalendarUnavailable as exc:
                    log.warning("could not renew channel %s: %s", row.id, exc)
                    continue
                if extended is not None:
                    await self._db(lambda s, ch=extended, r=row: _extend(s, r.id, ch), write=True)
                    renewed += 1
                    continue
            try:
                channel = await provider.watch(
                    account,
                    calendar_id=row.calendar_id,
                    callback_url=self.callback_url(conn.provider),
                    token=secrets.token_urlsafe(24),
                )
            except errors.CalendarUnavailable as exc:
                log.warning("could not renew channel %s: %s", row.id, exc)
                continue

            def swap(s: Session, old: CalendarChannel = row, new: Channel | None = channel) -> bool:
                stale = s.get(CalendarChannel, old.id)
                if stale is None:
                    return False  # unlinked meanwhile: the new channel must go too
                s.delete(stale)
                if new is not None:
                    s.add(_channel_row(old.connection_id, new))
                return True

            if not await self._db(swap, write=True) and channel is not None:
                with contextlib.suppress(errors.CalendarUnavailable):
                    await provider.stop(account, channel)
                continue
            try:
                await provider.stop(account, _channel_of(row))
            except errors.CalendarUnavailable as exc:
                log.info("stopping old channel %s failed (it expires anyway): %s", row.id, exc)
            renewed += 1
        return renewed

    async def notified(self, channel_id: str, token: str | None, *, resync: bool = False) -> str:
        """A provider says a calendar changed. Returns "ok", "unknown" or "forged".

        The change is recorded (`dirty_at`) before this returns, so nothing is lost if the
        process stops; the refresh itself runs in the background."""
        [notice] = await self.check_notices([Notice(channel_id, token, resync=resync)])
        if notice.verdict == "ok":
            await self.changed([notice])
        return notice.verdict

    async def check_notices(self, notices: Sequence[Notice]) -> list[Notice]:
        """Each notice with its verdict ("ok", "unknown", "forged") and connection, from one
        read of all their channels."""
        ids = list({n.channel_id for n in notices})

        def read(s: Session) -> dict[str, tuple[str, str]]:
            rows = s.exec(select(CalendarChannel).where(CalendarChannel.id.in_(ids)))  # type: ignore[attr-defined]
            return {row.id: (row.connection_id, row.token) for row in rows}

        channels = await self._db(read) if ids else {}
        checked = []
        for notice in notices:
            found = channels.get(notice.channel_id)
            if found is None:
                verdict, connection_id = "unknown", None
            elif notice.token is None or not secrets.compare_digest(
                notice.token.encode(), found[1].encode()
            ):
                verdict, connection_id = "forged", None
            else:
                verdict, connection_id = "ok", found[0]
            checked.append(replace(notice, verdict=verdict, connection_id=connection_id))
        return checked

    async def changed(self, notices: Sequence[Notice]) -> None:
        """Record the changes the checked `notices` announce (one write for all), then refresh
        their connections in the background; a `resync` notice starts its calendars afresh."""
        dirty = {n.connection_id for n in notices if n.verdict == "ok" and n.connection_id}
        resync = {n.connection_id for n in notices if n.verdict == "ok" and n.resync}
        if not dirty:
            return

        def mark(s: Session) -> None:
            conns = s.exec(select(CalendarConnection).where(CalendarConnection.id.in_(dirty)))  # type: ignore[attr-defined]
            for conn in conns:
                conn.dirty_at = self.now()
                if conn.id in resync:
                    conn.sync = {}
                s.add(conn)

        await self._db(mark, write=True)
        for connection_id in sorted(dirty):
            self.poke(connection_id)

    # ---- explicit sync ----------------------------------------------------------------------

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

        conns = await self._db(load)
        if connection_id is not None and not conns:
            raise errors.NotFound(f"no calendar connection {connection_id}")
        reports = []
        for conn in conns:
            before = await self._db(partial(_busy_rows, connection_id=conn.id))
            error = None
            try:
                await self.refresh(conn.id)
            except errors.CalendarUnavailable as exc:
                error = str(exc) or type(exc).__name__
            except Exception:  # one broken connection must not stop the others
                log.exception("sync of %s failed", conn.id)
                error = "unexpected error (see the server log)"
            after = await self._db(partial(_busy_rows, connection_id=conn.id))
            reports.append(
                SyncReport(
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
            )
        return reports

    # ---- the scheduled pass -----------------------------------------------------------------

    async def tick(self, *, poll: timedelta | None = None) -> None:
        """One pass of the background job: refresh due caches, renew channels, retry writes.

        `poll` is how old the cache of a connection without push notifications may grow
        (CalDAV, ICS, or one whose channel is missing); None: as old as the others."""
        now = self.now()
        await self.refresh_due(poll=poll)
        await self.upkeep()
        await self._db(
            lambda s: s.execute(sa.delete(OAuthFlow).where(OAuthFlow.expires_at < now)), write=True
        )

    async def refresh_due(self, *, poll: timedelta | None = None) -> int:
        """Refresh the connections that are due: changed (a notification came), or read longer
        ago than `max_age / 3`, or than `poll` for connections without push. Cheap when
        nothing changed: CalDAV compares the collection's sync-token / ctag first, Google and
        Graph ask for changes since their cursor. Returns how many were refreshed."""
        now = self.now()

        def load(s: Session) -> tuple[list[CalendarConnection], set[str]]:
            conns = list(
                s.exec(
                    select(CalendarConnection).where(CalendarConnection.status != "disconnected")
                )
            )
            pushed = set(
                s.exec(
                    select(CalendarChannel.connection_id).where(CalendarChannel.expires_at > now)
                )
            )
            return conns, pushed

        conns, pushed = await self._db(load)
        refreshed = 0
        for conn in conns:
            if conn.status == "needs_relink" or not conn.read_calendars:
                continue
            provider = self.providers.get(conn.provider)
            push = provider is not None and provider.notifies and conn.id in pushed
            limit = self.max_age / 3 if push or poll is None else min(poll, self.max_age / 3)
            # A little slack: a pass every `poll` finds the last read just about `poll` old.
            due = conn.dirty_at is not None or any(
                now
                - datetime.fromisoformat(
                    (conn.sync.get(c) or {}).get("synced_at", "1970-01-01T00:00:00+00:00")
                )
                >= limit * 0.9
                for c in conn.read_calendars
            )
            if not due:
                continue
            refreshed += 1
            try:
                await self.refresh(conn.id)
            except errors.CalendarUnavailable as exc:
                log.info("scheduled sync of %s failed: %s", conn.id, exc)
            except Exception:  # one broken connection must not stop the others
                log.exception("scheduled sync of %s failed", conn.id)
        return refreshed

    async def upkeep(self) -> None:
        """Renew expiring notification channels and retry calendar writes that failed."""
        for step in (self.renew_channels, self.retry_pending):
            try:
                await step()
            except Exception:
                log.exception("calendar background step %s failed", step.__name__)

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

    # ---- the local calendar: a staff member's bookings as a subscribable ICS feed ----------

    def feed_path(self, business_id: str, staff_id: str) -> str:
        """The secret path of a staff member's booking feed (for a phone's calendar app)."""
        token = self.vault.sign(f"feed\x00{business_id}\x00{staff_id}")
        return f"/calendars/feed/{quote(business_id)}/{quote(staff_id)}/{token}.ics"

    def feed_url(self, business_id: str, staff_id: str) -> str:
        return self.public_base_url.rstrip("/") + self.feed_path(business_id, staff_id)

    async def feed(self, business_id: str, staff_id: str, token: str) -> bytes:
        """The staff member's confirmed appointments from a month ago to the horizon."""
        if not self.vault.verify(f"feed\x00{business_id}\x00{staff_id}", token):
            raise errors.NotFound("no such calendar feed")
        now = self.now()
        lo, hi = now - timedelta(days=31), now + self.horizon
        return await self._db(lambda s: _feed(s, business_id, staff_id, lo, hi, now))

    # ---- linking --------------------------------------------------------------------------

    def redirect_uri(self, provider: str) -> str:
        return f"{self.public_base_url.rstrip('/')}/calendars/callback/{provider}"

    async def start_oauth(
        self, provider: str, *, business_id: str, staff_id: str, return_to: str | None = None
    ) -> str:
        """Begin linking a Google or Microsoft account; returns the URL to send the browser to."""
        client = self.oauth.get(provider)
        if client is None:
            raise errors.InvalidRequest(
                f"{provider} calendars are not configured on this server "
                f"(set FRONTDESK_{provider.upper()}_CLIENT_ID and _CLIENT_SECRET)"
            )
        await self._db(lambda s: _staff(s, business_id, staff_id))
        state = secrets.token_urlsafe(24)
        # MSAL reads the authority's OpenID configuration on first use: not on the event loop.
        url, flow = await asyncio.to_thread(
            client.start, redirect_uri=self.redirect_uri(provider), state=state
        )
        sealed = self.vault.seal(flow)
        row = OAuthFlow(
            state=state,
            provider=provider,
            business_id=business_id,
            staff_id=staff_id,
            flow=sealed,
            return_to=return_to,
            expires_at=self.now() + FLOW_TTL,
        )
        await self._db(lambda s: s.add(row), write=True)
        return url

    async def finish_oauth(
        self, provider: str, params: dict[str, str]
    ) -> tuple[CalendarConnection, str | None]:
        """The callback: exchange the code, store the connection, fill its cache."""
        state = params.get("state") or ""

        def take(s: Session) -> OAuthFlow:
            row = s.get(OAuthFlow, state)
            if row is None or row.provider != provider:
                raise errors.InvalidRequest(
                    "this link has expired or was already used; start linking the calendar again"
                )
            s.delete(row)  # a state is good for one callback only
            return row

        flow_row = await self._db(take, write=True)
        if flow_row.expires_at < self.now():
            raise errors.InvalidRequest("this link has expired; start linking the calendar again")
        client = self.oauth[provider]
        tokens = await client.finish(self.vault.open(flow_row.flow), params)
        conn = await self.link_tokens(
            provider, business_id=flow_row.business_id, staff_id=flow_row.staff_id, tokens=tokens
        )
        return conn, flow_row.return_to

    async def link_tokens(
        self,
        provider: str,
        *,
        business_id: str,
        staff_id: str,
        tokens: TokenSet,
        name: str | None = None,
    ) -> CalendarConnection:
        """Store a Google or Microsoft account whose tokens the OAuth flow produced."""
        if provider not in self.oauth:
            raise errors.InvalidRequest(f"{provider} calendars are not configured")
        label = name or (
            f"{provider.title()} ({tokens.account})" if tokens.account else provider.title()
        )
        if tokens.account:
            revived = await self._relink(provider, business_id, staff_id, tokens)
            if revived is not None:
                return revived
        return await self._create(
            business_id,
            staff_id,
            provider,
            label,
            settings={"account": tokens.account} if tokens.account else {},
            secret=_token_secret(tokens),
        )

    async def _relink(
        self, provider: str, business_id: str, staff_id: str, tokens: TokenSet
    ) -> CalendarConnection | None:
        """Linking an account again that needs re-linking revives that connection in place
        (its calendars, cache and written events stay), rather than adding a second one."""
        sealed = self.vault.seal(_token_secret(tokens))

        def revive(s: Session) -> CalendarConnection | None:
            for conn in s.exec(
                select(CalendarConnection).where(
                    CalendarConnection.business_id == business_id,
                    CalendarConnection.staff_id == staff_id,
                    CalendarConnection.provider == provider,
                    CalendarConnection.status.in_(("needs_relink", "error")),
                )
            ):  # type: ignore
                if conn.settings.get("account") == tokens.account:
                    conn.secret, conn.status, conn.last_error = sealed, "ok", None
                    conn.sync, conn.updated_at = {}, self.now()
                    s.add(conn)
                    return conn
            return None

        conn = await self._db(revive, write=True)
        if conn is None:
            return None
        self._accounts.pop(conn.id, None)
        log.info("re-linked %s calendar %s", provider, conn.id)
        try:
            await self.refresh(conn.id, full=True)
        except errors.CalendarUnavailable as exc:
            log.warning("first sync of %s after re-linking failed: %s", conn.id, exc)
        return await self.find(conn.id)

    async def link_caldav(
        self,
        *,
        business_id: str,
        staff_id: str,
        url: str,
        username: str,
        password: str,
        name: str | None = None,
    ) -> CalendarConnection:
        """Link a CalDAV account (iCloud with an app-specific password, Fastmail, Nextcloud)."""
        if not url.startswith(("https://", "http://")):
            raise errors.InvalidRequest("the CalDAV URL must start with https://")
        if not username or not password:
            raise errors.InvalidRequest("CalDAV needs a username and a password")
        await self._db(lambda s: _staff(s, business_id, staff_id))
        await check_public_url(url, allow_private=self.allow_private_urls)
        label = _label(name or f"CalDAV ({username} at {urlsplit(url).hostname})")
        return await self._create(
            business_id,
            staff_id,
            "caldav",
            label,
            settings={"url": url, "username": username},
            secret={"password": password},
        )

    async def link_ics(
        self,
        *,
        business_id: str,
        staff_id: str,
        source: str,
        name: str | None = None,
        allow_files: bool = False,
    ) -> CalendarConnection:
        """Subscribe a staff member to a published ICS feed (read-only).

        Only http(s)/webcal addresses, unless `allow_files` (the CLI, run by whoever runs the
        server): a file path from a web form would let anyone read the server's files. What
        went wrong reading a feed is logged, never echoed: it could quote the fetched text."""
        scheme = urlsplit(source).scheme.lower()
        if scheme not in ("http", "https", "webcal") and not (
            allow_files and source.startswith("/")
        ):
            raise errors.InvalidRequest("an ICS feed must be an https:// (or webcal://) address")
        await self._db(lambda s: _staff(s, business_id, staff_id))
        if scheme:
            await check_public_url(source, allow_private=self.allow_private_urls)
        label = name or f"ICS feed ({urlsplit(source).hostname or 'file'})"
        try:
            return await self._create(
                business_id, staff_id, "ics", _label(label), settings={"source": source}, secret={}
            )
        except errors.CalendarUnavailable as exc:
            log.info("ICS feed for %s/%s refused: %s", business_id, staff_id, exc)
            raise errors.CalendarUnavailable(
                f"no readable iCalendar feed at {urlsplit(source).hostname or 'that path'}"
            ) from None

    async def _create(
        self,
        business_id: str,
        staff_id: str,
        provider_name: str,
        name: str,
        *,
        settings: dict[str, Any],
        secret: dict[str, Any],
    ) -> CalendarConnection:
        provider = self.provider(provider_name)
        await self._db(lambda s: _staff(s, business_id, staff_id))
        conn = CalendarConnection(
            business_id=business_id,
            staff_id=staff_id,
            provider=provider_name,
            name=name,
            settings=settings,
            secret=self.vault.seal(secret) if secret else "",
        )
        account = await self.account(conn)
        await provider.check(account)  # a wrong password is refused here, on save
        calendars = await provider.list_calendars(account)
        chosen = _default_calendars(calendars)
        conn.read_calendars = [c.id for c in chosen]
        writable = [c for c in chosen if c.writable] if provider.writable else []
        conn.write_calendar = writable[0].id if writable else None
        await self._db(lambda s: s.add(conn), write=True)
        log.info("linked %s calendar %s for %s/%s", provider_name, conn.id, business_id, staff_id)
        try:
            await self.refresh(conn.id, full=True)
        except errors.CalendarUnavailable as exc:
            log.warning("first sync of %s failed (the schedule retries): %s", conn.id, exc)
        try:
            await self.watch(conn.id)
        except errors.CalendarUnavailable as exc:
            log.warning("no change notifications for %s (sync on a schedule): %s", conn.id, exc)
        return await self._db(lambda s: s.get(CalendarConnection, conn.id))  # type: ignore

    async def list_calendars(self, connection_id: str) -> list[CalendarInfo]:
        conn = await self._db(lambda s: s.get(CalendarConnection, connection_id))
        if conn is None:
            raise errors.NotFound(f"no calendar connection {connection_id}")
        return await self.provider(conn.provider).list_calendars(await self.account(conn))

    async def choose_calendars(
        self, connection_id: str, *, business_id: str, read: Sequence[str], write: str | None
    ) -> CalendarConnection:
        known = {c.id: c for c in await self.list_calendars(connection_id)}
        unknown = [c for c in [*read, *([write] if write else [])] if c not in known]
        if unknown:
            raise errors.InvalidRequest(f"no such calendar in this account: {', '.join(unknown)}")
        if write and not known[write].writable:
            raise errors.InvalidRequest(f"calendar {known[write].name} is read-only")

        def update(s: Session) -> CalendarConnection:
            conn = _own_connection(s, business_id, connection_id)
            conn.read_calendars, conn.write_calendar = list(read), write
            conn.sync, conn.updated_at = {}, self.now()
            s.execute(
                sa.delete(CalendarBusyBlock).where(CalendarBusyBlock.connection_id == connection_id)
            )
            s.add(conn)
            return conn

        conn = await self._db(update, write=True)
        await self.refresh(connection_id, full=True)
        return conn

    async def connections(
        self, business_id: str, staff_id: str | None = None
    ) -> list[CalendarConnection]:
        def load(s: Session) -> list[CalendarConnection]:
            q = select(CalendarConnection).where(
                CalendarConnection.business_id == business_id,
                CalendarConnection.status != "disconnected",
            )
            if staff_id is not None:
                q = q.where(CalendarConnection.staff_id == staff_id)
            return list(s.exec(q.order_by(CalendarConnection.created_at)))

        return await self._db(load)

    async def disconnect(self, connection_id: str, *, business_id: str) -> None:
        """Unlink: stop notifications, forget the cache and the credentials."""
        conn = await self._db(lambda s: _own_connection(s, business_id, connection_id))
        channels = await self._db(
            lambda s: list(
                s.exec(
                    select(CalendarChannel).where(CalendarChannel.connection_id == connection_id)
                )
            )
        )
        if channels:
            try:
                account = await self.account(conn)
                for row in channels:
                    await self.provider(conn.provider).stop(account, _channel_of(row))
            except errors.CalendarUnavailable as exc:
                log.info("could not stop channels of %s (they expire anyway): %s", conn.id, exc)

        def write(s: Session) -> None:
            row = _own_connection(s, business_id, connection_id)
            s.execute(
                sa.delete(CalendarChannel).where(CalendarChannel.connection_id == connection_id)
            )
            s.execute(
                sa.delete(CalendarBusyBlock).where(CalendarBusyBlock.connection_id == connection_id)
            )
            row.status, row.secret, row.sync = "disconnected", "", {}
            row.write_calendar, row.updated_at = None, self.now()
            s.add(row)

        await self._db(write, write=True)
        self._accounts.pop(connection_id, None)


# ---- database helpers (run in worker threads) --------------------------------------------


def _label(name: str) -> str:
    """A connection's name as people will see it: one short line of printable text."""
    text = "".join(ch for ch in name if ch.isprintable()).strip()
    return (text or "Calendar")[:120]


def _window_has(state: dict[str, Any], start: datetime, end: datetime) -> bool:
    return datetime.fromisoformat(state["from"]) <= start and end <= datetime.fromisoformat(
        state["to"]
    )


def _drifted(state: dict[str, Any], now: datetime, horizon: timedelta) -> bool:
    """True when the cached window no longer reaches far enough ahead (time moved on)."""
    if not state.get("to"):
        return True
    return datetime.fromisoformat(state["to"]) < now + horizon - timedelta(days=1)


def _connections(s: Session, ids: list[str]) -> list[CalendarConnection]:
    return list(
        s.exec(
            select(CalendarConnection).where(
                CalendarConnection.id.in_(ids), CalendarConnection.status != "disconnected"
            )
        )
    )


def _read_cache(
    s: Session, calendars: StaffCalendars, ids: list[str], start: datetime, end: datetime
) -> tuple[list[CalendarConnection], list[Interval]]:
    conns = _connections(s, ids)
    block = CalendarBusyBlock.__table__.c  # type: ignore[attr-defined]
    wanted = (
        sa.or_(
            *(
                sa.and_(block.connection_id == c.id, block.calendar_id.in_(c.read_calendars))
                for c in conns
            )
        )
        if conns
        else sa.false()
    )
    rows = (
        s.connection()
        .execute(
            sa.select(block.start, block.end).where(
                block.business_id == calendars.business_id,
                block.staff_id == calendars.staff_id,
                wanted,
                block.start < end,
                block.end > start,
            )
        )
        .all()
    )
    return conns, [(a, b) for a, b in rows]  # UTCDateTime: aware UTC already


def _busy_rows(s: Session, connection_id: str) -> Counter[tuple[str, str, str, str]]:
    """The busy cache of one connection, each interval once per time it is cached."""
    block = CalendarBusyBlock.__table__  # type: ignore[attr-defined]
    rows = (
        s.connection()
        .execute(
            sa.select(block.c.calendar_id, block.c.event_key, block.c.start, block.c.end).where(
                block.c.connection_id == connection_id
            )
        )
        .all()
    )
    return Counter((cal, key, a.isoformat(), b.isoformat()) for cal, key, a, b in rows)


def _own_event_ids(s: Session, connection_id: str) -> set[str]:
    return set(
        s.exec(
            select(CalendarEvent.event_id).where(
                CalendarEvent.connection_id == connection_id, CalendarEvent.event_id.is_not(None)
            )
        )
    )  # type: ignore[union-attr]


def _staff_zone(s: Session, conn: CalendarConnection) -> ZoneInfo:
    staff = s.get(Staff, (conn.business_id, conn.staff_id))
    business = s.get(Business, conn.business_id)
    assert business is not None
    return staff_zone(staff, business) if staff else ZoneInfo(business.timezone)


def _staff(s: Session, business_id: str, staff_id: str) -> Staff:
    staff = s.get(Staff, (business_id, staff_id))
    if staff is None:
        raise errors.NotFound(f"no staff member {staff_id!r} at business {business_id!r}")
    return staff


def _own_connection(s: Session, business_id: str, connection_id: str) -> CalendarConnection:
    conn = s.get(CalendarConnection, connection_id)
    if conn is None or conn.business_id != business_id or conn.status == "disconnected":
        raise errors.NotFound(f"no calendar connection {connection_id}")
    return conn


def _clear_dirty(s: Session, connection_id: str, seen: datetime) -> None:
    conn = s.get(CalendarConnection, connection_id)
    if conn is not None and conn.dirty_at is not None and conn.dirty_at <= seen:
        conn.dirty_at = None
        s.add(conn)


def _store_sync(
    s: Session,
    connection_id: str,
    calendar_id: str,
    result: SyncResult,
    window: tuple[datetime, datetime],
    now: datetime,
) -> None:
    conn = s.get(CalendarConnection, connection_id)
    if conn is None or conn.status == "disconnected" or calendar_id not in conn.read_calendars:
        return  # unlinked, or this calendar no longer counts, while we read it
    # Two processes may sync one connection at once: one writes at a time.
    lock_staff(s, conn.business_id, f"calendar-cache\x00{connection_id}")
    own = _own_event_ids(s, connection_id)
    table = CalendarBusyBlock.__table__  # type: ignore[attr-defined]
    mine = sa.and_(table.c.connection_id == connection_id, table.c.calendar_id == calendar_id)
    if result.full:
        s.execute(sa.delete(table).where(mine))
    else:
        gone = set(result.removed) | set(result.changed)
        for chunk in _chunks(sorted(gone), 500):
            s.execute(sa.delete(table).where(mine, table.c.event_key.in_(chunk)))
    rows = [
        dict(
            connection_id=connection_id,
            business_id=conn.business_id,
            staff_id=conn.staff_id,
            calendar_id=calendar_id,
            event_key=key,
            start=a,
            end=b,
        )
        for key, intervals in result.changed.items()
        if key not in own
        for a, b in intervals
    ]
    if rows:
        s.execute(sa.insert(table), rows)
    sync = dict(conn.sync)
    sync[calendar_id] = {
        "cursor": result.cursor,
        "synced_at": now.isoformat(),
        "from": window[0].isoformat(),
        "to": window[1].isoformat(),
    }
    conn.sync = sync
    conn.updated_at = now
    s.add(conn)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _token_secret(tokens: TokenSet) -> dict[str, Any]:
    return {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_at": tokens.expires_at.isoformat(),
        "account": tokens.account,
    }


def _default_calendars(calendars: list[CalendarInfo]) -> list[CalendarInfo]:
    """Which calendars count as busy by default: the primary one, else all of them."""
    primary = [c for c in calendars if c.primary]
    return primary or calendars


def _channel_row(connection_id: str, channel: Channel) -> CalendarChannel:
    return CalendarChannel(
        id=channel.id,
        connection_id=connection_id,
        calendar_id=channel.calendar_id,
        token=channel.token,
        resource_id=channel.resource_id,
        expires_at=channel.expires_at,
    )


def _claim_channel(s: Session, row: CalendarChannel, now: datetime) -> bool:
    """Take the renewal of a channel: only the process whose update lands goes on."""
    table = CalendarChannel.__table__  # type: ignore[attr-defined]
    done = s.execute(
        sa.update(table)
        .where(
            table.c.id == row.id,
            table.c.expires_at == row.expires_at,
        )
        .values(expires_at=max(row.expires_at, now) + timedelta(minutes=10))
    )
    return bool(done.rowcount)


def _extend(s: Session, channel_id: str, channel: Channel) -> None:
    row = s.get(CalendarChannel, channel_id)
    if row is not None:
        row.expires_at = channel.expires_at
        s.add(row)


def _channel_of(row: CalendarChannel) -> Channel:
    return Channel(
        id=row.id,
        calendar_id=row.calendar_id,
        expires_at=row.expires_at,
        token=row.token,
        resource_id=row.resource_id,
    )


# ---- write-back plans --------------------------------------------------------------------


@dataclass
class _Plan:
    appointment_id: str
    status: str
    updated_at: datetime | None = None
    key: str = ""
    state: str | None = None  # set when there is nothing to do: the final sync_state
    target: CalendarConnection | None = None
    spec: EventSpec | None = None
    event_id: str | None = None
    remove: tuple[CalendarConnection, str, str | None] | None = None


def _follow(s: Session, row: Appointment, link: str) -> Appointment:
    """The end of a reschedule chain, following `rescheduled_from` or `rescheduled_to`."""
    seen = {row.id}
    while (next_id := getattr(row, link)) is not None:
        following = s.get(Appointment, next_id)
        if following is None or following.id in seen:
            break
        seen.add(following.id)
        row = following
    return row


def _chain_root(s: Session, row: Appointment) -> str:
    """The chain's first appointment id: the calendar event's key for the chain's whole life."""
    return _follow(s, row, "rescheduled_from").id


def _head(s: Session, row: Appointment) -> Appointment:
    """The latest appointment of a reschedule chain (where the calendar event belongs now)."""
    return _follow(s, row, "rescheduled_to")


def _plan(s: Session, appointment_id: str, now: datetime, lease: timedelta) -> _Plan:
    """Decide the calendar writes that make the calendar match one appointment's chain."""
    given = s.get(Appointment, appointment_id)
    if given is None:
        raise errors.NotFound(f"no appointment {appointment_id}")
    apt = _head(s, given)
    if given.id != apt.id and given.sync_state != SyncState.SYNCED:
        _set_state(s, given, SyncState.SYNCED)  # its successor carries the event on
    plan = _Plan(appointment_id=apt.id, status=apt.status, updated_at=apt.updated_at)
    if apt.sync_state == SyncState.SYNCED:
        plan.state = SyncState.SYNCED.value
        return plan
    plan.key = _chain_root(s, apt)
    ev = s.get(CalendarEvent, plan.key)
    if ev is not None and ev.writing_until is not None and ev.writing_until > now:
        plan.state = SyncState.NOT_SYNCED.value  # another writer is at it; it will see this
        return plan
    # An event exists, or may exist: a write whose answer was lost may have landed.
    maybe_there = ev is not None and not ev.deleted
    target = None
    if apt.status == AppointmentStatus.CONFIRMED:
        target = s.exec(
            select(CalendarConnection)
            .where(
                CalendarConnection.business_id == apt.business_id,
                CalendarConnection.staff_id == apt.staff_id,
                CalendarConnection.status.in_(("ok", "error")),  # type: ignore[attr-defined]
                CalendarConnection.write_calendar.is_not(None),  # type: ignore[union-attr]
            )
            .order_by(CalendarConnection.created_at)
        ).first()
    moved = False
    if ev is not None and maybe_there:
        moved = target is None or (target.id, target.write_calendar) != (
            ev.connection_id,
            ev.calendar_id,
        )
        old = s.get(CalendarConnection, ev.connection_id)
        if moved and old is not None and old.status != "disconnected":
            plan.remove = (old, ev.calendar_id, ev.event_id)
    if target is None and plan.remove is None:
        cancelled = apt.status == AppointmentStatus.CANCELLED
        state = SyncState.SYNCED if ev is not None or cancelled else SyncState.NO_CALENDAR
        plan.state = _set_state(s, apt, state)
        return plan
    if ev is None:
        assert target is not None
        ev = CalendarEvent(
            key=plan.key,
            business_id=apt.business_id,
            connection_id=target.id,
            calendar_id=target.write_calendar or "",
        )
        try:
            with s.begin_nested():
                s.add(ev)
        except IntegrityError:  # another writer got there first: let it finish
            plan.state = SyncState.NOT_SYNCED.value
            return plan
    elif maybe_there and not moved:
        plan.event_id = ev.event_id  # None after a lost answer: the create is idempotent
    ev.writing_until = now + lease
    s.add(ev)
    plan.target = target
    plan.spec = _event_spec(s, apt, plan.key)
    return plan


def _set_state(s: Session, apt: Appointment, state: SyncState) -> str:
    apt.sync_state = state.value
    s.add(apt)
    return state.value


def _event_spec(s: Session, apt: Appointment, key: str) -> EventSpec:
    service = s.get(Service, (apt.business_id, apt.service_id))
    contact = s.get(Contact, apt.contact_id)
    business = s.get(Business, apt.business_id)
    staff = s.get(Staff, (apt.business_id, apt.staff_id))
    assert business is not None
    service_name = service.name if service else apt.service_id
    who = (contact.name if contact and contact.name else None) or "caller"
    lines = [f"Caller: {who}"]
    if contact is not None and contact.phone:
        lines.append(f"Phone: {contact.phone}")
    lines.append(f"Service: {service_name}")
    if apt.notes:
        lines.append(f"Notes: {apt.notes}")
    lines.append(f"Booked by Frontdesk for {business.name} (appointment {apt.id})")
    return EventSpec(
        key=key,
        summary=f"{service_name}: {who}",
        description="\n".join(lines),
        start=apt.start,
        end=apt.end,
        timezone=(staff.timezone if staff else None) or business.timezone,
    )


def _write_done(s: Session, plan: _Plan, event_id: str | None, now: datetime) -> bool:
    """Record a finished write; False when the chain changed meanwhile (write again)."""
    ev = s.get(CalendarEvent, plan.key)
    if ev is not None:
        if plan.target is not None:
            ev.connection_id = plan.target.id
            ev.calendar_id = plan.target.write_calendar or ""
            ev.event_id, ev.deleted = event_id, False
            _forget_event(s, plan.target.id, event_id)
        else:
            ev.deleted = True
        if plan.remove is not None:
            _forget_event(s, plan.remove[0].id, plan.remove[2])
        ev.attempts, ev.last_error, ev.updated_at = 0, None, now
        ev.writing_until = None
        s.add(ev)
    apt = s.get(Appointment, plan.appointment_id)
    if apt is None:
        return True
    head = _head(s, apt)
    if head.id != apt.id or apt.status != plan.status or apt.updated_at != plan.updated_at:
        # Cancelled or moved while we wrote: what we wrote is stale. Leave the chain's head
        # owed a write, so this writer (or the retry job) writes what stands now.
        _set_state(s, head, SyncState.NOT_SYNCED)
        plan.appointment_id = head.id
        return False
    apt.sync_state = SyncState.SYNCED.value
    s.add(apt)
    return True


def _forget_event(s: Session, connection_id: str, event_id: str | None) -> None:
    # Our own event in the busy cache would block the time of the very appointment it shows.
    if event_id is not None:
        s.execute(
            sa.delete(CalendarBusyBlock).where(
                CalendarBusyBlock.connection_id == connection_id,
                CalendarBusyBlock.event_key == event_id,
            )
        )


def _write_failed(s: Session, plan: _Plan, error: str, now: datetime) -> None:
    ev = s.get(CalendarEvent, plan.key) if plan.key else None
    if ev is not None:
        ev.attempts += 1
        ev.last_error, ev.updated_at = error[:500], now
        ev.writing_until = None
        s.add(ev)
    apt = s.get(Appointment, plan.appointment_id)
    if apt is not None and apt.sync_state != SyncState.NOT_SYNCED:
        apt.sync_state = SyncState.NOT_SYNCED.value
        s.add(apt)


def _pending(s: Session, now: datetime, limit: int) -> list[str]:
    rows = s.exec(
        select(Appointment)
        .where(
            Appointment.sync_state == SyncState.NOT_SYNCED.value,
            Appointment.status != AppointmentStatus.RESCHEDULED.value,
        )
        .order_by(Appointment.updated_at)
        .limit(limit * 4)
    )
    due: list[str] = []
    for apt in rows:
        ev = s.get(CalendarEvent, _chain_root(s, apt))
        if ev is not None and ev.attempts:
            wait = min(RETRY_BASE * (2 ** (ev.attempts - 1)), RETRY_CAP)
            if ev.updated_at + wait > now:
                continue
        due.append(apt.id)
        if len(due) >= limit:
            break
    return due


def _feed(
    s: Session, business_id: str, staff_id: str, lo: datetime, hi: datetime, now: datetime
) -> bytes:
    staff = _staff(s, business_id, staff_id)
    business = s.get(Business, business_id)
    assert business is not None
    rows = s.exec(
        select(Appointment)
        .where(
            Appointment.business_id == business_id,
            Appointment.staff_id == staff_id,
            Appointment.status == AppointmentStatus.CONFIRMED.value,
            Appointment.end > lo,
            Appointment.start < hi,
        )
        .order_by(Appointment.start)
    )
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//Frontdesk//Bookings//EN")
    calendar.add("version", "2.0")
    calendar.add("x-wr-calname", f"{staff.name} at {business.name} (Frontdesk)")
    calendar.add("x-published-ttl", "PT15M")
    for apt in rows:
        key = _chain_root(s, apt)
        spec = _event_spec(s, apt, key)
        event = icalendar.Event()
        # One UID for the whole reschedule chain: a calendar app moves the event it has.
        event.add("uid", f"{key}@frontdesk")
        event.add("dtstamp", now)
        event.add("last-modified", apt.updated_at)
        event.add("dtstart", apt.start)
        event.add("dtend", apt.end)
        event.add("summary", spec.summary)
        event.add("description", spec.description)
        event.add("status", "CONFIRMED")
        calendar.add_component(event)
    return calendar.to_ical()
