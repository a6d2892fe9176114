"""CalDAV accounts linked from the address a user knows: the server's, the principal's, the
calendar home's or one calendar's. Discovery (RFC 6764 well-known, RFC 5397
current-user-principal, RFC 4791 calendar-home-set) against a real Radicale and against a
loopback server laid out like iCloud (principal on another path, calendar home on another host).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from caldav.collection import Calendar as DavCalendar
from caldav.collection import Principal
from caldav.davclient import DAVClient
from cryptography.fernet import Fernet

from booking.errors import CalendarUnavailable
from calendars.base import Account, EventSpec, NeedsRelink
from calendars.caldav import CaldavProvider
from calendars.caldav.clients import _Link
from calendars.caldav.discovery import _hop
from frontdesk.cli import main
from tests.calendars.caldav_harness import vevent
from tests.calendars.radicale_server import PASSWORD, USERNAME, RadicaleServer, start_radicale
from tests.fakes import icloud_like_caldav as icloud
from tests.fakes.icloud_like_caldav import IcloudLikeCaldav, NotCaldav

NY = ZoneInfo("America/New_York")
START = datetime(2026, 11, 30, tzinfo=UTC)
END = datetime(2027, 1, 1, tzinfo=UTC)
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-business.yaml"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def account(url: str, username: str = icloud.USERNAME, password: str = icloud.PASSWORD) -> Account:
    return Account(
        id="caldav-discovery",
        provider="caldav",
        settings={"url": url, "username": username},
        secret={"password": password},
        name="Dr. Lee's calendar",
    )


def spec(key: str, start: datetime, end: datetime) -> EventSpec:
    return EventSpec(
        key=key,
        summary="Teeth cleaning: Ann Caller",
        description="Phone +12025550123",
        start=start,
        end=end,
        timezone="America/New_York",
    )


@pytest.fixture
async def provider() -> AsyncIterator[CaldavProvider]:
    made = CaldavProvider(timeout=5.0)
    yield made
    made.close()


@pytest.fixture(params=["/", "/remote.php/dav/"], ids=["icloud-root", "nextcloud-web-root"])
def server(request: pytest.FixtureRequest) -> Iterator[IcloudLikeCaldav]:
    made = IcloudLikeCaldav(dav_root=request.param)
    made.start()
    yield made
    made.stop()


# --- a server laid out like iCloud --------------------------------------------------------------


async def test_the_server_address_finds_the_accounts_event_calendars_on_their_own_host(
    server: IcloudLikeCaldav, provider: CaldavProvider
) -> None:
    root = account(server.front_url)
    await provider.check(root)
    listed = {info.name: info for info in await provider.list_calendars(root)}
    # Every calendar collection, on the account's host; the inbox is no calendar. The task list
    # and the transparent subscription hold no busy time, and neither takes bookings.
    flags = {
        name: (info.id, info.primary, info.writable, info.counts_busy)
        for name, info in listed.items()
    }
    assert flags == {
        "Work": (server.calendar_url("work"), False, True, True),
        # the inbox's schedule-default-calendar-URL (RFC 6638), though Work is listed first
        "Family": (server.calendar_url("family"), True, True, True),
        "Reminders": (server.calendar_url("tasks"), False, False, False),
        "US Holidays": (server.calendar_url("holidays"), False, False, False),
    }
    paths = [(host, method, path) for host, method, path in server.requests if method != "GET"]
    assert ("front", "PROPFIND", icloud.PRINCIPAL) in paths
    assert ("home", "PROPFIND", icloud.HOME) in paths
    if server.dav_root != "/":  # the web site's root sent discovery to the well-known address
        assert ("front", "PROPFIND", "/.well-known/caldav") in paths
        assert ("front", "PROPFIND", server.dav_root) in paths


async def test_busy_time_is_read_from_the_calendars_found_from_the_server_address(
    server: IcloudLikeCaldav, provider: CaldavProvider
) -> None:
    server.add_event(
        "work",
        "w1",
        vevent("w1", "DTSTART:20261201T150000Z", "DTEND:20261201T160000Z", "SUMMARY:Patient"),
    )
    server.add_event(
        "family",
        "f1",
        vevent("f1", "DTSTART:20261202T170000Z", "DTEND:20261202T180000Z", "SUMMARY:School run"),
    )
    server.add_event(
        "family",
        "f2",
        vevent("f2", "DTSTART:20261203T170000Z", "DTEND:20261203T180000Z", "TRANSP:TRANSPARENT"),
    )
    server.add_event(  # in a calendar the server marks transparent: not read by default
        "holidays",
        "h1",
        vevent("h1", "DTSTART;VALUE=DATE:20261225", "DTEND;VALUE=DATE:20261226"),
    )
    root = account(server.front_url)
    ids = {info.name: info.id for info in await provider.list_calendars(root)}

    every = await provider.busy(root, calendar_ids=[], tz=NY, start=START, end=END)
    assert every == [
        (utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)),
        (utc(2026, 12, 2, 17), utc(2026, 12, 2, 18)),
    ]
    work = await provider.busy(root, calendar_ids=[ids["Work"]], tz=NY, start=START, end=END)
    assert work == [(utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))]

    first = await provider.sync(
        root, calendar_id=ids["Family"], tz=NY, cursor=None, start=START, end=END
    )
    assert first.full and first.changed["f1"] == [(utc(2026, 12, 2, 17), utc(2026, 12, 2, 18))]
    assert first.changed.get("f2", []) == []  # transparent: seen, and free
    again = await provider.sync(
        root, calendar_id=ids["Family"], tz=NY, cursor=first.cursor, start=START, end=END
    )
    assert not again.full  # getctag unchanged: one PROPFIND, no read


async def test_a_booking_is_written_once_into_a_calendar_on_the_accounts_host(
    server: IcloudLikeCaldav, provider: CaldavProvider
) -> None:
    root = account(server.front_url)
    ids = {info.name: info.id for info in await provider.list_calendars(root)}
    times = utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)
    uid = await provider.put_event(
        root, calendar_id=ids["Work"], event=spec("apt_1", *times), event_id=None
    )
    # A retry after a lost answer finds it there (412) and updates it: still one event.
    again = await provider.put_event(
        root, calendar_id=ids["Work"], event=spec("apt_1", *times), event_id=None
    )
    assert again == uid and list(server.events("work")) == [f"{uid}.ics"]
    assert ("home", "PUT", f"{icloud.HOME}work/{uid}.ics") in server.requests
    assert await provider.busy(root, calendar_ids=[ids["Work"]], tz=NY, start=START, end=END) == [
        times
    ]
    await provider.delete_event(root, calendar_id=ids["Work"], event_id=uid)
    assert server.events("work") == {}


async def test_the_principal_the_home_or_one_calendar_works_as_the_address_too(
    provider: CaldavProvider,
) -> None:
    server = IcloudLikeCaldav()
    server.start()
    try:
        both = {server.calendar_url("work"), server.calendar_url("family")}
        principal = server.front_url.rstrip("/") + icloud.PRINCIPAL
        for url in (principal, server.home_url):
            listed = await provider.list_calendars(account(url))
            assert {c.id for c in listed if c.counts_busy} == both
            assert [c.name for c in listed if c.primary] == ["Family"]
        one = await provider.list_calendars(account(server.calendar_url("family")))
        assert [(c.id, c.name, c.primary) for c in one] == [
            (server.calendar_url("family"), "Family", True)
        ]
    finally:
        server.stop()


async def test_a_home_whose_principal_is_served_elsewhere_still_lists_its_calendars(
    provider: CaldavProvider,
) -> None:
    server = IcloudLikeCaldav(principal_on_home_host=False)
    server.start()
    try:
        listed = await provider.list_calendars(account(server.home_url))
        found = {c.id for c in listed if c.counts_busy}
        assert found == {server.calendar_url("work"), server.calendar_url("family")}
        # The inbox among the home's collections still names the default calendar.
        assert [c.name for c in listed if c.primary] == ["Family"]
        with pytest.raises(CalendarUnavailable, match="not found"):  # a mistyped address
            await provider.list_calendars(account(server.home_url + "no-such/"))
    finally:
        server.stop()


async def test_without_a_default_calendar_the_first_writable_event_calendar_is_primary(
    provider: CaldavProvider,
) -> None:
    server = IcloudLikeCaldav(default_calendar=None)
    server.start()
    try:
        listed = await provider.list_calendars(account(server.front_url))
    finally:
        server.stop()
    assert [c.name for c in listed if c.primary] == ["Work"]


async def test_a_property_the_account_may_not_read_does_not_stop_discovery(
    server: IcloudLikeCaldav, provider: CaldavProvider
) -> None:
    # A 403 propstat fails the library's parse of the whole answer: the calendars are listed
    # from the essential properties then, without the flags that needed the refused one.
    server.refused_props = {("DAV:", "current-user-privilege-set")}
    listed = {info.name: info for info in await provider.list_calendars(account(server.front_url))}
    assert {"Work", "Family", "Reminders", "US Holidays"} == set(listed)
    # The task list still holds no busy time; the transparency and the default went unread.
    busy = {name for name, info in listed.items() if info.counts_busy}
    assert busy == {"Work", "Family", "US Holidays"}
    assert [name for name, info in listed.items() if info.primary] == ["Work"]


async def test_a_calendar_refused_with_403_fails_that_read_only_without_retries(
    server: IcloudLikeCaldav,
) -> None:
    # A 403 to one calendar (a missing privilege there, a UID conflict on Cyrus) is about that
    # calendar: final, but no reason to mark the whole connection for re-linking.
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    provider = CaldavProvider(timeout=5.0, sleep=sleep)
    root = account(server.front_url)
    ids = {info.name: info.id for info in await provider.list_calendars(root)}
    server.forbidden = True
    seen = len(server.requests)
    try:
        with pytest.raises(CalendarUnavailable) as caught:
            await provider.busy(root, calendar_ids=[ids["Work"]], tz=NY, start=START, end=END)
    finally:
        provider.close()
    assert not isinstance(caught.value, NeedsRelink)
    assert not caught.value.retryable and waits == []
    assert len(server.requests) - seen == 1  # one REPORT, refused, and no second try
    assert "'work'" in caught.value.message and "refused access" in caught.value.message
    assert icloud.PASSWORD not in str(caught.value)


async def test_an_account_refused_with_403_needs_relinking_without_retries(
    server: IcloudLikeCaldav, provider: CaldavProvider
) -> None:
    server.forbidden = True
    with pytest.raises(NeedsRelink) as caught:
        await provider.check(account(server.front_url))
    assert not caught.value.retryable
    assert "refused access to the account" in caught.value.message
    assert icloud.PASSWORD not in str(caught.value)


async def test_a_calendar_shared_by_someone_else_is_listed_but_not_read_by_default(
    provider: CaldavProvider,
) -> None:
    # iCloud's family calendar: owned by another principal, marked CS:shared for this account.
    server = IcloudLikeCaldav(family_shared_by="/654321/principal/")
    server.start()
    try:
        root = account(server.front_url)
        listed = {info.name: info for info in await provider.list_calendars(root)}
        server.add_event(
            "family", "kids", vevent("kids", "DTSTART:20261202T170000Z", "DTEND:20261202T180000Z")
        )
        server.add_event(
            "work", "meet", vevent("meet", "DTSTART:20261201T150000Z", "DTEND:20261201T160000Z")
        )
        busy = await provider.busy(root, calendar_ids=[], tz=NY, start=START, end=END)
    finally:
        server.stop()
    assert not listed["Family"].counts_busy and listed["Work"].counts_busy
    # Only Work's event: the family calendar is not read when none are chosen.
    assert busy == [(utc(2026, 12, 1, 15), utc(2026, 12, 1, 16))]


async def test_a_wrong_password_at_the_server_address_needs_relinking(
    provider: CaldavProvider,
) -> None:
    server = IcloudLikeCaldav()
    server.start()
    try:
        with pytest.raises(NeedsRelink, match="refused the username or password"):
            await provider.check(account(server.front_url, password="wrong-password"))
    finally:
        server.stop()


async def test_a_server_that_is_no_caldav_server_says_which_address_to_give(
    provider: CaldavProvider,
) -> None:
    site = NotCaldav()
    site.start()
    try:
        with pytest.raises(CalendarUnavailable) as caught:
            await provider.check(account(site.url))
    finally:
        site.stop()
    message = str(caught.value)
    assert "\n" not in message and "127.0.0.1" in message
    assert "calendar home" in message and "https://caldav.icloud.com/" in message


def test_discovery_does_not_go_from_a_public_address_inward_nor_to_http() -> None:
    public = _Link(url="https://17.253.144.10/", username="u", password="p")
    with pytest.raises(CalendarUnavailable, match="private address"):
        _hop(public, public.url, "https://127.0.0.1/123456/calendars/")
    with pytest.raises(CalendarUnavailable, match="private address"):
        _hop(public, public.url, "https://169.254.169.254/latest/")
    with pytest.raises(CalendarUnavailable, match="unencrypted"):
        _hop(public, public.url, "http://17.253.144.11/123456/calendars/")
    moved = _hop(public, public.url, "https://17.253.144.11:443/123456/calendars/")
    assert moved == "https://17.253.144.11:443/123456/calendars/"
    # A server on the LAN (linked where private addresses are allowed) may use the LAN.
    local = _Link(url="http://127.0.0.1:5232/", username="u", password="p")
    assert _hop(local, local.url, "http://127.0.0.2:5232/lee/") == ("http://127.0.0.2:5232/lee/")


# --- a real Radicale ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadicaleServer]:
    server = start_radicale(tmp_path_factory.mktemp("radicale-discovery"))
    client = DAVClient(
        url=server.principal_url, username=USERNAME, password=PASSWORD, enable_rfc6764=False
    )
    # caldav's DAVClient.principal has no annotations.
    principal: Principal = client.principal()  # type: ignore[no-untyped-call]
    work = principal.make_calendar(name="Work", cal_id="work")
    assert isinstance(work, DavCalendar)  # the synchronous client answers it, no coroutine
    soon = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=2)
    work.save_event(dtstart=soon, dtend=soon + timedelta(hours=1), summary="Dentist", uid="busy-1")
    client.close()
    yield server
    server.stop()


async def test_radicale_linked_from_its_server_address_reads_busy_time_and_takes_bookings(
    radicale: RadicaleServer, provider: CaldavProvider
) -> None:
    root = account(radicale.base_url + "/", username=USERNAME, password=PASSWORD)
    await provider.check(root)
    [work] = await provider.list_calendars(root)
    assert (work.id, work.name) == (f"{radicale.principal_url}work/", "Work")

    start = datetime.now(UTC).replace(microsecond=0, second=0)
    spans = await provider.busy(
        root, calendar_ids=[], tz=NY, start=start, end=start + timedelta(days=7)
    )
    assert [end - begin for begin, end in spans] == [timedelta(hours=1)]  # the Dentist

    times = utc(2026, 12, 1, 15), utc(2026, 12, 1, 16)
    uid = await provider.put_event(
        root, calendar_id=work.id, event=spec("apt_root", *times), event_id=None
    )
    try:
        assert times in await provider.busy(
            root, calendar_ids=[work.id], tz=NY, start=START, end=END
        )
    finally:
        await provider.delete_event(root, calendar_id=work.id, event_id=uid)


def test_the_cli_links_radicale_from_its_server_address(
    radicale: RadicaleServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FRONTDESK_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("FRONTDESK_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("FRONTDESK_CALENDAR_TIMEOUT_SECONDS", "10")
    monkeypatch.setenv("FRONTDESK_ALLOW_PRIVATE_URLS", "true")  # Radicale runs on loopback
    monkeypatch.setenv("FRONTDESK_SECRET_KEY", Fernet.generate_key().decode())
    assert main(["import", str(DEMO)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    code = main(
        [
            "calendars",
            "link",
            "caldav",
            "--staff",
            "lee",
            "--url",
            radicale.base_url + "/",
            "--username",
            USERNAME,
            "--password-stdin",
        ]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    assert main(["calendars", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["status"] == "ok" and row["write_calendar"] == f"{radicale.principal_url}work/"
