"""Server-rendered pages: Jinja2 templates from dashboard/templates with a few filters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from dashboard.web.auth import PRE_CSRF_COOKIE, csrf_token, set_cookie

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATIC = Path(__file__).resolve().parent.parent / "static"

templates = Jinja2Templates(directory=str(TEMPLATES))


def local(value: datetime | None, tz: str | ZoneInfo, fmt: str = "%a %d %b %Y, %H:%M") -> str:
    """An instant shown as wall time in a zone (the business's or the staff member's)."""
    if value is None:
        return ""
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    return value.astimezone(zone).strftime(fmt)


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


def render(request: Request, template_name: str, *, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    """The page `template_name` with `context`; `user` and `csrf_token` are always there."""
    context.setdefault("user", getattr(request.state, "web_user", None))
    context.setdefault("status_code", status_code)
    response = templates.TemplateResponse(request, template_name, context,
                                          status_code=status_code)
    new_token = getattr(request.state, "pre_csrf_new", None)
    if new_token:
        set_cookie(request, response, PRE_CSRF_COOKIE, new_token)
    return response
