"""The ports through which slot search sees linked calendars; `calendars/` implements them.

`CalendarBusy` reads busy time and `CalendarWriter` writes bookings back. Which staff members
have a linked account, and whether it takes bookings, booking reads itself with `linked_calendars`
in the transaction that loads the staff: a read of a few columns of the `calendarconnection`
table that `calendars.models.CalendarConnection` maps (booking imports no calendars code; the
table is part of the one schema `booking/migrations` creates). A port method would have to be
implemented by every `CalendarBusy` (test stand-ins included) and would read outside that
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session

from booking.rules import Interval

# The columns of `calendars.models.CalendarConnection` booking reads (a test holds the two to
# the same table).
LINKED_CALENDARS = sa.table(
    "calendarconnection",
    sa.column("id", sa.String),
    sa.column("business_id", sa.String),
    sa.column("staff_id", sa.String),
    sa.column("provider", sa.String),
    sa.column("write_calendar", sa.String),
    sa.column("status", sa.String),
    sa.column("created_at", sa.DateTime),
)


@dataclass(frozen=True)
class LinkedCalendar:
    """A staff member's linked calendar account, as slot search and booking need it."""

    connection_id: str
    staff_id: str
    provider: str
    writes: bool  # bookings are written into one of its calendars


def linked_calendars(
    s: Session, business_id: str, staff_ids: Sequence[str]
) -> list[LinkedCalendar]:
    """The linked (not disconnected) calendar accounts of these staff, oldest first."""
    if not staff_ids:
        return []
    t = LINKED_CALENDARS.c
    rows = (
        s.connection()
        .execute(
            sa.select(t.id, t.staff_id, t.provider, t.write_calendar)
            .where(
                t.business_id == business_id,
                t.staff_id.in_(list(staff_ids)),
                t.status != "disconnected",
            )
            .order_by(t.created_at, t.id)
        )
        .all()
    )
    return [
        LinkedCalendar(connection_id=i, staff_id=sid, provider=p, writes=bool(w))
        for i, sid, p, w in rows
    ]


@dataclass(frozen=True)
class StaffCalendars:
    """One staff member's linked calendars, as stored (`{"provider": ..., ...}` each)."""

    business_id: str
    staff_id: str
    tz: ZoneInfo
    links: Sequence[dict[str, Any]] = field(default_factory=tuple)


class CalendarBusy(Protocol):
    async def busy(
        self, calendars: StaffCalendars, *, start: datetime, end: datetime, live: bool = False
    ) -> list[Interval]:
        """Busy intervals (aware UTC, half-open) in `[start, end)` from every linked calendar.

        `live=True` asks for a fresh read (booking re-check) rather than a cached one. Raises
        `booking.errors.CalendarUnavailable` when a calendar cannot be read in time.
        """
        ...


class NoCalendars:
    """For a business with no linked calendars (and tests that want none)."""

    async def busy(
        self, calendars: StaffCalendars, *, start: datetime, end: datetime, live: bool = False
    ) -> list[Interval]:
        return []


class CalendarWriter(Protocol):
    async def sync_appointment(self, appointment_id: str) -> str:
        """Write an appointment's current state into its staff member's calendar.

        Returns the appointment's new `sync_state` (see `booking.models.SyncState`); raises
        `booking.errors.CalendarUnavailable` when the calendar could not be written (the
        appointment stays `not_synced` for the retry job)."""
        ...


class NoWriter:
    """For a scheduler without calendar write-back (tests, and the CLI's one-shot commands)."""

    async def sync_appointment(self, appointment_id: str) -> str:
        return "not_synced"
