"""Linked calendars at work: one front for the parts that each do one job.

`CalendarService` is booking's `CalendarBusy` and `CalendarWriter` ports in one, and what the
CLI, the web routes and the dashboard call. It builds its parts and passes each the others it
needs; every method here hands over to the part whose job it is:

- `busy_cache` (`BusyCache`): busy time for slot search from the cache, live for the booking
  re-check, and bringing a connection's cache up to date; `cache_store` holds its table reads
  and writes.
- `write_back` (`WriteBack`): bookings, cancellations and reschedules into the staff member's
  calendar, and retrying the ones that failed; `chains` knows reschedule chains and the event
  that shows one.
- `channels` (`Channels`): change-notification subscriptions, their renewal, and notices.
- `linking` (`Linking`): OAuth, CalDAV and ICS linking, choosing calendars, unlinking.
- `accounts` (`Accounts`): a connection's credentials opened for its provider, its status.
- `jobs` (`CalendarJobs`): the background job and the explicit sync.
- `feed` (`BookingFeed`): a staff member's bookings as a subscribable ICS feed.
- `runtime` (`CalendarRuntime`, `Background`): what all of them share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from booking.busy import StaffCalendars
from booking.rules import Interval
from calendars.accounts import OAUTH_PROVIDERS, Accounts
from calendars.base import Account, CalendarInfo, CalendarProvider, Channel, OAuthClient, TokenSet
from calendars.busy_cache import BusyCache
from calendars.channels import Channels, Notice
from calendars.feed import BookingFeed
from calendars.jobs import CalendarJobs, SyncReport
from calendars.linking import Linking
from calendars.models import CalendarConnection
from calendars.runtime import Background, CalendarRuntime, system_now
from calendars.secrets import Vault
from calendars.write_back import WriteBack

log = logging.getLogger(__name__)

__all__ = ["OAUTH_PROVIDERS", "CalendarService", "Notice", "SyncReport"]


class CalendarService:
    """Linked calendars: busy time, write-back, notifications, linking, the background job."""

    def __init__(
        self,
        *,
        engine: Engine,
        vault: Vault,
        providers: Mapping[str, CalendarProvider],
        oauth: Mapping[str, OAuthClient] | None = None,
        public_base_url: str = "http://127.0.0.1:8000",
        now: Callable[[], datetime] = system_now,
        horizon: timedelta = timedelta(days=90),
        max_age: timedelta = timedelta(minutes=15),
        write_lease: timedelta = timedelta(seconds=90),
        allow_private_urls: bool = True,
    ) -> None:
        self.runtime = CalendarRuntime(
            engine=engine,
            vault=vault,
            providers=providers,
            oauth=dict(oauth or {}),
            public_base_url=public_base_url,
            now=now,
            horizon=horizon,
            max_age=max_age,
            write_lease=write_lease,
            allow_private_urls=allow_private_urls,
        )
        self.background = Background()
        self.accounts = Accounts(self.runtime)
        self.cache = BusyCache(self.runtime, self.accounts, self.background)
        self.channels = Channels(self.runtime, self.accounts, self.cache, self.background)
        self.write_back = WriteBack(self.runtime, self.accounts)
        self.linking = Linking(self.runtime, self.accounts, self.cache, self.channels)
        self.jobs = CalendarJobs(self.runtime, self.cache, self.channels, self.write_back)
        self.booking_feed = BookingFeed(self.runtime)

    # ---- settings the callers read (and tests change) ------------------------------------

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def vault(self) -> Vault:
        return self.runtime.vault

    @property
    def providers(self) -> Mapping[str, CalendarProvider]:
        return self.runtime.providers

    @providers.setter
    def providers(self, providers: Mapping[str, CalendarProvider]) -> None:
        self.runtime.providers = providers

    @property
    def public_base_url(self) -> str:
        return self.runtime.public_base_url

    @public_base_url.setter
    def public_base_url(self, url: str) -> None:
        self.runtime.public_base_url = url

    @property
    def max_age(self) -> timedelta:
        return self.runtime.max_age

    def provider(self, name: str) -> CalendarProvider:
        return self.runtime.provider(name)

    # ---- busy time (booking's CalendarBusy port) -----------------------------------------

    async def busy(
        self, calendars: StaffCalendars, *, start: datetime, end: datetime, live: bool = False
    ) -> list[Interval]:
        return await self.cache.busy(calendars, start=start, end=end, live=live)

    async def refresh(self, connection_id: str, *, full: bool = False) -> None:
        await self.cache.refresh(connection_id, full=full)

    def poke(self, connection_id: str) -> None:
        self.cache.poke(connection_id)

    async def find(self, connection_id: str) -> CalendarConnection | None:
        return await self.cache.find(connection_id)

    async def account(self, conn: CalendarConnection) -> Account:
        return await self.accounts.account(conn)

    # ---- write-back (booking's CalendarWriter port) --------------------------------------

    async def sync_appointment(self, appointment_id: str) -> str:
        return await self.write_back.sync_appointment(appointment_id)

    async def retry_pending(self, *, limit: int = 50) -> int:
        return await self.write_back.retry_pending(limit=limit)

    # ---- change notifications ------------------------------------------------------------

    def callback_url(self, provider: str) -> str:
        return self.channels.callback_url(provider)

    async def watch(self, connection_id: str) -> list[Channel]:
        return await self.channels.watch(connection_id)

    async def renew_channels(self, only: str | None = None) -> int:
        return await self.channels.renew_channels(only)

    def renew_soon(self, channel_id: str) -> None:
        self.channels.renew_soon(channel_id)

    async def notified(self, channel_id: str, token: str | None, *, resync: bool = False) -> str:
        return await self.channels.notified(channel_id, token, resync=resync)

    async def check_notices(self, notices: Sequence[Notice]) -> list[Notice]:
        return await self.channels.check_notices(notices)

    async def changed(self, notices: Sequence[Notice]) -> None:
        await self.channels.changed(notices)

    # ---- the background job and the explicit sync ----------------------------------------

    async def sync_now(
        self,
        *,
        business_id: str | None = None,
        staff_id: str | None = None,
        connection_id: str | None = None,
    ) -> list[SyncReport]:
        return await self.jobs.sync_now(
            business_id=business_id, staff_id=staff_id, connection_id=connection_id
        )

    async def tick(self, *, poll: timedelta | None = None) -> None:
        await self.jobs.tick(poll=poll)

    async def refresh_due(self, *, poll: timedelta | None = None) -> int:
        return await self.jobs.refresh_due(poll=poll)

    async def upkeep(self) -> None:
        await self.jobs.upkeep()

    async def run_forever(self, every: float, *, poll: float | None = None) -> None:
        await self.jobs.run_forever(every, poll=poll)

    async def wait_pokes(self) -> None:
        """Wait for the background work started so far (refreshes, renewals)."""
        await self.background.wait()

    async def close(self) -> None:
        """Stop background work and let every provider close its kept connections.

        A provider whose `aclose` fails is logged (its kind and the error's type: the message
        may quote an address or a token) and the others are still closed; nothing is raised."""
        try:
            await self.background.cancel()
        finally:
            for name, provider in self.runtime.providers.items():
                try:
                    await provider.aclose()
                except Exception as exc:
                    log.warning(
                        "closing the %s calendar provider failed (%s)", name, type(exc).__name__
                    )

    # ---- the booking feed ----------------------------------------------------------------

    def feed_path(self, business_id: str, staff_id: str) -> str:
        return self.booking_feed.path(business_id, staff_id)

    def feed_url(self, business_id: str, staff_id: str) -> str:
        return self.booking_feed.url(business_id, staff_id)

    async def feed(self, business_id: str, staff_id: str, token: str) -> bytes:
        return await self.booking_feed.feed(business_id, staff_id, token)

    # ---- linking -------------------------------------------------------------------------

    def redirect_uri(self, provider: str) -> str:
        return self.linking.redirect_uri(provider)

    async def start_oauth(
        self, provider: str, *, business_id: str, staff_id: str, return_to: str | None = None
    ) -> str:
        return await self.linking.start_oauth(
            provider, business_id=business_id, staff_id=staff_id, return_to=return_to
        )

    async def finish_oauth(
        self, provider: str, params: dict[str, str]
    ) -> tuple[CalendarConnection, str | None]:
        return await self.linking.finish_oauth(provider, params)

    async def link_tokens(
        self,
        provider: str,
        *,
        business_id: str,
        staff_id: str,
        tokens: TokenSet,
        name: str | None = None,
    ) -> CalendarConnection:
        return await self.linking.link_tokens(
            provider, business_id=business_id, staff_id=staff_id, tokens=tokens, name=name
        )

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
        return await self.linking.link_caldav(
            business_id=business_id,
            staff_id=staff_id,
            url=url,
            username=username,
            password=password,
            name=name,
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
        return await self.linking.link_ics(
            business_id=business_id,
            staff_id=staff_id,
            source=source,
            name=name,
            allow_files=allow_files,
        )

    async def list_calendars(self, connection_id: str) -> list[CalendarInfo]:
        return await self.linking.list_calendars(connection_id)

    async def choose_calendars(
        self, connection_id: str, *, business_id: str, read: Sequence[str], write: str | None
    ) -> CalendarConnection:
        return await self.linking.choose_calendars(
            connection_id, business_id=business_id, read=read, write=write
        )

    async def connections(
        self, business_id: str, staff_id: str | None = None
    ) -> list[CalendarConnection]:
        return await self.linking.connections(business_id, staff_id)

    async def disconnect(self, connection_id: str, *, business_id: str) -> None:
        await self.linking.disconnect(connection_id, business_id=business_id)
