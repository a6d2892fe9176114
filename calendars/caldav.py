"""CalDAV calendars (Apple iCloud, Fastmail, Nextcloud, Radicale) through the `caldav` library.

Link shape: `{"provider": "caldav", "url": ..., "username": ..., "password": ...}`. The URL is a
calendar collection, or an account's principal: busy time then covers every calendar of the
account, while writes need one chosen calendar (`list_calendars` names them).

Busy time comes from the events themselves, read with a calendar-query over the window and
turned into intervals by `calendars.ics`, so a CalDAV calendar and an ICS feed agree on what
TRANSPARENT, CANCELLED, all-day dates and recurrence exceptions mean. Free-busy-query is not
used: iCloud answers it with 400, and Radicale reports all-day events as UTC midnight to
midnight, which is the wrong day for a business in New York.

Writes are idempotent by UID: an event lives at `<calendar>/<uid>.ics`, and it is created with
`If-None-Match: *`, so a retry after a timed-out attempt that did succeed finds it there (412)
instead of writing a second copy.

The library blocks, so every call runs in a worker thread under a timeout. Whatever goes wrong
(refused login, 5xx, no answer in time, an unreadable event) becomes
`booking.errors.CalendarUnavailable`, whose message names the server by host only: the
library's own error texts carry full URLs and are never passed on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import caldav
import icalendar
from caldav.elements import dav
from caldav.lib import error as caldav_error

from booking.errors import CalendarUnavailable
from booking.rules import Interval
from calendars.ics import busy_from_ics, redact

_T = TypeVar("_T")
_CALENDAR = "{urn:ietf:params:xml:ns:caldav}calendar"
_PRINCIPAL = "{DAV:}principal"
# The query asks for a day more on each side: all-day dates and floating times match in the
# staff member's zone, which the server does not know. `busy_from_ics` cuts to the window.
_QUERY_MARGIN = timedelta(days=1)
_ICS_HEADERS = {"Content-Type": "text/calendar; charset=utf-8"}


@dataclass(frozen=True)
class _Link:
    url: str  # without userinfo
    username: str
    password: str

    @property
    def name(self) -> str:
        return f"CalDAV calendar {redact(self.url)}"


class CaldavProvider:
    """Reads busy time from and writes bookings to CalDAV calendars.

    `timeout` bounds each operation (all its requests); `ttl` is how long a busy read is reused
    for the same calendar and window unless the read is `live`; `monotonic` is the cache's
    clock and `now` stamps written events (DTSTAMP).
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        ttl: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._timeout = timeout
        self._ttl = ttl
        self._monotonic = monotonic
        self._now = now
        self._cache: dict[tuple[str, str, str, datetime, datetime], tuple[float, list[Interval]]]
        self._cache = {}

    # ---- reading ------------------------------------------------------------------------------

    async def busy(
        self,
        link: dict[str, Any],
        *,
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
        live: bool = False,
    ) -> list[Interval]:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be aware datetimes")
        parsed = _parse_link(link)
        key = (parsed.url, parsed.username, tz.key, start, end)
        cached = self._cache.get(key)
        if not live and cached is not None and self._monotonic() < cached[0]:
            return cached[1]
        intervals = await self._run(parsed, "read", _read_busy, parsed, tz, start, end)
        self._cache[key] = (self._monotonic() + self._ttl, intervals)
        return intervals

    async def list_calendars(self, link: dict[str, Any]) -> list[dict[str, str]]:
        """The calendars the link reaches (`name`, `url`): itself, or every one of an account."""
        parsed = _parse_link(link)
        return await self._run(parsed, "list", _list_calendars, parsed)

    async def check(self, link: dict[str, Any]) -> None:
        """Verify that the URL and credentials reach a calendar or an account (checked on save)."""
        parsed = _parse_link(link)
        await self._run(parsed, "check", _calendars, parsed)

    # ---- writing ------------------------------------------------------------------------------

    async def create_event(
        self,
        link: dict[str, Any],
        *,
        uid: str,
        start: datetime,
        end: datetime,
        summary: str,
        description: str,
    ) -> str:
        """Create the event `uid` once; returns its URL. Creating it again finds the first one."""
        parsed = _parse_link(link)
        body = self._ics(uid=uid, start=start, end=end, summary=summary, description=description)
        href = await self._run(parsed, "write", _create, parsed, uid, body)
        self._forget(parsed)
        return href

    async def update_event(
        self,
        link: dict[str, Any],
        *,
        uid: str,
        start: datetime,
        end: datetime,
        summary: str,
        description: str,
    ) -> None:
        """Replace the event `uid` with these details (written anew if it was deleted)."""
        parsed = _parse_link(link)
        body = self._ics(uid=uid, start=start, end=end, summary=summary, description=description)
        await self._run(parsed, "write", _update, parsed, uid, body)
        self._forget(parsed)

    async def delete_event(self, link: dict[str, Any], *, uid: str) -> None:
        """Delete the event `uid`; one that is already gone counts as deleted."""
        parsed = _parse_link(link)
        await self._run(parsed, "write", _delete, parsed, uid)
        self._forget(parsed)

    def _ics(
        self, *, uid: str, start: datetime, end: datetime, summary: str, description: str
    ) -> str:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be aware datetimes")
        if end <= start:
            raise ValueError("an event must end after it starts")
        calendar = icalendar.Calendar()
        calendar.add("prodid", "-//Frontdesk//Frontdesk//EN")
        calendar.add("version", "2.0")
        event = icalendar.Event()
        event.add("uid", uid)
        event.add("dtstamp", self._now().astimezone(UTC))
        # iCloud rejects an event without DTEND or DURATION.
        event.add("dtstart", start.astimezone(UTC))
        event.add("dtend", end.astimezone(UTC))
        event.add("summary", summary)
        if description:
            event.add("description", description)
        calendar.add_component(event)
        return calendar.to_ical().decode()

    def _forget(self, link: _Link) -> None:
        # Our own write changes the calendar now; the next read should see it.
        for key in [k for k in self._cache if k[0] == link.url]:
            del self._cache[key]

    # ---- running the blocking library -----------------------------------------------------

    async def _run(self, link: _Link, action: str, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.to_thread(fn, *args, timeout=self._timeout)
        except TimeoutError:
            raise CalendarUnavailable(
                f"{link.name} did not answer the {action} within {self._timeout:g} s"
            ) from None


# ---- the blocking side, run in worker threads ---------------------------------------------


def _parse_link(link: dict[str, Any]) -> _Link:
    url, username, password = link.get("url"), link.get("username"), link.get("password")
    if not isinstance(url, str) or not url:
        raise CalendarUnavailable("CalDAV calendar link has no URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CalendarUnavailable(f"CalDAV calendar link {redact(url)} is not an http(s) URL")
    if not isinstance(username, str) or not isinstance(password, str):
        raise CalendarUnavailable(f"CalDAV calendar {redact(url)} has no username and password")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = parts.path or "/"
    # Credentials travel only in the username and password fields, never in the URL.
    clean = urlunsplit((parts.scheme, netloc, path, parts.query, ""))
    return _Link(url=clean, username=username, password=password)


@contextmanager
def _client(link: _Link, timeout: float) -> Iterator[caldav.DAVClient]:
    """A client for one operation, with the library's errors turned into ours."""
    try:
        with caldav.DAVClient(
            url=link.url,
            username=link.username,
            password=link.password,
            timeout=max(1, round(timeout)),
            enable_rfc6764=False,
        ) as client:
            yield client
    except CalendarUnavailable:
        raise
    except caldav_error.AuthorizationError:
        raise CalendarUnavailable(
            f"CalDAV server {redact(link.url)} refused the username or password"
        ) from None
    except caldav_error.NotFoundError:
        raise CalendarUnavailable(f"{link.name} was not found on the server") from None
    except caldav_error.DAVError as exc:
        raise CalendarUnavailable(f"{link.name} answered with an error ({_status(exc)})") from None
    except OSError as exc:
        # niquests' connection and timeout errors are OSErrors; their text holds the URL.
        raise CalendarUnavailable(
            f"CalDAV server {redact(link.url)} cannot be reached ({type(exc).__name__})"
        ) from None


def _status(exc: caldav_error.DAVError) -> str:
    reason = str(getattr(exc, "reason", "") or "")
    return reason.split(" at ", 1)[0][:80] or type(exc).__name__


def _calendars(link: _Link, *, timeout: float, client: caldav.DAVClient | None = None) -> Any:
    if client is None:
        with _client(link, timeout) as own:
            return _calendars(link, timeout=timeout, client=own)
    kinds = _resource_types(client, link.url)
    if _CALENDAR in kinds:
        return [client.calendar(url=link.url)]
    if _PRINCIPAL in kinds:
        return caldav.Principal(client=client, url=link.url).get_calendars()
    raise CalendarUnavailable(f"{link.name} is neither a calendar nor a CalDAV account")


def _resource_types(client: caldav.DAVClient, url: str) -> list[str]:
    props = client.calendar(url=url).get_properties([dav.ResourceType()])
    kinds = props.get(dav.ResourceType.tag) or []
    return [kinds] if isinstance(kinds, str) else list(kinds)


def _read_busy(
    link: _Link, tz: ZoneInfo, start: datetime, end: datetime, *, timeout: float
) -> list[Interval]:
    with _client(link, timeout) as client:
        intervals: list[Interval] = []
        for calendar in _calendars(link, timeout=timeout, client=client):
            # post_filter=False: the library would filter in its own zone; ours is exact.
            objects = calendar.search(
                start=start - _QUERY_MARGIN,
                end=end + _QUERY_MARGIN,
                event=True,
                expand=False,
                post_filter=False,
            )
            for obj in objects:
                data = obj.data
                raw = data.encode() if isinstance(data, str) else bytes(data)
                intervals += busy_from_ics(raw, tz=tz, start=start, end=end)
        return sorted(intervals)


def _list_calendars(link: _Link, *, timeout: float) -> list[dict[str, str]]:
    with _client(link, timeout) as client:
        found = []
        for calendar in _calendars(link, timeout=timeout, client=client):
            url = str(calendar.url)
            name = calendar.get_display_name() or url.rstrip("/").rsplit("/", 1)[-1]
            found.append({"name": str(name), "url": url})
        return found


def _event_url(client: caldav.DAVClient, link: _Link, uid: str) -> str:
    kinds = _resource_types(client, link.url)
    if _CALENDAR not in kinds:
        raise CalendarUnavailable(
            f"{link.name} is not a single calendar: choose one of the account's calendars"
        )
    base = link.url if link.url.endswith("/") else link.url + "/"
    return base + quote(uid, safe="") + ".ics"


def _create(link: _Link, uid: str, body: str, *, timeout: float) -> str:
    with _client(link, timeout) as client:
        href = _event_url(client, link, uid)
        response = client.put(href, body, headers={**_ICS_HEADERS, "If-None-Match": "*"})
        if response.status == 412:
            # Already there: an earlier attempt (maybe one that timed out) created it.
            existing = client.request(href, "GET")
            _expect(link, existing.status, "read back")
            return href
        _expect(link, response.status, "create")
        return href


def _update(link: _Link, uid: str, body: str, *, timeout: float) -> None:
    with _client(link, timeout) as client:
        href = _event_url(client, link, uid)
        _expect(link, client.put(href, body, headers=_ICS_HEADERS).status, "update")


def _delete(link: _Link, uid: str, *, timeout: float) -> None:
    with _client(link, timeout) as client:
        href = _event_url(client, link, uid)
        status = client.delete(href).status
        if status != 404:
            _expect(link, status, "delete")


def _expect(link: _Link, status: int, action: str) -> None:
    if not 200 <= status < 300:
        raise CalendarUnavailable(f"{link.name} refused the event {action}: HTTP {status}")
