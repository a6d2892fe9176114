"""The provider contract (calendars/base.py), held against every provider over its own wire
format: Google and Microsoft over their fake servers, CalDAV over a real Radicale (and a server
laid out like iCloud), ICS over a published feed. Each promise is one named test; the fixture
says which providers it applies to (see conftest.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from email.utils import format_datetime

import pytest

from booking.errors import CalendarUnavailable
from booking.rules import Interval
from calendars.base import Account, CalendarInfo, CalendarProvider, EventSpec, NeedsRelink
from calendars.caldav import CaldavProvider
from tests.calendars.contract.adapters import CLOCK_NOW, TZ, Contract, ics
from tests.fakes.icloud_like_caldav import PASSWORD as ICLOUD_PASSWORD
from tests.fakes.icloud_like_caldav import USERNAME as ICLOUD_USERNAME
from tests.fakes.icloud_like_caldav import IcloudLikeCaldav

DAY = date(2026, 12, 8)  # a Tuesday
START = datetime(2026, 12, 8, tzinfo=TZ)
END = START + timedelta(days=3)


def at(hour: int, minute: int = 0, *, days: int = 0) -> datetime:
    return datetime.combine(DAY + timedelta(days=days), datetime.min.time(), TZ).replace(
        hour=hour, minute=minute
    )


def merged(spans: list[Interval]) -> list[Interval]:
    """Busy time as one list of disjoint intervals (providers may split or merge)."""
    out: list[Interval] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def same(spans: list[Interval], expected: list[tuple[datetime, datetime]]) -> bool:
    return [(s.timestamp(), e.timestamp()) for s, e in merged(spans)] == [
        (s.timestamp(), e.timestamp()) for s, e in merged(list(expected))
    ]


async def busy(contract: Contract, provider: CalendarProvider | None = None) -> list[Interval]:
    return await (provider or contract.make()).busy(
        contract.account, calendar_ids=[contract.calendar_id], tz=TZ, start=START, end=END
    )


async def full_sync(contract: Contract, provider: CalendarProvider | None = None) -> list[Interval]:
    result = await (provider or contract.make()).sync(
        contract.account, calendar_id=contract.calendar_id, tz=TZ, cursor=None, start=START, end=END
    )
    assert result.full
    return [span for spans in result.changed.values() for span in spans]


def spec(
    start: datetime, *, key: str = "apt_contract_1", summary: str = "Cleaning: Ann"
) -> EventSpec:
    return EventSpec(
        key=key,
        summary=summary,
        description="+12025550001",
        start=start,
        end=start + timedelta(minutes=45),
        timezone=TZ.key,
    )


# ---- busy semantics ---------------------------------------------------------------------------


async def test_busy_counts_tentative_but_not_free_declined_or_cancelled(contract: Contract) -> None:
    hours = {"busy": 9, "tentative": 10, "free": 12, "declined": 13, "cancelled": 14}
    for kind in contract.kinds:
        await contract.add(kind, at(hours[kind]), at(hours[kind] + 1))

    assert same(await busy(contract), [(at(9), at(10)), (at(10), at(11))])


async def test_an_all_day_event_is_the_staff_members_local_day(contract: Contract) -> None:
    await contract.all_day(DAY + timedelta(days=1))

    assert same(await busy(contract), [(at(0, days=1), at(0, days=2))])


async def test_a_series_is_busy_on_each_occurrence_but_the_excluded_one(contract: Contract) -> None:
    await contract.series(at(17), at(17, 30), 3, DAY + timedelta(days=1))

    assert same(await busy(contract), [(at(17), at(17, 30)), (at(17, days=2), at(17, 30, days=2))])


async def test_busy_and_a_full_sync_agree(contract: Contract) -> None:
    for n, kind in enumerate(contract.kinds):
        await contract.add(kind, at(8 + n), at(8 + n, 50))
    await contract.all_day(DAY + timedelta(days=1))
    await contract.series(at(17), at(17, 30), 3, DAY + timedelta(days=2))
    provider = contract.make()

    live = await busy(contract, provider)
    cached = await full_sync(contract, provider)

    assert live and same(cached, merged(live))


# ---- writes -------------------------------------------------------------------------------------


async def test_a_create_whose_answer_was_lost_is_written_once(writable: Contract) -> None:
    provider = writable.make(short=True)
    # Known calendars take a write as one request, so the lost answer is the create's.
    await provider.list_calendars(writable.account)
    for n, lost in enumerate(writable.lost):
        event = spec(at(9 + n), key=f"apt_lost_{lost}", summary=f"Lost answer: {lost}")
        writable.fail_next(lost, 1)
        # The service keeps a booking whose write failed unwritten, and tries again later.
        with contextlib.suppress(CalendarUnavailable):
            await provider.put_event(
                writable.account, calendar_id=writable.calendar_id, event=event, event_id=None
            )
        landed = [e for e in await writable.stored() if e.summary == event.summary]
        assert len(landed) == 1, f"the create whose answer was lost ({lost}) did not land"

        event_id = await provider.put_event(
            writable.account, calendar_id=writable.calendar_id, event=event, event_id=None
        )

        written = [e for e in await writable.stored() if e.summary == event.summary]
        assert [e.id for e in written] == [event_id], lost
    expected = [(at(9 + n), at(9 + n, 45)) for n in range(len(writable.lost))]
    assert same(await busy(writable), expected)


async def test_an_update_of_an_event_deleted_on_the_server_writes_it_anew(
    writable: Contract,
) -> None:
    provider = writable.make()
    first = await provider.put_event(
        writable.account, calendar_id=writable.calendar_id, event=spec(at(9)), event_id=None
    )
    await writable.remove(first)

    moved = spec(at(11))
    again = await provider.put_event(
        writable.account, calendar_id=writable.calendar_id, event=moved, event_id=first
    )

    assert [e.id for e in await writable.stored() if e.summary == moved.summary] == [again]
    assert same(await busy(writable), [(moved.start, moved.end)])


async def test_a_delete_of_an_event_already_gone_succeeds(writable: Contract) -> None:
    provider = writable.make()
    event_id = await provider.put_event(
        writable.account, calendar_id=writable.calendar_id, event=spec(at(9)), event_id=None
    )
    await writable.remove(event_id)

    await provider.delete_event(
        writable.account, calendar_id=writable.calendar_id, event_id=event_id
    )
    await provider.delete_event(
        writable.account, calendar_id=writable.calendar_id, event_id=event_id
    )

    assert await writable.stored() == []
    assert await busy(writable) == []


async def test_a_read_only_provider_says_so_and_refuses_writes() -> None:
    async with ics() as c:
        provider = c.make()
        await c.add("busy", at(9), at(10))
        assert provider.writable is False
        with pytest.raises(CalendarUnavailable):
            await provider.put_event(
                c.account, calendar_id=c.calendar_id, event=spec(at(11)), event_id=None
            )
        with pytest.raises(CalendarUnavailable):
            await provider.delete_event(c.account, calendar_id=c.calendar_id, event_id="x")
        assert len(await c.stored()) == 1
        assert same(await busy(c, provider), [(at(9), at(10))])


# ---- rate limits, server errors, client errors, time limits -------------------------------------


async def test_a_429_waits_the_seconds_retry_after_asks_for(retrying: Contract) -> None:
    await retrying.add("busy", at(9), at(10))
    retrying.set_retry_after("7")
    retrying.fail_next("429", 1)

    assert same(await busy(retrying), [(at(9), at(10))])
    assert retrying.sleep.waits == [7.0]


async def test_a_429_waits_until_the_retry_after_date(retrying: Contract) -> None:
    await retrying.add("busy", at(9), at(10))
    retrying.set_retry_after(format_datetime(CLOCK_NOW + timedelta(seconds=5), usegmt=True))
    retrying.fail_next("429", 1)

    assert same(await busy(retrying), [(at(9), at(10))])
    # Measured from the injected clock, not the wall clock.
    assert retrying.sleep.waits == [pytest.approx(5.0, abs=0.01)]


async def test_a_retry_after_longer_than_the_policy_waits_gives_up_at_once_keeping_it(
    retrying: Contract,
) -> None:
    # Calling again sooner than the server asked would only be refused again: the error comes
    # back at once, and its retry_after tells the caller when to come back.
    await retrying.add("busy", at(9), at(10))
    retrying.set_retry_after("3600")
    retrying.fail_next("429", 5)
    before = len(retrying.sent())

    with pytest.raises(CalendarUnavailable) as caught:
        await busy(retrying)

    assert caught.value.retryable and caught.value.retry_after == 3600.0
    assert retrying.sleep.waits == []
    sent = retrying.sent()[before:]
    assert sent and sent.count(sent[-1]) == 1  # the refused request was not sent again


@pytest.mark.parametrize("status", ["500", "503"])
async def test_a_server_error_is_retried(retrying: Contract, status: str) -> None:
    await retrying.add("busy", at(9), at(10))
    retrying.fail_next(status, 1)
    before = len(retrying.sent())

    assert same(await busy(retrying), [(at(9), at(10))])
    assert len(retrying.sleep.waits) == 1
    failed = retrying.sent()[before]
    assert retrying.sent()[before:].count(failed) == 2  # the failed request, and its retry


@pytest.mark.parametrize("status", ["400", "404"])
async def test_a_client_error_is_not_retried(contract: Contract, status: str) -> None:
    await contract.add("busy", at(9), at(10))
    provider = contract.make()
    before = len(contract.sent())
    contract.fail_next(status, 1)

    with pytest.raises(CalendarUnavailable):
        await busy(contract, provider)

    sent = contract.sent()[before:]
    assert sent and sent.count(sent[0]) == 1
    assert contract.sleep.waits == []


async def test_a_silent_server_is_unavailable_within_the_time_limit(contract: Contract) -> None:
    provider = contract.make(short=True)
    contract.fail_next("timeout", 20)
    began = time.monotonic()

    with pytest.raises(CalendarUnavailable):
        await busy(contract, provider)

    assert time.monotonic() - began < contract.short_deadline


# ---- grants, passwords, tokens ------------------------------------------------------------------


async def test_a_revoked_grant_or_changed_password_needs_relinking(credentialed: Contract) -> None:
    c = credentialed
    account, provider = c.revoked(), c.make()
    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "check": lambda: provider.check(account),
        "list_calendars": lambda: provider.list_calendars(account),
        "busy": lambda: provider.busy(
            account, calendar_ids=[c.calendar_id], tz=TZ, start=START, end=END
        ),
        "sync": lambda: provider.sync(
            account, calendar_id=c.calendar_id, tz=TZ, cursor=None, start=START, end=END
        ),
        "put_event": lambda: provider.put_event(
            account, calendar_id=c.calendar_id, event=spec(at(9)), event_id=None
        ),
        "delete_event": lambda: provider.delete_event(
            account, calendar_id=c.calendar_id, event_id="gone"
        ),
    }
    for name, operation in operations.items():
        before = len(c.sent())
        with pytest.raises(NeedsRelink):
            await operation()
        assert len(c.sent()) - before <= 2, name  # no loop against a refusing server

    assert c.sleep.waits == []  # never retried
    assert await c.stored() == []


@pytest.mark.parametrize("how", ["expired", "refused once"])
async def test_a_401_is_retried_once_after_one_refresh(oauth: Contract, how: str) -> None:
    assert oauth.refreshes is not None and oauth.expire_access is not None
    await oauth.add("busy", at(9), at(10))
    refreshed = oauth.refreshes()
    if how == "expired":
        oauth.expire_access()
    else:
        oauth.fail_next("401", 1)

    assert same(await busy(oauth), [(at(9), at(10))])
    assert oauth.refreshes() - refreshed == 1


async def test_a_401_to_a_fresh_token_needs_relinking_after_one_refresh(oauth: Contract) -> None:
    assert oauth.refreshes is not None
    refreshed = oauth.refreshes()
    before = len(oauth.sent())
    oauth.fail_next("401", 5)

    with pytest.raises(NeedsRelink):
        await busy(oauth)

    assert oauth.refreshes() - refreshed == 1
    assert len(oauth.sent()) - before == 2


# ---- sync cursors -------------------------------------------------------------------------------


async def test_an_invalid_sync_cursor_answers_a_full_sync(contract: Contract) -> None:
    provider = contract.make()
    gone = await contract.add("busy", at(9), at(10))
    first = await provider.sync(
        contract.account, calendar_id=contract.calendar_id, tz=TZ, cursor=None, start=START, end=END
    )
    assert first.full and first.changed
    await contract.remove(gone)
    await contract.add("busy", at(11), at(12))

    result = await provider.sync(
        contract.account,
        calendar_id=contract.calendar_id,
        tz=TZ,
        cursor=contract.invalidate(first.cursor),
        start=START,
        end=END,
    )

    assert result.full
    assert same([s for spans in result.changed.values() for s in spans], [(at(11), at(12))])


# ---- the account's calendars --------------------------------------------------------------------


def _flags(info: CalendarInfo) -> tuple[bool, bool]:
    return info.writable, info.counts_busy


async def test_list_calendars_marks_primary_writable_and_busy_calendars(contract: Contract) -> None:
    provider = contract.make()

    listed = {info.id: info for info in await provider.list_calendars(contract.account)}

    ours = listed[contract.calendar_id]
    assert ours.primary and _flags(ours) == (provider.writable, True)
    assert [info.id for info in listed.values() if info.primary] == [contract.calendar_id]
    assert {cid: _flags(listed[cid]) for cid in contract.others} == contract.others


async def test_list_calendars_of_an_icloud_like_account() -> None:
    server = IcloudLikeCaldav()
    server.start()
    provider = CaldavProvider(timeout=5.0)
    try:
        account = icloud_account(server.front_url)
        listed = {info.name: info for info in await provider.list_calendars(account)}
    finally:
        provider.close()
        server.stop()

    assert {"Work", "Family"} <= set(listed)
    assert _flags(listed["Work"]) == _flags(listed["Family"]) == (True, True)
    if "Reminders" in listed:  # a VTODO list holds no busy time
        assert listed["Reminders"].counts_busy is False
    primary = [info for info in listed.values() if info.primary]
    assert len(primary) == 1 and _flags(primary[0]) == (True, True)


def icloud_account(url: str) -> Account:
    return Account(
        id="contract-icloud",
        provider="caldav",
        settings={"url": url, "username": ICLOUD_USERNAME},
        secret={"password": ICLOUD_PASSWORD},
        name="Dr. Lee's iCloud",
    )
