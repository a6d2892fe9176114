"""The Google provider through the real google-api-python-client, against the fake Google
Calendar server on loopback (tests/fakes/google_calendar.py), and the OAuth flow over httpx."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httplib2
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from booking.clock import FixedClock
from booking.errors import CalendarUnavailable, InvalidRequest
from calendars.base import Account, EventSpec, NeedsRelink
from calendars.google import GoogleApiError, GoogleOAuth, GoogleProvider, event_id_for
from tests.calendars.google_harness import EMAIL, RefreshingTokens, google_setup
from tests.calendars.harness import Harness
from tests.fakes.google_calendar import FakeGoogleCalendar
from tests.fakes.loopback import LoopbackServer

NY = ZoneInfo("America/New_York")
DAY = datetime(2026, 12, 1, tzinfo=NY)  # a Tuesday


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)  # type: ignore[misc]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def timed(start: datetime, end: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "summary": "Busy",
        "start": {"dateTime": start.isoformat(), "timeZone": NY.key},
        "end": {"dateTime": end.isoformat(), "timeZone": NY.key},
        **extra,
    }


class Receiver:
    """Our side of push notifications: records every POST it gets."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self._changed = threading.Condition()
        app = Starlette(routes=[Route("/hooks/google", self._hook, methods=["POST"])])
        self._server = LoopbackServer(app, name="notification receiver")
        self.url = f"http://127.0.0.1:{self._server.port}/hooks/google"

    async def _hook(self, request: Request) -> Response:
        with self._changed:
            self.received.append({k.lower(): v for k, v in request.headers.items()})
            self._changed.notify_all()
        return Response(status_code=200)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"expected {count} notifications, got {self.received}")
            return list(self.received)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGoogleCalendar]:
    server = FakeGoogleCalendar(allow_http_callbacks=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server._server.start()
    yield server
    server._server.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def h(fake: FakeGoogleCalendar, sleeps: list[float]) -> Harness:
    fake.reset()

    async def record(delay: float) -> None:
        sleeps.append(delay)

    return google_setup(fake, sleep=record)


def tokens_of(h: Harness) -> RefreshingTokens:
    tokens = h.extra["tokens"]
    assert isinstance(tokens, RefreshingTokens)
    return tokens


async def busy_on(
    h: Harness, start: datetime, end: datetime, calendar_ids: list[str] | None = None
) -> list[tuple[datetime, datetime]]:
    return await h.provider.busy(
        h.account, calendar_ids=calendar_ids or [h.calendar_id], tz=NY, start=start, end=end
    )


def spec(
    start: datetime,
    *,
    key: str = "apt_01HZX",
    minutes: int = 60,
    summary: str = "Cleaning: Ann Smith",
) -> EventSpec:
    return EventSpec(
        key=key,
        summary=summary,
        description="+12025550001",
        start=start,
        end=start + timedelta(minutes=minutes),
        timezone=NY.key,
    )


# ---- busy time -----------------------------------------------------------------------------


async def test_busy_counts_tentative_but_not_free_declined_or_cancelled_events(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    fake.put_event(EMAIL, timed(ny(2026, 12, 1, 9), ny(2026, 12, 1, 10), status="tentative"))
    fake.put_event(
        EMAIL, timed(ny(2026, 12, 1, 10), ny(2026, 12, 1, 11), transparency="transparent")
    )
    fake.put_event(
        EMAIL,
        timed(
            ny(2026, 12, 1, 11),
            ny(2026, 12, 1, 12),
            attendees=[
                {"email": EMAIL, "self": True, "responseStatus": "declined"},
                {"email": "boss@example.com", "organizer": True, "responseStatus": "accepted"},
            ],
        ),
    )
    fake.put_event(EMAIL, timed(ny(2026, 12, 1, 12), ny(2026, 12, 1, 13), status="cancelled"))
    fake.put_event(EMAIL, timed(ny(2026, 12, 1, 14), ny(2026, 12, 1, 15)))

    busy = await busy_on(h, DAY, DAY + timedelta(days=1))

    assert busy == [
        (utc(2026, 12, 1, 14), utc(2026, 12, 1, 15)),
        (utc(2026, 12, 1, 19), utc(2026, 12, 1, 20)),
    ]


async def test_all_day_events_cover_whole_local_days_across_dst_changes(h: Harness) -> None:
    # New York leaves daylight time on 2026-11-01 and enters it on 2027-03-14.
    autumn = await h.add_event(all_day=date(2026, 11, 1))
    spring = await h.add_event(all_day=date(2027, 3, 14))

    autumn_busy = await busy_on(h, ny(2026, 10, 30), ny(2026, 11, 4))
    spring_busy = await busy_on(h, ny(2027, 3, 12), ny(2027, 3, 17))

    assert autumn_busy == [(utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))]  # 25 hours
    assert spring_busy == [(utc(2027, 3, 14, 5), utc(2027, 3, 15, 4))]  # 23 hours
    synced = await h.provider.sync(
        h.account,
        calendar_id=h.calendar_id,
        tz=NY,
        cursor=None,
        start=ny(2026, 10, 1),
        end=ny(2027, 4, 1),
    )
    assert synced.changed[autumn] == autumn_busy
    assert synced.changed[spring] == spring_busy


async def test_recurring_instances_are_busy_at_local_time_except_a_cancelled_one(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    master = fake.put_event(
        EMAIL,
        timed(ny(2026, 10, 27, 10), ny(2026, 10, 27, 11), recurrence=["RRULE:FREQ=WEEKLY;COUNT=4"]),
    )
    fake.cancel_instance(EMAIL, master["id"], utc(2026, 11, 10, 15))

    busy = await busy_on(h, ny(2026, 10, 26), ny(2026, 11, 30))
    synced = await h.provider.sync(
        h.account,
        calendar_id=h.calendar_id,
        tz=NY,
        cursor=None,
        start=ny(2026, 10, 26),
        end=ny(2026, 11, 30),
    )

    expected = [
        (utc(2026, 10, 27, 14), utc(2026, 10, 27, 15)),  # 10:00 EDT
        (utc(2026, 11, 3, 15), utc(2026, 11, 3, 16)),  # 10:00 EST
        (utc(2026, 11, 17, 15), utc(2026, 11, 17, 16)),
    ]
    assert busy == expected
    assert sorted(i for intervals in synced.changed.values() for i in intervals) == expected
    assert all(key.startswith(master["id"] + "_") for key in synced.changed)


async def test_busy_splits_long_windows_and_many_calendars(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    others = [f"room{n}@group.calendar.google.com" for n in range(59)]
    for calendar_id in others:
        fake.add_calendar(EMAIL, calendar_id, time_zone=NY.key, access_role="reader")
    start = ny(2026, 12, 1)
    fake.put_event(
        others[55],
        timed(start + timedelta(days=100, hours=9), start + timedelta(days=100, hours=10)),
    )
    # One busy block across the point where the window is cut in two.
    cut = start + timedelta(days=90)
    fake.put_event(EMAIL, timed(cut - timedelta(hours=1), cut + timedelta(hours=1)))

    busy = await busy_on(h, start, start + timedelta(days=120), [EMAIL, *others])

    assert busy == [
        (cut - timedelta(hours=1), cut + timedelta(hours=1)),
        (start + timedelta(days=100, hours=9), start + timedelta(days=100, hours=10)),
    ]
    queries = fake.api_requests("/freeBusy")
    assert len(queries) == 4
    for query in queries:
        span = datetime.fromisoformat(query.body["timeMax"]) - datetime.fromisoformat(
            query.body["timeMin"]
        )
        assert span <= timedelta(days=90)
        assert len(query.body["items"]) <= 50


async def test_busy_fails_when_google_reports_an_error_for_one_calendar(h: Harness) -> None:
    with pytest.raises(CalendarUnavailable) as caught:
        await busy_on(h, DAY, DAY + timedelta(days=1), [EMAIL, "someone@example.com"])
    assert "someone@example.com" in caught.value.message
    assert "not found" in caught.value.message


# ---- sync ----------------------------------------------------------------------------------


async def test_full_sync_reads_every_page_and_keeps_the_last_pages_sync_token(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    fake.max_page_size = 2
    ids = [await h.add_event(ny(2026, 12, 1, 9 + n), ny(2026, 12, 1, 10 + n)) for n in range(5)]

    synced = await h.provider.sync(
        h.account,
        calendar_id=h.calendar_id,
        tz=NY,
        cursor=None,
        start=DAY,
        end=DAY + timedelta(days=1),
    )

    assert synced.full and synced.cursor
    assert sorted(synced.changed) == sorted(ids)
    assert synced.changed[ids[0]] == [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 15))]
    pages = fake.api_requests("/events", "GET")
    assert len(pages) == 3
    assert all(p.query["singleEvents"] == "true" for p in pages)
    assert "pageToken" not in pages[0].query
    assert all("pageToken" in p.query for p in pages[1:])


async def test_incremental_sync_reports_changes_and_deletions_since_the_cursor(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    kept = await h.add_event(ny(2026, 12, 1, 9), ny(2026, 12, 1, 10))
    deleted = await h.add_event(ny(2026, 12, 1, 11), ny(2026, 12, 1, 12))
    freed = await h.add_event(ny(2026, 12, 1, 13), ny(2026, 12, 1, 14))
    first = await h.provider.sync(
        h.account,
        calendar_id=h.calendar_id,
        tz=NY,
        cursor=None,
        start=DAY,
        end=DAY + timedelta(days=2),
    )

    added = await h.add_event(ny(2026, 12, 2, 9), ny(2026, 12, 2, 10))
    await h.remove_event(deleted)
    fake.put_event(
        EMAIL, timed(ny(2026, 12, 1, 13), ny(2026, 12, 1, 14), id=freed, transparency="transparent")
    )
    second = await h.provider.sync(
        h.account,
        calendar_id=h.calendar_id,
        tz=NY,
        cursor=first.cursor,
        start=DAY,
        end=DAY + timedelta(days=2),
    )

    assert not second.full
    assert second.changed == {added: [(utc(2026, 12, 2, 14), utc(2026, 12, 2, 15))], freed: []}
    assert second.removed == {deleted}
    assert kept not in second.changed
    assert second.cursor and second.cursor != first.cursor
    incremental = fake.api_requests("/events", "GET")[-1]
    assert incremental.query["syncToken"] == first.cursor
    assert "timeMin" not in incremental.query and "timeMax" not in incremental.query


async def test_expired_sync_token_falls_back_to_a_full_sync(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    event = await h.add_event(ny(2026, 12, 1, 9), ny(2026, 12, 1, 10))
    first = await h.provider.sync(
        h.account,
        calendar_id=h.calendar_id,
        tz=NY,
        cursor=None,
        start=DAY,
        end=DAY + timedelta(days=1),
    )
    fake.expire_sync_tokens()

    again = await h.provider.sync(
        h.account,
        calendar_id=h.calendar_id,
        tz=NY,
        cursor=first.cursor,
        start=DAY,
        end=DAY + timedelta(days=1),
    )

    assert again.full
    assert again.changed == first.changed and event in again.changed
    assert again.cursor and again.cursor != first.cursor
    statuses = [r.query.get("syncToken") is not None for r in fake.api_requests("/events", "GET")]
    assert statuses == [False, True, False]


# ---- writing -------------------------------------------------------------------------------


async def test_put_event_after_a_timed_out_insert_leaves_exactly_one_event(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    provider = GoogleProvider(api_base_url=fake.api_base_url, timeout=1.0)
    fake.timeout_delay = 2.0
    fake.fail_next("timeout")

    with pytest.raises(CalendarUnavailable, match="did not answer"):
        await provider.put_event(
            h.account, calendar_id=h.calendar_id, event=spec(ny(2026, 12, 1, 9)), event_id=None
        )
    event_id = await provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec(ny(2026, 12, 1, 9)), event_id=None
    )

    events = await h.events()
    assert [e["id"] for e in events] == [event_id]
    assert events[0]["summary"] == "Cleaning: Ann Smith"
    assert [r.method for r in fake.api_requests()] == ["POST", "POST", "PATCH"]


async def test_put_event_writes_a_base32hex_id_and_updates_the_same_event(h: Harness) -> None:
    event_id = await h.provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec(ny(2026, 12, 1, 9)), event_id=None
    )
    assert event_id == event_id_for("apt_01HZX")
    assert set(event_id) <= set("0123456789abcdefghijklmnopqrstuv") and len(event_id) >= 5

    moved = await h.provider.put_event(
        h.account,
        calendar_id=h.calendar_id,
        event=spec(ny(2026, 12, 1, 14), summary="Moved"),
        event_id=event_id,
    )

    assert moved == event_id
    events = await h.events()
    assert len(events) == 1
    assert (events[0]["start"], events[0]["summary"]) == (utc(2026, 12, 1, 19), "Moved")
    assert events[0]["description"] == "+12025550001"


async def test_an_event_deleted_in_the_calendar_is_written_again(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    event_id = await h.provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec(ny(2026, 12, 1, 9)), event_id=None
    )
    await h.remove_event(event_id)

    again = await h.provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec(ny(2026, 12, 1, 10)), event_id=event_id
    )
    # Created afresh by key: Google keeps the deleted id, so the insert meets 409.
    await h.remove_event(event_id)
    fresh = await h.provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec(ny(2026, 12, 1, 11)), event_id=None
    )
    unknown = await h.provider.put_event(
        h.account,
        calendar_id=h.calendar_id,
        event=spec(ny(2026, 12, 1, 12), key="other"),
        event_id="abcdef0123",
    )

    assert again == fresh == event_id and unknown == "abcdef0123"
    starts = sorted((e["id"], e["start"]) for e in await h.events())
    assert starts == [("abcdef0123", utc(2026, 12, 1, 17)), (event_id, utc(2026, 12, 1, 16))]


async def test_deleting_an_event_twice_or_an_unknown_one_is_fine(h: Harness) -> None:
    event_id = await h.provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec(ny(2026, 12, 1, 9)), event_id=None
    )

    await h.provider.delete_event(h.account, calendar_id=h.calendar_id, event_id=event_id)
    await h.provider.delete_event(h.account, calendar_id=h.calendar_id, event_id=event_id)
    await h.provider.delete_event(h.account, calendar_id=h.calendar_id, event_id="neverthere1")

    assert await h.events() == []


async def test_writing_to_a_read_only_calendar_fails_at_once(
    h: Harness, fake: FakeGoogleCalendar, sleeps: list[float]
) -> None:
    fake.add_calendar(EMAIL, "holidays@group.v.calendar.google.com", access_role="reader")

    with pytest.raises(GoogleApiError) as caught:
        await h.provider.put_event(
            h.account,
            calendar_id="holidays@group.v.calendar.google.com",
            event=spec(ny(2026, 12, 1, 9)),
            event_id=None,
        )

    assert (caught.value.status, caught.value.reason) == (403, "requiredAccessLevel")
    assert len(fake.api_requests("/events", "POST")) == 1 and sleeps == []


# ---- notifications ---------------------------------------------------------------------------


async def test_watch_gets_a_sync_message_then_one_per_change_until_stopped(
    h: Harness, fake: FakeGoogleCalendar, receiver: Receiver
) -> None:
    receiver.received.clear()
    channel = await h.provider.watch(
        h.account, calendar_id=h.calendar_id, callback_url=receiver.url, token="tok-123"
    )
    assert channel is not None and channel.resource_id and channel.token == "tok-123"
    assert timedelta(days=6) < channel.expires_at - datetime.now(UTC) <= timedelta(days=7)

    sync = (await asyncio.to_thread(receiver.wait_for, 1))[0]
    await h.add_event(ny(2026, 12, 1, 9), ny(2026, 12, 1, 10))
    change = (await asyncio.to_thread(receiver.wait_for, 2))[1]

    for message in (sync, change):
        assert message["x-goog-channel-id"] == channel.id
        assert message["x-goog-channel-token"] == "tok-123"
        assert message["x-goog-resource-id"] == channel.resource_id
    assert (sync["x-goog-resource-state"], sync["x-goog-message-number"]) == ("sync", "1")
    assert (change["x-goog-resource-state"], change["x-goog-message-number"]) == ("exists", "2")

    await h.provider.stop(h.account, channel)
    await h.provider.stop(h.account, channel)  # already gone: fine
    assert fake.channels() == []


async def test_watch_needs_an_https_address_as_google_does(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    fake.allow_http_callbacks = False
    with pytest.raises(GoogleApiError) as caught:
        await h.provider.watch(
            h.account, calendar_id=h.calendar_id, callback_url="http://example.com/hook", token="t"
        )
    assert caught.value.reason == "push.webhookUrlNotHttps"


async def test_harness_notify_posts_like_google(h: Harness, receiver: Receiver) -> None:
    receiver.received.clear()
    assert h.notify is not None
    channel = await h.provider.watch(
        h.account, calendar_id=h.calendar_id, callback_url=receiver.url, token="tok-9"
    )
    assert channel is not None
    response = await h.notify(receiver.url)
    assert response.status_code == 200
    messages = await asyncio.to_thread(receiver.wait_for, 2)
    assert {m["x-goog-resource-state"] for m in messages} == {"sync", "exists"}


# ---- retries, time limits, tokens --------------------------------------------------------------


async def test_a_429_is_retried_after_the_time_retry_after_asks_for(
    h: Harness, fake: FakeGoogleCalendar, sleeps: list[float]
) -> None:
    await h.add_event(ny(2026, 12, 1, 9), ny(2026, 12, 1, 10))
    fake.fail_next("429")

    busy = await busy_on(h, DAY, DAY + timedelta(days=1))

    assert busy == [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 15))]
    assert sleeps == [1.0]
    assert len(fake.api_requests("/freeBusy")) == 2


@pytest.mark.parametrize("kind", ["500", "503", "403", "403-user"])
async def test_server_errors_and_rate_limit_403s_are_retried_with_backoff(
    h: Harness, fake: FakeGoogleCalendar, sleeps: list[float], kind: str
) -> None:
    fake.fail_next(kind, 2)

    assert await busy_on(h, DAY, DAY + timedelta(days=1)) == []

    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0
    assert len(fake.api_requests("/freeBusy")) == 3


async def test_retries_stop_after_the_bound(
    h: Harness, fake: FakeGoogleCalendar, sleeps: list[float]
) -> None:
    async def record(delay: float) -> None:
        sleeps.append(delay)

    # A time limit the three back-off waits (up to 0.5 + 1 + 2 s) fit in: the retry policy
    # counts the waits taken against the limit even though this sleep does not wait.
    provider = GoogleProvider(api_base_url=fake.api_base_url, timeout=10.0, sleep=record)
    fake.fail_next("500", 10)

    with pytest.raises(CalendarUnavailable, match="500"):
        await provider.busy(
            h.account, calendar_ids=[h.calendar_id], tz=NY, start=DAY, end=DAY + timedelta(days=1)
        )
    provider.close()

    assert len(fake.api_requests("/freeBusy")) == 4  # the first try and 3 retries
    assert len(sleeps) == 3


async def test_a_slow_google_times_out_without_stalling_the_event_loop(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    provider = GoogleProvider(api_base_url=fake.api_base_url, timeout=1.0)
    fake.timeout_delay = 3.0
    fake.fail_next("timeout")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    ticker = asyncio.create_task(tick())
    began = time.monotonic()
    with pytest.raises(CalendarUnavailable, match="within 1 s"):
        await provider.busy(
            h.account, calendar_ids=[h.calendar_id], tz=NY, start=DAY, end=DAY + timedelta(days=1)
        )
    elapsed = time.monotonic() - began
    ticker.cancel()

    assert 0.9 < elapsed < 1.8
    assert ticks > elapsed / 0.02 * 0.5  # the loop kept running while Google was silent


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every TCP connection the provider opens to the fake."""
    opened: list[str] = []
    connect = httplib2.HTTPConnectionWithTimeout.connect

    def counted(self: httplib2.HTTPConnectionWithTimeout) -> None:
        opened.append(f"{self.host}:{self.port}")
        connect(self)

    monkeypatch.setattr(httplib2.HTTPConnectionWithTimeout, "connect", counted)
    return opened


async def test_requests_one_after_another_share_one_connection(
    h: Harness, connects: list[str]
) -> None:
    for _ in range(4):
        assert await busy_on(h, DAY, DAY + timedelta(days=1)) == []
    assert len(connects) == 1


async def test_a_timed_out_request_leaves_no_broken_connection_behind(
    h: Harness, fake: FakeGoogleCalendar, connects: list[str]
) -> None:
    provider = GoogleProvider(api_base_url=fake.api_base_url, timeout=0.5)
    window = {
        "calendar_ids": [h.calendar_id],
        "tz": NY,
        "start": DAY,
        "end": DAY + timedelta(days=1),
    }
    assert await provider.busy(h.account, **window) == []
    fake.timeout_delay = 1.5
    fake.fail_next("timeout")
    with pytest.raises(CalendarUnavailable, match="within 0.5 s"):
        await provider.busy(h.account, **window)
    meeting = (ny(2026, 12, 1, 9), ny(2026, 12, 1, 10))
    await h.add_event(*meeting)
    assert await provider.busy(h.account, **window) == [meeting]
    assert len(connects) == 2  # the late answer's connection was not used again
    provider.close()
    assert await provider.busy(h.account, **window) == [meeting]  # closed, still answering


async def test_an_expired_access_token_is_refreshed_once(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    fake.expire_access_tokens()

    assert await h.provider.list_calendars(h.account)

    assert tokens_of(h).refreshes == 1
    assert [r.query.get("maxResults") for r in fake.api_requests("/calendarList")] == ["250"] * 2


async def test_a_revoked_grant_needs_relinking(h: Harness, fake: FakeGoogleCalendar) -> None:
    fake.revoke(EMAIL)

    with pytest.raises(NeedsRelink):
        await h.provider.check(h.account)


async def test_a_token_refused_even_after_refresh_needs_relinking(h: Harness) -> None:
    class Stale:
        calls: list[bool] = []

        async def access_token(self, *, force_refresh: bool = False) -> str:
            self.calls.append(force_refresh)
            return "ya29.not-a-token-google-knows"

    stale = Stale()
    account = Account(id="x", provider="google", tokens=stale, name=EMAIL)

    with pytest.raises(NeedsRelink):
        await h.provider.check(account)
    assert stale.calls == [False, True]


async def test_list_calendars_pages_and_marks_writable_ones(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    fake.add_calendar(EMAIL, "team@group.calendar.google.com", summary="Team", access_role="writer")
    fake.add_calendar(
        EMAIL, "holidays@group.v.calendar.google.com", summary="Holidays", access_role="reader"
    )
    fake.max_page_size = 1

    calendars = await h.provider.list_calendars(h.account)

    assert [(c.id, c.name, c.primary, c.writable) for c in calendars] == [
        (EMAIL, "Staff", True, True),
        ("team@group.calendar.google.com", "Team", False, True),
        ("holidays@group.v.calendar.google.com", "Holidays", False, False),
    ]


async def test_only_the_users_own_calendars_count_as_busy(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    fake.add_calendar(EMAIL, "own1@group.calendar.google.com", summary="Family")
    fake.add_calendar(EMAIL, "team@group.calendar.google.com", summary="Team", access_role="writer")
    fake.add_calendar(
        EMAIL, "en.usa#holiday@group.v.calendar.google.com", summary="US", access_role="reader"
    )
    fake.add_calendar(
        EMAIL, "addressbook#contacts@group.v.calendar.google.com", summary="Birthdays"
    )
    fake.add_user("boss@example.com", summary="Boss")
    fake.add_calendar(EMAIL, "boss@example.com", summary="Boss", access_role="owner")
    fake.add_calendar(EMAIL, "free@example.com", summary="Peer", access_role="freeBusyReader")

    listed = {c.name: c for c in await h.provider.list_calendars(h.account)}

    assert {name: (c.primary, c.writable, c.counts_busy) for name, c in listed.items()} == {
        "Staff": (True, True, True),  # the primary calendar
        "Family": (False, True, True),  # a secondary calendar the user owns
        "Team": (False, True, False),  # shared with the user to write
        "US": (False, False, False),  # a holiday calendar subscribed to
        "Birthdays": (False, True, False),  # Google's contacts calendar, even as owner
        "Boss": (False, True, False),  # another person's primary, even with the owner role
        "Peer": (False, False, False),
    }


@pytest.mark.parametrize("kind", ["400", "404"])
async def test_a_client_error_is_not_retried_and_not_retryable(
    h: Harness, fake: FakeGoogleCalendar, sleeps: list[float], kind: str
) -> None:
    fake.fail_next(kind)

    with pytest.raises(GoogleApiError) as caught:
        await busy_on(h, DAY, DAY + timedelta(days=1))

    assert caught.value.status == int(kind) and caught.value.retryable is False
    assert sleeps == [] and len(fake.api_requests("/freeBusy")) == 1


async def test_errors_retried_until_the_bound_stay_retryable(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    fake.retry_after = "Wed, 02 Dec 2026 10:00:03 GMT"
    fake.fail_next("429", 10)
    # Retry-After as a date is measured from the injected clock, not the wall clock.
    provider = GoogleProvider(
        api_base_url=fake.api_base_url,
        timeout=10.0,
        sleep=record,
        clock=FixedClock(datetime(2026, 12, 2, 10, 0, tzinfo=UTC)),
        retries=2,
    )
    with pytest.raises(GoogleApiError) as caught:
        await provider.busy(
            h.account, calendar_ids=[h.calendar_id], tz=NY, start=DAY, end=DAY + timedelta(days=1)
        )
    provider.close()

    assert caught.value.status == 429 and caught.value.retryable is True
    assert waits == [3.0, 3.0]


async def test_the_shared_retry_policy_is_the_one_used(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    from booking.retry import RetryPolicy

    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    fake.fail_next("500", 10)
    policy = RetryPolicy(attempts=2, jitter=False, sleep=record)
    provider = GoogleProvider(api_base_url=fake.api_base_url, timeout=10.0, retry=policy)
    with pytest.raises(CalendarUnavailable, match="500"):
        await provider.busy(
            h.account, calendar_ids=[h.calendar_id], tz=NY, start=DAY, end=DAY + timedelta(days=1)
        )
    provider.close()
    assert len(fake.api_requests("/freeBusy")) == 2 and waits == [0.5]


async def test_no_token_or_secret_appears_in_any_error(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    errors: list[BaseException] = []
    oauth: GoogleOAuth = h.extra["oauth"]
    secrets_seen = [*tokens_of(h).secrets, fake.client_secret]
    fake.add_calendar(EMAIL, "ro@group.calendar.google.com", access_role="reader")

    async def no_wait(delay: float) -> None:
        pass

    # Every attempt of each of the three calls fails (4 attempts each: the time limit holds
    # all the back-off waits), and no fault is left over for the token endpoint below.
    provider = GoogleProvider(api_base_url=fake.api_base_url, timeout=10.0, sleep=no_wait)
    fake.fail_next("500", 12)
    for attempt in (
        provider.busy(
            h.account, calendar_ids=[h.calendar_id], tz=NY, start=DAY, end=DAY + timedelta(days=1)
        ),
        provider.busy(
            h.account, calendar_ids=["nobody@example.com"], tz=NY, start=DAY, end=DAY + timedelta(1)
        ),
        provider.put_event(
            h.account,
            calendar_id="ro@group.calendar.google.com",
            event=spec(ny(2026, 12, 1, 9)),
            event_id=None,
        ),
    ):
        with pytest.raises(CalendarUnavailable) as caught:
            await attempt
        errors.append(caught.value)
    provider.close()
    assert len(fake.api_requests("/freeBusy")) == 8
    refresh_token = tokens_of(h).secrets[-1]
    fake.revoke(EMAIL)
    with pytest.raises(NeedsRelink) as relink:
        await oauth.refresh(refresh_token)
    errors.append(relink.value)
    with pytest.raises(NeedsRelink) as relink_call:
        await h.provider.busy(
            h.account, calendar_ids=[EMAIL], tz=NY, start=DAY, end=DAY + timedelta(days=1)
        )
    errors.append(relink_call.value)

    for error in errors:
        for text in (str(error), repr(error), str(error.__cause__)):
            for secret in secrets_seen:
                assert secret not in text


# ---- OAuth -------------------------------------------------------------------------------------


def oauth_for(fake: FakeGoogleCalendar) -> GoogleOAuth:
    return GoogleOAuth(
        fake.client_id,
        fake.client_secret,
        auth_url=fake.auth_url,
        token_url=fake.token_url,
        api_base_url=fake.api_base_url,
    )


async def consent(url: str) -> dict[str, str]:
    """The browser's trip through Google's consent screen: the callback's query parameters."""
    async with httpx.AsyncClient() as client:
        answer = await client.get(url)
    assert answer.status_code == 302
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}


def test_oauth_start_asks_for_offline_access_with_pkce(fake: FakeGoogleCalendar) -> None:
    url, flow = oauth_for(fake).start(
        redirect_uri="https://fd.example/cb", state="st-1", login_hint=EMAIL
    )

    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(fake.auth_url + "?")
    assert params["response_type"] == "code" and params["client_id"] == fake.client_id
    assert params["access_type"] == "offline" and params["prompt"] == "consent"
    assert params["state"] == "st-1" and params["login_hint"] == EMAIL
    assert "https://www.googleapis.com/auth/calendar.events" in params["scope"].split()
    digest = hashlib.sha256(flow["code_verifier"].encode()).digest()
    assert params["code_challenge"] == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert params["code_challenge_method"] == "S256"
    assert flow["code_verifier"] not in url
    assert 43 <= len(flow["code_verifier"]) <= 128


async def test_oauth_link_round_trip_gives_tokens_and_the_account(
    h: Harness, fake: FakeGoogleCalendar
) -> None:
    oauth = oauth_for(fake)
    url, flow = oauth.start(redirect_uri="https://fd.example/cb", state="st-2")

    tokens = await oauth.finish(flow, await consent(url))

    assert tokens.account == EMAIL and tokens.refresh_token
    assert tokens.expires_at > datetime.now(UTC) + timedelta(minutes=50)
    assert fake.token_requests[-1]["code_verifier"] == flow["code_verifier"]
    refreshed = await oauth.refresh(tokens.refresh_token)
    assert refreshed.access_token != tokens.access_token
    assert refreshed.refresh_token == tokens.refresh_token
    account = Account(
        id="a",
        provider="google",
        name=EMAIL,
        tokens=RefreshingTokens(
            oauth, refresh_token=tokens.refresh_token, access_token=refreshed.access_token
        ),
    )
    await h.provider.check(account)


async def test_oauth_finish_rejects_an_answer_for_another_state(fake: FakeGoogleCalendar) -> None:
    fake.reset()
    fake.add_user(EMAIL)
    oauth = oauth_for(fake)
    url, flow = oauth.start(redirect_uri="https://fd.example/cb", state="mine")
    params = await consent(url)

    with pytest.raises(InvalidRequest):
        await oauth.finish(flow, {**params, "state": "someone-elses"})
    assert fake.token_requests == []


async def test_oauth_code_with_the_wrong_verifier_is_refused(fake: FakeGoogleCalendar) -> None:
    fake.reset()
    fake.add_user(EMAIL)
    oauth = oauth_for(fake)
    url, flow = oauth.start(redirect_uri="https://fd.example/cb", state="s")
    params = await consent(url)
    _, other = oauth.start(redirect_uri="https://fd.example/cb", state="s")

    with pytest.raises(InvalidRequest, match="invalid_grant"):
        await oauth.finish({**flow, "code_verifier": other["code_verifier"]}, params)


async def test_oauth_refused_consent_is_reported(fake: FakeGoogleCalendar) -> None:
    fake.reset()
    fake.add_user(EMAIL)
    fake.deny_next_consent()
    oauth = oauth_for(fake)
    url, flow = oauth.start(redirect_uri="https://fd.example/cb", state="s")

    with pytest.raises(InvalidRequest, match="access_denied"):
        await oauth.finish(flow, await consent(url))


async def test_oauth_refresh_of_a_revoked_grant_needs_relinking(fake: FakeGoogleCalendar) -> None:
    fake.reset()
    fake.add_user(EMAIL)
    _, refresh = fake.issue_tokens(EMAIL)
    fake.revoke(EMAIL)

    with pytest.raises(NeedsRelink, match="invalid_grant"):
        await oauth_for(fake).refresh(refresh)


async def test_oauth_token_endpoint_down_is_unavailable_not_relink(
    fake: FakeGoogleCalendar,
) -> None:
    fake.reset()
    fake.add_user(EMAIL)
    _, refresh = fake.issue_tokens(EMAIL)
    fake.fail_next("503")

    with pytest.raises(CalendarUnavailable) as caught:
        await oauth_for(fake).refresh(refresh)
    assert not isinstance(caught.value, NeedsRelink)

    closed = GoogleOAuth("id", "secret", token_url="http://127.0.0.1:9/token")
    with pytest.raises(CalendarUnavailable, match="cannot be reached"):
        await closed.refresh(refresh)
