"""Calendars linked in a business file, turned into provider accounts.

A staff member's `calendars` in the business file is a list of link dicts:
`{"provider": "ics", "source": "/abs/path.ics" | "https://..."}` or
`{"provider": "caldav", "url": ..., "username": ..., "password": ...}`. `link_account` gives
each one the shape every provider takes (`calendars.base.Account`), with the password moved
into `secret` and a name safe to show (no credentials, no secret feed path).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from booking.errors import CalendarUnavailable
from calendars.base import Account
from calendars.ics import describe, redact


def link_account(link: dict[str, Any], *, staff_id: str, index: int) -> Account:
    """The account of the `index`-th calendar link of staff member `staff_id`."""
    account_id = f"link:{staff_id}:{index}"
    provider = link.get("provider")
    if provider == "ics":
        source = _text(link, "source", staff_id, index)
        return Account(
            id=account_id, provider="ics", settings={"source": source}, name=describe(source)
        )
    if provider == "caldav":
        url = _without_userinfo(_text(link, "url", staff_id, index))
        username = _text(link, "username", staff_id, index)
        password = _text(link, "password", staff_id, index)
        return Account(
            id=account_id,
            provider="caldav",
            settings={"url": url, "username": username},
            secret={"password": password},
            name=f"CalDAV calendar {redact(url)}",
        )
    raise CalendarUnavailable(f"staff {staff_id} has a calendar of unknown provider {provider!r}")


def _text(link: dict[str, Any], key: str, staff_id: str, index: int) -> str:
    value = link.get(key)
    if not isinstance(value, str) or not value:
        raise CalendarUnavailable(f"staff {staff_id}'s calendar {index + 1} has no {key}")
    return value


def _without_userinfo(url: str) -> str:
    # Credentials belong in username and password only; one left in the URL must not be
    # stored in the non-secret settings.
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
