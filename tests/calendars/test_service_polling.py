"""Freshness without push: the running server polls CalDAV cheaply and often.

CalDAV (and ICS) never notify, so the background job checks calendars without a notification
channel every `FRONTDESK_CALENDAR_POLL_SECONDS`: one PROPFIND of the collection's sync-token /
ctag while nothing changed, a full read only when it did. These tests run the app's own
background job (its lifespan) with a short poll interval against a real Radicale.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from booking.busy import StaffCalendars
from booking.rules import Interval
from booking.scheduler import Scheduler
from calendars.models import CalendarConnection
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.calendars import caldav_harness
from tests.calendars.caldav_harness import FaultProxy
from tests.calendars.harness import Harness

NY = ZoneInfo("America/New_York")
POLL = 0.2  # seconds: the injected poll interval


@asynccontextmanager
async def running(
    clinic: Engine, *, sync: float, poll: float
) -> AsyncIterator[tuple[Harness, CalendarService, CalendarConnection]]:
    """A linked CalDAV calendar and the app's background job running (real time)."""
    async with caldav_harness.harness() as h:
        service = CalendarService(
            engine=clinic, vault=Vault(new_key()), providers={"caldav": h.provider}
        )
        conn = await service.link_caldav(
            business_id="clinic",
            staff_id="lee",
            url=h.account.settings["url"],
            username=h.account.settings["username"],
            password=h.account.secret["password"],
        )
        conn = await service.choose_calendars(
            conn.id, business_id="clinic", read=[h.calendar_id], write=h.calendar_id
        )
        settings = Settings(
            database_url="sqlite://",
            api_key=SecretStr("poll-test-key"),
            calendar_sync_seconds=sync,
            calendar_poll_seconds=poll,
            _env_file=None,
        )
        app = create_app(settings, scheduler=Scheduler(engine=clinic, calendars=service))
        async with app.router.lifespan_context(app):
            yield h, service, conn


def cached(
    service: CalendarService, conn: CalendarConnection
) -> Callable[[datetime, datetime], asyncio.Future[list[Interval]]]:
    lee = StaffCalendars(
        business_id="clinic", staff_id="lee", tz=NY, links=[{"connection_id": conn.id}]
    )

    def read(start: datetime, end: datetime) -> asyncio.Future[list[Interval]]:
        # Slot search's read: the busy cache (fresh enough for it: no read of its own).
        return asyncio.ensure_future(service.busy(lee, start=start, end=end))

    return read


async def eventually(check: Callable[[], asyncio.Future[bool]], *, within: float) -> float:
    """Seconds until `check()` is true; fails after `within` seconds."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not await check():
        if loop.time() - began > within:
            pytest.fail(f"not true within {within:g} s")
        await asyncio.sleep(0.05)
    return loop.time() - began


async def test_an_event_added_in_radicale_becomes_busy_without_any_command(clinic: Engine) -> None:
    async with running(clinic, sync=300, poll=POLL) as (h, service, conn):
        read = cached(service, conn)
        now = datetime.now(UTC).replace(microsecond=0)
        lo, hi = now, now + timedelta(days=3)
        start = now + timedelta(days=1)
        assert await read(lo, hi) == []
        await h.add_event(start, start + timedelta(hours=1), summary="Physio")

        async def busy() -> bool:
            return await read(lo, hi) == [(start, start + timedelta(hours=1))]

        took = await eventually(lambda: asyncio.ensure_future(busy()), within=15)
        assert took < 15

        # While nothing changes, each poll is one PROPFIND of the collection: no full read.
        proxy: FaultProxy = h.extra["proxy"]
        seen = len(proxy.requests)
        await asyncio.sleep(6 * POLL)
        idle = proxy.requests[seen:]
        assert len(idle) >= 2, idle
        assert {method for method, _ in idle} == {"PROPFIND"}, idle


async def test_without_polling_only_the_full_pass_reads_the_calendar(clinic: Engine) -> None:
    # The same job with polling off (0) leaves a cache younger than max_age / 3 alone: the
    # event stays unseen, which is what the poll interval is there to fix.
    async with running(clinic, sync=300, poll=0) as (h, service, conn):
        read = cached(service, conn)
        now = datetime.now(UTC).replace(microsecond=0)
        start = now + timedelta(days=1)
        await h.add_event(start, start + timedelta(hours=1), summary="Physio")
        await asyncio.sleep(6 * POLL)
        assert await read(now, now + timedelta(days=3)) == []
        assert await service.refresh_due(poll=timedelta(seconds=POLL)) == 1
        assert await read(now, now + timedelta(days=3)) == [(start, start + timedelta(hours=1))]


@pytest.mark.parametrize(
    ("every", "poll", "ticks", "polls"),
    [
        (0.6, 0.1, (1, 2), (3, 6)),  # polls between full passes
        (0.1, 0.6, (3, 7), (0, 0)),  # a poll interval longer than the sync: every pass is full
    ],
)
async def test_the_job_polls_between_full_passes(
    clinic: Engine, every: float, poll: float, ticks: tuple[int, int], polls: tuple[int, int]
) -> None:
    service = CalendarService(engine=clinic, vault=Vault(new_key()), providers={})
    seen: list[tuple[str, timedelta | None]] = []

    async def tick(*, poll: timedelta | None = None) -> None:
        seen.append(("tick", poll))

    async def refresh_due(*, poll: timedelta | None = None) -> int:
        seen.append(("poll", poll))
        return 0

    service.jobs.tick = tick  # type: ignore[method-assign]
    service.jobs.refresh_due = refresh_due  # type: ignore[method-assign]
    job = asyncio.create_task(service.run_forever(every, poll=poll))
    await asyncio.sleep(0.65)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert seen[0][0] == "tick"
    assert ticks[0] <= sum(kind == "tick" for kind, _ in seen) <= ticks[1], seen
    assert polls[0] <= sum(kind == "poll" for kind, _ in seen) <= polls[1], seen
    # Either way, connections without push may be `poll` old, not max_age / 3.
    assert {age for _, age in seen} == {timedelta(seconds=poll)}
