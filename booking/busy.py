"""The port through which slot search sees linked calendars; `calendars/` implements it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from booking.rules import Interval


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
