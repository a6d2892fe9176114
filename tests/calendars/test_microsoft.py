"""The Microsoft Graph provider and OAuth client through real httpx and msal, against the fake
Graph server and identity platform on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from booking.errors import CalendarUnavailable, InvalidRequest
from calendars.base import EventSpec, NeedsRelink
from calendars.microsoft import MicrosoftOAuth, MicrosoftProvider
from tests.calendars.harness import Harness
from tests.calendars.microsoft_harness import (
    REDIRECT_URI,
    browser_visit,
    harness,
    msal_http_client,
    oauth_client,
)
from tests.fakes.graph import FakeGraph
from tests.fakes.loopback import LoopbackServer

NY = ZoneInfo("America/New_York")
START = datetime(2026, 11, 30, tzinfo=UTC)
END = datetime(2027, 1, 1, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with harness() as made:
        yield made


def graph_of(h: Harness) -> FakeGraph:
    return h.extra["graph"]  # type: ignore[no-any-return]


async def busy(h: Harness, start: datetime = START, end: datetime = END) -> list[Any]:
    return await h.provider.busy(
        h.account, calendar_ids=[h.calendar_id], tz=NY, start=start, end=end
    )


def spec(key: str = "apt_1", **changes: Any) -> EventSpec:
    values: dict[str, Any] = {
        "key": key,
        "summary": "Teeth cleaning: Ann Smith",
        "description": "+12025550001",
        "start": utc(2026, 12, 7, 14),
        "end": utc(2026, 12, 7, 15),
        "timezone": "America/New_York",
    }
    return EventSpec(**{**values, **changes})


class Receiver:
    """A notification endpoint: answers Graph's validation handshake and keeps notifications."""

    def __init__(self, *, echo: bool = True) -> None:
        self.echo = echo
        self.received: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        self.server = LoopbackServer(app, name="notification receiver")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/hook"

    async def _hook(self, request: Request) -> Response:
        token = request.query_params.get("validationToken")
        if token is not None:
            return PlainTextResponse(token if self.echo else "nope")
        self.received.append(await request.json())
        self._loop.call_soon_threadsafe(self.arrived.set)
        return Response(status_code=202)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver()
    made.server.start()
    yield made
    made.server.stop()


# ---- busy time ----------------------------------------------------------------------------------


async def test_busy_and_tentative_are_busy_free_cancelled_declined_are_not(h: Harness) -> None:
    graph = graph_of(h)
    cid = h.calendar_id
    graph.add_event(cid, start=utc(2026, 12, 1, 14), end=utc(2026, 12, 1, 15), show_as="busy")
    graph.add_event(cid, start=utc(2026, 12, 2, 14), end=utc(2026, 12, 2, 15), show_as="tentative")
    graph.add_event(cid, start=utc(2026, 12, 3, 14), end=utc(2026, 12, 3, 15), show_as="oof")
    graph.add_event(cid, start=utc(2026, 12, 4, 14), end=utc(2026, 12, 4, 15), show_as="free")
    graph.add_event(
        cid, start=utc(2026, 12, 5, 14), end=utc(2026, 12, 5, 15), show_as="workingElsewhere"
    )
    graph.add_event(cid, start=utc(2026, 12, 6, 14), end=utc(2026, 12, 6, 15), cancelled=True)
    graph.add_event(cid, start=utc(2026, 12, 7, 14), end=utc(2026, 12, 7, 15), response="declined")
    assert await busy(h) == [
        (utc(2026, 12, 1, 14), utc(2026, 12, 1, 15)),
        (utc(2026, 12, 2, 14), utc(2026, 12, 2, 15)),
        (utc(2026, 12, 3, 14), utc(2026, 12, 3, 15)),
    ]


async def test_event_in_another_zone_is_read_at_its_instant(h: Harness) -> None:
    graph_of(h).add_event(
        h.calendar_id,
        start=datetime(2026, 12, 1, 9, tzinfo=NY),
        end=datetime(2026, 12, 1, 10, tzinfo=NY),
        time_zone="Eastern Standard Time",
    )
    assert await busy(h) == [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 15))]


async def test_all_day_events_are_the_staff_members_local_days_across_dst(h: Harness) -> None:
    graph = graph_of(h)
    # 1 November 2026 is the day New York leaves DST: a 25-hour day.
    graph.add_event(h.calendar_id, all_day=date(2026, 11, 1))
    # Created by someone in Berlin: still the 8th of December in New York.
    graph.add_event(h.calendar_id, all_day=date(2026, 12, 8), time_zone="Europe/Berlin")
    intervals = await busy(h, utc(2026, 10, 30), utc(2026, 12, 31))
    assert intervals == [
        (utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)),
        (utc(2026, 12, 8, 5), utc(2026, 12, 9, 5)),
    ]


async def test_all_day_event_just_outside_the_window_is_left_out(h: Harness) -> None:
    graph_of(h).add_event(h.calendar_id, all_day=date(2026, 11, 28))
    assert await busy(h) == []


async def test_busy_follows_next_links_and_reads_long_ranges_in_pieces(h: Harness) -> None:
    graph = graph_of(h)
    graph.page_size_cap = 2
    days = [utc(2026, 12, d, 15) for d in range(1, 6)] + [utc(2027, 4, 20, 15)]
    for day in days:
        graph.add_event(h.calendar_id, start=day, end=day + timedelta(hours=1))
    intervals = await busy(h, START, utc(2027, 5, 1))
    assert [i[0] for i in intervals] == days
    views = [p for m, p in graph.requests if p.endswith("/calendarView")]
    # December's five events in three pages, then one page for each later 60-day window.
    assert len(views) == 5


async def test_busy_reads_several_calendars(h: Harness) -> None:
    graph = graph_of(h)
    other = graph.add_calendar("Personal")
    graph.add_event(other, start=utc(2026, 12, 2, 14), end=utc(2026, 12, 2, 15))
    graph.add_event(h.calendar_id, start=utc(2026, 12, 1, 14), end=utc(2026, 12, 1, 15))
    intervals = await h.provider.busy(
        h.account, calendar_ids=[h.calendar_id, other], tz=NY, start=START, end=END
    )
    assert [i[0] for i in intervals] == [utc(2026, 12, 1, 14), utc(2026, 12, 2, 14)]


async def test_calendars_are_listed_and_the_account_checked(h: Harness) -> None:
    graph = graph_of(h)
    graph.add_calendar("Birthdays", can_edit=False)
    calendars = {c.name: c for c in await h.provider.list_calendars(h.account)}
    assert calendars["Calendar"].primary and calendars["Calendar"].writable
    assert not calendars["Work"].primary
    assert not calendars["Birthdays"].writable
    await h.provider.check(h.account)


async def test_only_the_users_own_calendars_count_as_busy(h: Harness) -> None:
    graph = graph_of(h)
    graph.add_calendar("Family", owner=("Dr. Lee", graph.user_mail.upper()))
    graph.add_calendar("Colleague", owner=("Sam Roe", "sam@example.com"))
    graph.add_calendar("Holidays", can_edit=False)
    listed = {c.name: c for c in await h.provider.list_calendars(h.account)}
    assert {name: c.counts_busy for name, c in listed.items()} == {
        "Calendar": True,  # the default calendar
        "Work": True,
        "Family": True,  # the user's own: the owner's address is theirs, in any case
        "Colleague": False,  # shared by someone else, even though it can be edited
        "Holidays": False,  # cannot be edited: subscribed, not the user's own time
    }
    assert [name for name, c in listed.items() if c.primary] == ["Calendar"]
    assert listed["Colleague"].writable and not listed["Holidays"].writable


async def test_own_calendars_are_matched_by_the_mailbox_address_not_the_sign_in_name(
    h: Harness,
) -> None:
    # A work account signs in as lee@clinic.onmicrosoft.com (its userPrincipalName, the
    # token's preferred_username) while its mailbox, which calendar owners name, is another.
    graph = graph_of(h)
    graph.sign_in_name = "lee@clinic.onmicrosoft.com"
    linked = replace(h.account, settings={"account": graph.sign_in_name})
    graph.add_calendar("Colleague", owner=("Sam Roe", "sam@example.com"))
    listed = {c.name: c for c in await h.provider.list_calendars(linked)}
    assert listed["Work"].counts_busy and not listed["Colleague"].counts_busy


# ---- sync -------------------------------------------------------------------------------------


async def sync(h: Harness, cursor: str | None) -> Any:
    return await h.provider.sync(
        h.account, calendar_id=h.calendar_id, tz=NY, cursor=cursor, start=START, end=END
    )


async def test_sync_full_then_changes_then_removals(h: Harness) -> None:
    graph = graph_of(h)
    graph.page_size_cap = 2
    first = [
        graph.add_event(h.calendar_id, start=utc(2026, 12, d, 14), end=utc(2026, 12, d, 15))
        for d in (1, 2, 3)
    ]
    full = await sync(h, None)
    assert full.full and set(full.changed) == set(first) and full.cursor
    assert full.changed[first[0]] == [(utc(2026, 12, 1, 14), utc(2026, 12, 1, 15))]

    added = graph.add_event(h.calendar_id, start=utc(2026, 12, 9, 14), end=utc(2026, 12, 9, 16))
    graph.update_event(first[1], show_as="free")
    graph.remove_event(first[2])
    delta = await sync(h, full.cursor)
    assert not delta.full
    assert delta.changed == {added: [(utc(2026, 12, 9, 14), utc(2026, 12, 9, 16))], first[1]: []}
    assert delta.removed == {first[2]}

    quiet = await sync(h, delta.cursor)
    assert (quiet.changed, quiet.removed, quiet.full) == ({}, set(), False)


async def test_an_expired_delta_token_answers_a_full_sync(h: Harness) -> None:
    graph = graph_of(h)
    kept = graph.add_event(h.calendar_id, start=utc(2026, 12, 1, 14), end=utc(2026, 12, 1, 15))
    cursor = (await sync(h, None)).cursor
    graph.expire_delta_tokens()
    again = await sync(h, cursor)
    assert again.full and set(again.changed) == {kept} and again.cursor != cursor


async def test_sync_reads_what_a_delta_leaves_out_of_occurrences(h: Harness) -> None:
    graph = graph_of(h)
    weekly = {
        "pattern": {"type": "weekly", "interval": 1},
        "range": {"type": "numbered", "numberOfOccurrences": 3},
    }
    series = graph.add_event(
        h.calendar_id,
        start=utc(2026, 12, 1, 14),
        end=utc(2026, 12, 1, 15),
        show_as="tentative",
        recurrence=weekly,
    )
    result = await sync(h, None)
    assert sorted(v[0][0] for v in result.changed.values()) == [
        utc(2026, 12, 1, 14),
        utc(2026, 12, 8, 14),
        utc(2026, 12, 15, 14),
    ]
    # The delta rows had no showAs: the master was read, once.
    assert graph.requests.count(("GET", f"/v1.0/me/events/{series}")) == 1
    graph.update_event(series, show_as="free")
    delta = await sync(h, result.cursor)
    assert len(delta.changed) == 3 and all(v == [] for v in delta.changed.values())


async def test_a_cursor_for_another_host_is_never_followed(h: Harness) -> None:
    with pytest.raises(CalendarUnavailable):
        await sync(h, "https://evil.example/v1.0/me/calendarView/delta?$deltatoken=x")


# ---- writes -------------------------------------------------------------------------------------


async def test_a_create_that_timed_out_is_not_written_twice(h: Harness) -> None:
    assert h.fail_next is not None
    h.fail_next("timeout", 1)
    with pytest.raises(CalendarUnavailable, match="did not answer"):
        await h.provider.put_event(
            h.account, calendar_id=h.calendar_id, event=spec(), event_id=None
        )
    event_id = await h.provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec(), event_id=None
    )
    stored = await h.events()
    assert [e["id"] for e in stored] == [event_id]
    assert stored[0]["summary"] == "Teeth cleaning: Ann Smith"
    assert stored[0]["description"] == "+12025550001"
    assert (stored[0]["start"], stored[0]["end"]) == (utc(2026, 12, 7, 14), utc(2026, 12, 7, 15))


async def test_update_moves_the_event_and_a_deleted_one_is_written_anew(h: Harness) -> None:
    event_id = await h.provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec(), event_id=None
    )
    moved = spec(start=utc(2026, 12, 8, 15), end=utc(2026, 12, 8, 16))
    assert (
        await h.provider.put_event(
            h.account, calendar_id=h.calendar_id, event=moved, event_id=event_id
        )
        == event_id
    )
    assert [(e["id"], e["start"]) for e in await h.events()] == [(event_id, utc(2026, 12, 8, 15))]

    await h.remove_event(event_id)  # the staff member deleted it on their phone
    again = await h.provider.put_event(
        h.account, calendar_id=h.calendar_id, event=moved, event_id=event_id
    )
    assert again != event_id
    # Retrying that re-creation finds it rather than writing another.
    assert (
        await h.provider.put_event(
            h.account, calendar_id=h.calendar_id, event=moved, event_id=event_id
        )
        == again
    )
    assert [e["id"] for e in await h.events()] == [again]


async def test_delete_and_delete_of_an_already_deleted_event(h: Harness) -> None:
    event_id = await h.provider.put_event(
        h.account, calendar_id=h.calendar_id, event=spec(), event_id=None
    )
    await h.provider.delete_event(h.account, calendar_id=h.calendar_id, event_id=event_id)
    assert await h.events() == []
    await h.provider.delete_event(h.account, calendar_id=h.calendar_id, event_id=event_id)


# ---- subscriptions ------------------------------------------------------------------------------


async def test_watch_passes_the_handshake_and_changes_are_notified(
    h: Harness, receiver: Receiver
) -> None:
    graph = graph_of(h)
    channel = await h.provider.watch(
        h.account, calendar_id=h.calendar_id, callback_url=receiver.url, token="secret-state-1"
    )
    assert channel is not None and channel.token == "secret-state-1"
    sub = graph.subscriptions[channel.id]
    assert sub.resource == f"me/calendars/{h.calendar_id}/events"
    assert sub.lifecycle_url == receiver.url
    assert timedelta(days=2) < channel.expires_at - datetime.now(UTC) < timedelta(minutes=4230)

    event_id = graph.add_event(h.calendar_id, start=utc(2026, 12, 1, 14), end=utc(2026, 12, 1, 15))
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    note = receiver.received[0]["value"][0]
    assert (note["subscriptionId"], note["clientState"], note["changeType"]) == (
        channel.id,
        "secret-state-1",
        "created",
    )
    assert note["resourceData"]["id"] == event_id

    renewed = await h.provider.renew(h.account, channel)  # type: ignore[attr-defined]
    assert renewed is not None and renewed.expires_at >= channel.expires_at

    await h.provider.stop(h.account, channel)
    assert channel.id not in graph.subscriptions
    await h.provider.stop(h.account, channel)  # already gone
    assert await h.provider.renew(h.account, channel) is None  # type: ignore[attr-defined]


async def test_watch_fails_when_the_endpoint_does_not_echo_the_token(h: Harness) -> None:
    bad = Receiver(echo=False)
    bad.server.start()
    try:
        with pytest.raises(CalendarUnavailable, match="HTTP 400"):
            await h.provider.watch(
                h.account, calendar_id=h.calendar_id, callback_url=bad.url, token="t"
            )
    finally:
        bad.server.stop()
    assert graph_of(h).subscriptions == {}


async def test_lifecycle_notifications_reach_the_lifecycle_url(
    h: Harness, receiver: Receiver
) -> None:
    channel = await h.provider.watch(
        h.account, calendar_id=h.calendar_id, callback_url=receiver.url, token="s"
    )
    assert channel is not None
    graph_of(h).send_lifecycle(channel.id, "reauthorizationRequired")
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    assert receiver.received[0]["value"][0]["lifecycleEvent"] == "reauthorizationRequired"


# ---- faults -------------------------------------------------------------------------------------


async def test_throttling_waits_as_long_as_retry_after_says(h: Harness) -> None:
    assert h.fail_next is not None
    graph_of(h).add_event(h.calendar_id, start=utc(2026, 12, 1, 14), end=utc(2026, 12, 1, 15))
    h.fail_next("429", 2)
    assert len(await busy(h)) == 1
    assert h.extra["sleep"].waits == [1.0, 1.0]


async def test_server_errors_are_retried_then_reported(h: Harness) -> None:
    assert h.fail_next is not None
    h.fail_next("500", 2)
    assert await busy(h) == []
    assert len(h.extra["sleep"].waits) == 2
    h.fail_next("503", 10)
    with pytest.raises(CalendarUnavailable, match="HTTP 503"):
        await busy(h)


async def test_a_request_that_times_out_does_not_block_the_loop(h: Harness) -> None:
    assert h.fail_next is not None
    h.fail_next("timeout", 1)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    running = asyncio.create_task(ticker())
    began = time.monotonic()
    try:
        with pytest.raises(CalendarUnavailable, match="did not answer"):
            await busy(h)
    finally:
        running.cancel()
    assert time.monotonic() - began < 1.0
    assert ticks >= 10


async def test_an_overall_time_limit_bounds_retries() -> None:
    # Server errors without Retry-After back off; the operation's time limit ends them.
    async with harness(time_limit=0.3, sleep=asyncio.sleep) as h:
        assert h.fail_next is not None
        h.fail_next("timeout", 5)
        with pytest.raises(CalendarUnavailable, match=r"within 0\.3 s|did not answer"):
            await busy(h)


async def test_a_retry_after_beyond_the_time_left_gives_up_at_once_keeping_it() -> None:
    # Changed on purpose: a Retry-After (1 s) longer than the operation has left (0.3 s) used to
    # be slept on until the time limit killed it as "did not answer", the wait lost. Now the 429
    # comes back at once with its retry_after, for the caller to come back then.
    async with harness(time_limit=0.3, max_retry_after=5) as h:
        assert h.fail_next is not None
        h.fail_next("429", 5)
        with pytest.raises(CalendarUnavailable, match="HTTP 429") as caught:
            await busy(h)
    assert caught.value.retry_after == 1.0 and caught.value.retryable
    assert h.extra["sleep"].waits == []


async def test_the_shared_retry_policy_is_the_one_used() -> None:
    from booking.retry import RetryPolicy

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(attempts=2, max_retry_after=30.0, sleep=sleep)
    async with harness(retry=policy) as h:
        assert h.fail_next is not None
        h.fail_next("429", 5)
        with pytest.raises(CalendarUnavailable, match="HTTP 429"):
            await busy(h)
    assert waits == [1.0]  # two attempts, the policy's, not the provider's default four


async def test_a_401_to_the_refreshed_token_needs_relinking(h: Harness) -> None:
    assert h.fail_next is not None
    tokens = h.extra["tokens"]
    h.fail_next("401", 5)
    with pytest.raises(NeedsRelink) as caught:
        await busy(h)
    assert not caught.value.retryable
    assert tokens.refreshes == 1 and h.extra["sleep"].waits == []


@pytest.mark.parametrize("kind", ["400", "404"])
async def test_a_client_error_is_reported_at_once_and_not_retryable(h: Harness, kind: str) -> None:
    assert h.fail_next is not None
    h.fail_next(kind, 1)
    with pytest.raises(CalendarUnavailable, match=f"HTTP {kind}") as caught:
        await busy(h)
    assert caught.value.retryable is False
    assert h.extra["sleep"].waits == []


async def test_a_server_error_past_the_retries_stays_retryable(h: Harness) -> None:
    assert h.fail_next is not None
    h.fail_next("503", 10)
    with pytest.raises(CalendarUnavailable, match="HTTP 503") as caught:
        await busy(h)
    assert caught.value.retryable is True
    assert len(h.extra["sleep"].waits) == 3  # the default three retries


async def test_a_401_refreshes_the_token_once(h: Harness) -> None:
    tokens = h.extra["tokens"]
    graph_of(h).expire_access_tokens()
    assert await busy(h) == []
    assert tokens.refreshes == 1


# ---- OAuth --------------------------------------------------------------------------------------


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    server = FakeGraph().start()
    yield server
    server.stop()


@pytest.fixture
def session(graph: FakeGraph) -> Iterator[requests.Session]:
    with msal_http_client(graph) as made:
        yield made


async def test_sign_in_uses_pkce_and_returns_the_accounts_tokens(
    graph: FakeGraph, session: requests.Session
) -> None:
    oauth = oauth_client(graph, session)
    await oauth.ready()
    url, flow = oauth.start(redirect_uri=REDIRECT_URI, state="st-1", login_hint="lee@outlook.com")
    assert "code_challenge=" in url and "code_challenge_method=S256" in url
    assert "code_verifier" in flow and flow["code_verifier"] not in url
    tokens = await oauth.finish(flow, await browser_visit(graph, url))
    assert tokens.account == "lee@outlook.com"
    assert tokens.refresh_token and tokens.expires_at > datetime.now(UTC)

    fresh = await oauth.refresh(tokens.refresh_token)
    assert fresh.access_token != tokens.access_token


async def test_a_callback_with_another_state_is_refused(
    graph: FakeGraph, session: requests.Session
) -> None:
    oauth = oauth_client(graph, session)
    await oauth.ready()
    url, flow = oauth.start(redirect_uri=REDIRECT_URI, state="mine")
    params = await browser_visit(graph, url)
    with pytest.raises(InvalidRequest):
        await oauth.finish(flow, {**params, "state": "someone-elses"})
    with pytest.raises(InvalidRequest):
        await oauth.finish(flow, {"error": "access_denied", "state": "mine"})


async def test_a_code_without_its_verifier_is_refused(
    graph: FakeGraph, session: requests.Session
) -> None:
    oauth = oauth_client(graph, session)
    await oauth.ready()
    url, flow = oauth.start(redirect_uri=REDIRECT_URI, state="s")
    params = await browser_visit(graph, url)
    with pytest.raises(InvalidRequest, match="invalid_grant"):
        await oauth.finish({**flow, "code_verifier": "x" * 43}, params)


async def test_a_revoked_grant_needs_relinking(graph: FakeGraph, session: requests.Session) -> None:
    oauth = oauth_client(graph, session)
    refresh = graph.issue_tokens()["refresh_token"]
    graph.revoke_refresh_tokens()
    with pytest.raises(NeedsRelink) as caught:
        await oauth.refresh(refresh)
    assert refresh not in str(caught.value)


async def test_no_error_message_carries_a_token_or_secret(h: Harness) -> None:
    graph = graph_of(h)
    tokens = h.extra["tokens"]
    secrets = [tokens.tokens.access_token, tokens.tokens.refresh_token, graph.client_secret]
    messages = []
    graph.revoke_refresh_tokens()
    graph.expire_access_tokens()
    with pytest.raises(NeedsRelink) as relink:
        await busy(h)
    messages.append(str(relink.value))
    cursor = "https://evil.example/?$deltatoken=" + secrets[0]
    with pytest.raises(CalendarUnavailable) as foreign:
        await sync(h, cursor)
    messages.append(str(foreign.value))
    with msal_http_client(graph) as session:
        wrong = MicrosoftOAuth(
            graph.client_id, "not-" + graph.client_secret, http_client=session
        )  # a rotated secret
        with pytest.raises(CalendarUnavailable) as refused:
            await wrong.refresh(str(secrets[1]))
    messages.append(str(refused.value))
    for message in messages:
        assert not any(s and s in message for s in secrets), message


async def test_provider_shares_one_http_client() -> None:
    provider = MicrosoftProvider(graph_base_url="http://127.0.0.1:9/v1.0")
    assert provider._client is provider._client
    await provider.aclose()
