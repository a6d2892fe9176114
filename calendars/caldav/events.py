"""Reading and writing a calendar's events: calendar-query, sync, PUT and DELETE by UID."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote
from zoneinfo import ZoneInfo

from caldav.calendarobjectresource import CalendarObjectResource
from caldav.collection import Calendar as DavCalendar
from caldav.davclient import DAVClient
from caldav.elements import dav
from caldav.elements.base import BaseElement
from caldav.lib import error as caldav_error

from booking.errors import CalendarUnavailable
from booking.rules import Interval
from calendars.base import SyncResult
from calendars.caldav.clients import _Link, _Refused
from calendars.caldav.discovery import (
    _CALENDAR,
    _calendar,
    _collections,
    _own_properties,
    _resource_types,
)
from calendars.ics import events_between, parse_ics

# The query asks for a day more on each side: all-day dates and floating times match in the
# staff member's zone, which the server does not know. `events_between` cuts to the window.
_QUERY_MARGIN = timedelta(days=1)
_ICS_HEADERS = {"Content-Type": "text/calendar; charset=utf-8"}


class _GetCtag(BaseElement):
    tag: ClassVar[str] = "{http://calendarserver.org/ns/}getctag"


def event_uid(key: str) -> str:
    """The UID of the event written for an appointment chain whose key is `key`."""
    return f"{key}@frontdesk"


def _check_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be aware datetimes")


def _read_events(
    client: DAVClient,
    link: _Link,
    urls: list[str],
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
) -> dict[str, list[Interval]]:
    """Events overlapping `[start, end)` in the given calendars (none: the account URL's)."""
    if not urls:
        urls = _collections(client, link).busy_urls()
    calendars = [_calendar(client, url) for url in urls]
    found: dict[str, list[Interval]] = {}
    for calendar in calendars:
        _query(calendar, link, tz, start, end, into=found)
    return found


def _query(
    calendar: DavCalendar,
    link: _Link,
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
    *,
    into: dict[str, list[Interval]],
) -> None:
    # post_filter=False: the library would filter in its own zone; ours is exact.
    objects: list[CalendarObjectResource] | Coroutine[Any, Any, list[CalendarObjectResource]]
    objects = calendar.search(
        start=start - _QUERY_MARGIN,
        end=end + _QUERY_MARGIN,
        event=True,
        expand=False,
        post_filter=False,
    )
    if not isinstance(objects, list):  # only the library's async client answers a coroutine
        raise TypeError("the CalDAV library's synchronous search did not answer a list")
    for obj in objects:
        data = obj.data
        raw = data.encode() if isinstance(data, str) else bytes(data)
        parsed = parse_ics(raw, source=link.name)
        events = events_between(parsed, tz=tz, start=start, end=end, source=link.name)
        for key, spans in events.items():
            into.setdefault(key, []).extend(spans)


def _sync(
    client: DAVClient,
    link: _Link,
    url: str,
    tz: ZoneInfo,
    cursor: str | None,
    start: datetime,
    end: datetime,
) -> SyncResult:
    calendar = _calendar(client, url)
    # The tag is read before the events, so a change made in between is seen next time.
    tag = _collection_tag(calendar)
    if tag is not None and _unchanged(cursor, tag=tag, tz=tz, start=start, end=end):
        return SyncResult(full=False, cursor=cursor)
    changed: dict[str, list[Interval]] = {}
    _query(calendar, link, tz, start, end, into=changed)
    return SyncResult(full=True, changed=changed, cursor=_cursor(tag, tz, start, end))


def _collection_tag(calendar: DavCalendar) -> str | None:
    """The collection's DAV:sync-token, or its getctag: either changes with every change."""
    props = _own_properties(calendar, [dav.SyncToken(), _GetCtag()])
    for tag in (dav.SyncToken.tag, _GetCtag.tag):
        value = props.get(tag)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _cursor(tag: str | None, tz: ZoneInfo, start: datetime, end: datetime) -> str | None:
    if tag is None:
        return None
    window = {"start": start.astimezone(UTC).isoformat(), "end": end.astimezone(UTC).isoformat()}
    return json.dumps({"tag": tag, "tz": tz.key, **window})


def _unchanged(
    cursor: str | None, *, tag: str, tz: ZoneInfo, start: datetime, end: datetime
) -> bool:
    """Whether the cursor's read still answers for this window: same collection state, same
    zone, and a window that covered this one (a wider window may hold more instances)."""
    if cursor is None:
        return False
    try:
        saved = json.loads(cursor)
        was_start = datetime.fromisoformat(saved["start"])
        was_end = datetime.fromisoformat(saved["end"])
        covered = was_start <= start and end <= was_end
        return bool(saved["tag"] == tag and saved["tz"] == tz.key and covered)
    except (ValueError, KeyError, TypeError):
        return False


def _put(
    client: DAVClient,
    link: _Link,
    url: str,
    uid: str,
    body: str,
    create: bool,
    known_calendar: bool,
) -> None:
    if not known_calendar and _CALENDAR not in _resource_types(client, url):
        raise CalendarUnavailable(
            f"{link.name} is not a single calendar: choose one of the account's calendars",
            retryable=False,
        )
    href = _event_href(url, uid)
    if create:
        status = client.put(href, body, headers={**_ICS_HEADERS, "If-None-Match": "*"}).status
        if status != 412:
            _expect(link, status, "create")
            return
        # Already there: an earlier attempt (maybe one whose answer was lost) created it.
    _expect(link, client.put(href, body, headers=_ICS_HEADERS).status, "update")


def _delete(client: DAVClient, link: _Link, url: str, uid: str) -> None:
    try:
        status = client.delete(_event_href(url, uid)).status
    except caldav_error.NotFoundError:
        return
    if status not in (404, 410):
        _expect(link, status, "delete")


def _event_href(calendar_url: str, uid: str) -> str:
    base = calendar_url if calendar_url.endswith("/") else calendar_url + "/"
    return base + quote(uid, safe="") + ".ics"


def _expect(link: _Link, status: int, action: str) -> None:
    if not 200 <= status < 300:
        raise _Refused(f"{link.name} refused the event {action}: HTTP {status}", status)
