"""Read-only ICS calendars: a file on disk or a feed at an http(s) URL.

Link shape: `{"provider": "ics", "source": "/abs/path.ics" | "https://host/feed.ics"}`
(`webcal://` is read as `https://`). What counts as busy:

- every event, TENTATIVE included, except TRANSP:TRANSPARENT and STATUS:CANCELLED ones;
- recurring events expand with RRULE/RDATE, EXDATE and RECURRENCE-ID overrides (an override
  may move an instance or cancel it);
- all-day dates cover local midnight to local midnight in the staff member's zone, DTEND
  exclusive; floating times are in that zone too (a feed's X-WR-TIMEZONE, as Google exports
  carry, takes precedence for its own floating times);
- without DTEND an event lasts its DURATION, else one day for a date and no time at all for a
  date-time (RFC 5545 3.6.1), so a date-time reminder blocks nothing.

A calendar that cannot be parsed or expanded is unavailable as a whole: booking over busy time
we could not read is worse than offering no slots for a while.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import icalendar
import recurring_ical_events
from recurring_ical_events import CalendarQuery

from booking.errors import CalendarUnavailable
from booking.rules import Interval

# Expansion compares floating and all-day times as if they were in the zone of the query
# window; a day of margin either side keeps every candidate, and we filter exactly afterwards.
_MARGIN = timedelta(days=1)
_PARSE_ERRORS = (ValueError, KeyError)
_T = TypeVar("_T")


def busy_from_ics(data: bytes, *, tz: ZoneInfo, start: datetime, end: datetime) -> list[Interval]:
    """Busy intervals (aware UTC, sorted) of an ICS document that overlap `[start, end)`.

    Blocks while it parses and expands: call it from a worker thread for big feeds. Raises
    `CalendarUnavailable` for data that is not a readable iCalendar document.
    """
    return busy_between(parse_ics(data), tz=tz, start=start, end=end)


def parse_ics(data: bytes, *, source: str = "ICS data") -> CalendarQuery:
    """Parse an ICS document into a query that can be expanded for any window."""
    try:
        calendar = icalendar.Calendar.from_ical(data)
        if calendar.name != "VCALENDAR":
            raise ValueError(f"top-level component is {calendar.name}, not VCALENDAR")
        return recurring_ical_events.of(calendar)
    except _PARSE_ERRORS as exc:
        raise CalendarUnavailable(f"{source} is not a valid iCalendar: {_short(exc)}") from exc


def busy_between(
    query: CalendarQuery,
    *,
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
    source: str = "ICS data",
) -> list[Interval]:
    """Busy intervals (aware UTC, sorted) of a parsed calendar that overlap `[start, end)`."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be aware datetimes")
    window_start, window_end = start.astimezone(tz) - _MARGIN, end.astimezone(tz) + _MARGIN
    try:
        events = query.between(window_start, window_end)
        spans = [_span(event, tz) for event in events if _is_busy(event)]
    except _PARSE_ERRORS as exc:
        raise CalendarUnavailable(f"{source} has an unreadable event: {_short(exc)}") from exc
    return sorted(s for s in spans if s[0] < s[1] and s[0] < end and start < s[1])


def _is_busy(event: icalendar.cal.Component) -> bool:
    # recurring-ical-events keeps instances cancelled by an override; they are free time.
    status = str(event.get("STATUS", "CONFIRMED")).upper()
    transp = str(event.get("TRANSP", "OPAQUE")).upper()
    return status != "CANCELLED" and transp != "TRANSPARENT"


def _span(event: icalendar.cal.Component, tz: ZoneInfo) -> Interval:
    # Occurrences always carry DTEND: the library computes it from DURATION or the RFC default.
    return _to_utc(event["DTSTART"].dt, tz), _to_utc(event["DTEND"].dt, tz)


def _to_utc(value: date | datetime, tz: ZoneInfo) -> datetime:
    if not isinstance(value, datetime):
        # An all-day date starts at local midnight; zoneinfo places a midnight that falls in a
        # DST gap at the end of the gap, as booking.rules does.
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redact(source: str) -> str:
    """A name for a source that is safe to log or show: no userinfo, path, query or fragment.

    Secret feed addresses carry their token in the query or the path (Google's
    `/private-<token>/basic.ics`, iCloud's `/published/2/<token>`), so only the host remains.
    """
    if not _is_url(source):
        return source
    parts = urlsplit(source)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}/…"


def _is_url(source: str) -> bool:
    return source.split(":", 1)[0].lower() in ("http", "https", "webcal")


class IcsProvider:
    """Busy time from ICS files and feeds, parsed once and cached per source.

    A file is re-read when its mtime or size changes; a URL is fetched again once `ttl`
    seconds have passed, or at once for a `live` read. `timeout` bounds each read of a source;
    `transport` lets tests put an `httpx.MockTransport` in front of the network; `monotonic`
    is the clock for the URL cache.
    """

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        ttl: float = 60.0,
        max_bytes: int = 20_000_000,
        transport: httpx.AsyncBaseTransport | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout = timeout
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._transport = transport
        self._monotonic = monotonic
        self._files: dict[str, tuple[tuple[int, int], CalendarQuery]] = {}  # (mtime_ns, size)
        self._feeds: dict[str, tuple[float, CalendarQuery]] = {}  # monotonic expiry
        self._locks: dict[str, asyncio.Lock] = {}

    async def busy(
        self,
        link: dict[str, Any],
        *,
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
        live: bool = False,
    ) -> list[Interval]:
        source = link.get("source")
        if not isinstance(source, str) or not source:
            raise CalendarUnavailable("ICS calendar link has no source")
        query = await self._query(source, live=live)
        return await asyncio.to_thread(
            busy_between, query, tz=tz, start=start, end=end, source=redact(source)
        )

    async def _query(self, source: str, *, live: bool) -> CalendarQuery:
        # One read per source at a time: callers that arrive during a read share its result.
        lock = self._locks.setdefault(source, asyncio.Lock())
        async with lock:
            if _is_url(source):
                return await self._url_query(source, live=live)
            return await self._file_query(source)

    async def _file_query(self, source: str) -> CalendarQuery:
        path = Path(source)
        if not path.is_absolute():
            raise CalendarUnavailable(f"calendar file {source} is not an absolute path")
        stat = await self._read_file(source, path.stat)
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._files.get(source)
        if cached is not None and cached[0] == key:
            return cached[1]
        data = await self._read_file(source, path.read_bytes)
        query = await asyncio.to_thread(parse_ics, data, source=f"calendar file {source}")
        self._files[source] = (key, query)
        return query

    async def _read_file(self, source: str, read: Callable[[], _T]) -> _T:
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.to_thread(read)
        except TimeoutError:
            raise CalendarUnavailable(
                f"calendar file {source} was not read within {self._timeout:g} s"
            ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise CalendarUnavailable(f"calendar file {source} cannot be read: {reason}") from exc

    async def _url_query(self, source: str, *, live: bool) -> CalendarQuery:
        cached = self._feeds.get(source)
        if not live and cached is not None and self._monotonic() < cached[0]:
            return cached[1]
        name = redact(source)
        data = await self._fetch(source, name)
        query = await asyncio.to_thread(parse_ics, data, source=f"calendar feed {name}")
        self._feeds[source] = (self._monotonic() + self._ttl, query)
        return query

    async def _fetch(self, source: str, name: str) -> bytes:
        url = "https" + source[6:] if source.lower().startswith("webcal:") else source
        # The errors name the exception type, never its text: httpx puts the full URL there.
        # `from None` keeps it out of logged tracebacks too.
        try:
            async with asyncio.timeout(self._timeout):
                return await self._download(url, name)
        except (TimeoutError, httpx.TimeoutException):
            raise CalendarUnavailable(
                f"calendar feed {name} did not answer within {self._timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise CalendarUnavailable(
                f"calendar feed {name} cannot be fetched: {type(exc).__name__}"
            ) from None

    async def _download(self, url: str, name: str) -> bytes:
        async with (
            httpx.AsyncClient(
                transport=self._transport, timeout=self._timeout, follow_redirects=True
            ) as client,
            client.stream("GET", url, headers={"Accept": "text/calendar"}) as response,
        ):
            if not response.is_success:
                raise CalendarUnavailable(
                    f"calendar feed {name} answered HTTP {response.status_code}"
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise CalendarUnavailable(
                        f"calendar feed {name} is larger than {self._max_bytes} bytes"
                    )
            return bytes(body)
