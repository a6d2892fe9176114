"""`frontdesk calendars ...` and `frontdesk keygen`: link and inspect calendars from a shell.

For a business without the dashboard: CalDAV and ICS link right here (checked on save); Google
and Microsoft print the consent URL to open in a browser, whose callback the running server
(`frontdesk serve`, reachable at FRONTDESK_PUBLIC_BASE_URL) receives.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from frontdesk.cli_errors import UsageError

# The calendar code (and its providers' SDKs) is imported when a command runs, not for --help.
if TYPE_CHECKING:
    from calendars.base import CalendarInfo
    from calendars.models import CalendarConnection
    from calendars.service import CalendarService
    from frontdesk.settings import Settings


class CalendarCommandError(Exception):
    pass


def add_parsers(sub: Any) -> None:
    sub.add_parser("keygen", help="print a new FRONTDESK_SECRET_KEY")
    c = sub.add_parser("calendars", help="link, list and sync staff calendars")
    cs = c.add_subparsers(dest="calendars_command", required=True)

    s = cs.add_parser("list", help="linked calendars and their sync state")
    s.add_argument("--business")
    s.add_argument("--staff")
    s.add_argument("--json", action="store_true")

    s = cs.add_parser("link", help="link a calendar account for a staff member")
    s.add_argument("provider", choices=["google", "microsoft", "caldav", "ics"])
    s.add_argument("--business")
    s.add_argument("--staff", required=True)
    s.add_argument(
        "--url", help="CalDAV: the server or calendar URL (iCloud: https://caldav.icloud.com/)"
    )
    s.add_argument("--username", help="CalDAV: the account name (iCloud: your Apple ID)")
    s.add_argument(
        "--password-stdin",
        action="store_true",
        help="CalDAV: read the (app-specific) password from stdin instead of asking",
    )
    s.add_argument("--source", help="ICS: an absolute file path or an https:// feed URL")
    s.add_argument("--name", help="a label for the link")
    s.add_argument(
        "--json",
        action="store_true",
        help="print the new connection (and which of its calendars are read and written) as JSON",
    )

    s = cs.add_parser(
        "show", help="the calendars inside a linked account, and which are read and written"
    )
    s.add_argument("id")
    s.add_argument("--business")
    s.add_argument("--json", action="store_true")

    s = cs.add_parser(
        "use",
        help="choose which calendars count as busy (--read) and which one gets bookings (--write)",
    )
    s.add_argument("id")
    s.add_argument("--business")
    s.add_argument(
        "--read",
        help="comma-separated calendar names or ids (e.g. Work,Family); "
        "left out: the calendars read now stay",
    )
    s.add_argument(
        "--write",
        help="the calendar name or id bookings are written to, or 'none'; "
        "left out: the one written now stays",
    )

    s = cs.add_parser("unlink", help="unlink a calendar account")
    s.add_argument("id")
    s.add_argument("--business")

    s = cs.add_parser(
        "sync",
        help="refresh every linked calendar now (or the one given), "
        "renew subscriptions, retry calendar writes",
    )
    s.add_argument("id", nargs="?", help="only this connection")
    s.add_argument("--business")
    s.add_argument("--staff")
    s.add_argument("--json", action="store_true")

    s = cs.add_parser("feed", help="the ICS address of a staff member's bookings")
    s.add_argument("--business")
    s.add_argument("--staff", required=True)


def cmd_keygen(args: argparse.Namespace, settings: Settings) -> int:
    from calendars.secrets import new_key

    print(new_key())
    return 0


def cmd_calendars(args: argparse.Namespace, settings: Settings) -> int:
    from frontdesk.wiring import build_scheduler, calendar_service

    scheduler = build_scheduler(settings)
    service = calendar_service(scheduler)
    assert service is not None
    return asyncio.run(_closing(service, _calendars(args, service, scheduler)))


async def _closing(service: CalendarService, command: Any) -> int:
    """Run the command, then close the service; a link the service refuses (a provider not
    configured, a server that rejects the account) is a refusal (exit 1), not a bad command."""
    from booking.errors import InvalidRequest

    try:
        code: int = await command
        return code
    except InvalidRequest as exc:
        raise CalendarCommandError(exc.message) from None
    finally:
        await service.close()


async def _calendars(args: argparse.Namespace, service: CalendarService, scheduler: Any) -> int:
    from calendars.selection import summary

    command = args.calendars_command
    if command == "sync":
        return await _sync(args, service, scheduler)
    business_id = await scheduler.resolve_business(args.business)
    if command == "show":
        conn = await _connection(service, business_id, args.id)
        calendars = await service.list_calendars(conn.id)
        rows = _calendar_rows(calendars, conn)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print("this account has no calendars")
        for row in rows:
            marks = [m for m in ("read", "write") if row[m]]
            marks += [
                f
                for f, on in (("primary", row["primary"]), ("read-only", not row["writable"]))
                if on
            ]
            print(f"{row['id']}\t{row['name']}\t{', '.join(marks) or '-'}")
        print(summary(calendars, conn.read_calendars, conn.write_calendar))
        return 0
    if command == "list":
        connections = await service.connections(business_id, args.staff)
        rows = list(await asyncio.gather(*(_described(service, c) for c in connections)))
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no linked calendars")
        for row in [] if args.json else rows:
            error = f"  ({row['last_error']})" if row["last_error"] else ""
            print(
                f"{row['id']}  {row['staff']}  {row['provider']}  {row['name']}  "
                f"{row['status']}  synced {row['synced_at'] or 'never'}{error}\n"
                f"    {row['summary']}"
            )
        return 0
    if command == "feed":
        print(service.feed_url(business_id, args.staff))
        return 0
    if command == "unlink":
        await service.disconnect(args.id, business_id=business_id)
        print(f"{args.id} unlinked")
        return 0
    if command == "use":
        return await _use(args, service, business_id)
    assert command == "link"
    if args.provider in ("google", "microsoft"):
        url = await service.start_oauth(args.provider, business_id=business_id, staff_id=args.staff)
        if args.json:
            print(json.dumps({"provider": args.provider, "authorize_url": url}, indent=2))
            return 0
        print(
            "Open this address in a browser and allow access; the running server "
            f"({service.public_base_url}) finishes the link:"
        )
        print(url)
        return 0
    if args.provider == "caldav":
        if not args.url or not args.username:
            raise CalendarCommandError("CalDAV needs --url and --username")
        password = (
            sys.stdin.readline().rstrip("\n")
            if args.password_stdin
            else getpass.getpass("CalDAV password (app-specific for iCloud): ")
        )
        conn = await service.link_caldav(
            business_id=business_id,
            staff_id=args.staff,
            url=args.url,
            username=args.username,
            password=password,
            name=args.name,
        )
    else:
        if not args.source:
            raise CalendarCommandError("ICS needs --source")
        conn = await service.link_ics(
            business_id=business_id,
            staff_id=args.staff,
            source=args.source,
            name=args.name,
            allow_files=True,
        )
    if args.json:
        print(json.dumps(await _described(service, conn), indent=2))
        return 0
    print(f"{conn.id}: linked {conn.name} for {args.staff} ({conn.status})")
    found = await _calendars_or_none(service, conn)
    if found is not None:
        print(f"    {summary(found, conn.read_calendars, conn.write_calendar)}")
        print(f"    (change with: frontdesk calendars use {conn.id} --read NAME,... --write NAME)")
    return 0


async def _use(args: argparse.Namespace, service: CalendarService, business_id: str) -> int:
    """`calendars use ID --read Work,Family --write Work`: by name or id; what is left out stays."""
    from booking.errors import InvalidRequest
    from calendars.selection import resolve, summary

    if args.read is None and args.write is None:
        raise UsageError("say what to change: --read NAME,... and/or --write NAME")
    conn = await _connection(service, business_id, args.id)
    calendars = await service.list_calendars(conn.id)
    try:
        if args.read is None:
            read = list(conn.read_calendars)
        else:
            read = resolve(calendars, args.read.split(","))
            if not read:
                raise UsageError("--read names no calendar (give names or ids, comma-separated)")
        write = conn.write_calendar
        if args.write is not None:
            write = _write_choice(calendars, args.write, resolve)
    except InvalidRequest as exc:
        raise UsageError(exc.message) from None
    chosen = next((c for c in calendars if c.id == write), None)
    if chosen is not None and not chosen.writable:
        raise UsageError(f"calendar {chosen.name!r} is read-only; bookings cannot go there")
    conn = await service.choose_calendars(conn.id, business_id=business_id, read=read, write=write)
    print(f"{conn.id}: {summary(calendars, conn.read_calendars, conn.write_calendar)}")
    return 0


def _write_choice(calendars: Sequence[CalendarInfo], wanted: str, resolve: Any) -> str | None:
    """The one calendar `--write` names; 'none' (unless a calendar is called that) for none."""
    entries = [e for e in (w.strip() for w in wanted.split(",")) if e]
    if len(entries) > 1:
        raise UsageError("--write takes one calendar (bookings go to a single calendar)")
    if not entries:
        raise UsageError("--write needs a calendar name or id, or 'none'")
    known = {c.id for c in calendars} | {c.name.strip().casefold() for c in calendars}
    if entries[0].casefold() == "none" and entries[0].casefold() not in known:
        return None
    ids: list[str] = resolve(calendars, entries)
    return ids[0]


async def _connection(
    service: CalendarService, business_id: str, connection_id: str
) -> CalendarConnection:
    from booking.errors import NotFound

    for conn in await service.connections(business_id):
        if conn.id == connection_id:
            return conn
    raise NotFound(f"no calendar connection {connection_id}")


def _calendar_rows(
    calendars: Sequence[CalendarInfo], conn: CalendarConnection
) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "name": c.name,
            "primary": c.primary,
            "writable": c.writable,
            "read": c.id in conn.read_calendars,
            "write": c.id == conn.write_calendar,
        }
        for c in calendars
    ]


async def _calendars_or_none(
    service: CalendarService, conn: CalendarConnection
) -> list[CalendarInfo] | None:
    """The account's calendars, or None when the account cannot be reached right now."""
    from booking.errors import CalendarUnavailable

    try:
        return await service.list_calendars(conn.id)
    except CalendarUnavailable:
        return None


async def _described(service: CalendarService, conn: CalendarConnection) -> dict[str, Any]:
    """A connection as `list --json` and `link --json` print it: never its credentials; with
    its calendars marked read/written (null when the account cannot be reached now)."""
    from calendars.selection import summary
    from calendars.web import describe

    row = describe(conn)
    calendars = await _calendars_or_none(service, conn)
    row["calendars"] = None if calendars is None else _calendar_rows(calendars, conn)
    row["summary"] = summary(calendars or [], conn.read_calendars, conn.write_calendar)
    return row


async def _sync(args: argparse.Namespace, service: CalendarService, scheduler: Any) -> int:
    """Refresh now, whatever the last refresh; one line per connection saying what changed.
    Exit 1 when a connection could not be read (the others are refreshed all the same)."""
    from booking.errors import NotFound

    business_id = None
    if args.business or args.staff:
        business_id = await scheduler.resolve_business(args.business)
    try:
        reports = await service.sync_now(
            business_id=business_id, staff_id=args.staff, connection_id=args.id
        )
    except NotFound as exc:
        raise CalendarCommandError(exc.message) from None
    await service.upkeep()
    await service.wait_pokes()
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    elif not reports:
        print("no linked calendars to sync")
    for r in [] if args.json else reports:
        print(f"{r.connection_id}  {r.staff_id}  {r.provider}  {r.name}: {r.outcome}")
    return 1 if any(r.error is not None for r in reports) else 0
