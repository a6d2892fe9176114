"""`GoogleProvider`: a linked Google account's busy time, feed, appointments and channels."""

from __future__ import annotations

import asyncio
import secrets
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin
from zoneinfo import ZoneInfo

import httplib2
from googleapiclient.errors import HttpError

from booking.clock import Clock, SystemClock
from booking.errors import CalendarUnavailable
from booking.retry import RetryPolicy, parse_retry_after
from booking.rules import Interval, merge
from calendars.base import Account, CalendarInfo, Channel, EventSpec, NeedsRelink, SyncResult
from calendars.google.transport import (
    GoogleApiError,
    _api_error,
    _Deadline,
    _first,
    _Https,
    _reason,
)
from calendars.google.wire import (
    _calendar_list_page,
    _event_body,
    _event_busy,
    _freebusy_error,
    _own_calendar,
    _parse_instant,
    _require_aware,
    _rfc3339,
    _windows,
    event_id_for,
)

_MAX_CALENDARS_PER_QUERY = 50  # freeBusy.query's calendarExpansionMax limit
_PAGE_SIZE = 2500  # events.list's largest maxResults
_WRITE_ROLES = frozenset({"owner", "writer"})


class GoogleProvider:
    """Google Calendar accounts (OAuth tokens from `account.tokens`).

    `timeout` bounds each operation, retries and back-off included; `retries` is how many times
    one request is sent again after a rate-limit or server error; `max_retry_after` caps the
    wait a Retry-After header may ask for; `sleep` waits between attempts (tests record it);
    `clock` is "now" for Retry-After dates and the retry deadline. `retry` replaces the policy
    those three build (the app passes the one policy all providers share).
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
        retry: RetryPolicy | None = None,
    ) -> None:
        base = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        self._endpoint = urljoin(base, "calendar/v3/")
        self._timeout = timeout
        self._clock: Clock = clock or SystemClock()
        self._retry = retry or RetryPolicy(
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
