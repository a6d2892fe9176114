"""What every part of the calendar service shares: the database, the providers, the clock, the
settings, and the background tasks they start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session

from booking import errors
from booking.db import in_session
from calendars.base import CalendarProvider, OAuthClient
from calendars.secrets import Vault

T = TypeVar("T")


def system_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CalendarRuntime:
    """The calendar service's settings and shared means (one instance, passed to each part)."""

    engine: Engine
    vault: Vault
    providers: Mapping[str, CalendarProvider]
    oauth: Mapping[str, OAuthClient] = field(default_factory=dict)
    public_base_url: str = "http://127.0.0.1:8000"  # Settings: http://HOST:PORT by default
    now: Callable[[], datetime] = system_now
    horizon: timedelta = timedelta(days=90)
    max_age: timedelta = timedelta(minutes=15)
    write_lease: timedelta = timedelta(seconds=90)
    allow_private_urls: bool = True  # the app passes FRONTDESK_ALLOW_PRIVATE_URLS

    async def db(self, fn: Callable[[Session], T], *, write: bool = False) -> T:
        return await in_session(self.engine, fn, write=write)

    def provider(self, name: str) -> CalendarProvider:
        provider = self.providers.get(name)
        if provider is None:
            raise errors.CalendarUnavailable(f"calendar provider {name!r} is not configured")
        return provider

    def url(self, path: str) -> str:
        """An address of this server (`path` starts with "/")."""
        return self.public_base_url.rstrip("/") + path


class Background:
    """Tasks started after an answer (refreshes after a notification, channel renewals), one
    per key: a key whose task still runs is not started again."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def running(self, key: str) -> asyncio.Task[None] | None:
        task = self.tasks.get(key)
        return task if task is not None and not task.done() else None

    def start(self, key: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self.tasks[key] = task
        return task

    async def wait(self) -> None:
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def cancel(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await self.wait()
