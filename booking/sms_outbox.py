"""The durable SMS outbox's table: texts queued once per key, claimed by one sender, kept with
their outcome (Twilio's message SID, or why they were given up on).

A text is `pending` until a sender records it `sent` or `failed`. Senders claim rows
(`booking.claims`) before posting them: only the claim's holder records an outcome, and a claim
whose sender died lapses after its lease, so the text is sent by another worker instead of
being lost. Posting is not here: `booking` imports no Twilio code (see `telephony.sms_outbox`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from booking import claims
from booking.clock import Clock, SystemClock
from booking.db import in_session
from booking.models import SmsMessage, SmsStatus, new_id

T = TypeVar("T")
TABLE: sa.Table = SmsMessage.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ClaimedSms:
    """A text this sender holds the claim on: post it, then record the outcome with `claim`."""

    id: str
    claim: str
    business_id: str
    key: str
    to_number: str
    from_number: str
    body: str
    attempts: int  # made before this one


@dataclass
class SmsStore:
    engine: Engine
    clock: Clock

    @classmethod
    def over(cls, engine: Engine, clock: Clock | None = None) -> SmsStore:
        return cls(engine, clock or SystemClock())

    async def _db(self, fn: Callable[[Session], T]) -> T:
        return await in_session(self.engine, fn, write=True)

    async def enqueue(
        self, *, business_id: str, key: str, to_number: str, from_number: str, body: str
    ) -> str | None:
        """Queue a text, due now; its id, or None if a text with this key was queued before."""
        now = self.clock.now()
        sms_id = new_id("sms")
        row = {
            "id": sms_id,
            "business_id": business_id,
            "key": key,
            "to_number": to_number,
            "from_number": from_number,
            "body": body,
            "status": SmsStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }

        def write(s: Session) -> bool:
            insert = claims.insert_for(s)(TABLE).values(**row)
            once = insert.on_conflict_do_nothing(index_elements=["business_id", "key"])
            return s.execute(once.returning(TABLE.c.id)).first() is not None

        return sms_id if await self._db(write) else None

    async def claim(
        self, *, lease: timedelta, limit: int = 20, sms_id: str | None = None
    ) -> list[ClaimedSms]:
        """Claim pending texts whose time has come (or just `sms_id`), oldest due first."""
        now = self.clock.now()
        where = [TABLE.c.status == SmsStatus.PENDING.value, TABLE.c.next_attempt_at <= now]
        if sms_id is not None:
            where.append(TABLE.c.id == sms_id)

        def write(s: Session) -> list[ClaimedSms]:
            token, ids = claims.claim_rows(
                s,
                TABLE,
                where=where,
                now=now,
                lease=lease,
                limit=limit,
                order_by=[TABLE.c.next_attempt_at, TABLE.c.id],
            )
            if not ids:
                return []
            rows = {r.id: r for r in s.execute(sa.select(TABLE).where(TABLE.c.id.in_(ids)))}
            return [
                ClaimedSms(
                    id=r.id,
                    claim=token,
                    business_id=r.business_id,
                    key=r.key,
                    to_number=r.to_number,
                    from_number=r.from_number,
                    body=r.body,
                    attempts=r.attempts,
                )
                for r in (rows[i] for i in ids)
            ]

        return await self._db(write)

    async def sent(self, sms: ClaimedSms, *, sid: str) -> bool:
        """Record that Twilio accepted the text as `sid`; False if our claim had lapsed and
        another sender took the text over (what it records stands)."""
        now = self.clock.now()
        return await self._record(
            sms, status=SmsStatus.SENT, sid=sid, error=None, sent_at=now, next_attempt_at=None
        )

    async def failed(self, sms: ClaimedSms, *, error: str, retry_in: float | None) -> bool:
        """Record a failed attempt: pending again in `retry_in` seconds, or (None) given up."""
        now = self.clock.now()
        if retry_in is None:
            return await self._record(sms, status=SmsStatus.FAILED, sid=None, error=error)
        due = now + timedelta(seconds=retry_in)
        return await self._record(
            sms, status=SmsStatus.PENDING, sid=None, error=error, next_attempt_at=due
        )

    async def _record(
        self,
        sms: ClaimedSms,
        *,
        status: SmsStatus,
        sid: str | None,
        error: str | None,
        sent_at: datetime | None = None,
        next_attempt_at: datetime | None = None,
    ) -> bool:
        values: dict[str, object] = {
            "status": status.value,
            "attempts": TABLE.c.attempts + 1,
            "sid": sid,
            "error": error[:1000] if error else None,
            "sent_at": sent_at,
            "claim": None,
            "claimed_until": None,
        }
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at

        def write(s: Session) -> bool:
            done = s.execute(
                sa.update(TABLE)
                .where(TABLE.c.id == sms.id, TABLE.c.claim == sms.claim)
                .values(**values)
            )
            return bool(claims.rowcount(done))

        return await self._db(write)

    async def get(self, business_id: str, key: str) -> SmsMessage | None:
        """The text queued under `key` (for the logs, the dashboard and tests)."""

        def read(s: Session) -> SmsMessage | None:
            query = sa.select(SmsMessage).where(
                SmsMessage.business_id == business_id,  # type: ignore[arg-type]
                SmsMessage.key == key,  # type: ignore[arg-type]
            )
            return s.execute(query).scalars().first()

        return await in_session(self.engine, read)

    async def next_due(self) -> datetime | None:
        """When the earliest pending text is due (the job's lag is now minus this)."""

        def read(s: Session) -> datetime | None:
            query = sa.select(sa.func.min(TABLE.c.next_attempt_at)).where(
                TABLE.c.status == SmsStatus.PENDING.value
            )
            return s.execute(query).scalar()

        return await in_session(self.engine, read)
