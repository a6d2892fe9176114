"""The call log: one `Call` row per phone call, opened when it rings and closed when it ends.

Telephony providers retry webhooks, so opening a call is idempotent on the provider's call id
(`call_sid`): the same id twice, even from two requests racing each other, gives one row.
Database work runs in a worker thread, like the scheduler's, so the event loop never waits on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from booking import errors
from booking.clock import Clock, SystemClock
from booking.db import in_session
from booking.models import Call, Contact

log = logging.getLogger(__name__)
T = TypeVar("T")

FINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})


@dataclass
class CallLog:
    """Opens, annotates and closes `Call` rows."""

    engine: Engine
    clock: Clock

    @classmethod
    def over(cls, engine: Engine, clock: Clock | None = None) -> CallLog:
        return cls(engine=engine, clock=clock or SystemClock())

    async def _db(self, fn: Callable[[Session], T], *, write: bool = False) -> T:
        return await in_session(self.engine, fn, write=write)

    async def start_call(
        self, *, business_id: str, call_sid: str, from_number: str | None, to_number: str | None
    ) -> Call:
        """The call with this `call_sid`, created on first sight (a retried webhook reuses it)."""
        call, _ = await self.begin_call(
            business_id=business_id, call_sid=call_sid, from_number=from_number, to_number=to_number
        )
        return call

    async def begin_call(
        self,
        *,
        business_id: str,
        call_sid: str,
        from_number: str | None,
        to_number: str | None,
        channel: str | None = None,
    ) -> tuple[Call, bool]:
        """As `start_call`, and whether this request created the row (nothing else can have
        been stored for a call created here)."""
        if not call_sid:
            raise errors.InvalidRequest("a call needs the provider's call id")
        now = self.clock.now()

        def write(s: Session) -> tuple[Call, bool]:
            existing = _by_sid(s, call_sid)
            if existing is not None:
                return existing, False
            contact = _contact(s, business_id, from_number)
            row = Call(
                business_id=business_id,
                call_sid=call_sid,
                from_number=from_number,
                to_number=to_number,
                contact_id=contact.id if contact else None,
                started_at=now,
                channel=channel,
            )
            s.add(row)
            s.flush()
            return row, True

        try:
            return await self._db(write, write=True)
        except IntegrityError:
            # Another request inserted the same call_sid between our read and our insert.
            row = await self.get_by_sid(call_sid)
            if row is None:
                raise
            return row, False

    async def get_by_sid(self, call_sid: str) -> Call | None:
        return await self._db(lambda s: _by_sid(s, call_sid))

    async def get(self, call_id: str) -> Call | None:
        return await self._db(lambda s: s.get(Call, call_id))

    async def save_transcript(
        self, call_id: str, transcript: list[dict[str, Any]], *, summary: str | None = None
    ) -> None:
        def write(s: Session) -> None:
            row = s.get(Call, call_id)
            if row is None:
                raise errors.NotFound(f"no call {call_id}")
            row.transcript = list(transcript)
            if summary is not None:
                row.summary = summary
            s.add(row)

        await self._db(write, write=True)

    async def finish_call(
        self,
        call_sid: str,
        *,
        status: str,
        duration_seconds: int | None = None,
        outcome: str | None = None,
    ) -> Call:
        """Close the call; repeating it (a retried status callback) changes nothing further."""
        now = self.clock.now()

        def write(s: Session) -> Call:
            row = _by_sid(s, call_sid)
            if row is None:
                raise errors.NotFound(f"no call {call_sid}")
            if row.ended_at is not None:
                return row
            row.status = status
            row.outcome = outcome or row.outcome
            row.duration_seconds = duration_seconds
            row.ended_at = _ended_at(row.started_at, now, duration_seconds)
            s.add(row)
            s.flush()
            return row

        return await self._db(write, write=True)

    async def set_outcome(self, call_id: str, outcome: str) -> None:
        def write(s: Session) -> None:
            row = s.get(Call, call_id)
            if row is not None:
                row.outcome = outcome
                s.add(row)

        await self._db(write, write=True)


def _by_sid(s: Session, call_sid: str) -> Call | None:
    return s.exec(select(Call).where(Call.call_sid == call_sid)).first()


def _contact(s: Session, business_id: str, phone: str | None) -> Contact | None:
    if not phone:
        return None
    return s.exec(
        select(Contact).where(Contact.business_id == business_id, Contact.phone == phone)
    ).first()


def _ended_at(started_at: datetime, now: datetime, duration_seconds: int | None) -> datetime:
    """When the call ended: its start plus the provider's duration, else now."""
    if duration_seconds is None:
        return now.astimezone(UTC)
    return (started_at + timedelta(seconds=duration_seconds)).astimezone(UTC)
