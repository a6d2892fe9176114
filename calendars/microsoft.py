"""Microsoft 365 and Outlook.com calendars through Microsoft Graph v1.0 (httpx) and MSAL.

Busy time is read from the events themselves with `calendarView`, not `getSchedule`, which
does not work for personal (outlook.com) accounts. What is busy, per the event resource:

- `showAs` tentative, busy, oof (and unknown, to be safe) are busy; free and
  workingElsewhere (working, just not at the desk) are not;
- a cancelled event (`isCancelled`) and one the account declined (`responseStatus`) are free;
- an all-day event (`isAllDay`) comes back midnight to midnight whatever zone is asked for, so
  its dates are read as whole days in the staff member's zone. Graph matches the query window
  against the instant it stores them at, so the window is widened by a day each side and cut
  exactly afterwards.

Incremental sync uses `calendarView/delta`; its `@odata.deltaLink` is the cursor. Occurrences
of a series come in a delta with only their id, type, master and times, so what decides
busy-ness is read from the series master (once per round). An expired state token (410, or a
`syncStateNotFound`/`resyncRequired` code) answers a full sync.

Writes are idempotent by `transactionId`, derived from `EventSpec.key`: Graph discards a
second create carrying the same one, so a retry after a timed-out attempt that did land does
not write a second event. An update of an event deleted in the calendar creates it anew, with a
transactionId derived from the key and the lost event id, so that re-creation is idempotent
too.

Requests share one `httpx.AsyncClient`. 408, 429 and 503 answers (and other 5xx answers to a
request that may be repeated) are retried by `booking.retry.RetryPolicy` a bounded number of
times, honouring `Retry-After` (capped; an HTTP-date read against the injected clock), within
the operation's time limit; any other 4xx is not retryable. A request that timed out is not
sent again within the operation (it may still land). A 401 refreshes the access token once; a
401 to the fresh token, or a refused refresh, is `NeedsRelink`. Whatever else goes wrong becomes
`CalendarUnavailable`, whose message names the account and never carries a token, a secret or
a delta link.

Errors raised here:

    CalendarUnavailable            Graph refused (a 4xx: not retryable), failed, or did not
    │                              answer in time (retryable)
    ├── NeedsRelink                the grant is gone (`invalid_grant`, a fresh token refused,
    │                              no tokens): link the account again
    booking.errors.InvalidRequest  an OAuth callback that does not belong to the flow
"""

from __future__ import annotations

import asyncio
import time as time_module
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import msal
from pydantic import BaseModel, ConfigDict, Field

from booking.clock import Clock, SystemClock
from booking.errors import CalendarUnavailable, InvalidRequest
from booking.retry import RetryPolicy, parse_retry_after, retryable_status
from booking.rules import Interval
from calendars.base import (
    Account,
    CalendarInfo,
    Channel,
    EventSpec,
    NeedsRelink,
    SyncResult,
    TokenSet,
)

_T = TypeVar("_T")
GRAPH_URL = "https://graph.microsoft.com/v1.0"
AUTHORITY = "https://login.microsoftonline.com/common"
SCOPES = ("Calendars.ReadWrite", "User.Read")  # MSAL adds openid, profile, offline_access
# Outlook event subscriptions last at most 4,230 minutes; ask for a little less.
SUBSCRIPTION_LIFETIME = timedelta(minutes=4200)
_UTC_PREFER = 'outlook.timezone="UTC"'
_DAY = timedelta(days=1)
_CHUNK = timedelta(days=60)  # calendarView reads split into windows of this size
_BUSY_FIELDS = "id,type,seriesMasterId,start,end,isAllDay,showAs,isCancelled,responseStatus"
_FREE_SHOW_AS = {"free", "workingElsewhere"}
_RESYNC_CODES = {"syncstatenotfound", "resyncrequired", "syncstateinvalid"}
_TX_NAMESPACE = uuid.UUID("5b0d8f3e-6a61-4f57-9f0c-2b4e8f5f6a10")


# ---- change notifications, as Graph posts them ------------------------------------------------

# Subscription ids are GUIDs and our clientState is URL-safe base64: printable ASCII, short.
GraphId = Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,256}$")]
MAX_NOTIFICATION_BODY = 256 * 1024
MAX_NOTIFICATIONS = 100  # Graph batches a few; a hundred is far past what it sends


class GraphNotification(BaseModel):
    """One item of a changeNotificationCollection: a change or a lifecycle event."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    subscription_id: GraphId = Field(alias="subscriptionId")
    client_state: GraphId | None = Field(default=None, alias="clientState")
    # reauthorizationRequired, subscriptionRemoved, missed; absent on a change notification.
    lifecycle_event: str | None = Field(default=None, alias="lifecycleEvent", max_length=64)


class GraphNotifications(BaseModel):
    """The body of a POST to the notification URL."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    value: list[GraphNotification] = Field(max_length=MAX_NOTIFICATIONS)


class MicrosoftProvider:
    """Reads busy time from, writes bookings to and watches Outlook calendars.

    `timeout` bounds each HTTP request; `time_limit` bounds a whole operation (its pages,
    retries and waits). `retries` is how many times a 429/5xx answer is tried again;
    `max_retry_after` caps a server's `Retry-After`. `sleep` waits between retries and `clock`
    dates subscriptions and Retry-After dates (both injectable for tests); `transport` is
    httpx's.
    """

    name = "microsoft"
    writable = True
    notifies = True

    def __init__(
        self,
        *,
        graph_base_url: str = GRAPH_URL,
        timeout: float = 10.0,
        time_limit: float = 30.0,
        retries: int = 3,
        max_retry_after: float = 10.0,
        subscribe_timeout: float = 20.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base = graph_base_url.rstrip("/")
        self._timeout = timeout
        self._time_limit = time_limit
        self._clock: Clock = clock or SystemClock()
        # No deadline of its own: the operation's time limit (`_call`) bounds the waits too.
        self._retry = RetryPolicy(
            attempts=retries + 1, max_retry_after=max_retry_after, clock=self._clock, sleep=sleep
        )
        # Graph waits up to 10 s for the notification URL's validation answer before it
        # answers a subscription request.
        self._subscribe_timeout = max(subscribe_timeout, timeout)
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---- reading ------------------------------------------------------------------------------

    async def check(self, account: Account) -> None:
        await self._call(account, "check", self._get(account, f"{self._base}/me"))

    async def list_calendars(self, account: Account) -> list[CalendarInfo]:
        async def read() -> list[CalendarInfo]:
            rows = await self._pages(account, f"{self._base}/me/calendars", {})
            me = str(account.settings.get("account") or "") or None
            return [
                CalendarInfo(
                    id=str(row["id"]),
                    name=str(row.get("name") or "Calendar"),
                    primary=bool(row.get("isDefaultCalendar")),
                    writable=bool(row.get("canEdit", True)),
                    counts_busy=_own_calendar(row, me),
                )
                for row in rows
            ]

        return await self._call(account, "calendar list", read())

    async def busy(
        self,
        account: Account,
        *,
        calendar_ids: list[str],
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
    ) -> list[Interval]:
        _require_aware(start, end)

        async def read() -> list[Interval]:
            reads = [self._calendar_busy(account, cid, tz, start, end) for cid in calendar_ids]
            results = await asyncio.gather(*reads)
            return sorted(i for result in results for i in result)

        return await self._call(account, "busy-time read", read())

    async def _calendar_busy(
        self, account: Account, calendar_id: str, tz: ZoneInfo, start: datetime, end: datetime
    ) -> list[Interval]:
        url = f"{self._base}/me/calendars/{_seg(calendar_id)}/calendarView"
        seen: dict[str, list[Interval]] = {}
        cursor, last = start - _DAY, end + _DAY
        while cursor < last:
            chunk_end = min(cursor + _CHUNK, last)
            params = {
                "startDateTime": _iso(cursor),
                "endDateTime": _iso(chunk_end),
                "$select": _BUSY_FIELDS,
                "$top": "100",
            }
            for row in await self._pages(account, url, params):
                # An event spanning two chunks comes back in both.
                seen[str(row.get("id"))] = _busy_of(row, tz, start, end)
            cursor = chunk_end
        return [i for intervals in seen.values() for i in intervals]

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

        async def run() -> SyncResult:
            if cursor is not None:
                if not cursor.startswith(self._base + "/"):
                    # A cursor is only ever our own delta link; never send a token elsewhere.
                    raise CalendarUnavailable(
                        f"{_who(account)} has a sync cursor of another service; syncing in full"
                    )
                try:
                    return await self._delta(account, cursor, None, tz, start, end, full=False)
                except _Resync:
                    pass
            first = f"{self._base}/me/calendars/{_seg(calendar_id)}/calendarView/delta"
            params = {"startDateTime": _iso(start), "endDateTime": _iso(end)}
            try:
                return await self._delta(account, first, params, tz, start, end, full=True)
            except _Resync:
                raise CalendarUnavailable(f"{_who(account)} refused a fresh sync") from None

        return await self._call(account, "sync", run())

    async def _delta(
        self,
        account: Account,
        url: str,
        params: dict[str, str] | None,
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
        *,
        full: bool,
    ) -> SyncResult:
        result = SyncResult(full=full)
        masters: dict[str, dict[str, Any]] = {}
        headers = {"Prefer": f"{_UTC_PREFER}, odata.maxpagesize=100"}
        next_url: str | None = url
        while next_url is not None:
            page = await self._json(
                account, "GET", next_url, params=params, headers=headers, resync_ok=True
            )
            params = None  # later links carry the query in their state token
            for row in page.get("value") or []:
                event_id = str(row.get("id"))
                if "@removed" in row:
                    result.changed.pop(event_id, None)
                    result.removed.add(event_id)
                    continue
                row = await self._complete(account, row, masters)
                result.removed.discard(event_id)
                result.changed[event_id] = _busy_of(row, tz, start, end)
            next_url = page.get("@odata.nextLink")
            if next_url is None:
                result.cursor = page.get("@odata.deltaLink")
            elif not str(next_url).startswith(self._base + "/"):
                raise CalendarUnavailable(f"{_who(account)} answered with a foreign page link")
        return result

    async def _complete(
        self, account: Account, row: dict[str, Any], masters: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """The row with every field busy-ness needs: a delta sends only some of them."""
        if "showAs" in row and "isAllDay" in row:
            return row
        master_id = row.get("seriesMasterId")
        source_id = str(master_id or row.get("id"))
        if source_id not in masters:
            masters[source_id] = await self._json(
                account,
                "GET",
                f"{self._base}/me/events/{_seg(source_id)}",
                params={"$select": _BUSY_FIELDS},
                headers={"Prefer": _UTC_PREFER},
            )
        source = masters[source_id]
        if master_id:
            # An occurrence keeps its own times; the rest is the series'.
            return {
                **source,
                "start": row.get("start"),
                "end": row.get("end"),
                **row,
                "showAs": row.get("showAs", source.get("showAs")),
                "isAllDay": row.get("isAllDay", source.get("isAllDay")),
            }
        return {**source, **row}

    # ---- writing ------------------------------------------------------------------------------

    async def put_event(
        self, account: Account, *, calendar_id: str, event: EventSpec, event_id: str | None
    ) -> str:
        _require_aware(event.start, event.end)
        if event.end <= event.start:
            raise ValueError("an event must end after it starts")

        async def write() -> str:
            if event_id is not None:
                url = f"{self._base}/me/events/{_seg(event_id)}"
                updated = await self._json(
                    account, "PATCH", url, json=_event_body(event), missing_ok=True
                )
                if updated is not None:
                    return str(updated["id"])
            created = await self._json(
                account,
                "POST",
                f"{self._base}/me/calendars/{_seg(calendar_id)}/events",
                json={**_event_body(event), "transactionId": _transaction_id(event.key, event_id)},
                idempotent=True,
            )
            return str(created["id"])

        return await self._call(account, "event write", write())

    async def delete_event(self, account: Account, *, calendar_id: str, event_id: str) -> None:
        url = f"{self._base}/me/events/{_seg(event_id)}"
        await self._call(
            account, "event delete", self._json(account, "DELETE", url, missing_ok=True)
        )

    # ---- change notifications -----------------------------------------------------------------

    async def watch(
        self, account: Account, *, calendar_id: str, callback_url: str, token: str
    ) -> Channel | None:
        if len(token) > 128:
            raise ValueError("Graph's clientState holds at most 128 characters")
        expires = self._clock.now().astimezone(UTC) + SUBSCRIPTION_LIFETIME
        body = {
            "changeType": "created,updated,deleted",
            "notificationUrl": callback_url,
            "lifecycleNotificationUrl": callback_url,
            "resource": f"me/calendars/{calendar_id}/events",
            "expirationDateTime": _iso(expires),
            "clientState": token,
        }

        async def subscribe() -> Channel:
            sub = await self._json(
                account,
                "POST",
                f"{self._base}/subscriptions",
                json=body,
                request_timeout=self._subscribe_timeout,
            )
            return Channel(
                id=str(sub["id"]),
                calendar_id=calendar_id,
                expires_at=_parse_instant(str(sub.get("expirationDateTime") or _iso(expires))),
                token=token,
            )

        return await self._call(
            account, "subscription", subscribe(), limit=self._time_limit + self._subscribe_timeout
        )

    async def renew(
        self, account: Account, channel: Channel, expires_at: datetime | None = None
    ) -> Channel | None:
        """Push a subscription's expiry out (by default as far as Graph allows); None when the
        subscription is gone and has to be created again with `watch`."""
        until = expires_at or self._clock.now().astimezone(UTC) + SUBSCRIPTION_LIFETIME
        _require_aware(until, until)
        url = f"{self._base}/subscriptions/{_seg(channel.id)}"

        async def patch() -> Channel | None:
            sub = await self._json(
                account, "PATCH", url, missing_ok=True, json={"expirationDateTime": _iso(until)}
            )
            if sub is None:
                return None
            expiry = _parse_instant(str(sub.get("expirationDateTime") or _iso(until)))
            return Channel(
                id=channel.id,
                calendar_id=channel.calendar_id,
                expires_at=expiry,
                token=channel.token,
                resource_id=channel.resource_id,
            )

        return await self._call(account, "subscription renewal", patch())

    async def stop(self, account: Account, channel: Channel) -> None:
        url = f"{self._base}/subscriptions/{_seg(channel.id)}"
        await self._call(
            account, "subscription stop", self._json(account, "DELETE", url, missing_ok=True)
        )

    # ---- HTTP ---------------------------------------------------------------------------------

    async def _call(
        self, account: Account, action: str, work: Awaitable[_T], *, limit: float | None = None
    ) -> _T:
        """Run one operation under the time limit; a late answer is CalendarUnavailable."""
        limit = self._time_limit if limit is None else limit
        try:
            async with asyncio.timeout(limit):
                return await work
        except TimeoutError:
            raise CalendarUnavailable(
                f"{_who(account)} did not answer the {action} within {limit:g} s"
            ) from None

    async def _get(self, account: Account, url: str) -> dict[str, Any]:
        answer = await self._json(account, "GET", url)
        return answer if isinstance(answer, dict) else {}

    async def _pages(
        self, account: Account, url: str, params: dict[str, str]
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        next_url: str | None = url
        query: dict[str, str] | None = params
        while next_url is not None:
            page = await self._json(
                account, "GET", next_url, params=query, headers={"Prefer": _UTC_PREFER}
            )
            rows += page.get("value") or []
            next_url, query = page.get("@odata.nextLink"), None
            if next_url is not None and not next_url.startswith(self._base + "/"):
                raise CalendarUnavailable(f"{_who(account)} answered with a foreign page link")
        return rows

    async def _json(
        self,
        account: Account,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        missing_ok: bool = False,
        resync_ok: bool = False,
        idempotent: bool | None = None,
        request_timeout: float | None = None,
    ) -> Any:
        """One Graph request with token refresh and retries; the decoded body (None for 404
        when `missing_ok`, and for an empty body)."""
        tokens = account.tokens
        if tokens is None:
            raise NeedsRelink(f"{_who(account)} has no sign-in tokens; link it again")
        can_repeat = method in ("GET", "PATCH", "DELETE") if idempotent is None else idempotent
        seconds = request_timeout or self._timeout
        refreshed = False

        async def attempt() -> httpx.Response:
            nonlocal refreshed
            while True:
                token = await tokens.access_token(force_refresh=refreshed)
                try:
                    response = await self._client.request(
                        method,
                        url,
                        params=params,
                        json=json,
                        headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                        timeout=seconds,
                    )
                except httpx.TimeoutException:
                    raise _TimedOut from None
                except httpx.HTTPError as exc:
                    raise _Unreachable(type(exc).__name__) from None
                status = response.status_code
                if status == 401:
                    if refreshed:
                        raise NeedsRelink(
                            f"{_who(account)} refused a freshly refreshed sign-in; link it again"
                        )
                    refreshed = True
                    continue
                # 429 and 503 say the request was not handled; another 5xx may have been, so
                # only a request that can be repeated safely is sent again.
                if retryable_status(status) and (status in (408, 429, 503) or can_repeat):
                    raise CalendarUnavailable(
                        _refusal(account, status, _error_code(response)),
                        retry_after=parse_retry_after(
                            response.headers.get("retry-after"), self._clock.now()
                        ),
                    )
                return response

        try:
            response = await self._retry.call(attempt)
        except _TimedOut:
            raise CalendarUnavailable(
                f"{_who(account)} did not answer within {seconds:g} s"
            ) from None
        except _Unreachable as exc:
            raise CalendarUnavailable(f"{_who(account)} cannot be reached ({exc})") from None
        status = response.status_code
        if 200 <= status < 300:
            return response.json() if response.content else None
        code = _error_code(response)
        if status == 404 and missing_ok:
            return None
        if resync_ok and (status == 410 or code.lower() in _RESYNC_CODES):
            raise _Resync
        # A 5xx to a request that cannot be repeated may still help later; a 4xx will not.
        raise CalendarUnavailable(_refusal(account, status, code), retryable=status >= 500)


class _TimedOut(Exception):
    """A request got no answer in time; not sent again now (it may still land)."""


class _Unreachable(Exception):
    """A request could not be sent or its answer not read (the httpx error's name)."""


class _Resync(Exception):
    """The delta state token is no longer valid."""


# ---- wire format --------------------------------------------------------------------------------


def _who(account: Account) -> str:
    return f"Microsoft calendar {account.name}"


def _refusal(account: Account, status: int, code: str) -> str:
    what = {
        401: "refused the account's sign-in",
        403: "does not allow this (no permission)",
        404: "does not have that calendar or event",
        429: "is throttling requests",
    }.get(status, "answered with an error")
    return f"{_who(account)} {what}: HTTP {status}" + (f" {code}" if code else "")


def _error_code(response: httpx.Response) -> str:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    # Only a short identifier is passed on; a message could quote anything.
    text = str(code)
    return text if text.isascii() and text.replace("_", "").isalnum() and len(text) <= 64 else ""


def _own_calendar(row: dict[str, Any], me: str | None) -> bool:
    """Whether a Graph calendar is one of the user's own: the default calendar, or one the user
    can edit whose `owner` (who created or added it) is the user. A calendar shared by someone
    else has them as owner; a holiday or birthday calendar cannot be edited."""
    if row.get("isDefaultCalendar"):
        return True
    if not row.get("canEdit"):
        return False
    owner = row.get("owner")
    address = owner.get("address") if isinstance(owner, dict) else None
    if not address or not me:
        return True  # nothing says it is another person's, and the user can edit it
    return str(address).casefold() == me.casefold()


def _seg(value: str) -> str:
    return quote(value, safe="")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _require_aware(*moments: datetime) -> None:
    if any(m.tzinfo is None for m in moments):
        raise ValueError("start and end must be aware datetimes")


def _parse_local(value: str) -> datetime:
    """Graph's dateTime ("2026-12-01T14:00:00.0000000"): seven fraction digits, no zone."""
    head, _, fraction = value.partition(".")
    digits = fraction[: len(fraction) - len(fraction.lstrip("0123456789"))]
    suffix = fraction[len(digits) :]
    parsed = datetime.fromisoformat(head + suffix.replace("Z", "+00:00"))
    if digits:
        parsed = parsed.replace(microsecond=int((digits + "000000")[:6]))
    return parsed


def _parse_instant(value: str) -> datetime:
    parsed = _parse_local(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    if name.upper() in ("UTC", "ETC/GMT", "GMT"):
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarUnavailable(
            f"Microsoft calendar sent an unknown time zone {name[:40]!r}"
        ) from None


def _moment(value: Any) -> datetime:
    if not isinstance(value, dict) or not value.get("dateTime"):
        raise CalendarUnavailable("Microsoft calendar sent an event without a time")
    try:
        local = _parse_local(str(value["dateTime"]))
    except ValueError:
        raise CalendarUnavailable("Microsoft calendar sent an unreadable time") from None
    if local.tzinfo is not None:
        return local.astimezone(UTC)
    return local.replace(tzinfo=_zone(str(value.get("timeZone") or "UTC"))).astimezone(UTC)


def _local_date(value: Any) -> date:
    if not isinstance(value, dict) or not value.get("dateTime"):
        raise CalendarUnavailable("Microsoft calendar sent an event without a date")
    try:
        return _parse_local(str(value["dateTime"])).date()
    except ValueError:
        raise CalendarUnavailable("Microsoft calendar sent an unreadable date") from None


def _is_busy(row: dict[str, Any]) -> bool:
    if row.get("isCancelled"):
        return False
    if (row.get("responseStatus") or {}).get("response") == "declined":
        return False
    return row.get("showAs") not in _FREE_SHOW_AS


def _busy_of(row: dict[str, Any], tz: ZoneInfo, start: datetime, end: datetime) -> list[Interval]:
    """The event's busy interval (aware UTC) if it is busy and overlaps `[start, end)`."""
    if not _is_busy(row):
        return []
    if row.get("isAllDay"):
        # Midnight to midnight in any zone Graph is asked for: the dates are what counts.
        first, last = _local_date(row.get("start")), _local_date(row.get("end"))
        begin = datetime.combine(first, time(), tz).astimezone(UTC)
        finish = datetime.combine(max(last, first + _DAY), time(), tz).astimezone(UTC)
    else:
        begin, finish = _moment(row.get("start")), _moment(row.get("end"))
    if finish <= begin or begin >= end or finish <= start:
        return []
    return [(begin, finish)]


def _event_body(event: EventSpec) -> dict[str, Any]:
    zone = ZoneInfo(event.timezone)

    def at(moment: datetime) -> dict[str, str]:
        local = moment.astimezone(zone).replace(tzinfo=None)
        return {"dateTime": local.isoformat(timespec="seconds"), "timeZone": event.timezone}

    body: dict[str, Any] = {
        "subject": event.summary,
        "body": {"contentType": "text", "content": event.description},
        "start": at(event.start),
        "end": at(event.end),
        "showAs": "busy",
    }
    if event.location:
        body["location"] = {"displayName": event.location}
    return body


def _transaction_id(key: str, replaced_event_id: str | None) -> str:
    """Graph's create de-duplication handle: stable for one appointment's event, and new when
    an event deleted in the calendar has to be written again."""
    name = key if replaced_event_id is None else f"{key}\n{replaced_event_id}"
    return f"frontdesk-{uuid.uuid5(_TX_NAMESPACE, name)}"


# ---- OAuth --------------------------------------------------------------------------------------


class MicrosoftOAuth:
    """The authorization-code flow with PKCE against the Microsoft identity platform (MSAL).

    MSAL's `ConfidentialClientApplication` reads the authority's OpenID configuration when it
    is built, and it blocks: it is built on first use (or by `await ready()`), and token calls
    run in worker threads under `timeout`. `http_client` is what MSAL sends requests with (a
    `requests.Session`; tests route it to a local server). `response_mode` is how the code comes
    back: `form_post` (MSAL's recommendation: a POSTed form, so the code stays out of URLs and
    logs) or `query`.
    """

    name = "microsoft"

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        authority: str = AUTHORITY,
        scopes: tuple[str, ...] = SCOPES,
        http_client: Any = None,
        response_mode: str = "form_post",
        timeout: float = 10.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client_id = client_id
        self._response_mode = response_mode
        self._client_secret = client_secret
        self._authority = authority
        self._scopes = list(scopes)
        self._http_client = http_client
        self._timeout = timeout
        self._now = now
        self._app: Any = None

    async def ready(self) -> None:
        """Build the MSAL application (one OpenID configuration fetch) off the event loop."""
        await self._run("set-up", self._build)

    def start(
        self, *, redirect_uri: str, state: str, login_hint: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        flow = self._build().initiate_auth_code_flow(
            self._scopes,
            redirect_uri=redirect_uri,
            state=state,
            login_hint=login_hint,
            prompt="select_account",
            response_mode=self._response_mode,
        )
        return str(flow["auth_uri"]), dict(flow)

    async def finish(self, flow: dict[str, Any], params: dict[str, str]) -> TokenSet:
        if params.get("error"):
            raise InvalidRequest(f"Microsoft sign-in did not complete: {_oauth_code(params)}")
        if not params.get("state") or params.get("state") != flow.get("state"):
            raise InvalidRequest("the Microsoft sign-in answer does not belong to this sign-in")
        app = await self._run("sign-in", self._build)

        def exchange() -> dict[str, Any]:
            try:
                answer: dict[str, Any] = app.acquire_token_by_auth_code_flow(
                    dict(flow), dict(params), scopes=self._scopes
                )
                return answer
            except ValueError:
                # MSAL's own state and nonce checks; its message quotes the values.
                raise InvalidRequest(
                    "the Microsoft sign-in answer does not belong to this sign-in"
                ) from None

        result = await self._run("sign-in", exchange)
        if "error" in result:
            if result["error"] in ("invalid_grant", "invalid_request", "access_denied"):
                raise InvalidRequest(f"Microsoft refused the sign-in: {_oauth_code(result)}")
            raise CalendarUnavailable(f"Microsoft sign-in failed: {_oauth_code(result)}")
        return self._token_set(result)

    async def refresh(self, refresh_token: str) -> TokenSet:
        app = await self._run("token refresh", self._build)
        result = await self._run(
            "token refresh",
            lambda: app.acquire_token_by_refresh_token(refresh_token, scopes=self._scopes),
        )
        if "error" in result:
            if result["error"] in ("invalid_grant", "interaction_required"):
                raise NeedsRelink(
                    f"Microsoft no longer accepts this account's sign-in ({result['error']}); "
                    "link it again"
                )
            raise CalendarUnavailable(f"Microsoft token refresh failed: {_oauth_code(result)}")
        return self._token_set(result, fallback_refresh=refresh_token)

    def _build(self) -> Any:
        if self._app is None:
            self._app = msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=self._client_secret,
                authority=self._authority,
                http_client=self._http_client,
                timeout=self._timeout,
            )
        return self._app

    async def _run(self, action: str, fn: Callable[[], Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await asyncio.to_thread(_guarded, action, fn)
        except TimeoutError:
            raise CalendarUnavailable(
                f"Microsoft sign-in service did not answer the {action} in time"
            ) from None

    def _token_set(
        self, result: dict[str, Any], *, fallback_refresh: str | None = None
    ) -> TokenSet:
        claims = result.get("id_token_claims") or {}
        scope = result.get("scope")
        return TokenSet(
            access_token=str(result["access_token"]),
            expires_at=self._now().astimezone(UTC)
            + timedelta(seconds=int(result.get("expires_in") or 3600)),
            refresh_token=result.get("refresh_token") or fallback_refresh,
            account=claims.get("preferred_username") or claims.get("email"),
            scope=" ".join(scope) if isinstance(scope, list) else scope,
        )


def _guarded(action: str, fn: Callable[[], Any]) -> Any:
    """Run an MSAL call; network failures become CalendarUnavailable without their URLs."""
    started = time_module.monotonic()
    try:
        return fn()
    except (InvalidRequest, CalendarUnavailable):
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        # requests' errors are OSErrors; MSAL raises ValueError/RuntimeError on discovery.
        raise CalendarUnavailable(
            f"Microsoft sign-in service failed during the {action} ({type(exc).__name__}, "
            f"after {time_module.monotonic() - started:.1f} s)"
        ) from None


def _oauth_code(result: dict[str, Any]) -> str:
    code = str(result.get("error") or "unknown")
    description = str(result.get("error_description") or "")
    aadsts = description.split(":", 1)[0] if description.startswith("AADSTS") else ""
    safe = code if code.replace("_", "").isalnum() else "error"
    return f"{safe} {aadsts}".strip()
