"""Chooses the provider for each linked calendar; booking's `CalendarBusy` port lives here."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from booking.busy import StaffCalendars
from booking.errors import CalendarUnavailable
from booking.rules import Interval
from calendars.base import CalendarProvider
from calendars.ics import IcsProvider


class CalendarRegistry:
    """Busy time of a staff member from all their linked calendars, read concurrently.

    `providers` maps a link's `"provider"` name to the provider that reads it; by default only
    ICS calendars are known.
    """

    def __init__(self, providers: Mapping[str, CalendarProvider] | None = None) -> None:
        self._providers: dict[str, CalendarProvider] = (
            dict(providers) if providers is not None else {"ics": IcsProvider()}
        )

    async def busy(
        self, calendars: StaffCalendars, *, start: datetime, end: datetime, live: bool = False
    ) -> list[Interval]:
        """Merged busy intervals (aware UTC, sorted, overlaps joined) of every linked calendar.

        Raises `CalendarUnavailable` if any one calendar cannot be read: a partial answer could
        offer a time the unread calendar has taken.
        """
        # Every provider is looked up before any read starts, so an unknown one leaves no
        # coroutine un-awaited.
        providers = [(self._provider(calendars, link), link) for link in calendars.links]
        reads = [
            provider.busy(link, tz=calendars.tz, start=start, end=end, live=live)
            for provider, link in providers
        ]
        # Every read runs to completion before an error is raised, so none is left behind.
        results = await asyncio.gather(*reads, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return merge([interval for result in results for interval in result])

    def _provider(self, calendars: StaffCalendars, link: dict[str, Any]) -> CalendarProvider:
        name = link.get("provider")
        provider = self._providers.get(name) if isinstance(name, str) else None
        if provider is None:
            raise CalendarUnavailable(
                f"staff {calendars.staff_id} has a calendar of unknown provider {name!r}"
            )
        return provider


def merge(intervals: list[Interval]) -> list[Interval]:
    """Sort intervals and join those that overlap or touch."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
