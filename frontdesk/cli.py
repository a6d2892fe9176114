"""The `frontdesk` command: serve, import/export a business, search, book and cancel from a shell.

Errors print one clear line per problem to stderr and exit non-zero: 1 for a refused request
(the slot is taken, the file is invalid), 2 for a malformed command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from frontdesk import cli_calendars
from frontdesk.cli_errors import CommandError, UsageError, report
from frontdesk.log_format import formatter as log_formatter

# Only the standard library and argument-parsing code load before a command runs: the domain,
# the web app, Twilio and the LLM client are imported by the commands that use them, so
# `frontdesk --help` and `frontdesk <command> --help` start in a fraction of a second.
if TYPE_CHECKING:
    from booking.scheduler import Scheduler
    from frontdesk.settings import Settings

__all__ = ["CommandError", "main", "parser"]

log = logging.getLogger("frontdesk")

# The demo business ships inside the package (`examples/` in the source tree links here).
DEMO_BUSINESS = Path(__file__).resolve().parent / "demo" / "demo-business.yaml"
# dashboard.models.Role's values (a test keeps them in step), so `--help` needs no database code.
ROLES = ("owner", "staff")


class _Parser(argparse.ArgumentParser):
    """argparse, with a malformed command reported in one line (exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _iso(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO date-time") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} needs a UTC offset, e.g. 2026-12-01T09:00-05:00"
        )
    return parsed


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2026-12-01") from None


def _text(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value.strip()


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="frontdesk", description="AI phone receptionist")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log INFO lines to stderr too (otherwise warnings and errors only)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the web server (API under /api/v1)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument(
        "--demo",
        action="store_true",
        help="import the demo business (examples/demo-business.yaml) first",
    )
    s.add_argument(
        "--workers",
        type=_workers,
        help="worker processes (default FRONTDESK_WORKERS, 1); several need PostgreSQL",
    )

    sub.add_parser(
        "worker",
        help="run the background jobs only (with FRONTDESK_RUN_JOBS=false on serve); "
        "FRONTDESK_WORKER_METRICS_PORT serves its /healthz, /readyz and /metrics",
    )
    sub.add_parser("migrate", help="apply database migrations")

    s = sub.add_parser("import", help="create or update a business from a YAML/JSON file")
    s.add_argument("file", type=Path)

    s = sub.add_parser("export", help="write a business back as YAML or JSON")
    s.add_argument("--business")
    s.add_argument("--format", choices=["yaml", "json"], default="yaml")
    s.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the file to write (calendar paths are made relative to its folder)",
    )

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
    s.add_argument("--name", type=_text, required=True)
    s.add_argument("--phone", type=_text, required=True)
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
    s.add_argument("--caller", type=_text, help="the caller's number in E.164, e.g. +12025552200")
    s.add_argument("--now", type=_iso, help=argparse.SUPPRESS)

    cli_calendars.add_parsers(sub)

    # `frontdesk users add`: the password is asked for, or read from stdin, never an argument.
    u = sub.add_parser("users", help="dashboard accounts")
    us = u.add_subparsers(dest="users_command", required=True)
    s = us.add_parser("add", help="create a dashboard account (owner or staff)")
    s.add_argument("--business", help="business id; optional while there is one")
    s.add_argument("--email", type=_text, required=True)
    s.add_argument("--role", required=True, choices=ROLES)
    s.add_argument("--staff", help="the staff member a staff account belongs to")
    s.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin instead of asking",
    )

    for command in sub.choices.values():  # `--verbose` after the command works too
        command.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
    return p


COMMANDS: dict[str, str] = {
    "serve": "cmd_serve",
    "worker": "cmd_worker",
    "migrate": "cmd_migrate",
    "import": "cmd_import",
    "export": "cmd_export",
    "availability": "cmd_availability",
    "book": "cmd_book",
    "cancel": "cmd_cancel",
    "chat": "cmd_chat",
    "users": "cmd_users",
    "calendars": "frontdesk.cli_calendars:cmd_calendars",
    "keygen": "frontdesk.cli_calendars:cmd_keygen",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pydantic import ValidationError

    from frontdesk.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"FRONTDESK_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        _err(f"configuration error: {problems}")
        return 2
    configure_logging(
        settings.log_level,
        verbose=args.verbose,
        serving=args.command in {"serve", "worker"},
        log_format=settings.log_format,
    )
    name = COMMANDS[args.command]
    command: Callable[[argparse.Namespace, Settings], int] = (
        getattr(cli_calendars, name.split(":")[1]) if ":" in name else globals()[name]
    )
    try:
        code = command(args, settings)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`frontdesk availability ... | head`): stop quietly, as a
        # command killed by SIGPIPE does, and keep Python from complaining at exit.
        _silence_stdout()
        return 128 + 13
    except Exception as exc:
        known = report(exc)
        if known is None:
            raise
        code, line = known
        log.info("refused: %s", line)
        _err(line)
        return code


def configure_logging(
    level: str, *, verbose: bool, serving: bool, log_format: str = "text"
) -> None:
    """Log lines in UTC on stderr: INFO while serving or with `--verbose` (or what
    FRONTDESK_LOG_LEVEL asks for), otherwise warnings and errors only; one JSON object a line
    with FRONTDESK_LOG_FORMAT=json."""
    configured = logging.getLevelName(level.upper())
    if not isinstance(configured, int):
        raise UsageError(f"FRONTDESK_LOG_LEVEL={level!r} is not a logging level")
    if not (serving or verbose):
        configured = max(configured, logging.WARNING)
    elif verbose:
        configured = min(configured, logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(log_format))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_frontdesk", False)]:
        root.removeHandler(old)
    handler._frontdesk = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(configured)
    logging.getLogger("alembic").setLevel(max(configured, logging.WARNING))


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a file (a test's capture): nothing will flush into a closed pipe


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _scheduler(args: argparse.Namespace, settings: Settings) -> Scheduler:
    from booking.clock import FixedClock
    from frontdesk.wiring import build_scheduler

    now = getattr(args, "now", None)
    return build_scheduler(settings, clock=FixedClock(now) if now else None)


def _run(scheduler: Scheduler, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run one scheduler call, then close whatever calendar connections it opened."""
    from frontdesk.wiring import close_calendars

    async def once() -> Any:
        try:
            return await coro
        finally:
            await close_calendars(scheduler)

    return asyncio.run(once())


def cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    from dashboard import users

    scheduler = _scheduler(args, settings)
    business = _run(scheduler, scheduler.resolve_business(args.business))
    password = users.read_password(from_stdin=args.password_stdin)
    try:
        user = users.add_user(
            scheduler.engine,
            business_id=business,
            email=args.email,
            password=password,
            role=args.role,
            staff_id=args.staff,
            now=scheduler.clock.now(),
        )
    except users.AccountExists as exc:  # a well-formed request, refused: exit 1
        raise CommandError(exc.message) from None
    print(f"{user.id}: {user.email} ({user.role}) at {business}")
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    _scheduler(args, settings)
    print("database is up to date")
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from booking.business_file import import_business, load_business_file

    data = load_business_file(args.file)
    scheduler = _scheduler(args, settings)
    result = import_business(scheduler.engine, data)
    verb = "created" if result.created else ("updated" if result.changed else "unchanged")
    print(f"{result.business_id}: {verb}")
    _warn_long_reminders(data)
    return 0


def _warn_long_reminders(data: Any) -> None:
    """Say when a reminder takes more than one SMS segment (each is billed and can arrive
    apart); the file still imports."""
    from booking.reminders import ReminderSettings, longest_texts

    settings = data.business.reminders or ReminderSettings()
    if not settings.enabled:
        return
    found = longest_texts(
        settings,
        {s.id: s.reminders for s in data.services},
        business=data.business.name,
        address=data.business.address,
        services={s.id: s.name for s in data.services},
        staff=[m.name for m in data.staff],
    )
    for service_id, parts in found:
        if parts.count > 1:
            limit = 160 if parts.encoding == "GSM-7" else 70
            print(
                f"note: the {service_id} reminder can take {parts.count} SMS segments "
                f"({parts.units} {parts.encoding} characters; one segment holds {limit})",
                file=sys.stderr,
            )


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from booking.business_file import dump_business, export_business

    scheduler = _scheduler(args, settings)
    business_id = _run(scheduler, scheduler.resolve_business(args.business))
    exported = export_business(scheduler.engine, business_id)
    # Calendar files are written relative to the folder the file is read from again: the
    # output file's, or (printed) the working directory, as `frontdesk import` resolves them.
    folder = args.output.resolve().parent if args.output else Path.cwd()
    text = dump_business(relative_calendar_paths(exported, folder), args.format)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def relative_calendar_paths(exported: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The exported business with each file calendar's absolute `source` made relative to
    `folder` (URLs and relative paths stay as they are)."""
    for staff in exported.get("staff", []):
        for calendar in staff.get("calendars", []):
            source = calendar.get("source")
            if isinstance(source, str) and os.path.isabs(source):
                calendar["source"] = Path(os.path.relpath(source, folder)).as_posix()
    return exported


def cmd_availability(args: argparse.Namespace, settings: Settings) -> int:
    from zoneinfo import ZoneInfo

    scheduler = _scheduler(args, settings)
    result = _run(
        scheduler,
        scheduler.availability(
            business_id=args.business,
            service_id=args.service,
            staff_id=args.staff,
            first_day=args.first,
            last_day=args.last,
            now=args.now,
        ),
    )
    tz = ZoneInfo(result.timezone)
    rows = [
        {
            "start": s.start.astimezone(tz).isoformat(),
            "end": s.end.astimezone(tz).isoformat(),
            "staff": s.staff_id,
        }
        for s in result.slots
    ]
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
    row = _run(
        scheduler,
        scheduler.book(
            business_id=args.business,
            service_id=args.service,
            staff_id=args.staff,
            start=args.start,
            name=args.name,
            phone=args.phone,
            email=args.email,
            notes=args.notes,
            booked_by="cli",
            now=args.now,
        ),
    )
    if args.json:
        print(
            json.dumps(
                {
                    "id": row.id,
                    "start": row.start.isoformat(),
                    "end": row.end.isoformat(),
                    "staff": row.staff_id,
                    "service": row.service_id,
                    "status": row.status,
                }
            )
        )
    else:
        print(row.id)
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    scheduler = _scheduler(args, settings)
    row = _run(scheduler, scheduler.cancel(business_id=args.business, appointment_id=args.id))
    print(json.dumps({"id": row.id, "status": row.status}) if args.json else f"{row.id} cancelled")
    return 0


def cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    from agent.chat import run_chat
    from frontdesk.wiring import llm_config

    scheduler = _scheduler(args, settings)
    _run(
        scheduler,
        run_chat(
            llm=llm_config(settings),
            scheduler=scheduler,
            business_id=args.business,
            caller=args.caller,
            lines=sys.stdin,
            out=sys.stdout,
        ),
    )
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn
    from pydantic import SecretStr

    from frontdesk.app import create_app
    from frontdesk.web_security import SERVER_OPTIONS
    from frontdesk.wiring import build_scheduler

    if args.demo:
        if not DEMO_BUSINESS.exists():
            raise CommandError(f"demo business file not found at {DEMO_BUSINESS}")
        cmd_import(argparse.Namespace(file=DEMO_BUSINESS), settings)
    generated = settings.api_key is None
    if generated:
        settings = settings.model_copy(update={"api_key": SecretStr(secrets.token_urlsafe(24))})
    # A public base URL derived from the address follows --host/--port; every URL shown is it.
    settings = settings.bound_to(args.host or settings.host, args.port or settings.port)
    scheduler = build_scheduler(settings)
    host, port, url = settings.host, settings.port, settings.public_base_url
    # Show a generated key once so the newcomer can try the API; never echo a configured one.
    key = "$FRONTDESK_API_KEY"
    if generated and settings.api_key:
        key = settings.api_key.get_secret_value()
    print(f"Frontdesk is running on {url} (listening on {host}:{port})")
    print(f"  API docs:      {url}/docs")
    first, last = date.today() + timedelta(days=1), date.today() + timedelta(days=7)
    print(
        f"  Availability:  curl -H 'Authorization: Bearer {key}' "
        f"'{url}/api/v1/availability?service=cleaning"
        f"&from={first}&to={last}&limit=5'"
    )
    print(
        f"  Dashboard:     {url}/login  (make an account first: "
        "frontdesk users add --business ID --email you@example.com --role owner)"
    )
    if generated:
        print("  (API key generated for this run; set FRONTDESK_API_KEY to keep one)")
    sys.stdout.flush()
    workers = args.workers or settings.workers
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": settings.log_level.lower(),
        # Past the drain (frontdesk.draining), what requests in flight may still take.
        "timeout_graceful_shutdown": max(1, int(settings.shutdown_grace_seconds)),
        **SERVER_OPTIONS,
    }
    if workers == 1:
        uvicorn.run(create_app(settings, scheduler=scheduler), **options)
        return 0
    # Several processes: each builds its own app from the environment (frontdesk.asgi); the
    # schema is already migrated (above), so they start at once.
    scheduler.engine.dispose()
    if scheduler.engine.dialect.name == "sqlite":
        log.warning(
            "%d workers on SQLite: they share one file on this machine; use PostgreSQL to scale",
            workers,
        )
    os.environ["FRONTDESK_HOST"], os.environ["FRONTDESK_PORT"] = host, str(port)
    if generated and settings.api_key:
        os.environ["FRONTDESK_API_KEY"] = settings.api_key.get_secret_value()
    if "public_base_url" in settings.model_fields_set and settings.public_base_url:
        os.environ["FRONTDESK_PUBLIC_BASE_URL"] = settings.public_base_url
    uvicorn.run("frontdesk.asgi:create", factory=True, workers=workers, log_config=None, **options)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """The background jobs without the web app, until SIGTERM or SIGINT."""
    import signal

    from frontdesk.jobs import run_worker

    if settings.worker_metrics_port is not None and settings.api_key is None:
        _err("set FRONTDESK_API_KEY: FRONTDESK_WORKER_METRICS_PORT serves /metrics behind it")
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("frontdesk worker: running the background jobs")
        await run_worker(settings, stop=stop)
        log.info("frontdesk worker: stopped")

    asyncio.run(run())
    return 0


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("--workers must be between 1 and 64")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
