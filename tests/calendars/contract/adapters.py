"""One adapter per provider for the contract suite: the provider over its wire-format server.

An adapter (`Contract`) holds one linked account with one empty calendar, a way to build the
provider with an injected sleep and clock (`make`), the server side of the calendar (events
written as the staff member's phone would write them, what is stored), and the server's fault
switches. Servers: the fake Google Calendar and Graph servers (tests/fakes), a real Radicale
behind `FaultProxy`, and an ICS feed on loopback.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from caldav.davclient import DAVClient

from booking.clock import FixedClock
from calendars.base import Account, CalendarProvider
from calendars.caldav import CaldavProvider
from calendars.google import GoogleProvider
from calendars.ics import FEED_ID, IcsProvider
from calendars.microsoft import MicrosoftOAuth, MicrosoftProvider
from tests.calendars.caldav_harness import FaultProxy
from tests.calendars.contract.ics_feed import IcsFeed
from tests.calendars.google_harness import EMAIL, RefreshingTokens, google_setup
from tests.calendars.microsoft_harness import OAuthTokens, link_account, msal_http_client
from tests.calendars.radicale_server import PASSWORD, USERNAME, RadicaleServer
from tests.fakes.google_calendar import FakeGoogleCalendar
from tests.fakes.graph import FakeGraph

TZ = ZoneInfo("America/New_York")  # the staff member's zone, and the calendars'
# The injected clock's "now": far from the wall clock, so a provider that reads the wall clock
# for an HTTP-date Retry-After waits the wrong time.
CLOCK_NOW = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
# Each provider's time limit in the fault tests that wait for it (short), and otherwise (long
# enough for every Retry-After the suite sends while the sleeps are recorded, not taken).
SHORT = 1.0
LONG = 20.0
KINDS = ("busy", "tentative", "free", "declined", "cancelled")


@dataclass
class RecordingSleep:
    """Stands in for asyncio.sleep between retries: records each wait, takes none."""

    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@dataclass
class Stored:
    id: str
    summary: str


@dataclass
class Contract:
    name: str
    account: Account
    calendar_id: str
    # make(short=False): a provider with `sleep` and `clock` injected; its time limit is SHORT
    # (the fault tests that wait for it) or LONG.
    make: Callable[..., CalendarProvider]
    sleep: RecordingSleep
    clock: FixedClock
    # The longest a SHORT provider may take to give up, its own limit plus scheduling slack.
    short_deadline: float
    # add(kind, start, end) with kind in KINDS; all_day(day); series(start, end, count, skip):
    # a daily series with the occurrence on `skip` removed (EXDATE, or its deletion).
    add: Callable[[str, datetime, datetime], Awaitable[str]]
    all_day: Callable[[date], Awaitable[str]]
    series: Callable[[datetime, datetime, int, date], Awaitable[str]]
    remove: Callable[[str], Awaitable[None]]
    stored: Callable[[], Awaitable[list[Stored]]]
    fail_next: Callable[[str, int], None]
    set_retry_after: Callable[[str], None]
    # What the provider sent so far, one entry per request (the faulted one included).
    sent: Callable[[], list[Any]]
    # The account after its grant was revoked / its password changed on the server.
    revoked: Callable[[], Account]
    # Sync cursors: make `cursor` invalid on the server (or hand back one the server no longer
    # knows) and return the cursor to pass.
    invalidate: Callable[[str | None], str | None]
    kinds: tuple[str, ...] = KINDS
    # How the server loses a write's answer after applying it (see the fault switches).
    lost: tuple[str, ...] = ("timeout",)
    # OAuth only: expire the access token (the refresh token still works); refreshes so far.
    expire_access: Callable[[], None] | None = None
    refreshes: Callable[[], int] | None = None
    # Calendars besides `calendar_id` the account has: id -> (writable, counts_busy).
    others: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# ---- Google -------------------------------------------------------------------------------------


@asynccontextmanager
async def google() -> AsyncIterator[Contract]:
    fake = FakeGoogleCalendar(allow_http_callbacks=True)
    await asyncio.to_thread(fake.start)
    made: list[GoogleProvider] = []
    try:
        h = google_setup(fake, timeout=SHORT)
        fake.timeout_delay = SHORT + 1.5
        fake.add_calendar(EMAIL, "en.usa#holiday@group.v.calendar.google.com", access_role="reader")
        tokens = h.extra["tokens"]
        assert isinstance(tokens, RefreshingTokens)
        sleep, clock = RecordingSleep(), FixedClock(CLOCK_NOW)

        def make(*, short: bool = False) -> GoogleProvider:
            provider = GoogleProvider(
                api_base_url=fake.api_base_url,
                timeout=SHORT if short else LONG,
                sleep=sleep,
                clock=clock,
            )
            made.append(provider)
            return provider

        def when(moment: datetime) -> dict[str, str]:
            return {"dateTime": moment.isoformat(), "timeZone": TZ.key}

        async def add(kind: str, start: datetime, end: datetime) -> str:
            body: dict[str, Any] = {"summary": kind, "start": when(start), "end": when(end)}
            if kind == "tentative":
                body["status"] = "tentative"
            elif kind == "free":
                body["transparency"] = "transparent"
            elif kind == "cancelled":
                body["status"] = "cancelled"
            elif kind == "declined":
                body["attendees"] = [
                    {"email": "boss@example.com", "organizer": True, "responseStatus": "accepted"},
                    {"email": EMAIL, "self": True, "responseStatus": "declined"},
                ]
            return str(fake.put_event(EMAIL, body)["id"])

        async def all_day(day: date) -> str:
            body = {
                "summary": "all day",
                "start": {"date": day.isoformat()},
                "end": {"date": (day + timedelta(days=1)).isoformat()},
            }
            return str(fake.put_event(EMAIL, body)["id"])

        async def series(start: datetime, end: datetime, count: int, skip: date) -> str:
            skipped = datetime.combine(skip, start.astimezone(TZ).time())
            body = {
                "summary": "series",
                "start": when(start),
                "end": when(end),
                "recurrence": [
                    f"RRULE:FREQ=DAILY;COUNT={count}",
                    f"EXDATE;TZID={TZ.key}:{skipped:%Y%m%dT%H%M%S}",
                ],
            }
            return str(fake.put_event(EMAIL, body)["id"])

        async def remove(event_id: str) -> None:
            fake.delete_event(EMAIL, event_id)

        async def stored() -> list[Stored]:
            return [Stored(e["id"], e.get("summary", "")) for e in fake.stored_events(EMAIL)]

        def set_retry_after(value: str) -> None:
            fake.retry_after = value

        def revoked() -> Account:
            fake.revoke(EMAIL)
            return h.account

        def invalidate(cursor: str | None) -> str | None:
            fake.expire_sync_tokens()
            return cursor

        yield Contract(
            name="google",
            account=h.account,
            calendar_id=h.calendar_id,
            make=make,
            sleep=sleep,
            clock=clock,
            short_deadline=SHORT + 1.0,
            add=add,
            all_day=all_day,
            series=series,
            remove=remove,
            stored=stored,
            fail_next=fake.fail_next,
            set_retry_after=set_retry_after,
            sent=lambda: [(r.method, r.path) for r in fake.requests],
            revoked=revoked,
            invalidate=invalidate,
            expire_access=lambda: fake.expire_access_tokens(EMAIL),
            refreshes=lambda: tokens.refreshes,
            others={"en.usa#holiday@group.v.calendar.google.com": (False, False)},
            extra={"fake": fake},
        )
    finally:
        for provider in made:
            provider.close()
        await asyncio.to_thread(fake.stop)


# ---- Microsoft ----------------------------------------------------------------------------------


@asynccontextmanager
async def microsoft() -> AsyncIterator[Contract]:
    graph = FakeGraph(timeout_delay=SHORT + 1.5).start()
    session = msal_http_client(graph)
    made: list[MicrosoftProvider] = []
    try:
        oauth = MicrosoftOAuth(graph.client_id, graph.client_secret, http_client=session)
        tokens = OAuthTokens(oauth, await link_account(graph, oauth))
        account = Account(
            id="contract-microsoft",
            provider="microsoft",
            settings={"account": tokens.tokens.account},
            tokens=tokens,
            name=str(tokens.tokens.account),
        )
        calendar_id = graph.primary_calendar_id
        shared = graph.add_calendar("Colleague's calendar", can_edit=False)
        sleep, clock = RecordingSleep(), FixedClock(CLOCK_NOW)

        def make(*, short: bool = False) -> MicrosoftProvider:
            provider = MicrosoftProvider(
                graph_base_url=graph.graph_url,
                timeout=SHORT / 2 if short else LONG,
                time_limit=SHORT if short else LONG,
                sleep=sleep,
                clock=clock,
            )
            made.append(provider)
            return provider

        async def add(kind: str, start: datetime, end: datetime) -> str:
            return graph.add_event(
                calendar_id,
                start=start,
                end=end,
                subject=kind,
                time_zone=TZ.key,
                show_as={"free": "free", "tentative": "tentative"}.get(kind, "busy"),
                cancelled=kind == "cancelled",
                response="declined" if kind == "declined" else "organizer",
            )

        async def all_day(day: date) -> str:
            return graph.add_event(calendar_id, all_day=day, subject="all day", time_zone=TZ.key)

        async def series(start: datetime, end: datetime, count: int, skip: date) -> str:
            local = start.astimezone(TZ)
            recurrence = {
                "pattern": {"type": "daily", "interval": 1},
                "range": {
                    "type": "numbered",
                    "startDate": local.date().isoformat(),
                    "numberOfOccurrences": count,
                },
            }
            event_id = graph.add_event(
                calendar_id,
                start=local,
                end=end.astimezone(TZ),
                subject="series",
                time_zone=TZ.key,
                recurrence=recurrence,
            )
            graph.remove_occurrence(event_id, skip)
            return event_id

        async def remove(event_id: str) -> None:
            graph.remove_event(event_id)

        async def stored() -> list[Stored]:
            return [Stored(e.id, e.subject) for e in graph.stored_events(calendar_id)]

        def set_retry_after(value: str) -> None:
            graph.retry_after = value

        def revoked() -> Account:
            graph.revoke_refresh_tokens()
            graph.expire_access_tokens()
            return account

        def invalidate(cursor: str | None) -> str | None:
            graph.expire_delta_tokens()
            return cursor

        yield Contract(
            name="microsoft",
            account=account,
            calendar_id=calendar_id,
            make=make,
            sleep=sleep,
            clock=clock,
            short_deadline=SHORT + 1.0,
            add=add,
            all_day=all_day,
            series=series,
            remove=remove,
            stored=stored,
            fail_next=graph.fail_next,
            set_retry_after=set_retry_after,
            sent=lambda: list(graph.requests),
            revoked=revoked,
            invalidate=invalidate,
            expire_access=graph.expire_access_tokens,
            refreshes=lambda: tokens.refreshes,
            others={shared: (False, False)},
            extra={"graph": graph},
        )
    finally:
        for provider in made:
            await provider.aclose()
        session.close()
        graph.stop()


# ---- CalDAV (a real Radicale behind a fault proxy) ----------------------------------------------

# Radicale on a loaded 2-core machine needs more than SHORT for one operation.
CALDAV_SHORT = 2.0


def vevent(uid: str, *props: str) -> str:
    """One VEVENT block as another client writes it (CRLF lines)."""
    lines = ["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20261101T000000Z", *props, "END:VEVENT"]
    return "\r\n".join(lines) + "\r\n"


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def ical_props(kind: str, start: datetime, end: datetime) -> list[str]:
    props = [f"DTSTART:{_stamp(start)}", f"DTEND:{_stamp(end)}", f"SUMMARY:{kind}"]
    props += {
        "tentative": ["STATUS:TENTATIVE"],
        "free": ["TRANSP:TRANSPARENT"],
        "cancelled": ["STATUS:CANCELLED"],
    }.get(kind, [])
    return props


def all_day_props(day: date) -> list[str]:
    after = day + timedelta(days=1)
    return [f"DTSTART;VALUE=DATE:{day:%Y%m%d}", f"DTEND;VALUE=DATE:{after:%Y%m%d}", "SUMMARY:day"]


def series_props(start: datetime, end: datetime, count: int, skip: date) -> list[str]:
    local, length = start.astimezone(TZ), end - start
    first = local.replace(tzinfo=None)
    skipped = datetime.combine(skip, time(local.hour, local.minute))
    return [
        f"DTSTART;TZID={TZ.key}:{first:%Y%m%dT%H%M%S}",
        f"DTEND;TZID={TZ.key}:{first + length:%Y%m%dT%H%M%S}",
        "SUMMARY:series",
        f"RRULE:FREQ=DAILY;COUNT={count}",
        f"EXDATE;TZID={TZ.key}:{skipped:%Y%m%dT%H%M%S}",
    ]


def _calendar_text(block: str) -> str:
    head = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Frontdesk contract//EN\r\n"
    return head + block + "END:VCALENDAR\r\n"


@asynccontextmanager
async def caldav_radicale(server: RadicaleServer) -> AsyncIterator[Contract]:
    proxy = FaultProxy(server.port, hold=CALDAV_SHORT + 2.0).start()
    phone = DAVClient(
        url=server.principal_url, username=USERNAME, password=PASSWORD, enable_rfc6764=False
    )
    made: list[CaldavProvider] = []
    try:
        principal = await asyncio.to_thread(phone.principal)
        calendar = await asyncio.to_thread(
            principal.make_calendar, name="Work", cal_id=f"work-{uuid.uuid4().hex[:8]}"
        )
        account = Account(
            id="contract-caldav",
            provider="caldav",
            settings={"url": f"{proxy.base_url}{calendar.url.path}", "username": USERNAME},
            secret={"password": PASSWORD},
            name="Dr. Lee's calendar",
        )
        sleep, clock = RecordingSleep(), FixedClock(CLOCK_NOW)

        def make(*, short: bool = False) -> CaldavProvider:
            provider = CaldavProvider(
                timeout=CALDAV_SHORT if short else LONG, sleep=sleep, clock=clock
            )
            made.append(provider)
            return provider

        async def put(props: list[str]) -> str:
            uid = f"{uuid.uuid4().hex}@staff-phone"
            await asyncio.to_thread(calendar.add_event, _calendar_text(vevent(uid, *props)))
            return uid

        async def add(kind: str, start: datetime, end: datetime) -> str:
            return await put(ical_props(kind, start, end))

        async def all_day(day: date) -> str:
            return await put(all_day_props(day))

        async def series(start: datetime, end: datetime, count: int, skip: date) -> str:
            return await put(series_props(start, end, count, skip))

        def _remove(uid: str) -> None:
            calendar.event_by_uid(uid).delete()

        async def remove(uid: str) -> None:
            await asyncio.to_thread(_remove, uid)

        def _stored() -> list[Stored]:
            out = []
            for obj in calendar.events():
                event = obj.icalendar_component
                out.append(Stored(str(event["UID"]), str(event.get("SUMMARY", ""))))
            return out

        async def stored() -> list[Stored]:
            return await asyncio.to_thread(_stored)

        def set_retry_after(value: str) -> None:
            proxy.retry_after = value

        def revoked() -> Account:
            return replace(account, secret={"password": "a-password-changed-since"})

        yield Contract(
            name="caldav",
            account=account,
            calendar_id=str(calendar.url).replace(server.base_url, proxy.base_url, 1),
            make=make,
            sleep=sleep,
            clock=clock,
            short_deadline=CALDAV_SHORT + 1.0,
            add=add,
            all_day=all_day,
            series=series,
            remove=remove,
            stored=stored,
            fail_next=proxy.fail_next,
            set_retry_after=set_retry_after,
            sent=lambda: [(r.method, r.path) for r in proxy.seen if r.authorized],
            revoked=revoked,
            # CalDAV cursors are the provider's own (the collection's sync-token or ctag and the
            # window): one from an older state of the calendar, or not understood, means a
            # full read.
            invalidate=lambda cursor: "a cursor the provider never wrote",
            kinds=("busy", "tentative", "free", "cancelled"),
            lost=("timeout", "drop"),
            extra={"proxy": proxy, "server": server},
        )
    finally:
        for provider in made:
            provider.close()
        phone.close()
        proxy.stop()


# ---- ICS (a published feed; read-only) ----------------------------------------------------------


@asynccontextmanager
async def ics() -> AsyncIterator[Contract]:
    feed = IcsFeed(hold=SHORT + 2.0).start()
    try:
        account = Account(
            id="contract-ics", provider="ics", settings={"source": feed.url}, name="Lee's feed"
        )
        sleep, clock = RecordingSleep(), FixedClock(CLOCK_NOW)

        def make(*, short: bool = False) -> IcsProvider:
            # ttl=0: every read fetches the feed, so each read meets the server's answer.
            return IcsProvider(timeout=SHORT if short else LONG, ttl=0, clock=clock)

        async def put(props: list[str]) -> str:
            uid = f"{uuid.uuid4().hex}@feed"
            feed.vevents[uid] = vevent(uid, *props)
            return uid

        async def add(kind: str, start: datetime, end: datetime) -> str:
            return await put(ical_props(kind, start, end))

        async def all_day(day: date) -> str:
            return await put(all_day_props(day))

        async def series(start: datetime, end: datetime, count: int, skip: date) -> str:
            return await put(series_props(start, end, count, skip))

        async def remove(uid: str) -> None:
            feed.vevents.pop(uid, None)

        async def stored() -> list[Stored]:
            return [Stored(uid, "") for uid in feed.vevents]

        def set_retry_after(value: str) -> None:
            feed.retry_after = value

        def revoked() -> Account:
            raise NotImplementedError("a feed has no grant")

        yield Contract(
            name="ics",
            account=account,
            calendar_id=FEED_ID,
            make=make,
            sleep=sleep,
            clock=clock,
            short_deadline=SHORT + 1.0,
            add=add,
            all_day=all_day,
            series=series,
            remove=remove,
            stored=stored,
            fail_next=feed.fail_next,
            set_retry_after=set_retry_after,
            sent=lambda: [("GET", path) for path, _ in feed.requests],
            revoked=revoked,
            invalidate=lambda cursor: "a cursor the provider never wrote",
            kinds=("busy", "tentative", "free", "cancelled"),
            extra={"feed": feed},
        )
    finally:
        feed.stop()
