"""`CaldavProvider`: busy time from and bookings to an account's CalDAV calendars."""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import icalendar

from booking.clock import Clock, SystemClock
from booking.errors import CalendarUnavailable
from booking.retry import RetryPolicy
from booking.rules import Interval
from calendars.base import Account, CalendarInfo, Channel, EventSpec, SyncResult
from calendars.caldav.clients import _T, _calendar_url, _Clients, _Link, _parse_account
from calendars.caldav.discovery import _collections, _list_calendars
from calendars.caldav.events import _check_window, _delete, _put, _read_events, _sync, event_uid


class CaldavProvider:
    """Reads busy time from and writes bookings to CalDAV calendars.

    `timeout` bounds each operation: all its requests and the waits between its attempts.
    `retry` is the policy an operation that failed in a way a retry may help (a 5xx, a 429, a
    408, a dropped connection, a timed-out request) is tried again by, waiting what the
    server's `Retry-After` asks; by default one built on `clock` and `sleep`. `clock` also
    stamps written events (DTSTAMP) and measures a `Retry-After` date.
    """

    name = "caldav"
    writable = True
    notifies = False

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._timeout = timeout
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._retry = retry if retry is not None else RetryPolicy(clock=self._clock, sleep=sleep)
        self._clients = _Clients(timeout=timeout, clock=self._clock)
        # A provider dropped without `close` still closes its idle connections.
        self._finalizer = weakref.finalize(self, self._clients.close)
        # Collection URLs known to be calendars (listed, or checked before a first write), so
        # a write is one PUT. Radicale would take a PUT into an account's principal, where no
        # calendar app would ever show the event.
        self._known_calendars: set[str] = set()

    # ---- reading ------------------------------------------------------------------------------

    async def check(self, account: Account) -> None:
        """Verify that the URL and credentials reach a calendar or an account (checked on save)."""
        link = _parse_account(account)
        await self._run(link, "check", _collections)

    async def list_calendars(self, account: Account) -> list[CalendarInfo]:
        """The calendars the account URL reaches: itself, or every one of a principal."""
        link = _parse_account(account)
        found = await self._run(link, "list", _list_calendars)
        self._remember(info.id for info in found)
        return found

    async def busy(
        self,
        account: Account,
        *,
        calendar_ids: list[str],
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
    ) -> list[Interval]:
        _check_window(start, end)
        link = _parse_account(account)
        urls = [_calendar_url(link, calendar_id) for calendar_id in calendar_ids]
        events = await self._run(link, "read", _read_events, urls, tz, start, end)
        return sorted(span for spans in events.values() for span in spans)

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
        _check_window(start, end)
        link = _parse_account(account)
        url = _calendar_url(link, calendar_id)
        return await self._run(link, "sync", _sync, url, tz, cursor, start, end)

    # ---- writing ------------------------------------------------------------------------------

    async def put_event(
        self, account: Account, *, calendar_id: str, event: EventSpec, event_id: str | None
    ) -> str:
        """Create the event (`event_id` None) or update it; returns its UID, the event id."""
        link = _parse_account(account)
        url = _calendar_url(link, calendar_id)
        uid = event_id or event_uid(event.key)
        body = self._ics(uid, event)
        known = url in self._known_calendars
        await self._run(link, "write", _put, url, uid, body, event_id is None, known)
        self._remember([url])
        return uid

    async def delete_event(self, account: Account, *, calendar_id: str, event_id: str) -> None:
        """Delete the event; one that is already gone counts as deleted."""
        link = _parse_account(account)
        url = _calendar_url(link, calendar_id)
        await self._run(link, "delete", _delete, url, event_id)

    async def watch(
        self, account: Account, *, calendar_id: str, callback_url: str, token: str
    ) -> Channel | None:
        return None  # CalDAV has no push that works across servers; the sync schedule covers it

    async def renew(self, account: Account, channel: Channel) -> Channel | None:
        return None  # no channels to renew

    async def stop(self, account: Account, channel: Channel) -> None:
        return None

    async def aclose(self) -> None:
        """`close`, as the provider contract names it."""
        self.close()

    def close(self) -> None:
        """Close the connections kept for later operations (at shutdown). The provider stays
        usable; operations after this open and close a connection each."""
        self._finalizer()

    def _remember(self, urls: Iterable[str]) -> None:
        if len(self._known_calendars) > 10_000:
            self._known_calendars.clear()
        self._known_calendars.update(urls)

    def _ics(self, uid: str, spec: EventSpec) -> str:
        _check_window(spec.start, spec.end)
        if spec.end <= spec.start:
            raise ValueError("an event must end after it starts")
        calendar = icalendar.Calendar()
        calendar.add("prodid", "-//Frontdesk//Frontdesk//EN")
        calendar.add("version", "2.0")
        event = icalendar.Event()
        event.add("uid", uid)
        event.add("dtstamp", self._clock.now().astimezone(UTC))
        # iCloud rejects an event without DTEND or DURATION.
        event.add("dtstart", spec.start.astimezone(UTC))
        event.add("dtend", spec.end.astimezone(UTC))
        event.add("summary", spec.summary)
        if spec.description:
            event.add("description", spec.description)
        if spec.location:
            event.add("location", spec.location)
        calendar.add_component(event)
        return str(calendar.to_ical(), "utf-8")

    # ---- running the blocking library -----------------------------------------------------

    async def _run(self, link: _Link, action: str, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(client, link, *args)` in a worker thread, tried again by the retry policy while
        the error says that may help, all of it within the timeout. Every operation is safe to
        repeat (reads; a write by UID with If-None-Match; a delete that counts 404 as done)."""

        # Checking and listing reach the account itself: a 403 there refuses the whole account.
        account_step = action in ("check", "list")

        async def attempt() -> _T:
            return await asyncio.to_thread(
                functools.partial(self._clients.run, account_step=account_step), link, fn, *args
            )

        try:
            async with asyncio.timeout(self._timeout):
                return await self._retry.call(attempt, deadline=self._timeout)
        except TimeoutError:
            raise CalendarUnavailable(
                f"{link.name} did not answer the {action} within {self._timeout:g} s"
            ) from None
