"""Google Calendar's JSON (events, freeBusy, calendarList, push headers) to our values and back."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from booking.errors import CalendarUnavailable
from booking.rules import Interval
from calendars.base import EventSpec

_MAX_QUERY_RANGE = timedelta(days=90)  # freeBusy answers 400 for ranges much longer


def event_id_for(key: str) -> str:
    """The Google event id for our appointment key: base32hex (a-v, 0-9), 5-1024 characters.

    Deterministic, so every attempt to write the same appointment names the same event."""
    encoded = base64.b32hexencode(key.encode()).decode().rstrip("=").lower()
    if len(encoded) < 5:
        encoded = encoded.ljust(5, "0")
    if len(encoded) > 1024:
        raise ValueError("event key too long for a Google event id")
    return encoded


# ---- push notifications, as Google sends them ------------------------------------------------

_Printable = Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,256}$")]
MAX_HEADER = 2048  # X-Goog-Resource-URI is the longest: a calendar's events URL


class PushHeaders(BaseModel):
    """A watch channel's push: everything is in the X-Goog-* headers, the body is empty."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    channel_id: _Printable = Field(alias="x-goog-channel-id")
    token: _Printable | None = Field(default=None, alias="x-goog-channel-token")
    resource_state: str = Field(alias="x-goog-resource-state", pattern=r"^[a-z_]{1,32}$")
    resource_id: _Printable | None = Field(default=None, alias="x-goog-resource-id")
    message_number: str | None = Field(
        default=None, alias="x-goog-message-number", pattern=r"^[0-9]{1,20}$"
    )

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> Self:
        """The push's headers; raises `pydantic.ValidationError` if any is missing or odd."""
        return cls.model_validate(
            {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-goog-")}
        )

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, values: Any) -> Any:
        # The ones not read above (expiration, resource URI) are still Google's: plain ASCII.
        for name, value in values.items():
            if len(value) > MAX_HEADER or not value.isascii() or not value.isprintable():
                raise ValueError(f"{name} is not a header Google sends")
        return values


def _calendar_list_page(page_token: str | None) -> Callable[[Any], Any]:
    def make(service: Any) -> Any:
        return service.calendarList().list(pageToken=page_token, maxResults=250)

    return make


def _own_calendar(entry: dict[str, Any], me: str | None) -> bool:
    """Whether a calendarList entry is one of the user's own calendars, whose events are theirs.

    The primary calendar is; so is a secondary calendar the user owns (`accessRole` owner, an
    id under `@group.calendar.google.com`). Not: calendars Google provides to subscribe to
    (holidays, contacts' birthdays: ids under `@group.v.calendar.google.com`, role reader),
    calendars shared by someone else (reader, writer, freeBusyReader), nor another person's
    primary calendar even when they gave this user the owner role (its id is their address).
    """
    if entry.get("primary"):
        return True
    if entry.get("accessRole") != "owner":
        return False
    calendar_id = str(entry.get("id") or "").lower()
    if calendar_id.endswith("@group.v.calendar.google.com"):
        return False
    if calendar_id.endswith("@group.calendar.google.com"):
        return True
    return me is not None and calendar_id == me.lower()


def _freebusy_error(calendar_id: str, errors: list[dict[str, Any]]) -> CalendarUnavailable:
    """A calendar's `errors` in a freeBusy answer; a calendar not found or forbidden stays so."""
    reasons = sorted({str(e.get("reason") or "unknown") for e in errors})
    if "notFound" in reasons:
        return CalendarUnavailable(
            f"Google calendar {calendar_id} was not found, or is not shared with this "
            f"account ({', '.join(reasons)})",
            retryable=False,
        )
    if "forbidden" in reasons:
        return CalendarUnavailable(
            f"Google calendar {calendar_id} is forbidden to this account", retryable=False
        )
    return CalendarUnavailable(
        f"Google could not read the free/busy time of calendar {calendar_id} ({', '.join(reasons)})"
    )


def _event_busy(
    event: dict[str, Any], tz: ZoneInfo, start: datetime, end: datetime
) -> list[Interval]:
    """An event's busy interval inside [start, end): none when it is free time."""
    if event.get("transparency") == "transparent":
        return []
    if any(
        a.get("self") and a.get("responseStatus") == "declined"
        for a in event.get("attendees") or []
    ):
        return []
    begins, ends = _when(event.get("start") or {}, tz), _when(event.get("end") or {}, tz)
    if begins is None or ends is None or ends <= begins:
        return []
    if ends <= start or begins >= end:
        return []
    return [(begins, ends)]


def _when(value: dict[str, Any], tz: ZoneInfo) -> datetime | None:
    if "dateTime" in value:
        parsed = datetime.fromisoformat(value["dateTime"])
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=ZoneInfo(value.get("timeZone") or tz.key))
        return parsed.astimezone(UTC)
    if "date" in value:
        # An all-day date is the whole local day where the staff member is.
        day = date.fromisoformat(value["date"])
        return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    return None


def _event_body(event: EventSpec) -> dict[str, Any]:
    _require_aware(event.start, event.end)
    if event.end <= event.start:
        raise ValueError("an event must end after it starts")
    body: dict[str, Any] = {
        "summary": event.summary,
        "description": event.description,
        "start": {"dateTime": event.start.isoformat(), "timeZone": event.timezone},
        "end": {"dateTime": event.end.isoformat(), "timeZone": event.timezone},
        "status": "confirmed",  # revives the event if someone deleted it in the calendar
        "transparency": "opaque",
    }
    if event.location:
        body["location"] = event.location
    return body


def _windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    out = []
    while start < end:
        stop = min(end, start + _MAX_QUERY_RANGE)
        out.append((start, stop))
        start = stop
    return out


def _require_aware(*values: datetime) -> None:
    if any(v.tzinfo is None for v in values):
        raise ValueError("times must be aware datetimes")


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_instant(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)
