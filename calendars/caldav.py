"""CalDAV calendars (Apple iCloud, Fastmail, Nextcloud, Radicale) through the `caldav` library.

Account settings: `url` and `username`; secret: `password` (an app-specific one for iCloud).
The URL is the address the user knows: the server's (https://caldav.icloud.com/), the account's
principal, its calendar home, or one calendar. The account's calendars are found the way CalDAV
clients find them (`_collections`): the URL's own properties first (a calendar is itself; a
`current-user-principal`, RFC 5397, leads to the principal; a principal's `calendar-home-set`,
RFC 4791 section 6.2.1, to the collection holding its calendars), then, when the URL answers
none of that, the server's `/.well-known/caldav` (RFC 6764), redirects followed one by one.
The principal and the home may be on other paths or hosts (iCloud keeps both on a host of
the account's own, `p07-caldav.icloud.com`); a step to another host may not lead from a public
address into a private one, nor from https to http. A calendar's id is its collection URL.

`list_calendars` lists every calendar collection with the flags of the provider contract:
`primary` is the calendar the scheduling inbox names as `schedule-default-calendar-URL`
(RFC 6638 section 9.2; the inbox is the principal's `schedule-inbox-URL`, or the one listed in
the home), else the first writable event calendar; `counts_busy` is false for a collection
whose supported-calendar-component-set lacks VEVENT (iCloud's Reminders, task lists) or whose
`schedule-calendar-transp` is transparent (RFC 6638 section 9.1); `writable` comes from
`current-user-privilege-set` (RFC 3744 section 5.4) when the server offers it, and is false
for a collection that takes no events. `busy` with no calendar ids reads the ones that count.

Busy time comes from the events themselves, read with a calendar-query over the window and
expanded by `calendars.ics`, so a CalDAV calendar and an ICS feed agree on what TRANSPARENT,
CANCELLED, all-day dates and recurrence exceptions mean, and key events alike (UID, or UID and
RECURRENCE-ID for an instance). Free-busy-query is not used: iCloud answers it with 400, and
Radicale reports all-day events as UTC midnight to midnight, the wrong day for New York.

`sync` reads the whole window each time (CalDAV has no cheap delta of expanded instances); its
cursor remembers the collection's DAV:sync-token (or CalendarServer getctag) and the window,
so a sync that finds both unchanged answers "nothing changed" after one small PROPFIND.

Writes are idempotent by UID: an event lives at `<calendar>/<uid>.ics` and is created with
`If-None-Match: *`, so a retry after a timed-out attempt that did land gets 412 and updates
that event instead of writing a second copy. The UID (the event id we return) comes from
`EventSpec.key`.

The library blocks, so every call runs in a worker thread under a timeout. Whatever goes wrong
becomes `CalendarUnavailable`, whose message names the server by host only (the library's own
error texts carry full URLs and are never passed on): `NeedsRelink` for a refused password or
access (401, 403), never retried; retryable, with the answer's `Retry-After`, for a 5xx, 429 or
408 and for a connection that failed or timed out; not retryable for any other refusal (404,
400, ...). Each operation goes through the injected `booking.retry.RetryPolicy`, which tries a
retryable failure again within the operation's timeout.

Clients are kept between operations, per account (`_Clients`), with their open connections and
the login they negotiated; an account whose server asked for Basic once gets its credentials sent
up front by every new client, so no operation pays an unauthenticated request and its 401 (nor,
over https, a new TLS handshake). A kept connection the server had closed meanwhile is not the
server's failure: the operation is sent once more on a fresh one at once (`_Clients.run`),
before and apart from the retry policy. `CaldavProvider.close` ends the kept connections.
No busy time is cached here: `busy` is the live re-check, and the busy cache lives in the
database, filled by `sync`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, urljoin, urlsplit, urlunsplit
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import icalendar
from caldav.calendarobjectresource import CalendarObjectResource
from caldav.collection import Calendar as DavCalendar
from caldav.davclient import DAVClient
from caldav.elements import dav
from caldav.elements.base import BaseElement
from caldav.lib import error as caldav_error
from caldav.lib.http_sync import HTTPBasicAuth
from caldav.lib.http_sync import requests as http_library

from booking.clock import Clock, SystemClock
from booking.errors import CalendarUnavailable
from booking.retry import RetryPolicy, parse_retry_after, retryable_status
from booking.rules import Interval
from calendars.base import Account, CalendarInfo, Channel, EventSpec, NeedsRelink, SyncResult
from calendars.ics import events_between, parse_ics, redact

_T = TypeVar("_T")
_CALENDAR = "{urn:ietf:params:xml:ns:caldav}calendar"
_RESOURCETYPE = "{DAV:}resourcetype"
_DISPLAYNAME = "{DAV:}displayname"
_CURRENT_USER_PRINCIPAL = "{DAV:}current-user-principal"
_HOME_SET = "{urn:ietf:params:xml:ns:caldav}calendar-home-set"
_COMPONENTS = "{urn:ietf:params:xml:ns:caldav}supported-calendar-component-set"
# RFC 6638: a principal's scheduling inbox (2.2.1), the inbox's default calendar (9.2), and
# whether a calendar's events count as busy time (9.1); RFC 3744 5.4: what we may do there.
_INBOX_URL = "{urn:ietf:params:xml:ns:caldav}schedule-inbox-URL"
_DEFAULT_CALENDAR = "{urn:ietf:params:xml:ns:caldav}schedule-default-calendar-URL"
_SCHEDULE_TRANSP = "{urn:ietf:params:xml:ns:caldav}schedule-calendar-transp"
_TRANSPARENT = "{urn:ietf:params:xml:ns:caldav}transparent"
_PRIVILEGES = "{DAV:}current-user-privilege-set"
_SCHEDULE_INBOX = "{urn:ietf:params:xml:ns:caldav}schedule-inbox"
# Any of these lets us add an event to a collection (RFC 3744 3.1-3.9: `write` and `all`
# aggregate `bind`; Radicale grants `write-content` on a calendar shared for writing).
_WRITE_PRIVILEGES = frozenset({"{DAV:}all", "{DAV:}write", "{DAV:}bind", "{DAV:}write-content"})
# What discovery cannot do without: asked for alone when a server refuses one of the others.
_ESSENTIAL_PROPS = [_RESOURCETYPE, _DISPLAYNAME, _CURRENT_USER_PRINCIPAL, _HOME_SET, _COMPONENTS]
_DISCOVERY_PROPS = [
    *_ESSENTIAL_PROPS,
    _INBOX_URL,
    _DEFAULT_CALENDAR,
    _SCHEDULE_TRANSP,
    _PRIVILEGES,
]


def _propfind_body(props: list[str]) -> str:
    """A PROPFIND body asking for `props` (Clark names). Written out here because the
    library's list form silently drops every property it has no class for."""
    root = ElementTree.Element("{DAV:}propfind")
    wanted = ElementTree.SubElement(root, "{DAV:}prop")
    for name in props:
        ElementTree.SubElement(wanted, name)
    return ElementTree.tostring(root, encoding="unicode")


_DISCOVERY_BODY = _propfind_body(_DISCOVERY_PROPS)
_ESSENTIAL_BODY = _propfind_body(_ESSENTIAL_PROPS)
# Steps one discovery may take: redirects of the well-known address, principal, home.
_HOPS = 6
_WHAT_TO_GIVE = (
    "give the address of the account's calendar home or of one calendar "
    "(for iCloud https://caldav.icloud.com/)"
)
# The query asks for a day more on each side: all-day dates and floating times match in the
# staff member's zone, which the server does not know. `events_between` cuts to the window.
_QUERY_MARGIN = timedelta(days=1)
_ICS_HEADERS = {"Content-Type": "text/calendar; charset=utf-8"}
# Idle clients kept: a few per account (the live re-check reads an account's calendars at once),
# for a bounded number of accounts, and not for long: servers drop idle connections after a
# while (Apache after 5 s, nginx after 75 s), and a client kept past that only costs a reconnect.
_IDLE_PER_ACCOUNT = 4
_IDLE_ACCOUNTS = 256
_IDLE_SECONDS = 60.0


class _GetCtag(BaseElement):
    tag: ClassVar[str] = "{http://calendarserver.org/ns/}getctag"


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

        async def attempt() -> _T:
            return await asyncio.to_thread(self._clients.run, link, fn, *args)

        try:
            async with asyncio.timeout(self._timeout):
                return await self._retry.call(attempt, deadline=self._timeout)
        except TimeoutError:
            raise CalendarUnavailable(
                f"{link.name} did not answer the {action} within {self._timeout:g} s"
            ) from None


def event_uid(key: str) -> str:
    """The UID of the event written for an appointment chain whose key is `key`."""
    return f"{key}@frontdesk"


def _check_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be aware datetimes")


def _parse_account(account: Account) -> _Link:
    url = account.settings.get("url")
    username = account.settings.get("username")
    password = account.secret.get("password")
    if not isinstance(url, str) or not url:
        raise CalendarUnavailable(f"CalDAV account {account.name} has no URL")
    if not isinstance(username, str) or not isinstance(password, str):
        raise CalendarUnavailable(f"CalDAV calendar {redact(url)} has no username and password")
    return _Link(url=_clean_url(url), username=username, password=password)


def _clean_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CalendarUnavailable(f"CalDAV calendar {redact(url)} is not an http(s) URL")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    # Credentials travel only in the username and password fields, never in the URL.
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def _calendar_url(link: _Link, calendar_id: str) -> str:
    return _clean_url(urljoin(link.url, calendar_id))


# ---- the blocking side, run in worker threads ---------------------------------------------

_Key = tuple[str, str, str]


def _key(link: _Link) -> _Key:
    # The password is part of the key (a changed one must not reuse the old login), hashed so
    # the pool's keys are no second copy of it.
    return link.url, link.username, hashlib.sha256(link.password.encode()).hexdigest()


class _Clients:
    """Authenticated `DAVClient`s kept between operations, a few per account.

    A client is lent to one operation at a time and given back only when the operation went
    well; a failed one is closed, so a broken connection is never lent again. Lending rather
    than one client per worker thread or one per account behind a lock, because: the library
    does not promise that a client (its niquests session, its digest state) is thread-safe;
    the live re-check reads an account's calendars at the same moment, which a lock would
    queue; and clients per thread would multiply the connections by the executor's size (up to
    32 per account) and leave them out of reach of `close`.

    The library sends nothing with its first request and answers the server's 401 by building
    the login the server asked for. Accounts whose server asked for Basic are remembered, and
    new clients for them send it up front (`auth_type="basic"`); a server that then wants
    something else gets one more try with a client that negotiates again.
    """

    def __init__(self, *, timeout: float, clock: Clock) -> None:
        self._timeout = max(1, round(timeout))
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: OrderedDict[_Key, list[tuple[float, DAVClient]]] = OrderedDict()
        self._basic: set[_Key] = set()
        self._closed = False

    def run(self, link: _Link, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(client, link, *args)` with a kept or new client, the library's errors turned
        into ours."""
        key = _key(link)
        _last_answer.retry_after = None
        with _translated(link, self._clock):
            client, reused = self._lend(key, link)
            try:
                result = _using(client, link, fn, args)
            except Exception as exc:
                if not (reused or client.auth_type == "basic") or not self._retry_helps(key, exc):
                    raise
                client = self._open(key, link)
                result = _using(client, link, fn, args)
            self._give_back(key, client)
            return result

    def close(self) -> None:
        """Close every idle client; clients lent out are closed when they come back."""
        with self._lock:
            self._closed = True
            idle = [client for kept in self._idle.values() for _, client in kept]
            self._idle.clear()
        for client in idle:
            client.close()

    def _lend(self, key: _Key, link: _Link) -> tuple[DAVClient, bool]:
        """A kept client (True) or a new one (False)."""
        stale: list[DAVClient] = []
        client = None
        with self._lock:
            kept = self._idle.get(key) or []
            if kept:
                since, client = kept.pop()
                if time.monotonic() - since > _IDLE_SECONDS:
                    # The newest is too old, so are the others.
                    stale = [client] + [c for _, c in kept]
                    kept.clear()
                    client = None
            if not kept:
                self._idle.pop(key, None)
        for old in stale:
            old.close()
        if client is not None:
            return client, True
        return self._open(key, link), False

    def _open(self, key: _Key, link: _Link) -> DAVClient:
        client = DAVClient(
            url=link.url,
            username=link.username,
            password=link.password,
            auth_type="basic" if key in self._basic else None,
            timeout=self._timeout,
            enable_rfc6764=False,
        )
        client.session.hooks["response"].append(_record_answer)
        return client

    def _give_back(self, key: _Key, client: DAVClient) -> None:
        evicted: list[DAVClient] = []
        with self._lock:
            if isinstance(client.auth, HTTPBasicAuth):
                if len(self._basic) > 10_000:
                    self._basic.clear()
                self._basic.add(key)
            kept = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if self._closed or len(kept) >= _IDLE_PER_ACCOUNT:
                evicted.append(client)
            else:
                kept.append((time.monotonic(), client))
            while len(self._idle) > _IDLE_ACCOUNTS:
                _, dropped = self._idle.popitem(last=False)
                evicted += [c for _, c in dropped]
            if not kept:
                self._idle.pop(key, None)
        for old in evicted:
            old.close()

    def _retry_helps(self, key: _Key, exc: Exception) -> bool:
        """Whether a failure of a kept client, or of Basic sent up front, may be the client's
        and not the server's: a kept connection the server had closed (a fresh client never
        meets that), or a 401 to Basic from a server that has changed its login scheme. Every
        operation is safe to repeat (a write by UID with If-None-Match, a delete that counts
        404 as done)."""
        if isinstance(exc, caldav_error.AuthorizationError):
            if getattr(exc, "status", None) != 401:
                return False
            with self._lock:
                self._basic.discard(key)
            return True
        dropped = isinstance(exc, http_library.exceptions.ConnectionError)
        return dropped and not isinstance(exc, http_library.exceptions.Timeout)


def _using(client: DAVClient, link: _Link, fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
    """`fn(client, link, *args)`, closing the client when it fails."""
    try:
        return fn(client, link, *args)
    except BaseException:
        client.close()
        raise


class _LastAnswer(threading.local):
    """The `Retry-After` of the last answer this worker thread received (an operation runs in
    one thread), for the error that answer becomes: the library's errors do not keep it."""

    retry_after: str | None = None


_last_answer = _LastAnswer()


def _record_answer(response: Any, **kwargs: Any) -> None:
    """A niquests response hook: remember the answer's `Retry-After`."""
    value = response.headers.get("Retry-After")
    _last_answer.retry_after = value if isinstance(value, str) else None


@contextmanager
def _translated(link: _Link, clock: Clock) -> Iterator[None]:
    """The library's errors turned into ours, named by host only: a refused password or
    access (401, 403) needs re-linking; a 5xx, 429 or 408 may be retried, after the answer's
    `Retry-After`; any other refusal (404, 400, ...) is final; a connection that failed or
    timed out may be retried."""
    try:
        yield
    except CalendarUnavailable as exc:
        if exc.retryable and exc.retry_after is None:
            exc.retry_after = _retry_after(clock)
        raise
    except caldav_error.AuthorizationError as exc:
        if getattr(exc, "status", None) == 403:
            raise NeedsRelink(
                f"{link.name} refused access to the calendar: link it again with an account "
                "that may use it"
            ) from None
        raise NeedsRelink(
            f"CalDAV server {redact(link.url)} refused the username or password"
        ) from None
    except caldav_error.NotFoundError:
        raise CalendarUnavailable(
            f"{link.name} was not found on the server", retryable=False
        ) from None
    except caldav_error.DAVError as exc:
        status = exc.status
        retryable = status is None or retryable_status(status)
        raise CalendarUnavailable(
            f"{link.name} answered with an error ({_status(exc)})",
            retryable=retryable,
            retry_after=_retry_after(clock) if retryable else None,
        ) from None
    except OSError as exc:
        # niquests' connection and timeout errors are OSErrors; their text holds the URL.
        raise CalendarUnavailable(
            f"CalDAV server {redact(link.url)} cannot be reached ({type(exc).__name__})"
        ) from None


def _retry_after(clock: Clock) -> float | None:
    return parse_retry_after(_last_answer.retry_after, clock.now())


def _status(exc: caldav_error.DAVError) -> str:
    reason = str(getattr(exc, "reason", "") or "")
    return reason.split(" at ", 1)[0][:80] or type(exc).__name__


@dataclass(frozen=True)
class _Found:
    """A calendar collection found by discovery."""

    url: str
    name: str
    events: bool = True  # it takes VEVENTs (iCloud's Reminders take VTODOs only)
    transparent: bool = False  # schedule-calendar-transp: its events are no busy time
    writable: bool | None = None  # from current-user-privilege-set; None when not offered

    @property
    def counts_busy(self) -> bool:
        return self.events and not self.transparent

    @property
    def takes_events(self) -> bool:
        return self.events and self.writable is not False


@dataclass(frozen=True)
class _Account:
    """What discovery found: the calendars, and the default one the server names, if any."""

    calendars: list[_Found]
    default: str | None = None  # schedule-default-calendar-URL, resolved

    def busy_urls(self) -> list[str]:
        """The calendars read when none are chosen: those whose events are busy time (all the
        event calendars, when the server marks every one transparent)."""
        busy = [c.url for c in self.calendars if c.counts_busy]
        return busy or [c.url for c in self.calendars if c.events]

    def infos(self) -> list[CalendarInfo]:
        """The calendars as the provider contract lists them. The primary one is the server's
        default calendar (RFC 6638 9.2) when it names one of them, else the first that takes
        events."""
        defaults = [
            c.url for c in self.calendars if c.events and _same_url(c.url, self.default or "")
        ]
        takes = [c.url for c in self.calendars if c.takes_events]
        primary = next(iter(defaults or takes), None)
        return [
            CalendarInfo(
                id=c.url,
                name=c.name,
                primary=c.url == primary,
                writable=c.takes_events,
                counts_busy=c.counts_busy,
            )
            for c in self.calendars
        ]


def _same_url(a: str, b: str) -> bool:
    return bool(a) and a.rstrip("/") == b.rstrip("/")


def _collections(client: DAVClient, link: _Link) -> _Account:
    """The calendars of the account the URL leads to (the URL itself, if it is a calendar)."""
    found = _walk(client, link, link.url)
    if found is None:
        start = _well_known(client, link)
        found = _walk(client, link, start) if start is not None else None
    if found is None:
        raise CalendarUnavailable(
            f"no CalDAV account or calendar found at {redact(link.url)}: {_WHAT_TO_GIVE}"
        )
    return found


def _walk(client: DAVClient, link: _Link, url: str) -> _Account | None:
    """Calendars reached from `url` by its own properties; None when it names no account."""
    seen: set[str] = set()
    previous: str | None = None  # the URL whose current-user-principal led here
    while url not in seen and len(seen) < _HOPS:
        seen.add(url)
        # A mistyped address 404s; only a server's root goes on to its well-known address.
        root = urlsplit(url).path in ("", "/")
        props = _properties(client, url, missing_ok=root or previous is not None)
        if props is None:
            if previous is None:
                return None
            url = previous  # the principal it names does not answer there: maybe it is a home
            break
        if _CALENDAR in _kinds(props):
            return _Account([_found(url, props)])
        homes = _hrefs(props.get(_HOME_SET))
        if homes:  # a principal
            found: list[_Found] = []
            default: str | None = None
            for home in homes:
                listed = _calendars_in(client, _hop(link, url, home))
                found += listed.calendars
                default = default or listed.default
            inbox = _hrefs(props.get(_INBOX_URL))
            if default is None and inbox:  # an inbox outside the calendar home
                default = _default_calendar(client, _hop(link, url, inbox[0]))
            return _Account(found, default)
        principal = _hrefs(props.get(_CURRENT_USER_PRINCIPAL))
        if not principal:
            break
        previous, url = url, _hop(link, url, principal[0])
    # Names no principal nor home: a calendar home itself lists its calendars (the principal
    # of a server without calendar-home-set is its home too).
    listed = _calendars_in(client, url)
    return listed if listed.calendars else None


def _properties(client: DAVClient, url: str, *, missing_ok: bool) -> dict[str, Any] | None:
    """The discovery properties of the resource at `url`; None when it answers no WebDAV."""
    response, results = _propfind(client, url, depth=0)
    if response.status in (404, 410) and not missing_ok:
        raise caldav_error.error_from_response(caldav_error.NotFoundError, response)
    if retryable_status(response.status):
        raise caldav_error.error_from_response(caldav_error.PropfindError, response)
    merged: dict[str, Any] = {}
    for result in results:
        merged.update(result.properties)
    return merged or None


def _propfind(client: DAVClient, url: str, *, depth: int) -> tuple[Any, list[Any]]:
    """A discovery PROPFIND and its parsed results. The library refuses a whole answer in
    which one property came back with a status other than 200 or 404 (a 403 for a property
    the account may not read): then only the essential properties are asked for, and the
    calendars are listed without the optional flags (default, transparency, privileges)."""
    try:
        response = client.propfind(url, props=_DISCOVERY_BODY, depth=depth)
        return response, list(getattr(response, "results", None) or [])
    except caldav_error.ResponseError:
        response = client.propfind(url, props=_ESSENTIAL_BODY, depth=depth)
        return response, list(getattr(response, "results", None) or [])


def _calendars_in(client: DAVClient, home: str) -> _Account:
    """The calendars directly inside the collection `home`, task lists included (they are
    listed as holding no busy time), and the default calendar named by a scheduling inbox
    among them."""
    response, results = _propfind(client, home, depth=1)
    if retryable_status(response.status):
        raise caldav_error.error_from_response(caldav_error.PropfindError, response)
    found = []
    default: str | None = None
    for result in results:
        props = result.properties
        url = _clean_url(urljoin(home, result.href))
        kinds = _kinds(props)
        if _CALENDAR in kinds:
            found.append(_found(url, props))
        elif _SCHEDULE_INBOX in kinds and default is None:
            default = _default_in(url, props)
    return _Account(found, default)


def _found(url: str, props: dict[str, Any]) -> _Found:
    components = _hrefs(props.get(_COMPONENTS))
    privileges = _hrefs(props.get(_PRIVILEGES))
    return _Found(
        url=url,
        name=_name(props, url),
        # No supported-calendar-component-set: the collection takes every component.
        events=not components or "VEVENT" in components,
        transparent=_TRANSPARENT in _hrefs(props.get(_SCHEDULE_TRANSP)),
        writable=bool(_WRITE_PRIVILEGES.intersection(privileges)) if privileges else None,
    )


def _default_calendar(client: DAVClient, inbox: str) -> str | None:
    """The default calendar the scheduling inbox at `inbox` names (RFC 6638 9.2), if any.
    An inbox that does not answer, or refuses this account, names none: the first event
    calendar is used then (a failure a retry may mend is raised)."""
    try:
        props = _properties(client, inbox, missing_ok=True)
    except caldav_error.DAVError as exc:
        if exc.status is None or retryable_status(exc.status) or exc.status == 401:
            raise
        return None
    return _default_in(inbox, props) if props is not None else None


def _default_in(inbox: str, props: dict[str, Any]) -> str | None:
    href = _hrefs(props.get(_DEFAULT_CALENDAR))
    if not href:
        return None
    try:
        return _clean_url(urljoin(inbox, href[0]))
    except CalendarUnavailable:  # not an http(s) address: as if none were named
        return None


def _well_known(client: DAVClient, link: _Link) -> str | None:
    """Where the server's `/.well-known/caldav` leads (RFC 6764 section 5), redirects followed
    one by one, so each step's host is checked and later hrefs resolve against the right one.
    None when the server has no such address."""
    parts = urlsplit(link.url)
    url = urlunsplit((parts.scheme, parts.netloc, "/.well-known/caldav", "", ""))
    for _ in range(_HOPS):
        # No credentials: a redirect needs none, and they go only where the walk leads.
        answer = client.session.request(
            "PROPFIND",
            url,
            headers={"Depth": "0"},
            allow_redirects=False,
            timeout=client.timeout,
        )
        location = answer.headers.get("Location")
        status = answer.status_code
        answer.close()
        if status in (301, 302, 303, 307, 308) and location:
            url = _hop(link, url, location)
            continue
        if status is not None and retryable_status(status):
            raise CalendarUnavailable(f"{link.name} answered HTTP {status}", retryable=True)
        return url if status in (200, 207, 401) else None
    return None


def _hop(link: _Link, base: str, href: str) -> str:
    """`href` resolved against `base`, where discovery may go next from there."""
    target = _clean_url(urljoin(base, href))
    was, to = urlsplit(base), urlsplit(target)
    if was.scheme == "https" and to.scheme != "https":
        raise CalendarUnavailable(
            f"{redact(base)} sent the CalDAV account to an unencrypted address: {_WHAT_TO_GIVE}"
        )
    if (
        to.hostname != was.hostname
        and _private_host(to.hostname)
        and not _private_host(urlsplit(link.url).hostname)
    ):
        raise CalendarUnavailable(
            f"{redact(base)} sent the CalDAV account to a private address: {_WHAT_TO_GIVE}"
        )
    return target


def _private_host(host: str | None) -> bool:
    """Whether `host` is, or resolves to, a non-public address (one it cannot resolve counts:
    nothing is sent there anyway). The server's own rule for typed addresses lives in
    `calendars.netguard`; discovery only keeps a public account from leading inward."""
    if not host:
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return True
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            return True
    return False


def _kinds(props: dict[str, Any]) -> list[str]:
    kinds = props.get(_RESOURCETYPE) or []
    return [kinds] if isinstance(kinds, str) else [k for k in kinds if isinstance(k, str)]


def _hrefs(value: Any) -> list[str]:
    """A parsed property's text values (the library gives one as a string, several as a list)."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def _name(props: dict[str, Any], url: str) -> str:
    name = props.get(_DISPLAYNAME)
    return name.strip() if isinstance(name, str) and name.strip() else _last_segment(url)


def _calendar(client: DAVClient, url: str) -> DavCalendar:
    """The calendar at the absolute `url`. One on another host than the client's root (iCloud
    keeps an account's calendars on a host of its own) moves the root there first, as the
    library does itself on finding such a calendar home: the library joins the hrefs of a
    calendar's events onto the root, and refuses another host's."""
    root, there = urlsplit(str(client.url)), urlsplit(url)
    if (root.scheme, root.netloc) != (there.scheme, there.netloc):
        client.url = client.url.relocate(url)
    return DavCalendar(client=client, url=url)


def _resource_types(client: DAVClient, url: str) -> list[str]:
    props = _own_properties(_calendar(client, url), [dav.ResourceType()])
    kinds = props.get(dav.ResourceType.tag) or []
    return [kinds] if isinstance(kinds, str) else list(kinds)


def _list_calendars(client: DAVClient, link: _Link) -> list[CalendarInfo]:
    return _collections(client, link).infos()


def _last_segment(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or url


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


def _own_properties(calendar: DavCalendar, props: list[BaseElement]) -> dict[str, Any]:
    """The calendar's own values of `props` (a Depth 0 PROPFIND), by property tag."""
    answer = calendar.get_properties(props)
    if not isinstance(answer, dict):  # only the library's async client answers a coroutine
        raise TypeError("the CalDAV library's synchronous PROPFIND did not answer a dict")
    return answer


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
            f"{link.name} is not a single calendar: choose one of the account's calendars"
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
        raise CalendarUnavailable(
            f"{link.name} refused the event {action}: HTTP {status}",
            retryable=retryable_status(status),
        )
