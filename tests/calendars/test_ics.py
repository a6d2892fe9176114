"""The ICS provider: which events are busy, and reading files and feeds."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from booking.clock import FixedClock
from booking.errors import CalendarUnavailable
from booking.rules import Interval
from calendars.base import Account, CalendarProvider, EventSpec, NeedsRelink
from calendars.ics import FEED_ID, IcsProvider, busy_from_ics, events_between, parse_ics
from calendars.links import link_account

NY = ZoneInfo("America/New_York")
DEC_START = datetime(2026, 11, 30, tzinfo=UTC)
DEC_END = datetime(2027, 1, 1, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def ics(*events: str) -> bytes:
    """A calendar around the given VEVENT bodies (property lines, one per line)."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Frontdesk tests//EN"]
    for i, body in enumerate(events):
        props = [line.strip() for line in body.strip().splitlines()]
        if not any(p.startswith("UID") for p in props):
            props.insert(0, f"UID:event-{i}@test")
        lines += ["BEGIN:VEVENT", "DTSTAMP:20261101T000000Z", *props, "END:VEVENT"]
    lines.append("END:VCALENDAR")
    return ("\r\n".join(lines) + "\r\n").encode()


def busy(data: bytes, start: datetime = DEC_START, end: datetime = DEC_END) -> list[Interval]:
    return busy_from_ics(data, tz=NY, start=start, end=end)


# --- what is busy -----------------------------------------------------------------------------


def test_timed_event_with_tzid_is_busy_in_utc() -> None:
    data = ics(
        """
        DTSTART;TZID=America/New_York:20261201T090000
        DTEND;TZID=America/New_York:20261201T103000
        """
    )
    assert busy(data) == [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 15, 30))]


def test_tzid_of_another_zone_is_honoured() -> None:
    data = ics(
        """
        DTSTART;TZID=Europe/London:20261201T090000
        DTEND;TZID=Europe/London:20261201T100000
        """
    )
    assert busy(data) == [(utc(2026, 12, 1, 9), utc(2026, 12, 1, 10))]


def test_utc_event_is_busy_at_its_utc_time() -> None:
    data = ics("DTSTART:20261201T150000Z\nDTEND:20261201T160000Z")
    assert busy(data) == [(utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))]


def test_floating_event_is_read_in_the_staff_zone() -> None:
    data = ics("DTSTART:20261201T090000\nDTEND:20261201T100000")
    assert busy(data) == [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 15))]
    chicago = busy_from_ics(data, tz=ZoneInfo("America/Chicago"), start=DEC_START, end=DEC_END)
    assert chicago == [(utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))]


def test_all_day_event_covers_local_midnight_to_midnight() -> None:
    data = ics("DTSTART;VALUE=DATE:20261201\nDTEND;VALUE=DATE:20261202")
    assert busy(data) == [(utc(2026, 12, 1, 5), utc(2026, 12, 2, 5))]


def test_multi_day_all_day_event_ends_before_dtend_across_dst() -> None:
    # Sat 7 and Sun 8 March 2026; New York springs forward on the 8th, so the span is 47 hours.
    data = ics("DTSTART;VALUE=DATE:20260307\nDTEND;VALUE=DATE:20260309")
    spans = busy(data, utc(2026, 3, 1), utc(2026, 3, 31))
    assert spans == [(utc(2026, 3, 7, 5), utc(2026, 3, 9, 4))]


def test_all_day_event_just_outside_the_window_is_left_out() -> None:
    # Dec 1 in New York ends at 05:00Z on Dec 2: a window from then on does not see it.
    data = ics("DTSTART;VALUE=DATE:20261201\nDTEND;VALUE=DATE:20261202")
    assert busy(data, utc(2026, 12, 2, 5), utc(2026, 12, 3)) == []
    assert busy(data, utc(2026, 12, 2, 4, 59), utc(2026, 12, 3)) != []


def test_transparent_event_is_free() -> None:
    data = ics("DTSTART:20261201T150000Z\nDTEND:20261201T160000Z\nTRANSP:TRANSPARENT")
    assert busy(data) == []


def test_cancelled_event_is_free() -> None:
    data = ics("DTSTART:20261201T150000Z\nDTEND:20261201T160000Z\nSTATUS:CANCELLED")
    assert busy(data) == []


def test_tentative_event_is_busy() -> None:
    data = ics("DTSTART:20261201T150000Z\nDTEND:20261201T160000Z\nSTATUS:TENTATIVE")
    assert busy(data) == [(utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))]


def test_weekly_series_honours_exdate_moved_and_cancelled_instances() -> None:
    data = ics(
        """
        UID:huddle@test
        DTSTART;TZID=America/New_York:20261201T090000
        DTEND;TZID=America/New_York:20261201T100000
        RRULE:FREQ=WEEKLY;COUNT=5
        EXDATE;TZID=America/New_York:20261208T090000
        """,
        """
        UID:huddle@test
        RECURRENCE-ID;TZID=America/New_York:20261215T090000
        DTSTART;TZID=America/New_York:20261216T130000
        DTEND;TZID=America/New_York:20261216T140000
        """,
        """
        UID:huddle@test
        RECURRENCE-ID;TZID=America/New_York:20261222T090000
        DTSTART;TZID=America/New_York:20261222T090000
        DTEND;TZID=America/New_York:20261222T100000
        STATUS:CANCELLED
        """,
    )
    assert busy(data) == [
        (utc(2026, 12, 1, 14), utc(2026, 12, 1, 15)),
        (utc(2026, 12, 16, 18), utc(2026, 12, 16, 19)),  # moved from Tue 15th to Wed 16th
        (utc(2026, 12, 29, 14), utc(2026, 12, 29, 15)),
    ]


def test_weekly_series_keeps_wall_time_across_dst() -> None:
    data = ics(
        """
        DTSTART;TZID=America/New_York:20260302T090000
        DTEND;TZID=America/New_York:20260302T093000
        RRULE:FREQ=WEEKLY;COUNT=2
        """
    )
    assert busy(data, utc(2026, 3, 1), utc(2026, 3, 31)) == [
        (utc(2026, 3, 2, 14), utc(2026, 3, 2, 14, 30)),
        (utc(2026, 3, 9, 13), utc(2026, 3, 9, 13, 30)),
    ]


def test_event_without_dtend_lasts_its_duration() -> None:
    data = ics("DTSTART;TZID=America/New_York:20261201T090000\nDURATION:PT45M")
    assert busy(data) == [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 14, 45))]


def test_date_event_without_dtend_lasts_one_day() -> None:
    data = ics("DTSTART;VALUE=DATE:20261201")
    assert busy(data) == [(utc(2026, 12, 1, 5), utc(2026, 12, 2, 5))]


def test_date_time_event_without_dtend_blocks_nothing() -> None:
    data = ics("DTSTART:20261201T150000Z\nSUMMARY:Call the lab")
    assert busy(data) == []


def test_events_overlapping_the_window_are_returned_whole_and_sorted() -> None:
    data = ics(
        "DTSTART:20261201T170000Z\nDTEND:20261201T180000Z",  # inside
        "DTSTART:20261201T130000Z\nDTEND:20261201T150000Z",  # straddles the start
        "DTSTART:20261201T110000Z\nDTEND:20261201T140000Z",  # ends at the start
        "DTSTART:20261201T200000Z\nDTEND:20261201T210000Z",  # starts at the end
    )
    assert busy(data, utc(2026, 12, 1, 14), utc(2026, 12, 1, 20)) == [
        (utc(2026, 12, 1, 13), utc(2026, 12, 1, 15)),
        (utc(2026, 12, 1, 17), utc(2026, 12, 1, 18)),
    ]


def test_naive_window_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        busy_from_ics(ics(), tz=NY, start=datetime(2026, 12, 1), end=datetime(2026, 12, 2))


@pytest.mark.parametrize(
    "data",
    [
        b"<html>Sign in</html>",
        b"",
        ics("DTSTART:tomorrow-ish"),
        ics("DTSTART:20261201T150000Z\nRRULE:FREQ=SOMETIMES"),
    ],
    ids=["html", "empty", "bad-date", "bad-rrule"],
)
def test_unreadable_ics_is_unavailable(data: bytes) -> None:
    with pytest.raises(CalendarUnavailable):
        busy(data)


# --- events by key (what sync returns) ----------------------------------------------------------


def events(data: bytes) -> dict[str, list[Interval]]:
    return events_between(parse_ics(data), tz=NY, start=DEC_START, end=DEC_END)


def test_events_are_keyed_by_uid_and_recurring_instances_by_recurrence_id() -> None:
    data = ics(
        """
        UID:huddle@test
        DTSTART;TZID=America/New_York:20261201T090000
        DTEND;TZID=America/New_York:20261201T100000
        RRULE:FREQ=WEEKLY;COUNT=3
        """,
        """
        UID:huddle@test
        RECURRENCE-ID;TZID=America/New_York:20261208T090000
        DTSTART;TZID=America/New_York:20261208T090000
        DTEND;TZID=America/New_York:20261208T100000
        STATUS:CANCELLED
        """,
        "UID:lunch@test\nDTSTART;VALUE=DATE:20261204\nDTEND;VALUE=DATE:20261205",
        "UID:note@test\nDTSTART:20261205T150000Z\nTRANSP:TRANSPARENT\nDURATION:PT1H",
        "UID:past@test\nDTSTART:20261101T150000Z\nDTEND:20261101T160000Z",
    )
    assert events(data) == {
        "huddle@test#20261201T140000Z": [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 15))],
        "huddle@test#20261208T140000Z": [],  # cancelled instance: free time
        "huddle@test#20261215T140000Z": [(utc(2026, 12, 15, 14), utc(2026, 12, 15, 15))],
        "lunch@test": [(utc(2026, 12, 4, 5), utc(2026, 12, 5, 5))],
        "note@test": [],  # transparent
    }


def test_all_day_series_instances_are_keyed_by_date() -> None:
    data = ics("UID:dayoff@test\nDTSTART;VALUE=DATE:20261207\nRRULE:FREQ=DAILY;COUNT=2")
    assert set(events(data)) == {"dayoff@test#20261207", "dayoff@test#20261208"}


# --- the provider: reading files ----------------------------------------------------------------


ONE_PM = ics("DTSTART:20261201T180000Z\nDTEND:20261201T190000Z")
TWO_PM = ics("DTSTART:20261201T190000Z\nDTEND:20261201T200000Z\nSUMMARY:moved to two")


def feed_account(source: str) -> Account:
    return link_account({"provider": "ics", "source": source}, staff_id="lee", index=0)


async def read(provider: IcsProvider, source: str) -> list[Interval]:
    """Busy time through `busy`, as slot search and booking's re-check read it."""
    return await provider.busy(
        feed_account(source), calendar_ids=[FEED_ID], tz=NY, start=DEC_START, end=DEC_END
    )


async def synced(provider: IcsProvider, source: str) -> list[Interval]:
    """Busy time through `sync`, as the scheduled cache refresh reads it."""
    result = await provider.sync(
        feed_account(source),
        calendar_id=FEED_ID,
        tz=NY,
        cursor=None,
        start=DEC_START,
        end=DEC_END,
    )
    assert result.full and result.cursor is None and not result.removed
    return sorted(span for spans in result.changed.values() for span in spans)


def test_it_is_a_read_only_provider_without_notifications() -> None:
    provider: CalendarProvider = IcsProvider()
    assert (provider.name, provider.writable, provider.notifies) == ("ics", False, False)


async def test_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "lee.ics"
    path.write_bytes(ONE_PM)
    provider = IcsProvider()
    assert await read(provider, str(path)) == [(utc(2026, 12, 1, 18), utc(2026, 12, 1, 19))]

    path.write_bytes(TWO_PM)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert await read(provider, str(path)) == [(utc(2026, 12, 1, 19), utc(2026, 12, 1, 20))]
    assert await synced(provider, str(path)) == [(utc(2026, 12, 1, 19), utc(2026, 12, 1, 20))]


async def test_missing_file_is_unavailable_and_named(tmp_path: Path) -> None:
    missing = tmp_path / "nobody.ics"
    with pytest.raises(CalendarUnavailable, match="nobody.ics") as caught:
        await read(IcsProvider(), str(missing))
    assert caught.value.retryable
    with pytest.raises(CalendarUnavailable, match="nobody.ics"):
        await IcsProvider().check(feed_account(str(missing)))


async def test_relative_file_path_is_unavailable() -> None:
    with pytest.raises(CalendarUnavailable, match="absolute"):
        await read(IcsProvider(), "calendars/lee.ics")


async def test_a_link_swapped_to_a_file_that_is_not_ics_is_not_read(tmp_path: Path) -> None:
    # Checked at import, then the link is pointed at a key file: the reader refuses it.
    (tmp_path / "real.ics").write_bytes(ONE_PM)
    secret = tmp_path / "id_rsa"
    secret.write_bytes(ONE_PM)  # readable as a calendar: only the name can tell
    link = tmp_path / "lee.ics"
    link.symlink_to(tmp_path / "real.ics")
    provider = IcsProvider()
    assert await read(provider, str(link)) == [(utc(2026, 12, 1, 18), utc(2026, 12, 1, 19))]
    link.unlink()
    link.symlink_to(secret)
    with pytest.raises(CalendarUnavailable, match=r"lee\.ics is not an \.ics file"):
        await read(IcsProvider(), str(link))


async def test_unparseable_file_is_unavailable_and_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.ics"
    path.write_bytes(b"this is not a calendar")
    with pytest.raises(CalendarUnavailable, match="broken.ics"):
        await read(IcsProvider(), str(path))


async def test_a_feed_is_one_read_only_calendar_named_by_the_feed(tmp_path: Path) -> None:
    path = tmp_path / "lee.ics"
    path.write_bytes(ONE_PM.replace(b"VERSION:2.0", b"VERSION:2.0\r\nX-WR-CALNAME:Lee at work"))
    provider = IcsProvider()
    account = feed_account(str(path))
    await provider.check(account)
    [calendar] = await provider.list_calendars(account)
    assert (calendar.id, calendar.name, calendar.writable) == (FEED_ID, "Lee at work", False)
    path.write_bytes(ONE_PM)
    [unnamed] = await provider.list_calendars(account)
    assert unnamed.name == f"calendar file {path}"


async def test_writes_are_refused_for_good(tmp_path: Path) -> None:
    provider = IcsProvider()
    account = feed_account(str(tmp_path / "lee.ics"))
    event = EventSpec(
        key="apt_1",
        summary="Cleaning",
        description="",
        start=utc(2026, 12, 1, 15),
        end=utc(2026, 12, 1, 16),
        timezone="America/New_York",
    )
    with pytest.raises(CalendarUnavailable, match="read-only") as put:
        await provider.put_event(account, calendar_id=FEED_ID, event=event, event_id=None)
    with pytest.raises(CalendarUnavailable, match="read-only") as delete:
        await provider.delete_event(account, calendar_id=FEED_ID, event_id="x")
    assert not put.value.retryable and not delete.value.retryable
    assert await provider.watch(account, calendar_id=FEED_ID, callback_url="u", token="t") is None


def test_an_ics_link_becomes_an_account() -> None:
    made = link_account(
        {"provider": "ics", "source": "https://cal.example.com/private-s3cr3t/basic.ics"},
        staff_id="lee",
        index=2,
    )
    assert made.id == "link:lee:2" and made.provider == "ics" and made.secret == {}
    assert made.settings == {"source": "https://cal.example.com/private-s3cr3t/basic.ics"}
    assert "s3cr3t" not in made.name and "cal.example.com" in made.name
    with pytest.raises(CalendarUnavailable, match="source"):
        link_account({"provider": "ics"}, staff_id="lee", index=0)


# --- the provider: reading feeds ----------------------------------------------------------------


class FeedServer:
    """A loopback HTTP server serving one ICS body, counting the requests it answers."""

    def __init__(self) -> None:
        self.body = ONE_PM
        self.status = 200
        self.requests: list[str] = []
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                feed.requests.append(self.path)
                self.send_response(feed.status)
                self.send_header("Content-Type", "text/calendar; charset=utf-8")
                self.send_header("Content-Length", str(len(feed.body)))
                self.end_headers()
                self.wfile.write(feed.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch) -> Iterator[FeedServer]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = FeedServer()
    thread = threading.Thread(target=server.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    thread.join(timeout=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_feed_is_cached_for_ttl_and_check_fetches_it_again(feed: FeedServer) -> None:
    clock = Clock()
    provider = IcsProvider(ttl=60, monotonic=clock)
    source = f"{feed.url}/lee.ics"
    assert await read(provider, source) == [(utc(2026, 12, 1, 18), utc(2026, 12, 1, 19))]

    feed.body = TWO_PM
    clock.now += 59
    assert await read(provider, source) == [(utc(2026, 12, 1, 18), utc(2026, 12, 1, 19))]
    assert await synced(provider, source) == [(utc(2026, 12, 1, 18), utc(2026, 12, 1, 19))]
    assert len(feed.requests) == 1

    await provider.check(feed_account(source))  # linking checks the feed as it is now
    assert len(feed.requests) == 2
    assert await synced(provider, source) == [(utc(2026, 12, 1, 19), utc(2026, 12, 1, 20))]

    feed.body = ONE_PM
    clock.now += 61
    assert await read(provider, source) == [(utc(2026, 12, 1, 18), utc(2026, 12, 1, 19))]
    assert len(feed.requests) == 3


async def test_concurrent_reads_of_one_feed_fetch_it_once(feed: FeedServer) -> None:
    provider = IcsProvider()
    source = f"{feed.url}/lee.ics"
    results = await asyncio.gather(*(read(provider, source) for _ in range(5)))
    assert all(r == [(utc(2026, 12, 1, 18), utc(2026, 12, 1, 19))] for r in results)
    assert len(feed.requests) == 1


async def test_feed_http_error_is_unavailable_without_leaking_credentials(
    feed: FeedServer,
) -> None:
    feed.status = 404
    host = feed.url.removeprefix("http://")
    source = f"http://alice:hunter2@{host}/private-s3cr3t/basic.ics?token=letmein"
    with pytest.raises(CalendarUnavailable) as caught:
        await read(IcsProvider(), source)
    message = caught.value.message
    logged = "".join(traceback.format_exception(caught.value))
    assert host in message and "404" in message
    for secret in ("alice", "hunter2", "s3cr3t", "letmein"):
        assert secret not in message and secret not in logged


@pytest.mark.parametrize(
    ("status", "relink", "retryable"),
    [
        (401, True, False),  # the feed wants a login it no longer has
        (403, True, False),
        (404, True, False),  # a secret address that was reset or unshared
        (410, True, False),
        (400, False, False),
        (500, False, True),
        (503, False, True),
        (429, False, True),
    ],
)
async def test_a_feed_refusal_says_whether_to_link_again_or_try_again(
    status: int, relink: bool, retryable: bool
) -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Retry-After": later})

    provider = IcsProvider(transport=httpx.MockTransport(answer), clock=FixedClock(now))
    with pytest.raises(CalendarUnavailable) as caught:
        await read(provider, "https://calendar.example.com/private-s3cr3t/basic.ics")
    error = caught.value
    assert isinstance(error, NeedsRelink) is relink
    assert error.retryable is retryable
    # The Retry-After date, measured with the injected clock, for a refusal that may pass.
    assert error.retry_after == (30.0 if retryable else None)
    assert str(status) in error.message and "s3cr3t" not in error.message


async def test_feed_that_is_not_ics_is_unavailable(feed: FeedServer) -> None:
    feed.body = b"<html><body>Please sign in</body></html>"
    with pytest.raises(CalendarUnavailable, match="not a valid iCalendar"):
        await read(IcsProvider(), f"{feed.url}/lee.ics")


async def test_feed_that_does_not_answer_in_time_is_unavailable() -> None:
    async def never_answers(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    provider = IcsProvider(timeout=0.05, transport=httpx.MockTransport(never_answers))
    with pytest.raises(CalendarUnavailable, match="did not answer within 0.05 s"):
        await read(provider, "https://calendar.example.com/feed.ics?key=abc")


async def test_webcal_feed_is_fetched_over_https() -> None:
    seen: list[httpx.URL] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, content=ONE_PM)

    provider = IcsProvider(transport=httpx.MockTransport(serve))
    assert await read(provider, "webcal://calendar.example.com/feed.ics") != []
    assert [str(url) for url in seen] == ["https://calendar.example.com/feed.ics"]


# --- the demo calendars -------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "calendars"


async def demo_spans(name: str) -> list[Interval]:
    return await IcsProvider().busy(
        feed_account(str(EXAMPLES / name)),
        calendar_ids=[],
        tz=NY,
        start=utc(2026, 11, 30),
        end=utc(2027, 2, 1),
    )


async def test_demo_calendar_of_lee_reads_as_intended() -> None:
    spans = await demo_spans("lee.ics")
    starts = [start.astimezone(NY).strftime("%m-%d %H:%M") for start, _ in spans]
    assert "12-04 00:00" in starts  # the all-day conference
    assert "12-29 08:00" not in starts  # staff meeting skipped (EXDATE)
    assert "01-12 08:00" not in starts and "01-13 12:30" in starts  # moved meeting
    assert "12-03 11:00" not in starts  # cancelled supplier call
    assert "12-07 09:00" not in starts  # transparent reminder


async def test_demo_calendar_of_patel_is_readable() -> None:
    spans = await demo_spans("patel.ics")
    assert (utc(2027, 1, 14, 5), utc(2027, 1, 16, 5)) in spans  # two conference days


# --- hostile feeds: expansion is bounded, the edges of the calendar do not overflow ----------


@pytest.mark.parametrize(
    ("rule", "since"),
    [
        ("FREQ=MINUTELY", "20000101T000000Z"),
        ("FREQ=SECONDLY;INTERVAL=10", "20260101T000000Z"),
        ("FREQ=HOURLY", "20000101T000000Z"),
    ],
)
def test_a_series_with_millions_of_repetitions_is_refused_quickly(rule: str, since: str) -> None:
    data = ics(f"DTSTART:{since}\nDURATION:PT1S\nRRULE:{rule}")
    t0 = time.perf_counter()
    with pytest.raises(CalendarUnavailable, match="more than 50,000 repetitions"):
        busy(data)
    assert time.perf_counter() - t0 < 1.0  # was 14 million instances walked on every read


def test_small_counts_and_past_untils_of_fine_series_are_read() -> None:
    data = ics(
        "DTSTART:20000101T000000Z\nDTEND:20000101T000100Z\nRRULE:FREQ=MINUTELY;COUNT=5",
        "DTSTART:20261201T090000Z\nDTEND:20261201T091500Z\nRRULE:FREQ=HOURLY;COUNT=3",
        "DTSTART:20000101T000000Z\nDTEND:20000101T000100Z\n"
        "RRULE:FREQ=MINUTELY;UNTIL=20000102T000000Z",
    )
    assert busy(data) == [(utc(2026, 12, 1, h), utc(2026, 12, 1, h, 15)) for h in (9, 10, 11)]


def test_an_old_daily_series_is_expanded_for_the_window_only() -> None:
    data = ics("DTSTART:19900101T120000Z\nDTEND:19900101T130000Z\nRRULE:FREQ=DAILY")
    assert len(busy(data)) == 32


def test_more_than_50000_events_in_the_window_is_refused() -> None:
    data = ics(
        "DTSTART:20261201T000000Z\nDURATION:PT1S\nRRULE:FREQ=SECONDLY;COUNT=50000",
        "DTSTART:20261201T120000Z\nDTEND:20261201T130000Z",
    )
    with pytest.raises(CalendarUnavailable, match="more than 50,000 events"):
        busy(data, start=utc(2026, 12, 1), end=utc(2026, 12, 2))


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), datetime.max.replace(tzinfo=UTC)),
        (datetime.min.replace(tzinfo=UTC), datetime(1, 1, 2, tzinfo=UTC)),
        (datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)),
    ],
)
def test_windows_at_the_edge_of_the_calendar_do_not_overflow(
    start: datetime, end: datetime
) -> None:
    data = ics(
        "DTSTART;VALUE=DATE:99991231\nDTEND;VALUE=DATE:99991231",
        "DTSTART;TZID=Asia/Tokyo:00010101T000000\nDTEND;TZID=Asia/Tokyo:00010101T010000",
        "DTSTART:20261201T090000Z\nDTEND:20261201T100000Z",
    )
    found = busy(data, start=start, end=end)
    assert all(a.tzinfo is not None for a, _ in found)


async def test_a_file_larger_than_the_cap_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big.ics"
    big.write_bytes(ics("DTSTART:20261201T090000Z\nDTEND:20261201T100000Z") + b" " * 2048)
    with pytest.raises(CalendarUnavailable, match="larger than 1024 bytes"):
        await read(IcsProvider(max_bytes=1024), str(big))


def test_a_series_that_never_happens_is_read_quickly() -> None:
    # dateutil looks for its next instance day by day up to the year 9999: 8 s on every read.
    data = ics(
        "DTSTART:20261201T090000Z\nDTEND:20261201T100000Z\n"
        "RRULE:FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
        "DTSTART;TZID=America/New_York:19700105T090000\n"
        "DTEND;TZID=America/New_York:19700105T100000\n"
        "RRULE:FREQ=DAILY;INTERVAL=7;BYDAY=TU",
    )
    t0 = time.perf_counter()
    assert busy(data) == [(utc(2026, 12, 1, 9), utc(2026, 12, 1, 10))]  # DTSTART alone
    assert time.perf_counter() - t0 < 1.0


def test_a_rare_series_is_still_expanded() -> None:
    data = ics("DTSTART;VALUE=DATE:19960229\nRRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29")
    found = busy(data, start=utc(2028, 2, 1), end=utc(2028, 3, 1))
    assert found == [
        (
            datetime(2028, 2, 29, tzinfo=NY).astimezone(UTC),
            datetime(2028, 3, 1, tzinfo=NY).astimezone(UTC),
        )
    ]


def test_a_sub_daily_series_on_chosen_days_is_refused() -> None:
    data = ics("DTSTART:20261201T090000Z\nDURATION:PT1M\nRRULE:FREQ=HOURLY;BYMONTH=2;BYMONTHDAY=30")
    with pytest.raises(CalendarUnavailable, match="more often than daily on chosen days"):
        busy(data)


def test_a_feed_of_many_series_that_never_happen_is_refused() -> None:
    never = (
        "DTSTART:20261201T090000Z\nDTEND:20261201T100000Z\n"
        "RRULE:FREQ=MONTHLY;BYMONTHDAY=30;BYMONTH=2"
    )
    with pytest.raises(CalendarUnavailable, match="more than 10 recurring events that never"):
        busy(ics(*[never] * 11))
