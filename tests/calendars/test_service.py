"""Linked calendars end to end, for every provider over its real test server.

A staff member links a calendar; an event created in it (by "another client", straight in the
server) shows up as busy in slot search without a restart (through a change notification where
the provider has them, through the scheduled sync otherwise); a booking made through the
scheduler appears in it exactly once, also when the first write attempt timed out; a
reschedule moves that same event and a cancellation removes it.

The app (notification endpoints) runs under uvicorn on this test's own event loop, so the
providers' notifications reach the same `CalendarService` the test holds.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import select

from booking import errors
from booking.busy import NoWriter
from booking.clock import FixedClock
from booking.models import SyncState
from booking.scheduler import Scheduler
from calendars.base import NeedsRelink, TokenSet
from calendars.models import CalendarChannel, CalendarConnection
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.calendars.harness import Harness
from tests.conftest import NOW

NY = ZoneInfo("America/New_York")
DAY = date(2026, 12, 1)  # a Tuesday: Lee works 09:00-12:00 and 13:00-17:00 New York time
API_KEY = "service-test-key"
KINDS = ["caldav", "google", "microsoft"]


def at(hour: int, minute: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY)


class Clock:
    """The service's and the scheduler's now; tests move it on."""

    def __init__(self) -> None:
        self.value = NOW

    def __call__(self) -> datetime:
        return self.value


@dataclass
class Linked:
    kind: str
    harness: Harness
    service: CalendarService
    scheduler: Scheduler
    connection: CalendarConnection
    clock: Clock
    base_url: str

    async def starts(self) -> set[datetime]:
        found = await self.scheduler.search(
            business_id="clinic",
            service_id="checkup",
            staff_id="lee",
            start=at(9),
            end=at(12),
            now=self.clock(),
        )
        return {s.start for s in found.slots}

    async def reflect(self) -> None:
        """Let a change in the calendar reach the cache the way production would."""
        if self.kind in ("google", "microsoft"):
            await self.notified()
        else:  # no notifications: the scheduled sync picks it up
            self.clock.value += self.service.max_age
            await self.service.tick()

    async def notified(self) -> None:
        # The provider's push arrives at /calendars/notify/{kind} and pokes a refresh.
        for _ in range(200):
            if self.service.background.tasks:
                break
            await asyncio.sleep(0.025)
        await self.service.wait_pokes()

    async def event_count(self) -> int:
        return len(await self.harness.events())


def _tokens(kind: str, h: Harness) -> TokenSet:
    token_set = h.extra.get("token_set")
    assert isinstance(token_set, TokenSet), f"the {kind} harness must expose its TokenSet"
    return token_set


@asynccontextmanager
async def _serve(app: Any) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", ws="none"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def linked(kind: str, engine: Engine, *, link: bool = True) -> AsyncIterator[Linked]:
    module = importlib.import_module(f"tests.calendars.{kind}_harness")
    clock = Clock()
    # Generous time limits: this machine is shared with the rest of the suite.
    options = {"microsoft": {"timeout": 2.0}}.get(kind, {})
    async with module.harness(**options) as h:
        if kind == "microsoft":
            h.extra["graph"].timeout_delay = 3.0  # a "timeout" fault still outlasts the limit
        oauth = {kind: h.extra["oauth"]} if kind in ("google", "microsoft") else {}
        service = CalendarService(
            engine=engine,
            vault=Vault(new_key()),
            providers={kind: h.provider},
            oauth=oauth,
            now=clock,
        )
        scheduler = Scheduler(
            engine=engine,
            calendars=service,
            writer=service,
            clock=FixedClock(NOW),
            write_timeout=10,
        )
        settings = Settings(
            database_url="sqlite://",
            api_key=SecretStr(API_KEY),
            calendar_sync_seconds=0,
            _env_file=None,
        )
        app = create_app(settings, scheduler=scheduler)
        app.state.calendar_service = service
        async with _serve(app) as base_url:
            service.public_base_url = base_url
            if not link:
                yield Linked(kind, h, service, scheduler, None, clock, base_url)  # type: ignore
                return
            if kind == "caldav":
                conn = await service.link_caldav(
                    business_id="clinic",
                    staff_id="lee",
                    url=h.account.settings["url"],
                    username=h.account.settings["username"],
                    password=h.account.secret["password"],
                )
            else:
                conn = await service.link_tokens(
                    kind, business_id="clinic", staff_id="lee", tokens=_tokens(kind, h)
                )
            conn = await service.choose_calendars(
                conn.id, business_id="clinic", read=[h.calendar_id], write=h.calendar_id
            )
            await service.watch(conn.id)
            yield Linked(kind, h, service, scheduler, conn, clock, base_url)
            await service.wait_pokes()


async def _channel(link: Linked) -> CalendarChannel:
    channel = await link.service.runtime.db(lambda s: s.exec(select(CalendarChannel)).first())
    assert channel is not None, "linking subscribed to change notifications"
    return channel


async def _book(link: Linked, start: datetime, name: str = "Ada Lovelace") -> Any:
    return await link.scheduler.book(
        business_id="clinic",
        service_id="checkup",
        staff_id="lee",
        start=start,
        name=name,
        phone="+12025552200",
        now=link.clock(),
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_an_event_added_in_the_calendar_becomes_busy_without_a_restart(
    kind: str, clinic: Engine
) -> None:
    async with linked(kind, clinic) as link:
        assert at(10) in await link.starts()
        await link.harness.add_event(start=at(10).astimezone(UTC), end=at(11).astimezone(UTC))
        await link.reflect()
        starts = await link.starts()
        assert at(10) not in starts and at(10, 30) not in starts
        assert at(9) in starts and at(11) in starts


@pytest.mark.parametrize("kind", KINDS)
async def test_a_booking_lands_in_the_calendar_once_and_follows_moves(
    kind: str, clinic: Engine
) -> None:
    async with linked(kind, clinic) as link:
        booked = await _book(link, at(9))
        assert booked.sync_state == SyncState.SYNCED
        events = await link.harness.events()
        assert len(events) == 1
        assert "Ada Lovelace" in events[0]["summary"]
        assert "+12025552200" in (events[0].get("description") or "")
        assert events[0]["start"] == at(9)

        # Moving it by 30 minutes overlaps its own event: that must not count as a clash.
        moved = await link.scheduler.reschedule(
            business_id="clinic", appointment_id=booked.id, start=at(9, 30), now=link.clock()
        )
        assert moved.sync_state == SyncState.SYNCED
        events = await link.harness.events()
        assert [e["start"] for e in events] == [at(9, 30)]

        await link.scheduler.cancel(business_id="clinic", appointment_id=moved.id, now=link.clock())
        assert await link.event_count() == 0
        # The freed time is offered again at once.
        assert at(9, 30) in await link.starts()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_timed_out_first_write_is_finished_by_the_retry_job_exactly_once(
    kind: str, clinic: Engine
) -> None:
    async with linked(kind, clinic) as link:
        assert link.harness.fail_next is not None
        # Book with the write-back held back, so the next request to the calendar server is
        # the write itself: it lands, but its answer never arrives in time.
        link.scheduler.writer = NoWriter()
        booked = await _book(link, at(10))
        link.harness.fail_next("timeout", 1)
        with pytest.raises(errors.CalendarUnavailable):
            await link.service.sync_appointment(booked.id)
        assert await _sync_state(link, booked.id) == SyncState.NOT_SYNCED
        await asyncio.sleep(3.5)  # the server finishes the timed-out request
        link.clock.value += timedelta(minutes=5)  # past the retry back-off
        assert await link.service.retry_pending() == 1
        events = await link.harness.events()
        assert len(events) == 1 and events[0]["start"] == at(10)
        assert await _sync_state(link, booked.id) == SyncState.SYNCED
        # Nothing is left to do, and asking again writes nothing new.
        assert await link.service.retry_pending() == 0
        assert await link.event_count() == 1


async def _sync_state(link: Linked, appointment_id: str) -> str:
    row = await link.scheduler.get_appointment(business_id="clinic", appointment_id=appointment_id)
    return row.sync_state


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stale_cache_cannot_cause_a_double_booking(kind: str, clinic: Engine) -> None:
    async with linked(kind, clinic) as link:
        # Someone books 10:00 straight in the calendar, and the notification is lost.
        async def lost(*args: Any, **kwargs: Any) -> str:
            return "ok"

        link.service.channels.changed = lost  # type: ignore[method-assign,assignment]
        await link.harness.add_event(start=at(10).astimezone(UTC), end=at(11).astimezone(UTC))
        await asyncio.sleep(0.2)
        assert at(10) in await link.starts()  # the stale cache still offers it...
        with pytest.raises(errors.SlotTaken):  # ...but the live re-check refuses it
            await _book(link, at(10))
        assert await link.event_count() == 1


@pytest.mark.parametrize("kind", ["google", "microsoft"])
async def test_forged_and_unknown_notifications_are_refused(kind: str, clinic: Engine) -> None:
    async with linked(kind, clinic) as link:
        url = f"{link.base_url}/calendars/notify/{kind}"
        async with httpx.AsyncClient() as client:
            if kind == "google":
                channel = await _channel(link)
                base = {
                    "X-Goog-Channel-ID": channel.id,
                    "X-Goog-Resource-State": "exists",
                    "X-Goog-Resource-ID": channel.resource_id or "r",
                    "X-Goog-Message-Number": "2",
                }
                forged = await client.post(url, headers={**base, "X-Goog-Channel-Token": "wrong"})
                unknown = await client.post(
                    url,
                    headers={
                        **base,
                        "X-Goog-Channel-ID": "no-such-channel",
                        "X-Goog-Channel-Token": channel.token,
                    },
                )
                good = await client.post(
                    url, headers={**base, "X-Goog-Channel-Token": channel.token}
                )
            else:

                def body(sub: str, state: str) -> dict[str, Any]:
                    return {
                        "value": [
                            {
                                "subscriptionId": sub,
                                "clientState": state,
                                "changeType": "updated",
                                "resource": "me/events/x",
                            }
                        ]
                    }

                channel = await _channel(link)
                handshake = await client.post(url, params={"validationToken": "a b&c"})
                assert handshake.status_code == 200 and handshake.text == "a b&c"
                assert handshake.headers["content-type"].startswith("text/plain")
                forged = await client.post(url, json=body(channel.id, "wrong"))
                unknown = await client.post(url, json=body("no-such", channel.token))
                good = await client.post(url, json=body(channel.id, channel.token))
        assert forged.status_code == 403
        assert unknown.status_code in (202, 404)
        assert good.status_code in (200, 202)


async def _consent(link: Linked, url: str) -> httpx.Response:
    """The person's browser: visit the provider's consent page, come back to our callback."""
    async with httpx.AsyncClient() as browser:
        if link.kind == "google":
            consent = await browser.get(url)
            assert consent.status_code == 302
            return await browser.get(consent.headers["location"])
        module = importlib.import_module("tests.calendars.microsoft_harness")
        fields = await module.browser_visit(link.harness.extra["graph"], url)
        return await browser.post(f"{link.base_url}/calendars/callback/microsoft", data=fields)


@pytest.mark.parametrize("kind", ["google", "microsoft"])
async def test_linking_through_the_browser_with_state_and_pkce(kind: str, clinic: Engine) -> None:
    async with linked(kind, clinic, link=False) as link:
        async with httpx.AsyncClient(base_url=link.base_url) as client:
            # Without a dashboard log-in or the API key: sent to log in, nothing started.
            anonymous = await client.get(f"/calendars/connect/{kind}", params={"staff": "lee"})
            assert anonymous.status_code == 303
            assert anonymous.headers["location"].startswith("/login")
            started = await client.get(
                f"/calendars/connect/{kind}",
                params={"staff": "lee"},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        assert started.status_code == 303
        consent_url = started.headers["location"]
        assert "code_challenge=" in consent_url and "state=" in consent_url
        back = await _consent(link, consent_url)
        assert back.status_code == 200, back.text
        [conn] = await link.service.connections("clinic", "lee")
        assert conn.provider == kind and conn.status == "ok"
        assert conn.read_calendars and conn.write_calendar
        assert all(state.get("synced_at") for state in conn.sync.values())  # cache filled
        assert "refresh_token" not in conn.secret  # stored encrypted, not as JSON
        assert link.service.vault.open(conn.secret)["refresh_token"]

        # A state is good for one callback only; a made-up one is refused.
        async with httpx.AsyncClient(base_url=link.base_url) as client:
            forged = await client.get(
                f"/calendars/callback/{kind}", params={"code": "x", "state": "made-up"}
            )
        assert forged.status_code == 422  # InvalidRequest, as in the JSON API (it was a 400)
        assert len(await link.service.connections("clinic", "lee")) == 1


@pytest.mark.parametrize("kind", ["google", "microsoft"])
async def test_a_revoked_grant_asks_for_relinking_and_search_goes_on(
    kind: str, clinic: Engine
) -> None:
    async with linked(kind, clinic) as link:
        before = await link.starts()
        if kind == "google":
            fake = link.harness.extra["fake"]
            fake.revoke(link.harness.extra["email"])
            fake.expire_access_tokens()
        else:
            graph = link.harness.extra["graph"]
            graph.revoke_refresh_tokens()
            graph.expire_access_tokens()
        link.service.accounts.forget(link.connection.id)
        with pytest.raises(NeedsRelink):
            await link.service.refresh(link.connection.id)
        [conn] = await link.service.connections("clinic", "lee")
        assert conn.status == "needs_relink" and conn.last_error
        # Slot search keeps going on what the cache knew; nothing crashes.
        link.clock.value += link.service.max_age * 2
        assert await link.starts() == before
