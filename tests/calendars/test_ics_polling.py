"""Polling an ICS feed is cheap: each fetch after the first is a conditional GET."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import httpx

from calendars.base import Account
from calendars.ics import IcsProvider

NY = ZoneInfo("America/New_York")
URL = "https://calendar.example.com/lee.ics"
START, END = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)


def feed(hour: int) -> bytes:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:a\r\n"
        "DTSTAMP:20261101T000000Z\r\n"
        f"DTSTART:20261201T{hour:02d}0000Z\r\nDTEND:20261201T{hour + 1:02d}0000Z\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode()


class Feed:
    """A feed server that honours If-None-Match / If-Modified-Since, as most do."""

    def __init__(self, *, validators: bool = True) -> None:
        self.body, self.etag = feed(15), '"v1"'
        self.validators = validators
        self.seen: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.headers)
        if not self.validators:
            return httpx.Response(200, content=self.body)
        if request.headers.get("if-none-match") == self.etag:
            return httpx.Response(304, headers={"ETag": self.etag})
        return httpx.Response(
            200,
            content=self.body,
            headers={"ETag": self.etag, "Last-Modified": "Sun, 01 Nov 2026 00:00:00 GMT"},
        )


class Clock:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


async def busy(provider: IcsProvider) -> list[tuple[int, int]]:
    account = Account(id="feed", provider="ics", settings={"source": URL})
    result = await provider.sync(
        account, calendar_id="feed", tz=NY, cursor=None, start=START, end=END
    )
    return [(a.hour, b.hour) for spans in result.changed.values() for a, b in spans]


async def test_an_unchanged_feed_answers_304_and_a_changed_one_is_read_again() -> None:
    server, clock = Feed(), Clock()
    provider = IcsProvider(ttl=60, transport=httpx.MockTransport(server), monotonic=clock)
    assert await busy(provider) == [(15, 16)]
    assert "if-none-match" not in server.seen[0]

    clock.value += 61  # the next poll
    assert await busy(provider) == [(15, 16)]
    assert server.seen[1]["if-none-match"] == '"v1"'
    assert server.seen[1]["if-modified-since"] == "Sun, 01 Nov 2026 00:00:00 GMT"

    server.body, server.etag = feed(17), '"v2"'  # the event moved
    clock.value += 61
    assert await busy(provider) == [(17, 18)]
    clock.value += 61
    assert await busy(provider) == [(17, 18)]
    assert server.seen[3]["if-none-match"] == '"v2"'
    assert len(server.seen) == 4


async def test_a_feed_without_validators_is_fetched_whole_each_time() -> None:
    server, clock = Feed(validators=False), Clock()
    provider = IcsProvider(ttl=60, transport=httpx.MockTransport(server), monotonic=clock)
    assert await busy(provider) == [(15, 16)]
    server.body = feed(9)
    clock.value += 61
    assert await busy(provider) == [(9, 10)]
    assert all("if-none-match" not in h and "if-modified-since" not in h for h in server.seen)
