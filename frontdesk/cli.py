"""The `frontdesk` command: serve, import/export a business, search, book and cancel from a shell.

Errors print one clear line per problem to stderr and exit non-zero: 1 for a refused request
(the slot is taken, the file is invalid), 2 for a malformed command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import SecretStr, ValidationError

from booking import errors
from booking.business_file import (
    BusinessFileError,
    dump_business,
    export_business,
    import_business,
    load_business_file,
)
from booking.clock import FixedClock
from booking.scheduler import Scheduler
from dashboard import users
from frontdesk import cli_calendars
from frontdesk.settings import Settings

log = logging.getLogger("frontdesk")

# The demo business ships inside the package (`examples/` in the source tree links here).
DEMO_BUSINESS = Path(__file__).resolve().parent / "demo" / "demo-business.yaml"


class CommandError(Exception):
    """A refusal to report on stderr with a non-zero exit."""


def _iso(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO date-time") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} needs a UTC offset, e.g. 2026-12-01T09:00-05:00")
    return parsed


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2026-12-01") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="frontdesk", description="AI phone receptionist")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the web server (API under /api/v1)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--demo", action="store_true",
                   help="import the demo business (examples/demo-business.yaml) first")

    sub.add_parser("migrate", help="apply database migrations")

    s = sub.add_parser("import", help="create or update a business from a YAML/JSON file")
    s.add_argument("file", type=Path)

    s = sub.add_parser("export", help="write a business back as YAML or JSON")
    s.add_argument("--business")
    s.add_argument("--format", choices=["yaml", "json"], default="yaml")
    s.add_argument("-o", "--output", type=Path)

    s = sub.add_parser("availability", help="list every bookable slot in a date range")
    s.add_argument("--business")
    s.add_argument("--service", required=True)
    s.add_argument("--staff")
    s.add_argument("--from", dest="first", type=_date, required=True)
    s.add_argument("--to", dest="last", type=_date, required=True)
    s.add_argument("--now", type=_iso, help="evaluate as of this instant (ISO with offset)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("book", help="book a slot")
    s.add_argument("--business")
    s.add_argument("--service", required=True)
    s.add_argument("--staff", required=True)
    s.add_argument("--start", type=_iso, required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--phone", required=True)
    s.add_argument("--email")
    s.add_argument("--notes")
    s.add_argument("--now", type=_iso, help=argparse.SUPPRESS)
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("cancel", help="cancel an appointment")
    s.add_argument("id")
    s.add_argument("--business")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("chat", help="talk to the phone agent in this terminal")
    s.add_argument("--business")
    s.add_argument("--caller", help="the caller's number in E.164, e.g. +12025552200")
    s.add_argument("--now", type=_iso, help=argparse.SUPPRESS)

    cli_calendars.add_parsers(sub)
    users.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        _err(f"configuration error: {exc}")
        return 2
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    commands: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "serve": cmd_serve, "migrate": cmd_migrate, "import": cmd_import,
        "export": cmd_export, "availability": cmd_availability, "book": cmd_book,
        "cancel": cmd_cancel, "chat": cmd_chat,
        "calendars": cli_calendars.cmd_calendars, "keygen": cli_calendars.cmd_keygen,
        "users": cmd_users,
    }
    try:
        return commands[args.command](args, settings)
    except BusinessFileError as exc:
        _err(f"error: {exc}")
        return 1
    except errors.BookingError as exc:
        log.info("refused: %s", exc.message)
        _err(f"error: {exc.message}")
        return 1
    except (CommandError, cli_calendars.CalendarCommandError) as exc:
        _err(f"error: {exc}")
        return 1


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _scheduler(args: argparse.Namespace, settings: Settings) -> Scheduler:
    from frontdesk.app import build_scheduler

    now = getattr(args, "now", None)
    return build_scheduler(settings, clock=FixedClock(now) if now else None)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    scheduler = _scheduler(args, settings)
    business = _run(scheduler.resolve_business(args.business))
    password = users.read_password(from_stdin=args.password_stdin)
    user = users.add_user(scheduler.engine, business_id=business, email=args.email,
                          password=password, role=args.role, staff_id=args.staff,
                          now=scheduler.clock.now())
    print(f"{user.id}: {user.email} ({user.role}) at {business}")
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    _scheduler(args, settings)
    print("database is up to date")
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    data = load_business_file(args.file)
    scheduler = _scheduler(args, settings)
    result = import_business(scheduler.engine, data)
    verb = "created" if result.created else ("updated" if result.changed else "unchanged")
    print(f"{result.business_id}: {verb}")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    scheduler = _scheduler(args, settings)
    business_id = _run(scheduler.resolve_business(args.business))
    text = dump_business(export_business(scheduler.engine, business_id), args.format)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_availability(args: argparse.Namespace, settings: Settings) -> int:
    scheduler = _scheduler(args, settings)
    result = _run(scheduler.availability(
        business_id=args.business, service_id=args.service, staff_id=args.staff,
        first_day=args.first, last_day=args.last, now=args.now,
    ))
    tz = ZoneInfo(result.timezone)
    rows = [{"start": s.start.astimezone(tz).isoformat(), "end": s.end.astimezone(tz).isoformat(),
             "staff": s.staff_id} for s in result.slots]
    if args.json:
        print(json.dumps({"timezone": result.timezone, "slots": rows}, indent=2))
        return 0
    if not rows:
        print(f"no free slots ({result.timezone})")
    for row in rows:
        print(f"{row['start']}  {row['end']}  {row['staff']}")
    return 0


def cmd_book(args: argparse.Namespace, settings: Settings) -> int:
    scheduler = _scheduler(args, settings)
    row = _run(scheduler.book(
        business_id=args.business, service_id=args.service, staff_id=args.staff,
        start=args.start, name=args.name, phone=args.phone, email=args.email, notes=args.notes,
        booked_by="cli", now=args.now,
    ))
    if args.json:
        print(json.dumps({"id": row.id, "start": row.start.isoformat(),
                          "end": row.end.isoformat(), "staff": row.staff_id,
                          "service": row.service_id, "status": row.status}))
    else:
        print(row.id)
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    scheduler = _scheduler(args, settings)
    row = _run(scheduler.cancel(business_id=args.business, appointment_id=args.id))
    print(json.dumps({"id": row.id, "status": row.status}) if args.json else f"{row.id} cancelled")
    return 0


def cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    from agent.chat import run_chat

    _run(run_chat(settings=settings, scheduler=_scheduler(args, settings),
                  business_id=args.business, caller=args.caller, lines=sys.stdin, out=sys.stdout))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from frontdesk.app import create_app

    if args.demo:
        demo = DEMO_BUSINESS
        if not demo.exists():
            raise CommandError(f"demo business file not found at {demo}")
        cmd_import(argparse.Namespace(file=demo), settings)
    generated = settings.api_key is None
    if generated:
        settings = settings.model_copy(update={"api_key": SecretStr(secrets.token_urlsafe(24))})
    scheduler = _scheduler(args, settings)
    host, port = args.host or settings.host, args.port or settings.port
    # Show a generated key once so the newcomer can try the API; never echo a configured one.
    key = "$FRONTDESK_API_KEY"
    if generated and settings.api_key:
        key = settings.api_key.get_secret_value()
    print(f"Frontdesk is running on http://{host}:{port}")
    print(f"  API docs:      http://{host}:{port}/docs")
    first, last = date.today() + timedelta(days=1), date.today() + timedelta(days=7)
    print(f"  Availability:  curl -H 'Authorization: Bearer {key}' "
          f"'http://{host}:{port}/api/v1/availability?service=cleaning"
          f"&from={first}&to={last}&limit=5'")
    print(f"  Dashboard:     http://{host}:{port}/login  (make an account first: "
          "frontdesk users add --business ID --email you@example.com --role owner)")
    if generated:
        print("  (API key generated for this run; set FRONTDESK_API_KEY to keep one)")
    sys.stdout.flush()
    uvicorn.run(create_app(settings, scheduler=scheduler), host=host, port=port,
                log_level=settings.log_level.lower())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
