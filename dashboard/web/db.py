"""Database access for the pages: the scheduler's engine and clock, sessions in a worker thread."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from sqlmodel import Session

from booking.db import in_session
from booking.scheduler import Scheduler
from booking.sms_outbox import SmsStore
from dashboard.models import audit

if TYPE_CHECKING:
    from dashboard.web.auth import WebUser

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


async def record(
    request: Request, user: WebUser, action: str, subject: str, details: dict[str, Any]
) -> None:
    """Add a line to the audit log: who did what to which record, when (by the clock)."""
    at = now(request)
    await run(
        request,
        lambda s: audit(
            s,
            business_id=user.business_id,
            actor=user.email,
            user_id=user.id,
            action=action,
            subject=subject,
            details=details,
            at=at,
        ),
        write=True,
    )
