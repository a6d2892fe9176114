"""Choosing which calendars count: checked against the account first, then saved, then read."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine

from booking import errors
from calendars.base import Account, CalendarInfo, NeedsRelink, SyncResult
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from tests.calendars.test_write_back import Memory
from tests.conftest import NOW


class Flaky(Memory):
    """An account whose listing or reading can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.list_error: Exception | None = None
        self.sync_error: Exception | None = None

    async def list_calendars(self, account: Account) -> list[CalendarInfo]:
        if self.list_error is not None:
            raise self.list_error
        return await super().list_calendars(account)

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
        if self.sync_error is not None:
            raise self.sync_error
        return await super().sync(
            account, calendar_id=calendar_id, tz=tz, cursor=cursor, start=start, end=end
        )


async def linked(clinic: Engine) -> tuple[Flaky, CalendarService, str]:
    memory = Flaky()
    service = CalendarService(
        engine=clinic, vault=Vault(new_key()), providers={"caldav": memory}, now=lambda: NOW
    )
    conn = await service.link_caldav(
        business_id="clinic", staff_id="lee", url="https://dav.example/", username="u", password="p"
    )
    assert (conn.read_calendars, conn.write_calendar) == (["cal1", "cal2"], "cal1")
    return memory, service, conn.id


async def test_a_choice_is_saved_when_only_the_read_after_saving_fails(clinic: Engine) -> None:
    memory, service, conn_id = await linked(clinic)
    memory.sync_error = errors.CalendarUnavailable("server down")
    conn = await service.choose_calendars(
        conn_id, business_id="clinic", read=["cal2"], write="cal2"
    )
    assert (conn.read_calendars, conn.write_calendar) == (["cal2"], "cal2")
    assert conn.status == "error" and conn.last_error is not None  # the page shows the failure
    [stored] = await service.connections("clinic", "lee")
    assert (stored.read_calendars, stored.write_calendar) == (["cal2"], "cal2")


@pytest.mark.parametrize(
    "error",
    [errors.CalendarUnavailable("server down"), NeedsRelink("password refused")],
    ids=["down", "needs-relink"],
)
async def test_a_choice_that_cannot_be_checked_is_not_saved(
    clinic: Engine, error: errors.CalendarUnavailable
) -> None:
    memory, service, conn_id = await linked(clinic)
    memory.list_error = error
    with pytest.raises(type(error)):
        await service.choose_calendars(conn_id, business_id="clinic", read=["cal2"], write="cal2")
    [stored] = await service.connections("clinic", "lee")
    assert (stored.read_calendars, stored.write_calendar) == (["cal1", "cal2"], "cal1")
    assert stored.status == ("needs_relink" if isinstance(error, NeedsRelink) else "ok")
