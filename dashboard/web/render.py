"""Server-rendered pages: Jinja2 templates from dashboard/templates with a few filters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from booking.recurrence import MAX_YEAR, MIN_YEAR
from dashboard.web.auth import PRE_CSRF_COOKIE, PageError, csrf_token, set_cookie

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATIC = Path(__file__).resolve().parent.parent / "static"

templates = Jinja2Templates(directory=str(TEMPLATES))


def local(value: datetime | None, tz: str | ZoneInfo, fmt: str = "%a %d %b %Y, %H:%M") -> str:
    """An instant shown as wall time in a zone (the business's or the staff member's)."""
    if value is None:
        return ""
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    return value.astimezone(zone).strftime(fmt)


# The instants the scheduler accepts (bookings, time off and searches lie in 1970-2199).
EARLIEST = datetime(MIN_YEAR, 1, 1, tzinfo=UTC)
LATEST = datetime(MAX_YEAR, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


class DayOutOfRange(ValueError):
    """A well-formed date outside the years 1970-2199."""


def parse_day(value: str | None, name: str = "date") -> date | None:
    """A day typed into a query or form (`2026-12-31`), None when blank. ValueError with a
    one-line message for the person when it is no date, DayOutOfRange when it lies outside the
    years 1970-2199, so no page does date arithmetic past the calendar's end (an OverflowError
    500)."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"the {name} must look like 2026-12-31") from None
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise DayOutOfRange(
            f"the {name} {day.isoformat()} is outside the years {MIN_YEAR}-{MAX_YEAR}"
        )
    return day


def query_day(value: str | None, name: str = "date") -> date | None:
    """`parse_day` for a page's query parameter: a bad one is a 400 page saying why."""
    try:
        return parse_day(value, name)
    except ValueError as exc:
        message = str(exc)
        raise PageError(400, message[:1].upper() + message[1:] + ".") from None


def bookable(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """`[start, end)` cut to the instants the scheduler accepts: a week shown around the
    first or last allowed day reaches a little past them."""
    return max(start, EARLIEST), min(end, LATEST)


def label(value: str | None) -> str:
    """`not_interested` -> `Not interested`."""
    return (value or "").replace("_", " ").capitalize()


@dataclass(frozen=True)
class NavItem:
    label: str
    href: str
    owner_only: bool
    position: int


NAV: list[NavItem] = []


def add_nav(label: str, href: str, *, owner_only: bool = True, position: int = 100) -> None:
    """Add a link to the top navigation (each page module registers its own), by `position`."""
    if all(item.href != href for item in NAV):
        NAV.append(NavItem(label, href, owner_only, position))
        NAV.sort(key=lambda item: item.position)


templates.env.globals["csrf_token"] = csrf_token
templates.env.globals["nav"] = NAV
templates.env.filters["local"] = local
templates.env.filters["label"] = label


def render(
    request: Request, template_name: str, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """The page `template_name` with `context`; `user` and `csrf_token` are always there."""
    context.setdefault("user", getattr(request.state, "web_user", None))
    context.setdefault("status_code", status_code)
    response = templates.TemplateResponse(request, template_name, context, status_code=status_code)
    new_token = getattr(request.state, "pre_csrf_new", None)
    if new_token:
        set_cookie(request, response, PRE_CSRF_COOKIE, new_token)
    return response
