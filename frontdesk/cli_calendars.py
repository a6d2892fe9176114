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
from typing import TYPE_CHECKING, Any

# The calendar code (and its providers' SDKs) is imported when a command runs, not for --help.
if TYPE_CHECKING:
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

    s = cs.add_parser("show", help="the calendars inside a linked account")
    s.add_argument("id")

    s = cs.add_parser("use", help="choose which calendars count as busy and get bookings")
    s.add_argument("id")
    s.add_argument("--business")
    s.add_argument("--read", required=True, help="comma-separated calendar ids")
    s.add_argument("--write", help="the calendar bookings are written to")

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
    from calendars.web import describe

    command = args.calendars_command
    if command == "sync":
        return await _sync(args, service, scheduler)
    if command == "show":
        for cal in await service.list_calendars(args.id):
            flags = [
                f for f, on in (("primary", cal.primary), ("read-only", not cal.writable)) if on
            ]
            print(f"{cal.id}\t{cal.name}" + (f"\t({', '.join(flags)})" if flags else ""))
        return 0
    business_id = await scheduler.resolve_business(args.business)
    if command == "list":
        rows = [describe(c) for c in await service.connections(business_id, args.staff)]
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no linked calendars")
        for row in [] if args.json else rows:
            error = f"  ({row['last_error']})" if row["last_error"] else ""
            print(
                f"{row['id']}  {row['staff']}  {row['provider']}  {row['name']}  "
                f"{row['status']}  synced {row['synced_at'] or 'never'}{error}"
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
        read = [c.strip() for c in args.read.split(",") if c.strip()]
        conn = await service.choose_calendars(
            args.id, business_id=business_id, read=read, write=args.write
        )
        print(
            f"{conn.id}: reading {', '.join(conn.read_calendars)}; "
            f"writing {conn.write_calendar or 'nowhere'}"
        )
        return 0
    assert command == "link"
    if args.provider in ("google", "microsoft"):
        url = await service.start_oauth(args.provider, business_id=business_id, staff_id=args.staff)
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
    print(f"{conn.id}: linked {conn.name} for {args.staff} ({conn.status})")
    return 0


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
