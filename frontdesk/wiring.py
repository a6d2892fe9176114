"""Builds the scheduler, the calendar service and the LLM settings from `Settings`, for every
entry point (the web app in `frontdesk.app`, the command line in `frontdesk.cli`).

This is the one place settings become objects: the inner packages (booking, calendars, agent,
telephony, dashboard) never read `Settings`; they are given what they need.

Nothing here imports the web app, Twilio or the LLM client, and the calendar providers' SDKs
(Google, Microsoft, CalDAV) are imported only once a staff member with linked calendars is
searched or written to: a command-line command starts in well under a second.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from agent.llm import LlmConfig
    from booking.busy import CalendarBusy, CalendarWriter, StaffCalendars
    from booking.clock import Clock
    from booking.retry import RetryPolicy
    from booking.rules import Interval
    from booking.scheduler import Scheduler
    from calendars.base import CalendarProvider, OAuthClient
    from calendars.service import CalendarService
    from frontdesk.settings import Settings


def llm_config(settings: Settings) -> LlmConfig:
    """The LLM the agent talks to (`FRONTDESK_OPENAI_*`, `FRONTDESK_LLM_*`)."""
    from agent.llm import LlmConfig

    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    return LlmConfig(
        model=settings.llm_model,
        api_key=key or None,
        base_url=settings.openai_base_url,
        timeout=settings.llm_timeout_seconds,
    )


def build_retry_policy(settings: Settings, clock: Clock | None = None) -> RetryPolicy:
    """The one retry policy of the calendar providers (`FRONTDESK_RETRY_ATTEMPTS`,
    `FRONTDESK_RETRY_MAX_WAIT_SECONDS`), on `clock`: the wall clock by default, also when the
    scheduler runs at a fixed `--now`, because a server's Retry-After date is wall-clock time."""
    from booking.clock import SystemClock
    from booking.retry import RetryPolicy

    return RetryPolicy(
        attempts=settings.retry_attempts,
        max_retry_after=settings.retry_max_wait_seconds,
        clock=clock or SystemClock(),
    )


def build_providers(settings: Settings, clock: Clock | None = None) -> dict[str, CalendarProvider]:
    """One provider per calendar kind, with the settings' timeouts and API addresses.

    Every provider reads "now" (Retry-After dates, retry deadlines) from the same `clock` (the
    wall clock by default), and Google, Microsoft and CalDAV retry through the same policy
    (`build_retry_policy`). Each is wrapped in `frontdesk.metrics.MeteredProvider`: its calls
    are timed and its errors counted by kind and operation."""
    from booking.clock import SystemClock
    from calendars.caldav import CaldavProvider
    from calendars.google import GoogleProvider
    from calendars.ics import IcsProvider
    from calendars.microsoft import MicrosoftProvider
    from frontdesk.metrics import metered

    timeout = settings.calendar_timeout_seconds
    clock = clock or SystemClock()
    retry = build_retry_policy(settings, clock)
    providers: dict[str, CalendarProvider] = {
        "ics": IcsProvider(timeout=timeout, clock=clock),
        "caldav": CaldavProvider(timeout=timeout, clock=clock, retry=retry),
        "google": GoogleProvider(
            api_base_url=settings.google_api_base_url, timeout=timeout, clock=clock, retry=retry
        ),
        "microsoft": MicrosoftProvider(
            graph_base_url=settings.microsoft_graph_base_url,
            timeout=timeout,
            # The whole operation (pages, retries, waits); each request's retries get the time
            # left as their deadline, so a Retry-After beyond it gives up at once, kept.
            time_limit=max(timeout, 10.0),
            clock=clock,
            retry=retry,
        ),
    }
    return metered(providers)


def build_oauth(settings: Settings) -> dict[str, OAuthClient]:
    """The OAuth clients whose app credentials are set (Google, Microsoft)."""
    from calendars.google import GoogleOAuth
    from calendars.microsoft import MicrosoftOAuth

    clients: dict[str, OAuthClient] = {}
    if settings.google_client_id and settings.google_client_secret:
        clients["google"] = GoogleOAuth(
            settings.google_client_id,
            settings.google_client_secret.get_secret_value(),
            auth_url=settings.google_auth_url,
            token_url=settings.google_token_url,
            api_base_url=settings.google_api_base_url,
        )
    if settings.microsoft_client_id and settings.microsoft_client_secret:
        clients["microsoft"] = MicrosoftOAuth(
            settings.microsoft_client_id,
            settings.microsoft_client_secret.get_secret_value(),
            authority=settings.microsoft_authority,
        )
    return clients


def build_calendar_service(settings: Settings, engine: Engine) -> CalendarService:
    """The calendar service over `engine`, its providers and OAuth clients from settings."""
    from datetime import timedelta

    from calendars.secrets import Vault
    from calendars.service import CalendarService

    key = settings.secret_key.get_secret_value() if settings.secret_key else None
    return CalendarService(
        engine=engine,
        vault=Vault(key),
        providers=build_providers(settings),
        oauth=build_oauth(settings),
        public_base_url=settings.public_base_url,
        horizon=timedelta(days=settings.calendar_horizon_days),
        max_age=timedelta(seconds=settings.calendar_cache_max_age_seconds),
        allow_private_urls=settings.allow_private_urls,
    )


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
    from booking.busy import NoWriter
    from booking.clock import SystemClock
    from booking.db import make_engine, migrate
    from booking.scheduler import Scheduler

    engine = engine or make_engine(settings.database_url)
    migrate(engine)
    if calendars is None:
        lazy = LazyCalendars(settings, engine)
        busy: CalendarBusy = lazy
        writer: CalendarWriter = lazy
    else:
        busy, writer = calendars, NoWriter()
    return Scheduler(
        engine=engine,
        calendars=busy,
        writer=writer,
        clock=clock or SystemClock(),
        hold_minutes=settings.hold_minutes,
        calendar_timeout=settings.calendar_timeout_seconds,
        write_timeout=settings.calendar_write_timeout_seconds,
    )


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
