"""The interface every calendar provider implements, and the values that cross it.

A provider serves one kind of account (Google, Microsoft, CalDAV, ICS) and knows nothing of
businesses, staff or the database: `calendars.service` hands it one `Account` at a time (the
decrypted credentials and the non-secret settings of one linked connection) and stores what it
returns. Times crossing this interface are aware datetimes; intervals are aware UTC, half-open.

Errors: every provider raises `booking.errors.CalendarUnavailable` (or a subclass below) for
anything that goes wrong talking to the provider, with a message that names the calendar
without any credentials. `NeedsRelink` means the grant is gone (revoked, expired, password
changed): the connection is marked for re-linking, never retried in a loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from booking.errors import CalendarUnavailable
from booking.rules import Interval


class NeedsRelink(CalendarUnavailable):
    """The account's grant or password no longer works; a person has to link it again.

    Never retryable: trying again with the same grant cannot help."""

    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class SyncReset(CalendarUnavailable):
    """An incremental sync cursor is no longer valid (Google 410 Gone, Graph resync required).

    Providers usually handle it themselves by answering a full sync; raising it asks the caller
    to drop the cursor and call `sync` again with `cursor=None`. Not retryable as it stands:
    the same cursor is refused again.
    """

    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class TokenSet:
    """OAuth tokens as the token endpoint returned them."""

    access_token: str
    expires_at: datetime  # aware UTC
    refresh_token: str | None = None
    account: str | None = None  # the account's e-mail / user principal name, when known
    scope: str | None = None


class Tokens(Protocol):
    """A live access token for one OAuth account; refreshes silently and stores new tokens."""

    async def access_token(self, *, force_refresh: bool = False) -> str:
        """A valid access token. `force_refresh=True` after a 401 with the current one.

        Raises `NeedsRelink` when the refresh token is refused (`invalid_grant`)."""
        ...


@dataclass(frozen=True)
class Account:
    """One linked account as a provider sees it.

    `settings` is non-secret and provider-specific (CalDAV: `url`, `username`; ICS: `source`;
    Google/Microsoft: `account` e-mail). `secret` holds decrypted secrets a provider reads
    itself (CalDAV: `password`). `tokens` is set for OAuth providers. `name` is for messages.
    """

    id: str
    provider: str
    settings: dict[str, Any] = field(default_factory=dict)
    secret: dict[str, Any] = field(default_factory=dict)
    tokens: Tokens | None = None
    name: str = "calendar"


@dataclass(frozen=True)
class CalendarInfo:
    """One calendar of an account."""

    id: str  # the provider's id (Google calendarId, Graph calendar id, CalDAV collection URL)
    name: str
    primary: bool = False  # the provider's default calendar (bookings go there by default)
    writable: bool = True
    counts_busy: bool = (
        True  # the provider marks it as the user's own busy calendar (read by default)
    )


@dataclass(frozen=True)
class EventSpec:
    """An appointment as it is written into a calendar.

    `key` is ours and stable for the appointment's whole life (the first appointment id of a
    reschedule chain): providers derive their idempotency handle from it (Google: a base32hex
    event id; Graph: `transactionId`; CalDAV: the UID with `If-None-Match: *`).
    """

    key: str
    summary: str
    description: str
    start: datetime  # aware
    end: datetime  # aware
    timezone: str  # IANA zone of the staff member, for providers that show it
    location: str | None = None


@dataclass
class SyncResult:
    """What changed in one calendar since `cursor` (or everything, when `full`).

    `changed` maps a provider event key (an event id, or an instance id for recurring events)
    to that event's busy intervals inside the synced window (an empty list means the event is
    now free time: cancelled, transparent, declined); `removed` holds keys of deleted events.
    When `full` is true, `changed` is the complete busy picture of the window and anything
    cached before for this calendar is dropped. `cursor` is what to pass next time (Google
    `nextSyncToken`, Graph `@odata.deltaLink`), or None when the provider has none.
    """

    full: bool
    changed: dict[str, list[Interval]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    cursor: str | None = None


@dataclass(frozen=True)
class Channel:
    """A change-notification subscription (Google watch channel, Graph subscription)."""

    id: str  # Google channel id / Graph subscription id
    calendar_id: str
    expires_at: datetime  # aware UTC
    token: str  # Google X-Goog-Channel-Token / Graph clientState: checked on every notification
    resource_id: str | None = None  # Google resourceId, needed to stop a channel


class CalendarProvider(Protocol):
    """One kind of linked calendar account."""

    name: str  # "google", "microsoft", "caldav", "ics"
    writable: bool  # False for read-only kinds (ICS)
    notifies: bool  # True when `watch` exists

    async def check(self, account: Account) -> None:
        """Verify that the account can be reached with its credentials (on save / link)."""
        ...

    async def list_calendars(self, account: Account) -> list[CalendarInfo]: ...

    async def busy(
        self,
        account: Account,
        *,
        calendar_ids: list[str],
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
    ) -> list[Interval]:
        """A live read of busy time in `[start, end)` across `calendar_ids`.

        Tentative counts as busy; free/transparent, declined and cancelled do not. `tz` is the
        staff member's zone, for all-day dates and floating times. Intervals are aware UTC,
        sorted, not clipped to the window."""
        ...

    async def sync(
        self,
        account: Account,
        *,
        calendar_id: str,
        tz: ZoneInfo,
        cursor: str | None,
        start: datetime,
        end: datetime,
    ) -> SyncResult:
        """Changes in one calendar since `cursor`, or a full read of `[start, end)` when the
        cursor is None, or invalid (then `full` is true)."""
        ...

    async def put_event(
        self, account: Account, *, calendar_id: str, event: EventSpec, event_id: str | None
    ) -> str:
        """Create the event (when `event_id` is None) or update it; returns the event id.

        Idempotent: a retry after a timeout whose first attempt did land finds that event and
        updates it instead of writing a second one. Updating an event that was deleted in the
        calendar writes it anew."""
        ...

    async def delete_event(self, account: Account, *, calendar_id: str, event_id: str) -> None:
        """Delete the event; one already gone counts as deleted."""
        ...

    async def watch(
        self, account: Account, *, calendar_id: str, callback_url: str, token: str
    ) -> Channel | None:
        """Subscribe to changes of one calendar, notifications going to `callback_url` and
        carrying `token`; None when the provider has no notifications."""
        ...

    async def renew(self, account: Account, channel: Channel) -> Channel | None:
        """Extend a subscription in place (Graph: a new expiry); None when the provider cannot
        (Google channels, providers without notifications) or the subscription is gone: the
        caller then watches anew and stops the old one."""
        ...

    async def stop(self, account: Account, channel: Channel) -> None:
        """End a subscription; one already gone counts as stopped."""
        ...

    async def aclose(self) -> None:
        """Release what the provider keeps between calls (connections); at shutdown."""
        ...


# A function the service gives OAuth providers' token objects to persist refreshed tokens.
SaveTokens = Callable[[TokenSet], Awaitable[None]]


class OAuthClient(Protocol):
    """The authorization-code flow of one OAuth provider (with `state` and PKCE)."""

    name: str

    def start(
        self, *, redirect_uri: str, state: str, login_hint: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """The URL to send the person's browser to, and the flow data to keep server-side
        (it holds the PKCE verifier and `state`; never sent to the browser)."""
        ...

    async def finish(self, flow: dict[str, Any], params: dict[str, str]) -> TokenSet:
        """Exchange the callback's query parameters (`code`, `state`, or `error`) for tokens.

        Raises `booking.errors.InvalidRequest` for a mismatched state or an `error` answer."""
        ...

    async def refresh(self, refresh_token: str) -> TokenSet:
        """New tokens from a refresh token. Raises `NeedsRelink` on `invalid_grant`."""
        ...
