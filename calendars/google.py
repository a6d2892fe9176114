"""Google Calendar accounts, through google-api-python-client, and Google's OAuth 2.0 flow.

`GoogleProvider` reads and writes one linked Google account's calendars:

- busy time from `freeBusy.query`, at most 50 calendars and 90 days a query, every calendar's
  `errors` checked (Google answers 200 when one calendar fails). Google decides what is busy
  there: transparent ("show as available") and declined events are free, tentative ones busy,
  all-day dates are days in the calendar's own time zone.
- the busy cache's feed from `events.list` with `singleEvents=true`: a full read of a window, or
  the changes since a `syncToken` (which must come without timeMin/timeMax); 410 Gone means
  the token expired, and the answer is a full read instead (`full=True`).
- appointments written under an event id derived from our key (base32hex), so a retry after a
  timed-out insert that did land meets 409 and updates that event instead of adding another.
- change notifications through `events.watch` channels, ended with `channels.stop`.

The library blocks, so each request runs in a worker thread under the operation's time limit,
with an `httplib2.Http` lent to it alone (httplib2 is not thread-safe) from the provider's
`_Https`, which keeps them and their open connections between requests: no new TCP and TLS
handshake per request. `GoogleProvider.close` ends them. The service object is built once per
endpoint from the bundled discovery document. 408, 429, 5xx and 403 rate-limit answers and
network errors are retried by `booking.retry.RetryPolicy` (back-off, Retry-After honoured) a
bounded number of times inside that limit; any other 4xx is not retryable; a 401 refreshes the
access token once. `GoogleOAuth` is the authorization-code flow with `state` and
PKCE, over httpx.

Errors (all are `booking.errors.CalendarUnavailable`, whose messages never hold a token):

    CalendarUnavailable       unreachable, too slow, rate-limited past the limit, refused
    ├── GoogleApiError        Google answered an error (`status`, `reason`; retryable only
    │                         for 408, 429, 5xx and rate-limit 403s)
    └── NeedsRelink           the grant is gone: refresh refused, or a fresh token refused too
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Self
from urllib.parse import urlencode, urljoin
from zoneinfo import ZoneInfo

import httplib2
import httpx
from googleapiclient import discovery
from googleapiclient.errors import HttpError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from booking.clock import Clock, SystemClock
from booking.errors import CalendarUnavailable, InvalidRequest
from booking.retry import RetryPolicy, parse_retry_after, retryable_status
from booking.rules import Interval, merge
from calendars.base import (
    Account,
    CalendarInfo,
    Channel,
    EventSpec,
    NeedsRelink,
    SyncResult,
    TokenSet,
)

_MAX_CALENDARS_PER_QUERY = 50  # freeBusy.query's calendarExpansionMax limit
_MAX_QUERY_RANGE = timedelta(days=90)  # freeBusy answers 400 for ranges much longer
_PAGE_SIZE = 2500  # events.list's largest maxResults
_RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
_WRITE_ROLES = frozenset({"owner", "writer"})
# Idle `httplib2.Http`s kept (each holds a connection to Google), and how long: Google's front
# ends close idle connections after some minutes; one kept longer only costs a reconnect.
_IDLE_HTTPS = 8
_IDLE_SECONDS = 60.0
DEFAULT_SCOPES = (
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/calendar.events",
)


class GoogleApiError(CalendarUnavailable):
    """Google answered with an error status; `reason` is the first `errors[].reason`."""

    def __init__(
        self, message: str, *, status: int, reason: str, retry_after: float | None = None
    ) -> None:
        retryable = retryable_status(status) or (status == 403 and reason in _RATE_LIMIT_REASONS)
        super().__init__(message, retryable=retryable, retry_after=retry_after)
        self.status = status
        self.reason = reason


def event_id_for(key: str) -> str:
    """The Google event id for our appointment key: base32hex (a-v, 0-9), 5-1024 characters.

    Deterministic, so every attempt to write the same appointment names the same event."""
    encoded = base64.b32hexencode(key.encode()).decode().rstrip("=").lower()
    if len(encoded) < 5:
        encoded = encoded.ljust(5, "0")
    if len(encoded) > 1024:
        raise ValueError("event key too long for a Google event id")
    return encoded


# ---- push notifications, as Google sends them ------------------------------------------------

_Printable = Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,256}$")]
MAX_HEADER = 2048  # X-Goog-Resource-URI is the longest: a calendar's events URL


class PushHeaders(BaseModel):
    """A watch channel's push: everything is in the X-Goog-* headers, the body is empty."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    channel_id: _Printable = Field(alias="x-goog-channel-id")
    token: _Printable | None = Field(default=None, alias="x-goog-channel-token")
    resource_state: str = Field(alias="x-goog-resource-state", pattern=r"^[a-z_]{1,32}$")
    resource_id: _Printable | None = Field(default=None, alias="x-goog-resource-id")
    message_number: str | None = Field(
        default=None, alias="x-goog-message-number", pattern=r"^[0-9]{1,20}$"
    )

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> Self:
        """The push's headers; raises `pydantic.ValidationError` if any is missing or odd."""
        return cls.model_validate(
            {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-goog-")}
        )

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, values: Any) -> Any:
        # The ones not read above (expiration, resource URI) are still Google's: plain ASCII.
        for name, value in values.items():
            if len(value) > MAX_HEADER or not value.isascii() or not value.isprintable():
                raise ValueError(f"{name} is not a header Google sends")
        return values


# ---- the service object, built once per endpoint ------------------------------------------------

_services: dict[str, Any] = {}
_services_lock = threading.Lock()


def _service(endpoint: str) -> Any:
    """The calendar v3 service for `endpoint`; building it parses the discovery document, which
    takes a while, so it happens once per process and endpoint (in a worker thread)."""
    with _services_lock:
        service = _services.get(endpoint)
        if service is None:
            # `http` given, so the library looks for no default credentials: we add the bearer
            # token to each request ourselves. `api_endpoint` replaces rootUrl + servicePath.
            service = discovery.build(
                "calendar",
                "v3",
                http=httplib2.Http(),
                static_discovery=True,
                cache_discovery=False,
                client_options={"api_endpoint": endpoint},
            )
            _services[endpoint] = service
        return service


class _Https:
    """`httplib2.Http` objects kept between requests, each lent to one request at a time.

    httplib2 says: one `Http` per thread. Lending rather than one per worker thread keeps their
    number at the most requests ever in flight at once (not the executor's size) and keeps them
    all within reach of `close`. An `Http` comes back after an answer, 4xx ones included; one
    whose request failed otherwise is closed, so a broken connection is not lent again, and so
    is one answered 429 or 5xx: Google balances load by connection, and the retry is better off
    on a new one than stuck to a front end that is failing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[tuple[float, httplib2.Http]] = []
        self._closed = False

    def execute(self, endpoint: str, make: Callable[[Any], Any], token: str, timeout: float) -> Any:
        """Build one request and send it (blocking)."""
        request = make(_service(endpoint))
        request.headers["authorization"] = f"Bearer {token}"
        client, kept = self._lend()
        try:
            return self._send(request, client, timeout)
        except ConnectionError:
            if not kept:
                raise
        # A kept connection that Google closed while it was idle, found out while sending
        # (httplib2 itself sends again when it shows as an empty answer): once more on a new
        # connection, as a new `Http` would have used in the first place.
        return self._send(request, httplib2.Http(), timeout)

    def close(self) -> None:
        """Close every idle `Http`; those lent out are closed when they come back."""
        with self._lock:
            self._closed = True
            idle = [client for _, client in self._idle]
            self._idle.clear()
        for client in idle:
            client.close()

    def _send(self, request: Any, client: httplib2.Http, timeout: float) -> Any:
        _set_timeout(client, max(timeout, 0.05))
        try:
            answer = request.execute(http=client)
        except HttpError as exc:
            if exc.status_code == 429 or exc.status_code >= 500:
                client.close()
            else:
                self._give_back(client)  # an answer, read to the end: the connection is fine
            raise
        except BaseException:
            client.close()
            raise
        self._give_back(client)
        return answer

    def _lend(self) -> tuple[httplib2.Http, bool]:
        """A kept `Http` (True) or a new one (False)."""
        stale: list[httplib2.Http] = []
        with self._lock:
            since, client = self._idle.pop() if self._idle else (0.0, None)
            if client is not None and time.monotonic() - since > _IDLE_SECONDS:
                # The newest is too old, so are the others.
                stale = [client, *(c for _, c in self._idle)]
                self._idle.clear()
                client = None
        for old in stale:
            old.close()
        if client is None:
            return httplib2.Http(), False
        return client, True

    def _give_back(self, client: httplib2.Http) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < _IDLE_HTTPS:
                self._idle.append((time.monotonic(), client))
                return
        client.close()


def _set_timeout(client: httplib2.Http, seconds: float) -> None:
    """The time limit of the next request. httplib2 gives `timeout` to the connections it
    opens; connections it already holds keep the one they were opened with, so they get theirs
    here."""
    client.timeout = seconds
    for connection in client.connections.values():
        connection.timeout = seconds
        if connection.sock is not None:
            connection.sock.settimeout(seconds)


# ---- the provider -------------------------------------------------------------------------------


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()


class GoogleProvider:
    """Google Calendar accounts (OAuth tokens from `account.tokens`).

    `timeout` bounds each operation, retries and back-off included; `retries` is how many times
    one request is sent again after a rate-limit or server error; `max_retry_after` caps the
    wait a Retry-After header may ask for; `sleep` waits between attempts (tests record it);
    `clock` is "now" for Retry-After dates and the retry deadline.
    """

    name = "google"
    writable = True
    notifies = True

    def __init__(
        self,
        *,
        api_base_url: str = "https://www.googleapis.com/",
        timeout: float = 10.0,
        retries: int = 3,
        max_retry_after: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Clock | None = None,
    ) -> None:
        base = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        self._endpoint = urljoin(base, "calendar/v3/")
        self._timeout = timeout
        self._clock: Clock = clock or SystemClock()
        self._retry = RetryPolicy(
            attempts=retries + 1, max_retry_after=max_retry_after, clock=self._clock, sleep=sleep
        )
        self._https = _Https()
        # A provider dropped without `close` still closes its idle connections.
        self._finalizer = weakref.finalize(self, self._https.close)

    def close(self) -> None:
        """Close the connections kept for later requests (at shutdown). The provider stays
        usable; requests after this open and close a connection each."""
        self._finalizer()

    async def aclose(self) -> None:
        """`close`, as the provider contract names it."""
        self.close()

    # ---- reading ----------------------------------------------------------------------------

    async def check(self, account: Account) -> None:
        deadline = _Deadline(self._timeout)
        await self._call(
            account, deadline, "check", lambda s: s.calendars().get(calendarId="primary")
        )

    async def list_calendars(self, account: Account) -> list[CalendarInfo]:
        deadline = _Deadline(self._timeout)
        entries: list[dict[str, Any]] = []
        page_token: str | None = None
        while True:
            page = await self._call(
                account, deadline, "calendar list", _calendar_list_page(page_token)
            )
            entries.extend(e for e in page.get("items", []) if not e.get("deleted"))
            page_token = page.get("nextPageToken")
            if not page_token:
                break
        # The primary calendar's id is the account's e-mail address.
        me = next((str(e["id"]) for e in entries if e.get("primary")), None)
        me = me or account.settings.get("account")
        return [
            CalendarInfo(
                id=entry["id"],
                name=entry.get("summaryOverride") or entry.get("summary") or entry["id"],
                primary=bool(entry.get("primary")),
                writable=entry.get("accessRole") in _WRITE_ROLES,
                counts_busy=_own_calendar(entry, me),
            )
            for entry in entries
        ]

    async def busy(
        self,
        account: Account,
        *,
        calendar_ids: list[str],
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
    ) -> list[Interval]:
        """Busy time from freeBusy. `tz` is not needed: Google places all-day events in each
        calendar's own zone (the staff member's, for their own calendar)."""
        _require_aware(start, end)
        if not calendar_ids or end <= start:
            return []
        deadline = _Deadline(self._timeout)
        batches = [
            calendar_ids[i : i + _MAX_CALENDARS_PER_QUERY]
            for i in range(0, len(calendar_ids), _MAX_CALENDARS_PER_QUERY)
        ]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._freebusy(account, deadline, batch, s, e))
                    for batch in batches
                    for s, e in _windows(start, end)
                ]
        except ExceptionGroup as failed:
            # The first failure says it all; the other queries were cancelled.
            raise _first(failed) from None
        # The union joins the pieces of a busy block that a 90-day split cut in two.
        return merge([interval for task in tasks for interval in task.result()])

    async def _freebusy(
        self,
        account: Account,
        deadline: _Deadline,
        calendar_ids: list[str],
        start: datetime,
        end: datetime,
    ) -> list[Interval]:
        body = {
            "timeMin": _rfc3339(start),
            "timeMax": _rfc3339(end),
            "timeZone": "UTC",
            "items": [{"id": c} for c in calendar_ids],
        }
        answer = await self._call(
            account, deadline, "busy read", lambda s: s.freebusy().query(body=body)
        )
        calendars = answer.get("calendars") or {}
        intervals: list[Interval] = []
        for calendar_id in calendar_ids:
            found = calendars.get(calendar_id)
            if found is None:
                raise CalendarUnavailable(
                    f"Google answered no free/busy time for calendar {calendar_id}"
                )
            if found.get("errors"):
                raise _freebusy_error(calendar_id, found["errors"])
            for period in found.get("busy") or []:
                intervals.append((_parse_instant(period["start"]), _parse_instant(period["end"])))
        return intervals

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
        _require_aware(start, end)
        deadline = _Deadline(self._timeout)
        if cursor is not None:
            try:
                return await self._read_events(
                    account, deadline, calendar_id, tz, start, end, sync_token=cursor
                )
            except GoogleApiError as exc:
                # 410: the token expired; Google's answer is to wipe and read everything again.
                if exc.status != 410:
                    raise
        return await self._read_events(
            account, deadline, calendar_id, tz, start, end, sync_token=None
        )

    async def _read_events(
        self,
        account: Account,
        deadline: _Deadline,
        calendar_id: str,
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
        *,
        sync_token: str | None,
    ) -> SyncResult:
        if sync_token is None:
            # timeMin/timeMax only on a full read: Google refuses them with a syncToken.
            query: dict[str, Any] = {"timeMin": _rfc3339(start), "timeMax": _rfc3339(end)}
        else:
            query = {"syncToken": sync_token}
        result = SyncResult(full=sync_token is None)
        page_token: str | None = None
        while True:

            def make(s: Any, t: str | None = page_token) -> Any:
                return s.events().list(
                    calendarId=calendar_id,
                    singleEvents=True,
                    maxResults=_PAGE_SIZE,
                    pageToken=t,
                    **query,
                )

            page = await self._call(account, deadline, "event read", make)
            for event in page.get("items", []):
                key = event["id"]
                if event.get("status") == "cancelled":
                    result.removed.add(key)
                    result.changed.pop(key, None)
                    continue
                result.removed.discard(key)
                result.changed[key] = _event_busy(event, tz, start, end)
            page_token = page.get("nextPageToken")
            if not page_token:
                # nextSyncToken comes with the last page only.
                result.cursor = page.get("nextSyncToken")
                return result

    # ---- writing ----------------------------------------------------------------------------

    async def put_event(
        self, account: Account, *, calendar_id: str, event: EventSpec, event_id: str | None
    ) -> str:
        body = _event_body(event)
        deadline = _Deadline(self._timeout)
        if event_id is None:
            new_id = event_id_for(event.key)
            try:
                await self._insert(account, deadline, calendar_id, new_id, body)
                return new_id
            except GoogleApiError as exc:
                if exc.status != 409:
                    raise
            # 409: the id is taken, by an earlier attempt that timed out after it landed, or by
            # that event deleted since (Google keeps deleted ids). Patching brings it up to date
            # and, with status confirmed, back to life.
            await self._patch(account, deadline, calendar_id, new_id, body)
            return new_id
        try:
            await self._patch(account, deadline, calendar_id, event_id, body)
            return event_id
        except GoogleApiError as exc:
            if exc.status not in (404, 410):
                raise
        await self._insert(account, deadline, calendar_id, event_id, body)
        return event_id

    async def _insert(
        self,
        account: Account,
        deadline: _Deadline,
        calendar_id: str,
        event_id: str,
        body: dict[str, Any],
    ) -> None:
        await self._call(
            account,
            deadline,
            "event write",
            lambda s: s.events().insert(
                calendarId=calendar_id, body={**body, "id": event_id}, sendUpdates="none"
            ),
        )

    async def _patch(
        self,
        account: Account,
        deadline: _Deadline,
        calendar_id: str,
        event_id: str,
        body: dict[str, Any],
    ) -> None:
        await self._call(
            account,
            deadline,
            "event write",
            lambda s: s.events().patch(
                calendarId=calendar_id, eventId=event_id, body=body, sendUpdates="none"
            ),
        )

    async def delete_event(self, account: Account, *, calendar_id: str, event_id: str) -> None:
        deadline = _Deadline(self._timeout)
        try:
            await self._call(
                account,
                deadline,
                "event delete",
                lambda s: s.events().delete(
                    calendarId=calendar_id, eventId=event_id, sendUpdates="none"
                ),
            )
        except GoogleApiError as exc:
            # 410: deleted before; 404: never there (or purged). Either way it is gone.
            if exc.status not in (404, 410):
                raise

    # ---- notifications ----------------------------------------------------------------------

    async def watch(
        self, account: Account, *, calendar_id: str, callback_url: str, token: str
    ) -> Channel | None:
        deadline = _Deadline(self._timeout)
        body = {
            "id": secrets.token_hex(16),
            "type": "web_hook",
            "address": callback_url,
            "token": token,
        }
        answer = await self._call(
            account,
            deadline,
            "watch",
            lambda s: s.events().watch(calendarId=calendar_id, body=body),
        )
        if not str(answer.get("expiration") or "").isdigit():
            raise CalendarUnavailable(
                f"Google answered the watch of {calendar_id} without an expiration"
            )
        return Channel(
            id=answer.get("id", body["id"]),
            calendar_id=calendar_id,
            expires_at=datetime.fromtimestamp(int(answer["expiration"]) / 1000, UTC),
            token=answer.get("token", token),
            resource_id=answer.get("resourceId"),
        )

    async def renew(self, account: Account, channel: Channel) -> Channel | None:
        """None: a Google channel cannot be extended; the caller watches anew and stops this one."""
        return None

    async def stop(self, account: Account, channel: Channel) -> None:
        if channel.resource_id is None:
            raise CalendarUnavailable(f"Google channel {channel.id} has no resource id to stop")
        deadline = _Deadline(self._timeout)
        body = {"id": channel.id, "resourceId": channel.resource_id}
        try:
            await self._call(
                account, deadline, "channel stop", lambda s: s.channels().stop(body=body)
            )
        except GoogleApiError as exc:
            if exc.status != 404:
                raise

    # ---- sending requests -------------------------------------------------------------------

    async def _call(
        self, account: Account, deadline: _Deadline, action: str, make: Callable[[Any], Any]
    ) -> Any:
        """Send one API request with retries, token refresh and the operation's time limit."""
        where = f"Google Calendar ({account.name})"
        token = await self._access_token(account, force_refresh=False)
        refreshed = False

        async def attempt() -> Any:
            nonlocal token, refreshed
            while True:
                left = deadline.left()
                if left <= 0:
                    raise CalendarUnavailable(
                        f"{where} did not answer the {action} within {self._timeout:g} s"
                    )
                try:
                    async with asyncio.timeout(left):
                        answer = await asyncio.to_thread(
                            self._https.execute, self._endpoint, make, token, left
                        )
                    return answer if answer is not None else {}
                except TimeoutError:
                    raise CalendarUnavailable(
                        f"{where} did not answer the {action} within {self._timeout:g} s"
                    ) from None
                except HttpError as exc:
                    if exc.status_code == 401:
                        if refreshed:
                            raise NeedsRelink(
                                f"{where} refused a freshly refreshed access token; "
                                "link the account again"
                            ) from None
                        token = await self._access_token(account, force_refresh=True)
                        refreshed = True
                        continue
                    header = exc.resp.get("retry-after") if exc.resp is not None else None
                    raise _api_error(
                        where,
                        action,
                        exc.status_code,
                        _reason(exc),
                        retry_after=parse_retry_after(header, self._clock.now()),
                    ) from None
                except (OSError, httplib2.HttpLib2Error) as exc:
                    raise CalendarUnavailable(
                        f"{where} cannot be reached ({type(exc).__name__})"
                    ) from None

        return await self._retry.call(attempt, deadline=deadline.left())

    async def _access_token(self, account: Account, *, force_refresh: bool) -> str:
        if account.tokens is None:
            raise NeedsRelink(f"Google Calendar ({account.name}) has no OAuth tokens")
        return await account.tokens.access_token(force_refresh=force_refresh)


# ---- translating answers ------------------------------------------------------------------------


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    inner = group.exceptions[0]
    return _first(inner) if isinstance(inner, BaseExceptionGroup) else inner


def _reason(exc: HttpError) -> str:
    details = exc.error_details
    if isinstance(details, list) and details and isinstance(details[0], dict):
        return str(details[0].get("reason") or "")
    return ""


def _api_error(
    where: str, action: str, status: int, reason: str, *, retry_after: float | None = None
) -> GoogleApiError:
    said = f"{status} {reason}".strip()
    if status == 404:
        text = f"{where} does not know that calendar or event ({said})"
    elif status == 403:
        text = f"{where} refused the {action}: no permission ({said})"
    elif status == 429 or status >= 500 or reason in _RATE_LIMIT_REASONS:
        text = f"{where} kept failing the {action} ({said})"
    else:
        text = f"{where} refused the {action} ({said})"
    return GoogleApiError(text, status=status, reason=reason, retry_after=retry_after)


def _calendar_list_page(page_token: str | None) -> Callable[[Any], Any]:
    def make(service: Any) -> Any:
        return service.calendarList().list(pageToken=page_token, maxResults=250)

    return make


def _own_calendar(entry: dict[str, Any], me: str | None) -> bool:
    """Whether a calendarList entry is one of the user's own calendars, whose events are theirs.

    The primary calendar is; so is a secondary calendar the user owns (`accessRole` owner, an
    id under `@group.calendar.google.com`). Not: calendars Google provides to subscribe to
    (holidays, contacts' birthdays: ids under `@group.v.calendar.google.com`, role reader),
    calendars shared by someone else (reader, writer, freeBusyReader), nor another person's
    primary calendar even when they gave this user the owner role (its id is their address).
    """
    if entry.get("primary"):
        return True
    if entry.get("accessRole") != "owner":
        return False
    calendar_id = str(entry.get("id") or "").lower()
    if calendar_id.endswith("@group.v.calendar.google.com"):
        return False
    if calendar_id.endswith("@group.calendar.google.com"):
        return True
    return me is not None and calendar_id == me.lower()


def _freebusy_error(calendar_id: str, errors: list[dict[str, Any]]) -> CalendarUnavailable:
    """A calendar's `errors` in a freeBusy answer; a calendar not found or forbidden stays so."""
    reasons = sorted({str(e.get("reason") or "unknown") for e in errors})
    if "notFound" in reasons:
        return CalendarUnavailable(
            f"Google calendar {calendar_id} was not found, or is not shared with this "
            f"account ({', '.join(reasons)})",
            retryable=False,
        )
    if "forbidden" in reasons:
        return CalendarUnavailable(
            f"Google calendar {calendar_id} is forbidden to this account", retryable=False
        )
    return CalendarUnavailable(
        f"Google could not read the free/busy time of calendar {calendar_id} ({', '.join(reasons)})"
    )


def _event_busy(
    event: dict[str, Any], tz: ZoneInfo, start: datetime, end: datetime
) -> list[Interval]:
    """An event's busy interval inside [start, end): none when it is free time."""
    if event.get("transparency") == "transparent":
        return []
    if any(
        a.get("self") and a.get("responseStatus") == "declined"
        for a in event.get("attendees") or []
    ):
        return []
    begins, ends = _when(event.get("start") or {}, tz), _when(event.get("end") or {}, tz)
    if begins is None or ends is None or ends <= begins:
        return []
    if ends <= start or begins >= end:
        return []
    return [(begins, ends)]


def _when(value: dict[str, Any], tz: ZoneInfo) -> datetime | None:
    if "dateTime" in value:
        parsed = datetime.fromisoformat(value["dateTime"])
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=ZoneInfo(value.get("timeZone") or tz.key))
        return parsed.astimezone(UTC)
    if "date" in value:
        # An all-day date is the whole local day where the staff member is.
        day = date.fromisoformat(value["date"])
        return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    return None


def _event_body(event: EventSpec) -> dict[str, Any]:
    _require_aware(event.start, event.end)
    if event.end <= event.start:
        raise ValueError("an event must end after it starts")
    body: dict[str, Any] = {
        "summary": event.summary,
        "description": event.description,
        "start": {"dateTime": event.start.isoformat(), "timeZone": event.timezone},
        "end": {"dateTime": event.end.isoformat(), "timeZone": event.timezone},
        "status": "confirmed",  # revives the event if someone deleted it in the calendar
        "transparency": "opaque",
    }
    if event.location:
        body["location"] = event.location
    return body


def _windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    out = []
    while start < end:
        stop = min(end, start + _MAX_QUERY_RANGE)
        out.append((start, stop))
        start = stop
    return out


def _require_aware(*values: datetime) -> None:
    if any(v.tzinfo is None for v in values):
        raise ValueError("times must be aware datetimes")


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_instant(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


# ---- OAuth --------------------------------------------------------------------------------------


class GoogleOAuth:
    """Google's OAuth 2.0 authorization-code flow for a web server app, with PKCE (S256).

    `start` asks for offline access with `prompt=consent`, so Google returns a refresh token
    even when the person linked before. `transport` is for tests (an httpx transport)."""

    name = "google"

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth",
        token_url: str = "https://oauth2.googleapis.com/token",
        api_base_url: str = "https://www.googleapis.com/",
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._auth_url = auth_url
        self._token_url = token_url
        base = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        self._primary_url = urljoin(base, "calendar/v3/calendars/primary")
        self._scopes = scopes
        self._transport = transport
        self._timeout = timeout
        self._now = now

    def start(
        self, *, redirect_uri: str, state: str, login_hint: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-]: RFC 7636 allows
        params = {
            "client_id": self._client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": " ".join(self._scopes),
            "access_type": "offline",
            "prompt": "consent",
            "include_granted_scopes": "true",
            "state": state,
            "code_challenge": _s256(verifier),
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        flow = {"state": state, "code_verifier": verifier, "redirect_uri": redirect_uri}
        return f"{self._auth_url}?{urlencode(params)}", flow

    async def finish(self, flow: dict[str, Any], params: dict[str, str]) -> TokenSet:
        state = params.get("state") or ""
        if not hmac.compare_digest(state.encode(), str(flow.get("state") or "").encode()):
            raise InvalidRequest("the Google sign-in answer does not belong to this link attempt")
        if params.get("error"):
            error = "".join(c for c in params["error"] if c.isalnum() or c == "_")[:40]
            raise InvalidRequest(f"Google sign-in was not completed ({error})")
        code = params.get("code")
        if not code:
            raise InvalidRequest("the Google sign-in answer has no authorization code")
        answer = await self._post_token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": str(flow["redirect_uri"]),
                "code_verifier": str(flow["code_verifier"]),
            },
            refused=InvalidRequest,
        )
        tokens = self._token_set(answer, refresh_token=None)
        account = await self._account_email(tokens.access_token)
        return TokenSet(
            tokens.access_token, tokens.expires_at, tokens.refresh_token, account, tokens.scope
        )

    async def refresh(self, refresh_token: str) -> TokenSet:
        answer = await self._post_token(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}, refused=NeedsRelink
        )
        # Google usually keeps the refresh token; a new one replaces it when sent.
        return self._token_set(answer, refresh_token=refresh_token)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self._transport, timeout=self._timeout)

    async def _post_token(
        self, form: dict[str, str], *, refused: type[InvalidRequest] | type[NeedsRelink]
    ) -> dict[str, Any]:
        form = {**form, "client_id": self._client_id, "client_secret": self._client_secret}
        try:
            async with self._client() as client:
                response = await client.post(
                    self._token_url, data=form, headers={"Accept": "application/json"}
                )
        except httpx.HTTPError as exc:
            raise CalendarUnavailable(
                f"Google's token endpoint cannot be reached ({type(exc).__name__})"
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status_code >= 500:
            raise CalendarUnavailable(
                f"Google's token endpoint failed (HTTP {response.status_code})"
            )
        if response.status_code != 200:
            error = "".join(c for c in str(answer.get("error") or "") if c.isalnum() or c == "_")
            if error == "invalid_grant":
                raise refused("Google refused the grant (invalid_grant): link the account again")
            said = f"HTTP {response.status_code} {error[:40]}".strip()
            raise CalendarUnavailable(f"Google's token endpoint refused the request ({said})")
        if not isinstance(answer.get("access_token"), str):
            raise CalendarUnavailable("Google's token endpoint answered without an access token")
        return answer

    def _token_set(self, answer: dict[str, Any], *, refresh_token: str | None) -> TokenSet:
        expires_in = int(answer.get("expires_in") or 3600)
        return TokenSet(
            access_token=answer["access_token"],
            expires_at=self._now().astimezone(UTC) + timedelta(seconds=expires_in),
            refresh_token=answer.get("refresh_token") or refresh_token,
            scope=answer.get("scope"),
        )

    async def _account_email(self, access_token: str) -> str | None:
        """The account's e-mail address: its primary calendar's id. Best effort only."""
        try:
            async with self._client() as client:
                response = await client.get(
                    self._primary_url, headers={"Authorization": f"Bearer {access_token}"}
                )
            if response.status_code != 200:
                return None
            found = response.json().get("id")
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return found if isinstance(found, str) and "@" in found else None


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
