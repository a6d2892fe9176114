"""Graph's JSON (calendars, events, change notifications) to our values and back."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

from booking.errors import CalendarUnavailable
from booking.rules import Interval
from calendars.base import EventSpec

_DAY = timedelta(days=1)
_FREE_SHOW_AS = {"free", "workingElsewhere"}
_TX_NAMESPACE = uuid.UUID("5b0d8f3e-6a61-4f57-9f0c-2b4e8f5f6a10")
# ---- change notifications, as Graph posts them ------------------------------------------------

# Subscription ids are GUIDs and our clientState is URL-safe base64: printable ASCII, short.
GraphId = Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,256}$")]
MAX_NOTIFICATION_BODY = 256 * 1024
MAX_NOTIFICATIONS = 100  # Graph batches a few; a hundred is far past what it sends


class GraphNotification(BaseModel):
    """One item of a changeNotificationCollection: a change or a lifecycle event."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    subscription_id: GraphId = Field(alias="subscriptionId")
    client_state: GraphId | None = Field(default=None, alias="clientState")
    # reauthorizationRequired, subscriptionRemoved, missed; absent on a change notification.
    lifecycle_event: str | None = Field(default=None, alias="lifecycleEvent", max_length=64)


class GraphNotifications(BaseModel):
    """The body of a POST to the notification URL."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    value: list[GraphNotification] = Field(max_length=MAX_NOTIFICATIONS)


def _can_edit(row: dict[str, Any]) -> bool:
    """Whether the user may add events to a Graph calendar: its `canEdit`, True when absent
    (nothing says otherwise), for both what is written to and what counts as the user's own."""
    return bool(row.get("canEdit", True))


def _own_calendar(row: dict[str, Any], mine: Collection[str]) -> bool:
    """Whether a Graph calendar is one of the user's own: the default calendar, or one the user
    can edit whose `owner` (who created or added it) is the user, by any address Graph gives
    the user (`mine`: `mail`, `userPrincipalName`). A calendar shared by someone else has them
    as owner; a holiday or birthday calendar cannot be edited."""
    if row.get("isDefaultCalendar"):
        return True
    if not _can_edit(row):
        return False
    owner = row.get("owner")
    address = owner.get("address") if isinstance(owner, dict) else None
    known = {m.casefold() for m in mine if m}
    if not address or not known:
        return True  # nothing says it is another person's, and the user can edit it
    return str(address).casefold() in known


def _seg(value: str) -> str:
    return quote(value, safe="")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _require_aware(*moments: datetime) -> None:
    if any(m.tzinfo is None for m in moments):
        raise ValueError("start and end must be aware datetimes")


def _parse_local(value: str) -> datetime:
    """Graph's dateTime ("2026-12-01T14:00:00.0000000"): seven fraction digits, no zone."""
    head, _, fraction = value.partition(".")
    digits = fraction[: len(fraction) - len(fraction.lstrip("0123456789"))]
    suffix = fraction[len(digits) :]
    parsed = datetime.fromisoformat(head + suffix.replace("Z", "+00:00"))
    if digits:
        parsed = parsed.replace(microsecond=int((digits + "000000")[:6]))
    return parsed


def _parse_instant(value: str) -> datetime:
    parsed = _parse_local(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    if name.upper() in ("UTC", "ETC/GMT", "GMT"):
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarUnavailable(
            f"Microsoft calendar sent an unknown time zone {name[:40]!r}"
        ) from None


def _moment(value: Any) -> datetime:
    if not isinstance(value, dict) or not value.get("dateTime"):
        raise CalendarUnavailable("Microsoft calendar sent an event without a time")
    try:
        local = _parse_local(str(value["dateTime"]))
    except ValueError:
        raise CalendarUnavailable("Microsoft calendar sent an unreadable time") from None
    if local.tzinfo is not None:
        return local.astimezone(UTC)
    return local.replace(tzinfo=_zone(str(value.get("timeZone") or "UTC"))).astimezone(UTC)


def _local_date(value: Any) -> date:
    if not isinstance(value, dict) or not value.get("dateTime"):
        raise CalendarUnavailable("Microsoft calendar sent an event without a date")
    try:
        return _parse_local(str(value["dateTime"])).date()
    except ValueError:
        raise CalendarUnavailable("Microsoft calendar sent an unreadable date") from None


def _is_busy(row: dict[str, Any]) -> bool:
    if row.get("isCancelled"):
        return False
    if (row.get("responseStatus") or {}).get("response") == "declined":
        return False
    return row.get("showAs") not in _FREE_SHOW_AS


def _busy_of(row: dict[str, Any], tz: ZoneInfo, start: datetime, end: datetime) -> list[Interval]:
    """The event's busy interval (aware UTC) if it is busy and overlaps `[start, end)`."""
    if not _is_busy(row):
        return []
    if row.get("isAllDay"):
        # Midnight to midnight in any zone Graph is asked for: the dates are what counts.
        first, last = _local_date(row.get("start")), _local_date(row.get("end"))
        begin = datetime.combine(first, time(), tz).astimezone(UTC)
        finish = datetime.combine(max(last, first + _DAY), time(), tz).astimezone(UTC)
    else:
        begin, finish = _moment(row.get("start")), _moment(row.get("end"))
    if finish <= begin or begin >= end or finish <= start:
        return []
    return [(begin, finish)]


def _event_body(event: EventSpec) -> dict[str, Any]:
    zone = ZoneInfo(event.timezone)

    def at(moment: datetime) -> dict[str, str]:
        local = moment.astimezone(zone).replace(tzinfo=None)
        return {"dateTime": local.isoformat(timespec="seconds"), "timeZone": event.timezone}

    body: dict[str, Any] = {
        "subject": event.summary,
        "body": {"contentType": "text", "content": event.description},
        "start": at(event.start),
        "end": at(event.end),
        "showAs": "busy",
    }
    if event.location:
        body["location"] = {"displayName": event.location}
    return body


def _transaction_id(key: str, replaced_event_id: str | None) -> str:
    """Graph's create de-duplication handle: stable for one appointment's event, and new when
    an event deleted in the calendar has to be written again."""
    name = key if replaced_event_id is None else f"{key}\n{replaced_event_id}"
    return f"frontdesk-{uuid.uuid5(_TX_NAMESPACE, name)}"
