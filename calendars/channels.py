"""Change notifications: subscriptions with the providers that push (Google watch channels,
Graph subscriptions), their renewal, and what a notification does when it arrives.

A notification is checked against its channel's secret token, recorded on its connection
(`dirty_at`, before the answer goes back, so nothing is lost if the process stops) and the
connection's busy cache is refreshed in the background.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial

import sqlalchemy as sa
from sqlmodel import Session, col, select

from booking import errors
from calendars.accounts import Accounts
from calendars.base import Channel
from calendars.busy_cache import BusyCache
from calendars.models import CalendarChannel, CalendarConnection
from calendars.runtime import Background, CalendarRuntime

log = logging.getLogger(__name__)

RENEW_BEFORE = timedelta(hours=12)


@dataclass(frozen=True)
class Notice:
    """A provider's "this channel changed", and once checked, what it is worth."""

    channel_id: str
    token: str | None
    resync: bool = False  # the provider lost changes (Graph's `missed`): read everything again
    verdict: str = "unchecked"  # then "ok", "unknown" or "forged"
    connection_id: str | None = None


class Channels:
    """Subscribes read calendars to change notifications, renews them, and takes notices."""

    def __init__(
        self,
        runtime: CalendarRuntime,
        accounts: Accounts,
        cache: BusyCache,
        background: Background,
    ) -> None:
        self.runtime = runtime
        self.accounts = accounts
        self.cache = cache
        self.background = background

    def callback_url(self, provider: str) -> str:
        return self.runtime.url(f"/calendars/notify/{provider}")

    async def watch(self, connection_id: str) -> list[Channel]:
        """Subscribe to changes of every read calendar of a connection that has none yet."""
        db = self.runtime.db
        conn = await db(lambda s: s.get(CalendarConnection, connection_id))
        if conn is None:
            raise errors.NotFound(f"no calendar connection {connection_id}")
        provider = self.runtime.provider(conn.provider)
        if not provider.notifies:
            return []
        existing = await db(
            lambda s: {
                c.calendar_id
                for c in s.exec(
                    select(CalendarChannel).where(CalendarChannel.connection_id == connection_id)
                )
            }
        )
        account = await self.accounts.account(conn)
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
                row = _channel_row(conn.id, channel)
                await db(partial(_add, row=row), write=True)
                made.append(channel)
        return made

    async def renew_channels(self, only: str | None = None) -> int:
        """Replace subscriptions that expire soon (Google never renews a channel for you),
        or just the channel `only` (Graph asked for reauthorization, or removed it)."""
        db, now = self.runtime.db, self.runtime.now
        soon = now() + RENEW_BEFORE
        query = (
            select(CalendarChannel).where(CalendarChannel.expires_at < soon)
            if only is None
            else select(CalendarChannel).where(CalendarChannel.id == only)
        )
        rows = await db(lambda s: list(s.exec(query)))
        renewed = 0
        for row in rows:
            # Claim the channel first, so two processes never both replace it.
            claimed = await db(partial(_claim_channel, row=row, now=now()), write=True)
            if not claimed:
                continue
            conn = await db(partial(_connection, connection_id=row.connection_id))
            if conn is None or conn.status == "disconnected":
                continue
            if await self._renew(conn, row):
                renewed += 1
        return renewed

    async def _renew(self, conn: CalendarConnection, row: CalendarChannel) -> bool:
        db = self.runtime.db
        provider = self.runtime.provider(conn.provider)
        account = await self.accounts.account(conn)
        try:  # Graph extends a subscription in place; Google answers None
            extended = await provider.renew(account, _channel_of(row))
        except errors.CalendarUnavailable as exc:
            log.warning("could not renew channel %s: %s", row.id, exc)
            return False
        if extended is not None:
            await db(lambda s: _extend(s, row.id, extended), write=True)
            return True
        try:
            channel = await provider.watch(
                account,
                calendar_id=row.calendar_id,
                callback_url=self.callback_url(conn.provider),
                token=secrets.token_urlsafe(24),
            )
        except errors.CalendarUnavailable as exc:
            log.warning("could not renew channel %s: %s", row.id, exc)
            return False

        def swap(s: Session) -> bool:
            stale = s.get(CalendarChannel, row.id)
            if stale is None:
                return False  # unlinked meanwhile: the new channel must go too
            s.delete(stale)
            if channel is not None:
                s.add(_channel_row(row.connection_id, channel))
            return True

        if not await db(swap, write=True):
            if channel is not None:
                with contextlib.suppress(errors.CalendarUnavailable):
                    await provider.stop(account, channel)
            return False
        try:
            await provider.stop(account, _channel_of(row))
        except errors.CalendarUnavailable as exc:
            log.info("stopping old channel %s failed (it expires anyway): %s", row.id, exc)
        return True

    def renew_soon(self, channel_id: str) -> None:
        """Renew one channel in the background (the provider asked for it)."""

        async def run() -> None:
            try:
                await self.renew_channels(only=channel_id)
            except Exception as exc:  # logged; the scheduled pass renews before expiry
                log.warning("renewing channel %s failed: %s", channel_id, exc)

        self.background.start(f"renew:{channel_id}", run())

    async def stop_all(self, conn: CalendarConnection) -> None:
        """Stop the connection's subscriptions with the provider (best effort: they expire)."""
        rows = await self.runtime.db(
            lambda s: list(
                s.exec(select(CalendarChannel).where(CalendarChannel.connection_id == conn.id))
            )
        )
        if not rows:
            return
        try:
            account = await self.accounts.account(conn)
            for row in rows:
                await self.runtime.provider(conn.provider).stop(account, _channel_of(row))
        except errors.CalendarUnavailable as exc:
            log.info("could not stop channels of %s (they expire anyway): %s", conn.id, exc)

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
            rows = s.exec(select(CalendarChannel).where(col(CalendarChannel.id).in_(ids)))
            return {row.id: (row.connection_id, row.token) for row in rows}

        channels = await self.runtime.db(read) if ids else {}
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
            conns = s.exec(select(CalendarConnection).where(col(CalendarConnection.id).in_(dirty)))
            for conn in conns:
                conn.dirty_at = self.runtime.now()
                if conn.id in resync:
                    conn.sync = {}
                s.add(conn)

        await self.runtime.db(mark, write=True)
        for connection_id in sorted(dirty):
            self.cache.poke(connection_id)


# ---- channel rows --------------------------------------------------------------------------


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
    claimed = s.execute(
        sa.update(CalendarChannel)
        .where(
            col(CalendarChannel.id) == row.id,
            col(CalendarChannel.expires_at) == row.expires_at,
        )
        .values(expires_at=max(row.expires_at, now) + timedelta(minutes=10))
        .returning(col(CalendarChannel.id))
    ).first()
    return claimed is not None


def _add(s: Session, row: CalendarChannel) -> None:
    s.add(row)


def _connection(s: Session, connection_id: str) -> CalendarConnection | None:
    return s.get(CalendarConnection, connection_id)


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
