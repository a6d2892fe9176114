"""The interface every calendar provider kind implements.

A provider serves one kind of link (`{"provider": "ics", ...}`, later Google, Microsoft, CalDAV)
and knows nothing of businesses or staff: the registry hands it one stored link at a time, with
the staff member's zone for the times a calendar leaves without one (floating times, all-day
dates). Reading is all there is for now; writing (list, create, update, delete) and change
subscriptions join this protocol when a provider that supports them arrives.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from booking.rules import Interval


class CalendarProvider(Protocol):
    """One kind of linked calendar, read through the links stored for staff members."""

    async def busy(
        self,
        link: dict[str, Any],
        *,
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
        live: bool,
    ) -> list[Interval]:
        """Busy intervals of the linked calendar that overlap `[start, end)`.

        Intervals are aware UTC, half-open, sorted by start and not clipped to the window. `tz`
        is the staff member's zone: floating times and all-day dates are read in it. `live=True`
        asks for a fresh read instead of a cached one (the re-check just before booking).

        Raises `booking.errors.CalendarUnavailable` when the calendar cannot be read in time or
        cannot be understood; the message names the calendar without any credentials.
        """
        ...
