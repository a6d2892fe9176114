"""Builds the scheduler and the calendar service from settings, for every entry point.

Nothing here imports the web app, Twilio or the LLM client, and the calendar providers' SDKs
(Google, Microsoft, CalDAV) are imported only once a staff member with linked calendars is
searched or written to: a command-line command starts in well under a second.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from booking.busy import CalendarBusy, StaffCalendars
    from booking.clock import Clock
    from booking.rules import Interval
    from booking.scheduler import Scheduler
    from calendars.service import CalendarService
    from frontdesk.settings import Settings


class LazyCalendars:
    """The scheduler's linked-calendar reader and writer, built on first use.

    The scheduler asks only for staff who have links and writes back only appointments that
    have a calendar, so a business without linked calendars never builds the service."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._service: CalendarService | None = None

    @property
    def built(self) -> bool:
        return self._service is not None

    @property
    def service(self) -> CalendarService:
        if self._service is None:
            from calendars.setup import build_calendar_service

            self._service = build_calendar_service(self._settings, self._engine)
        return self._service

    async def busy(
        self, calendars: StaffCalendars, *, start: datetime, end: datetime, live: bool = False
    ) -> list[Interval]:
        return await self.service.busy(calendars, start=start, end=end, live=live)

    async def sync_appointment(self, appointment_id: str) -> str:
        return await self.service.sync_appointment(appointment_id)

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()


def build_scheduler(
    settings: Settings,
    *,
    engine: Engine | None = None,
    calendars: CalendarBusy | None = None,
    clock: Clock | None = None,
) -> Scheduler:
    """The scheduler over a migrated database.

    Linked calendars are read (and bookings written back) through a `CalendarService` built from
    the same settings when first needed, unless `calendars` replaces it (tests)."""
    from booking.clock import SystemClock
    from booking.db import make_engine, migrate
    from booking.scheduler import Scheduler

    engine = engine or make_engine(settings.database_url)
    migrate(engine)
    lazy = LazyCalendars(settings, engine) if calendars is None else None
    scheduler = Scheduler(
        engine=engine,
        calendars=calendars or lazy,  # type: ignore[arg-type]
        clock=clock or SystemClock(),
        hold_minutes=settings.hold_minutes,
        calendar_timeout=settings.calendar_timeout_seconds,
        write_timeout=settings.calendar_write_timeout_seconds,
    )
    if lazy is not None:
        scheduler.writer = lazy
    return scheduler


def calendar_service(scheduler: Scheduler) -> CalendarService | None:
    """The full calendar service behind a scheduler from `build_scheduler` (built now), or
    None when the scheduler was given other calendars."""
    from calendars.service import CalendarService

    calendars = scheduler.calendars
    if isinstance(calendars, LazyCalendars):
        return calendars.service
    return calendars if isinstance(calendars, CalendarService) else None


async def close_calendars(scheduler: Scheduler) -> None:
    """Close the calendar service's connections, if it was built."""
    calendars = scheduler.calendars
    if isinstance(calendars, LazyCalendars):
        await calendars.close()
