"""Linking calendar accounts to staff members: OAuth (Google, Microsoft), CalDAV, ICS feeds;
which of an account's calendars are read and written; listing and unlinking connections.

A new connection reads the calendars the provider marks as the user's own busy ones and writes
to its primary calendar (`selection.default_choice`); its busy cache is filled at once and its
calendars subscribed to change notifications where the provider pushes them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlmodel import Session, col, select

from booking import errors
from booking.models import Staff
from calendars import selection
from calendars.accounts import Accounts, token_secret
from calendars.base import CalendarInfo, NeedsRelink, TokenSet
from calendars.busy_cache import BusyCache
from calendars.channels import Channels
from calendars.models import CalendarBusyBlock, CalendarChannel, CalendarConnection, OAuthFlow
from calendars.netguard import check_public_url
from calendars.runtime import CalendarRuntime

log = logging.getLogger(__name__)

FLOW_TTL = timedelta(minutes=15)


class Linking:
    """Creates, revives, re-configures and removes calendar connections."""

    def __init__(
        self, runtime: CalendarRuntime, accounts: Accounts, cache: BusyCache, channels: Channels
    ) -> None:
        self.runtime = runtime
        self.accounts = accounts
        self.cache = cache
        self.channels = channels

    # ---- OAuth (Google, Microsoft) --------------------------------------------------------

    def redirect_uri(self, provider: str) -> str:
        return self.runtime.url(f"/calendars/callback/{provider}")

    async def start_oauth(
        self, provider: str, *, business_id: str, staff_id: str, return_to: str | None = None
    ) -> str:
        """Begin linking a Google or Microsoft account; returns the URL to send the browser to."""
        client = self.runtime.oauth.get(provider)
        if client is None:
            raise errors.NotConfigured(
                f"{provider} calendars are not configured on this server "
                f"(set FRONTDESK_{provider.upper()}_CLIENT_ID and _CLIENT_SECRET)"
            )
        await self.runtime.db(lambda s: _staff(s, business_id, staff_id))
        state = secrets.token_urlsafe(24)
        # MSAL reads the authority's OpenID configuration on first use: not on the event loop.
        url, flow = await asyncio.to_thread(
            client.start, redirect_uri=self.redirect_uri(provider), state=state
        )
        row = OAuthFlow(
            state=state,
            provider=provider,
            business_id=business_id,
            staff_id=staff_id,
            flow=self.runtime.vault.seal(flow),
            return_to=return_to,
            expires_at=self.runtime.now() + FLOW_TTL,
        )
        await self.runtime.db(lambda s: s.add(row), write=True)
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

        flow_row = await self.runtime.db(take, write=True)
        if flow_row.expires_at < self.runtime.now():
            raise errors.InvalidRequest("this link has expired; start linking the calendar again")
        client = self.runtime.oauth[provider]
        tokens = await client.finish(self.runtime.vault.open(flow_row.flow), params)
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
        if provider not in self.runtime.oauth:
            raise errors.NotConfigured(f"{provider} calendars are not configured on this server")
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
            secret=token_secret(tokens),
        )

    async def _relink(
        self, provider: str, business_id: str, staff_id: str, tokens: TokenSet
    ) -> CalendarConnection | None:
        """Linking an account again that needs re-linking revives that connection in place
        (its calendars, cache and written events stay), rather than adding a second one."""
        sealed = self.runtime.vault.seal(token_secret(tokens))

        def revive(s: Session) -> CalendarConnection | None:
            for conn in s.exec(
                select(CalendarConnection).where(
                    CalendarConnection.business_id == business_id,
                    CalendarConnection.staff_id == staff_id,
                    CalendarConnection.provider == provider,
                    col(CalendarConnection.status).in_(("needs_relink", "error")),
                )
            ):
                if conn.settings.get("account") == tokens.account:
                    conn.secret, conn.status, conn.last_error = sealed, "ok", None
                    conn.sync, conn.updated_at = {}, self.runtime.now()
                    s.add(conn)
                    return conn
            return None

        conn = await self.runtime.db(revive, write=True)
        if conn is None:
            return None
        self.accounts.forget(conn.id)
        log.info("re-linked %s calendar %s", provider, conn.id)
        try:
            await self.cache.refresh(conn.id, full=True)
        except errors.CalendarUnavailable as exc:
            log.warning("first sync of %s after re-linking failed: %s", conn.id, exc)
        return await self.cache.find(conn.id)

    # ---- CalDAV and ICS -------------------------------------------------------------------

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
        await self.runtime.db(lambda s: _staff(s, business_id, staff_id))
        await check_public_url(url, allow_private=self.runtime.allow_private_urls)
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
        await self.runtime.db(lambda s: _staff(s, business_id, staff_id))
        if scheme:
            await check_public_url(source, allow_private=self.runtime.allow_private_urls)
        label = name or f"ICS feed ({urlsplit(source).hostname or 'file'})"
        try:
            return await self._create(
                business_id, staff_id, "ics", _label(label), settings={"source": source}, secret={}
            )
        except errors.CalendarUnavailable as exc:
            log.info("ICS feed for %s/%s refused: %s", business_id, staff_id, exc)
            raise errors.CalendarUnavailable(
                f"no readable iCalendar feed at {urlsplit(source).hostname or 'that path'}",
                retryable=exc.retryable,
                retry_after=exc.retry_after,
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
        db = self.runtime.db
        provider = self.runtime.provider(provider_name)
        await db(lambda s: _staff(s, business_id, staff_id))
        conn = CalendarConnection(
            business_id=business_id,
            staff_id=staff_id,
            provider=provider_name,
            name=name,
            settings=settings,
            secret=self.runtime.vault.seal(secret) if secret else "",
        )
        account = await self.accounts.account(conn)
        await provider.check(account)  # a wrong password is refused here, on save
        calendars = await provider.list_calendars(account)
        conn.read_calendars, conn.write_calendar = selection.default_choice(calendars)
        if not provider.writable:
            conn.write_calendar = None
        await db(lambda s: s.add(conn), write=True)
        log.info("linked %s calendar %s for %s/%s", provider_name, conn.id, business_id, staff_id)
        try:
            await self.cache.refresh(conn.id, full=True)
        except errors.CalendarUnavailable as exc:
            log.warning("first sync of %s failed (the schedule retries): %s", conn.id, exc)
        try:
            await self.channels.watch(conn.id)
        except errors.CalendarUnavailable as exc:
            log.warning("no change notifications for %s (sync on a schedule): %s", conn.id, exc)
        linked = await self.cache.find(conn.id)
        if linked is None:  # unlinked while its first sync ran
            raise errors.NotFound(f"no calendar connection {conn.id}")
        return linked

    # ---- which calendars count ------------------------------------------------------------

    async def list_calendars(self, connection_id: str) -> list[CalendarInfo]:
        conn = await self.runtime.db(lambda s: s.get(CalendarConnection, connection_id))
        if conn is None:
            raise errors.NotFound(f"no calendar connection {connection_id}")
        provider = self.runtime.provider(conn.provider)
        try:
            return await provider.list_calendars(await self.accounts.account(conn))
        except NeedsRelink as exc:  # the page and the CLI then say so, as after a failed sync
            await self.accounts.mark(conn.id, "needs_relink", str(exc))
            raise

    async def choose_calendars(
        self, connection_id: str, *, business_id: str, read: Sequence[str], write: str | None
    ) -> CalendarConnection:
        """Save which calendars are read and which one is written, then read them.

        The account's calendars are listed first to check the choice: when that fails (a server
        down: `CalendarUnavailable`; a refused grant: `NeedsRelink`) nothing is saved and the
        error is raised. Once saved, a failed first read is logged and shows in the returned
        connection's status and `last_error`; it does not undo the choice."""
        known = {c.id: c for c in await self.list_calendars(connection_id)}
        unknown = [c for c in [*read, *([write] if write else [])] if c not in known]
        if unknown:
            raise errors.InvalidRequest(f"no such calendar in this account: {', '.join(unknown)}")
        if write and not known[write].writable:
            raise errors.InvalidRequest(f"calendar {known[write].name} is read-only")

        def update(s: Session) -> CalendarConnection:
            conn = _own_connection(s, business_id, connection_id)
            conn.read_calendars, conn.write_calendar = list(read), write
            conn.sync, conn.updated_at = {}, self.runtime.now()
            s.execute(
                sa.delete(CalendarBusyBlock).where(
                    col(CalendarBusyBlock.connection_id) == connection_id
                )
            )
            s.add(conn)
            return conn

        conn = await self.runtime.db(update, write=True)
        try:
            await self.cache.refresh(connection_id, full=True)
        except errors.CalendarUnavailable as exc:
            # Saved: the choice stands, the connection's status says the read failed, and the
            # background job reads it again. Only this read after saving fails softly.
            log.warning("first read of %s after choosing calendars failed: %s", connection_id, exc)
            found = await self.cache.find(connection_id)
            if found is not None:
                return found
        return conn

    # ---- the connections ------------------------------------------------------------------

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
            return list(s.exec(q.order_by(col(CalendarConnection.created_at))))

        return await self.runtime.db(load)

    async def disconnect(self, connection_id: str, *, business_id: str) -> None:
        """Unlink: stop notifications, forget the cache and the credentials."""
        conn = await self.runtime.db(lambda s: _own_connection(s, business_id, connection_id))
        await self.channels.stop_all(conn)

        def write(s: Session) -> None:
            row = _own_connection(s, business_id, connection_id)
            s.execute(
                sa.delete(CalendarChannel).where(
                    col(CalendarChannel.connection_id) == connection_id
                )
            )
            s.execute(
                sa.delete(CalendarBusyBlock).where(
                    col(CalendarBusyBlock.connection_id) == connection_id
                )
            )
            row.status, row.secret, row.sync = "disconnected", "", {}
            row.write_calendar, row.updated_at = None, self.runtime.now()
            s.add(row)

        await self.runtime.db(write, write=True)
        self.accounts.forget(connection_id)


def _label(name: str) -> str:
    """A connection's name as people will see it: one short line of printable text."""
    text = "".join(ch for ch in name if ch.isprintable()).strip()
    return (text or "Calendar")[:120]


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
