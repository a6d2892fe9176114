"""`MicrosoftProvider`: a Microsoft account's busy time, feed, appointments, subscriptions."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx

from booking.clock import Clock, SystemClock
from booking.errors import CalendarUnavailable
from booking.retry import RetryPolicy, parse_retry_after, retryable_status
from booking.rules import Interval
from calendars.base import Account, CalendarInfo, Channel, EventSpec, NeedsRelink, SyncResult
from calendars.microsoft.transport import (
    _RESYNC_CODES,
    _error_code,
    _refusal,
    _Resync,
    _TimedOut,
    _Unreachable,
    _who,
)
from calendars.microsoft.wire import (
    _DAY,
    _busy_of,
    _can_edit,
    _event_body,
    _iso,
    _own_calendar,
    _parse_instant,
    _require_aware,
    _seg,
    _transaction_id,
)

_T = TypeVar("_T")
GRAPH_URL = "https://graph.microsoft.com/v1.0"
# Outlook event subscriptions last at most 4,230 minutes; ask for a little less.
SUBSCRIPTION_LIFETIME = timedelta(minutes=4200)
_UTC_PREFER = 'outlook.timezone="UTC"'
_CHUNK = timedelta(days=60)  # calendarView reads split into windows of this size
_BUSY_FIELDS = "id,type,seriesMasterId,start,end,isAllDay,showAs,isCancelled,responseStatus"
# When the running operation (`_call`) must be done, on the event loop's clock: each request's
# retries get the time left as their deadline, so a Retry-After beyond it ends them at once.
_ENDS_AT: contextvars.ContextVar[float | None] = contextvars.ContextVar("_ENDS_AT", default=None)


class MicrosoftProvider:
    """Reads busy time from, writes bookings to and watches Outlook calendars.

    `timeout` bounds each HTTP request; `time_limit` bounds a whole operation (its pages,
    retries and waits): a request's retries get the time left as their deadline, so a
    `Retry-After` beyond it gives up at once with the error (and its `retry_after`) intact.
    `retry` is the policy a 429/5xx answer is tried again by (the app passes the one policy all
    providers share); without one, a policy of `retries` more attempts whose waits are at most
    `max_retry_after` is built on `clock` and `sleep`. `clock` also dates subscriptions and
    Retry-After dates; `transport` is httpx's.
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
        retry: RetryPolicy | None = None,
    ) -> None:
        self._base = graph_base_url.rstrip("/")
        self._timeout = timeout
        self._time_limit = time_limit
        self._clock: Clock = clock or SystemClock()
        self._retry = retry or RetryPolicy(
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
            mine = await self._addresses(account)
            return [
                CalendarInfo(
                    id=str(row["id"]),
                    name=str(row.get("name") or "Calendar"),
                    primary=bool(row.get("isDefaultCalendar")),
                    writable=_can_edit(row),
                    counts_busy=_own_calendar(row, mine),
                )
                for row in rows
            ]

        return await self._call(account, "calendar list", read())

    async def _addresses(self, account: Account) -> list[str]:
        """The user's addresses as Graph reports them (GET /me `mail`, `userPrincipalName`),
        which a calendar's `owner` address is one of when the calendar is the user's own; the
        sign-in name the account was linked with when Graph names neither."""
        me = await self._json(
            account, "GET", f"{self._base}/me", params={"$select": "mail,userPrincipalName"}
        )
        fields = me if isinstance(me, dict) else {}
        found = [fields.get("mail"), fields.get("userPrincipalName")]
        addresses = [address for address in found if isinstance(address, str) and address]
        return addresses or [str(account.settings.get("account") or "")]

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
        token = _ENDS_AT.set(asyncio.get_running_loop().time() + limit)
        try:
            async with asyncio.timeout(limit):
                return await work
        except TimeoutError:
            raise CalendarUnavailable(
                f"{_who(account)} did not answer the {action} within {limit:g} s"
            ) from None
        finally:
            _ENDS_AT.reset(token)

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
            ends_at = _ENDS_AT.get()
            left = None if ends_at is None else ends_at - asyncio.get_running_loop().time()
            response = await self._retry.call(attempt, deadline=left)
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
