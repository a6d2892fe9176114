"""The background job and the explicit sync refresh connections side by side: one server that
hangs until its time limit must not hold up the freshness of every other calendar."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine

from booking import errors
from calendars.base import Account, SyncResult
from calendars.jobs import SyncReport
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from tests.calendars.test_write_back import Memory, at
from tests.conftest import NOW


class OneHangs(Memory):
    """Every account answers at once, except the `hanging` one, which answers only when
    `give_up` is set, with the error its time limit ends in."""

    def __init__(self) -> None:
        super().__init__()
        self.hanging: str | None = None
        self.give_up = asyncio.Event()
        self.synced: dict[str, asyncio.Event] = {}

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
        if account.id == self.hanging:
            await self.give_up.wait()
            raise errors.CalendarUnavailable(f"{account.name} timed out")
        result = await super().sync(
            account, calendar_id=calendar_id, tz=tz, cursor=cursor, start=start, end=end
        )
        self.synced.setdefault(account.id, asyncio.Event()).set()
        return result


async def two_connections(
    clinic: Engine,
) -> tuple[OneHangs, CalendarService, list[str], list[datetime]]:
    memory = OneHangs()
    clock = [NOW]
    service = CalendarService(
        engine=clinic, vault=Vault(new_key()), providers={"caldav": memory}, now=lambda: clock[0]
    )
    ids = []
    for host in ("slow", "fine"):
        conn = await service.link_caldav(
            business_id="clinic",
            staff_id="lee",
            url=f"https://{host}.example/",
            username="u",
            password="p",
        )
        ids.append(conn.id)
    memory.hanging = ids[0]  # the first one linked: a one-at-a-time pass would wait for it
    memory.others["cal1"] = {"new": [(at(10).astimezone(UTC), at(11).astimezone(UTC))]}
    clock[0] = NOW + timedelta(minutes=20)  # both caches are now due
    return memory, service, ids, clock


@pytest.mark.parametrize("job", ["refresh_due", "sync_now"])
async def test_a_hanging_server_does_not_delay_the_other_connections(
    clinic: Engine, job: str
) -> None:
    memory, service, (slow, fine), _ = await two_connections(clinic)
    done = memory.synced.setdefault(fine, asyncio.Event())
    done.clear()
    task: asyncio.Future[int | list[SyncReport]] = asyncio.ensure_future(
        service.refresh_due() if job == "refresh_due" else service.sync_now(business_id="clinic")
    )
    try:
        # Well under any time limit: the fine connection is read while the slow one still hangs.
        await asyncio.wait_for(done.wait(), 2)
        assert not task.done()
    finally:
        memory.give_up.set()  # the slow server's time limit ends
    result = await asyncio.wait_for(task, 5)
    status = {c.id: c.status for c in await service.connections("clinic", "lee")}
    assert status == {slow: "error", fine: "ok"}
    if job == "refresh_due":
        assert result == 2
    else:
        # One report per connection, in the order they were linked, each with its own outcome.
        assert isinstance(result, list)
        assert [r.connection_id for r in result] == [slow, fine]
        assert result[0].outcome == "failed: CalDAV (u at slow.example) timed out"
        assert result[1].error is None and result[1].added == 1


async def test_no_more_than_the_bound_are_refreshed_at_once(clinic: Engine) -> None:
    memory, service, ids, _ = await two_connections(clinic)
    memory.hanging = None
    service.jobs.concurrency = 1
    inside = 0
    most = 0
    refresh = service.jobs.cache.refresh

    async def counted(connection_id: str, *, full: bool = False) -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        try:
            await asyncio.sleep(0.01)
            await refresh(connection_id, full=full)
        finally:
            inside -= 1

    service.jobs.cache.refresh = counted  # type: ignore[method-assign]
    assert await service.refresh_due() == 2
    assert most == 1
    service.jobs.concurrency = 8
    most = 0
    reports = await service.sync_now(business_id="clinic")
    assert most == 2 and [r.connection_id for r in reports] == ids
