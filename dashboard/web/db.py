"""Database access for the pages: the scheduler's engine and clock, sessions in a worker thread."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from fastapi import Request
from sqlmodel import Session

from booking.db import in_session
from booking.scheduler import Scheduler
from booking.sms_outbox import SmsStore

T = TypeVar("T")


def scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler  # type: ignore[no-any-return]


def texts(request: Request) -> SmsStore:
    """The SMS outbox over the scheduler's database: the texts sent about appointments."""
    return SmsStore.over(scheduler(request).engine, scheduler(request).clock)


def now(request: Request) -> datetime:
    """Now from the scheduler's clock, so tests with a fixed clock see fixed pages."""
    return scheduler(request).clock.now().astimezone(UTC)


async def run(request: Request, fn: Callable[[Session], T], *, write: bool = False) -> T:
    """Run `fn` in one transaction in a worker thread, so the event loop never waits."""
    return await in_session(scheduler(request).engine, fn, write=write)
