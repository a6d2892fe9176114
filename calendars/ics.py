"""Read-only ICS calendars: a file on disk or a feed at an http(s) URL.

Account settings: `{"source": "/abs/path.ics" | "https://host/feed.ics"}` (`webcal://` is read
as `https://`). An account holds exactly one calendar, the feed itself (`FEED_ID`). What counts
as busy:

- every event, TENTATIVE included, except TRANSP:TRANSPARENT and STATUS:CANCELLED ones;
- recurring events expand with RRULE/RDATE, EXDATE and RECURRENCE-ID overrides (an override
  may move an instance or cancel it);
- all-day dates cover local midnight to local midnight in the staff member's zone, DTEND
  exclusive; floating times are in that zone too (a feed's X-WR-TIMEZONE, as Google exports
  carry, takes precedence for its own floating times);
- without DTEND an event lasts its DURATION, else one day for a date and no time at all for a
  date-time (RFC 5545 3.6.1), so a date-time reminder blocks nothing.

Events are keyed by UID, and the instances of a recurring event by UID and RECURRENCE-ID
(`event_key`), the same keys `calendars.caldav` uses for its events.

A calendar that cannot be parsed or expanded is unavailable as a whole: booking over busy time
we could not read is worse than offering no slots for a while.

A feed whose address answers 401, 403, 404 or 410 needs re-linking (`NeedsRelink`: its login or
its secret address is gone); a 5xx, 429 or 408 is retryable with its `Retry-After`, as are
timeouts and failed connections; any other 4xx is not (`_refused`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import icalendar
import recurring_ical_events
from recurring_ical_events import CalendarQuery

from booking.clock import Clock, SystemClock
from booking.errors import CalendarUnavailable
from booking.recurrence import RuleRefused, pattern_of
from booking.retry import parse_retry_after, retryable_status
from booking.rules import Interval
from calendars.base import Account, CalendarInfo, Channel, EventSpec, NeedsRelink, SyncResult

# Expansion compares floating and all-day times as if they were in the zone of the query
# window; a day of margin either side keeps every candidate, and we filter exactly afterwards.
_MARGIN = timedelta(days=1)
_PARSE_ERRORS = (ValueError, KeyError)
# Expansion is bounded: a window may hold at most this many events and recurring instances,
# and no recurring event may need more than this many repetitions from its start to the end of
# the window (the expansion walks them all: FREQ=MINUTELY since 2000 is 14 million).
MAX_INSTANCES = 50_000
_PERIOD = {
    "SECONDLY": 1.0,
    "MINUTELY": 60.0,
    "HOURLY": 3600.0,
    "DAILY": 86400.0,
    "WEEKLY": 7 * 86400.0,
    "MONTHLY": 28 * 86400.0,
    "YEARLY": 365 * 86400.0,
}
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_UTC = ZoneInfo("UTC")
_MAX_NEVER = 10
_T = TypeVar("_T")

FEED_ID = "feed"  # the one calendar of an ICS account


class ReadOnlyCalendar(CalendarUnavailable):
    """A write to a calendar that cannot take one; trying again will not help."""

    retryable = False


@dataclass(frozen=True)
class ParsedCalendar:
    """An iCalendar document ready to be expanded for any window."""

    query: CalendarQuery
    series: frozenset[str]  # UIDs of recurring events: their instances are keyed one by one
    name: str | None = None  # X-WR-CALNAME, when the feed names itself
    # (uid, first start and UNTIL in UTC, seconds per repetition) of each RRULE without a
    # small COUNT, to bound expansion
    rules: tuple[tuple[str, datetime, float, datetime | None], ...] = ()


def busy_from_ics(data: bytes, *, tz: ZoneInfo, start: datetime, end: datetime) -> list[Interval]:
    """Busy intervals (aware UTC, sorted) of an ICS document that overlap `[start, end)`.

    Blocks while it parses and expands: call it from a worker thread for big feeds. Raises
    `CalendarUnavailable` for data that is not a readable iCalendar document.
    """
    return busy_between(parse_ics(data), tz=tz, start=start, end=end)


def parse_ics(data: bytes, *, source: str = "ICS data") -> ParsedCalendar:
    """Parse an ICS document into a calendar that can be expanded for any window."""
    try:
        calendar = icalendar.Calendar.from_ical(data)
        if calendar.name != "VCALENDAR":
            raise ValueError(f"top-level component is {calendar.name}, not VCALENDAR")
        series = frozenset(
            str(event.get("UID", ""))
            for event in calendar.walk("VEVENT")
            if any(prop in event for prop in ("RRULE", "RDATE", "RECURRENCE-ID"))
        )
        name = calendar.get("X-WR-CALNAME")
        _drop_rules_that_never_happen(calendar, source)
        return ParsedCalendar(
            query=recurring_ical_events.of(calendar),
            series=series,
            name=str(name) if name else None,
            rules=tuple(_rules(calendar)),
        )
    except _PARSE_ERRORS as exc:
        raise CalendarUnavailable(
            f"{source} is not a valid iCalendar: {_short(exc)}", retryable=False
        ) from exc


def _drop_rules_that_never_happen(calendar: icalendar.Calendar, source: str) -> None:
    """Remove each RRULE with no instance in 400 years (the calendar's whole cycle) from DTSTART.

    dateutil looks for the next instance period by period up to the year 9999, on every read:
    FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30 costs 8 s of CPU each time. Without the rule the event
    is what the expansion would have made of it anyway: its DTSTART alone. A rule finer than
    daily may only pick hours, minutes and seconds, so it matches every day. Telling costs up
    to 0.3 s a rule, so a feed with more than `_MAX_NEVER` such rules is refused.
    """
    never = 0
    for event in calendar.walk("VEVENT"):
        rules = event.get("RRULE")
        if rules is None or "DTSTART" not in event:
            continue
        listed = rules if isinstance(rules, list) else [rules]
        kept = []
        for rule in listed:
            text = rule.to_ical().decode()
            freq = str((rule.get("FREQ") or [""])[0]).upper()
            if freq in ("SECONDLY", "MINUTELY", "HOURLY"):
                if set(rule) - {
                    "FREQ",
                    "INTERVAL",
                    "COUNT",
                    "UNTIL",
                    "WKST",
                    "BYHOUR",
                    "BYMINUTE",
                    "BYSECOND",
                }:
                    raise CalendarUnavailable(
                        f"{source} has an event repeating more often than daily on chosen days "
                        f"({text}), which cannot be read in bounded time",
                        retryable=False,
                    )
                kept.append(rule)
                continue
            start = _moment(event, "DTSTART")
            wall = start if isinstance(start, datetime) else datetime.combine(start, time_of_day())
            try:
                pattern = pattern_of(text, wall)
            except RuleRefused:  # BYSETPOS and the like: expanded by the library as it is
                kept.append(rule)
                continue
            if pattern.happens_within(400 * 366):
                kept.append(rule)
                continue
            never += 1
            if never > _MAX_NEVER:
                raise CalendarUnavailable(
                    f"{source} has more than {_MAX_NEVER} recurring events that never happen",
                    retryable=False,
                )
        if len(kept) != len(listed):
            del event["RRULE"]
            for rule in kept:
                event.add("RRULE", rule)


def _rules(calendar: icalendar.Calendar) -> list[tuple[str, datetime, float, datetime | None]]:
    out = []
    for event in calendar.walk("VEVENT"):
        rules = event.get("RRULE")
        if rules is None or "DTSTART" not in event:
            continue
        for rule in rules if isinstance(rules, list) else [rules]:
            freq = str((rule.get("FREQ") or ["DAILY"])[0]).upper()
            interval = rule.get("INTERVAL") or [1]
            try:
                step = _PERIOD.get(freq, _PERIOD["DAILY"]) * max(1, int(interval[0]))
            except (TypeError, ValueError):
                step = _PERIOD.get(freq, _PERIOD["DAILY"])
            count, until = rule.get("COUNT"), rule.get("UNTIL")
            if count and str(count[0]).isdigit() and int(count[0]) <= MAX_INSTANCES:
                continue  # the walk ends after COUNT instances
            first = _to_utc(_moment(event, "DTSTART"), _UTC)
            last = _to_utc(until[0], _UTC) if until and isinstance(until[0], date) else None
            out.append((str(event.get("UID", "")), first, step, last))
    return out


def _check_bounded(parsed: ParsedCalendar, end: datetime, source: str) -> None:
    """Refuse a window whose expansion would walk more than `MAX_INSTANCES` repetitions."""
    for uid, first, step, last in parsed.rules:
        repetitions = (min(end, last or end) - first).total_seconds() / step
        if repetitions > MAX_INSTANCES:
            raise CalendarUnavailable(
                f"{source} has a recurring event ({uid or 'no UID'}) with more than "
                f"{MAX_INSTANCES:,} repetitions since {first:%Y-%m-%d} to expand",
                retryable=False,
            )


def busy_between(
    parsed: ParsedCalendar,
    *,
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
    source: str = "ICS data",
) -> list[Interval]:
    """Busy intervals (aware UTC, sorted) of a parsed calendar that overlap `[start, end)`."""
    events = events_between(parsed, tz=tz, start=start, end=end, source=source)
    return sorted(span for spans in events.values() for span in spans)


def events_between(
    parsed: ParsedCalendar,
    *,
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
    source: str = "ICS data",
) -> dict[str, list[Interval]]:
    """Every event (or recurring instance) that overlaps `[start, end)`, by `event_key`, with
    its busy intervals (aware UTC); an empty list for free time (transparent, cancelled)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be aware datetimes")
    # Clamped to the years 1970-2199, so no arithmetic on the window can overflow.
    start, end = min(max(start, _EARLIEST), _LATEST), min(max(end, _EARLIEST), _LATEST)
    if start >= end:
        return {}
    _check_bounded(parsed, end, source)
    window_start, window_end = start.astimezone(tz) - _MARGIN, end.astimezone(tz) + _MARGIN
    found: dict[str, list[Interval]] = {}
    seen = 0
    try:
        for event in parsed.query.between(window_start, window_end):
            seen += 1
            if seen > MAX_INSTANCES:
                raise CalendarUnavailable(
                    f"{source} has more than {MAX_INSTANCES:,} events in {start:%Y-%m-%d} .. "
                    f"{end:%Y-%m-%d}",
                    retryable=False,
                )
            event_start, event_end = _span(event, tz)
            if event_start < event_end:
                overlaps = event_start < end and start < event_end
            else:  # a moment (a date-time without DTEND): listed, but it blocks nothing
                overlaps = start <= event_start < end
            if not overlaps:
                continue
            spans = found.setdefault(event_key(event, parsed.series, tz), [])
            if event_start < event_end and _is_busy(event):
                spans.append((event_start, event_end))
    except _PARSE_ERRORS as exc:
        raise CalendarUnavailable(
            f"{source} has an unreadable event: {_short(exc)}", retryable=False
        ) from exc
    return found


def event_key(event: icalendar.cal.Component, series: frozenset[str], tz: ZoneInfo) -> str:
    """The UID of a single event; UID and RECURRENCE-ID (in UTC) for an instance of a series."""
    uid = str(event.get("UID", ""))
    if uid not in series or "RECURRENCE-ID" not in event:
        return uid or f"no-uid:{_stamp(_moment(event, 'DTSTART'), tz)}"
    return f"{uid}#{_stamp(_moment(event, 'RECURRENCE-ID'), tz)}"


def _stamp(value: date | datetime, tz: ZoneInfo) -> str:
    if not isinstance(value, datetime):
        return value.strftime("%Y%m%d")
    return _to_utc(value, tz).strftime("%Y%m%dT%H%M%SZ")


def _is_busy(event: icalendar.cal.Component) -> bool:
    # recurring-ical-events keeps instances cancelled by an override; they are free time.
    status = str(event.get("STATUS", "CONFIRMED")).upper()
    transp = str(event.get("TRANSP", "OPAQUE")).upper()
    return status != "CANCELLED" and transp != "TRANSPARENT"


def _span(event: icalendar.cal.Component, tz: ZoneInfo) -> Interval:
    # Occurrences always carry DTEND: the library computes it from DURATION or the RFC default.
    return _to_utc(_moment(event, "DTSTART"), tz), _to_utc(_moment(event, "DTEND"), tz)


def _moment(component: icalendar.cal.Component, name: str) -> date:
    """The date or date-time of a DTSTART, DTEND or RECURRENCE-ID property (a `datetime` is a
    `date` too). Raises ValueError for one given twice or holding a duration or period, which
    makes the calendar unreadable rather than guessed at."""
    prop = component[name]
    value = (
        prop.dt
        if isinstance(prop, (icalendar.vDDDTypes, icalendar.vDate, icalendar.vDatetime))
        else None
    )
    if not isinstance(value, date):
        raise ValueError(f"{name} of {component.name} is not one date or date-time")
    return value


def _to_utc(value: date | datetime, tz: ZoneInfo) -> datetime:
    if not isinstance(value, datetime):
        # An all-day date starts at local midnight; zoneinfo places a midnight that falls in a
        # DST gap at the end of the gap, as booking.rules does.
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # the year 1 or 9999 with an offset: the edge of the calendar
        return (datetime.min if value.year < 5000 else datetime.max).replace(tzinfo=UTC)


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


def describe(source: str) -> str:
    """How messages name an ICS source: the file's path, or the feed's host only."""
    return f"calendar feed {redact(source)}" if _is_url(source) else f"calendar file {source}"


class IcsProvider:
    """Busy time from ICS files and feeds, parsed once and cached per source.

    A file is re-read when its mtime or size changes. A feed is fetched again once the last
    fetch is `ttl` seconds old, by `busy` too, and conditionally (If-None-Match /
    If-Modified-Since with the last answer's ETag / Last-Modified), so the poll of a feed that
    did not change costs a 304 and no parse. Business-file links are read through `busy` on
    every slot search, and a published feed lags its calendar by far more than `ttl` anyway
    (Google refreshes its secret address every few hours), so a fetch per booking would buy
    nothing. `check` always fetches. Callers arriving while a fetch runs share its answer.
    `timeout` bounds each read of a source; `transport` lets tests put an
    `httpx.MockTransport` in front of the network; `monotonic` is the clock for the feed cache,
    `clock` the one a `Retry-After` date is measured with.
    """

    name = "ics"
    writable = False
    notifies = False

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        ttl: float = 60.0,
        max_bytes: int = 20_000_000,
        transport: httpx.AsyncBaseTransport | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._timeout = timeout
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._transport = transport
        self._monotonic = monotonic
        self._files: dict[str, tuple[tuple[int, int], ParsedCalendar]] = {}  # (mtime_ns, size)
        # monotonic time fetched, the parsed feed, and its validators (ETag, Last-Modified)
        self._feeds: dict[str, tuple[float, ParsedCalendar, dict[str, str]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ---- the provider interface -----------------------------------------------------------

    async def check(self, account: Account) -> None:
        await self._read(_source(account), fresh_since=self._monotonic())

    async def list_calendars(self, account: Account) -> list[CalendarInfo]:
        source = _source(account)
        parsed = await self._read(source, fresh_since=self._monotonic() - self._ttl)
        name = parsed.name or account.name or describe(source)
        return [CalendarInfo(id=FEED_ID, name=name, primary=True, writable=False, counts_busy=True)]

    async def busy(
        self,
        account: Account,
        *,
        calendar_ids: list[str],
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
    ) -> list[Interval]:
        """Busy time of the feed; `calendar_ids` is ignored (an account is one calendar)."""
        source = _source(account)
        parsed = await self._read(source, fresh_since=self._monotonic() - self._ttl)
        return await asyncio.to_thread(
            busy_between, parsed, tz=tz, start=start, end=end, source=describe(source)
        )

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
        """A full read of the window every time: a feed has no change cursor."""
        source = _source(account)
        parsed = await self._read(source, fresh_since=self._monotonic() - self._ttl)
        changed = await asyncio.to_thread(
            events_between, parsed, tz=tz, start=start, end=end, source=describe(source)
        )
        return SyncResult(full=True, changed=changed)

    async def put_event(
        self, account: Account, *, calendar_id: str, event: EventSpec, event_id: str | None
    ) -> str:
        raise ReadOnlyCalendar("ICS feeds are read-only")

    async def delete_event(self, account: Account, *, calendar_id: str, event_id: str) -> None:
        raise ReadOnlyCalendar("ICS feeds are read-only")

    async def watch(
        self, account: Account, *, calendar_id: str, callback_url: str, token: str
    ) -> Channel | None:
        return None

    async def renew(self, account: Account, channel: Channel) -> Channel | None:
        return None  # feeds have no channels

    async def stop(self, account: Account, channel: Channel) -> None:
        return None

    async def aclose(self) -> None:
        """Nothing to release: each feed read opens and closes its own client."""
        return None

    # ---- reading and caching sources ------------------------------------------------------

    async def _read(self, source: str, *, fresh_since: float) -> ParsedCalendar:
        """The parsed source; a feed fetched before `fresh_since` (monotonic) is fetched again."""
        # One read per source at a time: callers that arrive during a read share its result.
        lock = self._locks.setdefault(source, asyncio.Lock())
        async with lock:
            if _is_url(source):
                return await self._feed(source, fresh_since=fresh_since)
            return await self._file(source)

    async def _file(self, source: str) -> ParsedCalendar:
        if not Path(source).is_absolute():
            raise CalendarUnavailable(
                f"calendar file {source} is not an absolute path", retryable=False
            )
        # The file as it is now, symlinks resolved: a link swapped since the import checked the
        # source must not make this read some other (non-calendar) file.
        path = Path(await self._read_file(source, lambda: os.path.realpath(source)))
        if path.suffix.lower() != ".ics":
            raise CalendarUnavailable(
                f"calendar file {source} is not an .ics file", retryable=False
            )
        stat = await self._read_file(source, path.stat)
        if stat.st_size > self._max_bytes:
            raise CalendarUnavailable(
                f"calendar file {source} is larger than {self._max_bytes} bytes", retryable=False
            )
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._files.get(source)
        if cached is not None and cached[0] == key:
            return cached[1]
        data = await self._read_file(source, path.read_bytes)
        parsed = await asyncio.to_thread(parse_ics, data, source=describe(source))
        self._files[source] = (key, parsed)
        return parsed

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

    async def _feed(self, source: str, *, fresh_since: float) -> ParsedCalendar:
        cached = self._feeds.get(source)
        # Stamped when the fetch finished, so callers that queued behind it share its answer.
        if cached is not None and cached[0] >= fresh_since:
            return cached[1]
        name = redact(source)
        # A conditional GET: a feed that has not changed answers 304 with no body.
        known = cached[2] if cached is not None else {}
        data, validators = await self._fetch(source, name, known)
        if data is None and cached is not None:
            parsed = cached[1]
        else:
            parsed = await asyncio.to_thread(parse_ics, data or b"", source=f"calendar feed {name}")
        self._feeds[source] = (self._monotonic(), parsed, validators)
        return parsed

    async def _fetch(
        self, source: str, name: str, known: dict[str, str]
    ) -> tuple[bytes | None, dict[str, str]]:
        url = "https" + source[6:] if source.lower().startswith("webcal:") else source
        # The errors name the exception type, never its text: httpx puts the full URL there.
        # `from None` keeps it out of logged tracebacks too.
        try:
            async with asyncio.timeout(self._timeout):
                return await self._download(url, name, known)
        except (TimeoutError, httpx.TimeoutException):
            raise CalendarUnavailable(
                f"calendar feed {name} did not answer within {self._timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise CalendarUnavailable(
                f"calendar feed {name} cannot be fetched: {type(exc).__name__}"
            ) from None

    async def _download(
        self, url: str, name: str, known: dict[str, str]
    ) -> tuple[bytes | None, dict[str, str]]:
        """The feed's body and validators; None for the body when it answered 304 Not
        Modified to the validators `known` from the last fetch."""
        headers = {"Accept": "text/calendar"}
        if "etag" in known:
            headers["If-None-Match"] = known["etag"]
        if "last-modified" in known:
            headers["If-Modified-Since"] = known["last-modified"]
        async with (
            httpx.AsyncClient(
                transport=self._transport, timeout=self._timeout, follow_redirects=True
            ) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code == 304 and known:
                return None, known
            if not response.is_success:
                raise _refused(
                    name, response.status_code, response.headers.get("retry-after"), self._clock
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise CalendarUnavailable(
                        f"calendar feed {name} is larger than {self._max_bytes} bytes",
                        retryable=False,
                    )
            validators = {
                key: response.headers[key]
                for key in ("etag", "last-modified")
                if response.headers.get(key)
            }
            return bytes(body), validators


def _refused(name: str, status: int, retry_after: str | None, clock: Clock) -> CalendarUnavailable:
    """The error for a feed that answered `status`.

    401 and 403: the feed wants credentials it no longer has. 404 and 410: the address is gone,
    which is what a secret feed address does once it is reset or unshared (Google's "reset
    private address", iCloud's stopped public calendar), and it will not come back: both need a
    person to link the feed again with its current address, as a revoked grant does. A 5xx,
    429 or 408 may pass, after the answer's `Retry-After`; any other 4xx will not."""
    message = f"calendar feed {name} answered HTTP {status}"
    if status in (401, 403, 404, 410):
        return NeedsRelink(f"{message}: link it again with the feed's current address")
    if not retryable_status(status):
        return CalendarUnavailable(message, retryable=False)
    return CalendarUnavailable(
        message, retryable=True, retry_after=parse_retry_after(retry_after, clock.now())
    )


def _source(account: Account) -> str:
    source = account.settings.get("source")
    if not isinstance(source, str) or not source:
        raise CalendarUnavailable(f"ICS calendar {account.name} has no source")
    return source
