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
from booking.models import (
    Appointment,
    AppointmentStatus,
    InboundSms,
    SmsKind,
    SmsMessage,
    SmsOptOut,
    SmsStatus,
    new_id,
)

T = TypeVar("T")
TABLE: sa.Table = SmsMessage.__table__  # type: ignore[attr-defined]
OPT_OUT: sa.Table = SmsOptOut.__table__  # type: ignore[attr-defined]
INBOUND: sa.Table = InboundSms.__table__  # type: ignore[attr-defined]
# Twilio's message statuses in the order a message moves through them; a late callback for an
# earlier one (they can arrive out of order) never overwrites a later one.
DELIVERY_ORDER = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "read": 5,
    "undelivered": 4,
    "failed": 4,
    "canceled": 4,
}
APPOINTMENT: sa.Table = Appointment.__table__  # type: ignore[attr-defined]
RECEIVED = "received"  # an inbound text not yet answered


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
    # Taken over from a sender whose claim lapsed: it may have posted the text and died before
    # recording it, so look for it at Twilio before posting again.
    recovering: bool = False
    created_at: datetime | None = None


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
        self,
        *,
        business_id: str,
        key: str,
        to_number: str,
        from_number: str,
        body: str,
        kind: str | None = None,
        appointment_id: str | None = None,
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
            "kind": kind,
            "appointment_id": appointment_id,
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
            lapsed = set(
                s.execute(
                    sa.select(TABLE.c.id)
                    .where(*where, TABLE.c.claim.is_not(None), TABLE.c.claimed_until < now)
                    .limit(limit)
                ).scalars()
            )
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
            # Honoured before every send: such texts are never posted.
            for void, why in (
                (_opted_out_ids(s, ids), "the recipient opted out of texts from this number"),
                (_stale_reminder_ids(s, ids, now), "its appointment is over, cancelled or moved"),
            ):
                if not void:
                    continue
                s.execute(
                    sa.update(TABLE)
                    .where(TABLE.c.id.in_(void))
                    .values(
                        status=SmsStatus.CANCELLED.value, error=why, claim=None, claimed_until=None
                    )
                )
                ids = [i for i in ids if i not in void]
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
                    recovering=r.id in lapsed,
                    created_at=r.created_at,
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

    async def still_pending(self, sms: ClaimedSms) -> bool:
        """Whether `sms` is still ours to send (not voided by a cancellation, an opt-out or a
        lapsed claim): read just before posting it."""

        def read(s: Session) -> bool:
            row = s.execute(
                sa.select(TABLE.c.status, TABLE.c.claim).where(TABLE.c.id == sms.id)
            ).first()
            return row is not None and row.status == SmsStatus.PENDING and row.claim == sms.claim

        return await in_session(self.engine, read)

    # ---- opt-outs ------------------------------------------------------------------------

    async def set_opt_out(
        self, *, business_id: str, sender: str, phone: str, opted_out: bool, source: str
    ) -> None:
        """Record a STOP (`opted_out`) or a START from `phone` to the business number `sender`;
        a STOP also voids every text from `sender` to `phone` not yet sent."""
        now = self.clock.now()
        values = {
            "sender": sender,
            "phone": phone,
            "business_id": business_id,
            "opted_out": opted_out,
            "source": source[:40],
            "changed_at": now,
        }

        def write(s: Session) -> None:
            insert = claims.insert_for(s)(OPT_OUT).values(**values)
            s.execute(
                insert.on_conflict_do_update(
                    index_elements=["sender", "phone"],
                    set_={k: values[k] for k in ("opted_out", "source", "changed_at")},
                )
            )
            if opted_out:
                s.execute(
                    sa.update(TABLE)
                    .where(
                        TABLE.c.from_number == sender,
                        TABLE.c.to_number == phone,
                        TABLE.c.status == SmsStatus.PENDING.value,
                        TABLE.c.claim.is_(None),
                    )
                    .values(
                        status=SmsStatus.CANCELLED.value,
                        error="the recipient opted out of texts from this number",
                    )
                )

        await self._db(write)

    async def opted_out(self, *, sender: str, phone: str) -> bool:
        def read(s: Session) -> bool:
            value = s.execute(
                sa.select(OPT_OUT.c.opted_out).where(
                    OPT_OUT.c.sender == sender, OPT_OUT.c.phone == phone
                )
            ).scalar_one_or_none()
            return bool(value)

        return await in_session(self.engine, read)

    # ---- delivery status -----------------------------------------------------------------

    async def delivery(self, *, sid: str, status: str, error_code: str | None) -> bool:
        """Record Twilio's status callback for the text it accepted as `sid`; False when no
        text has that SID (yet: a callback can beat the recording of the SID) or a later status
        is already recorded."""
        now = self.clock.now()
        rank = DELIVERY_ORDER.get(status)
        if rank is None:
            return False
        earlier = [name for name, r in DELIVERY_ORDER.items() if r < rank]

        def write(s: Session) -> bool:
            done = s.execute(
                sa.update(TABLE)
                .where(
                    TABLE.c.sid == sid,
                    sa.or_(
                        TABLE.c.delivery_status.is_(None),
                        TABLE.c.delivery_status.in_(earlier),
                        TABLE.c.delivery_status == status,
                    ),
                )
                .values(delivery_status=status, delivery_error=error_code, delivery_at=now)
            )
            return bool(claims.rowcount(done))

        return await self._db(write)

    async def history(self, business_id: str, appointment_id: str) -> list[SmsMessage]:
        """Every text about an appointment, oldest first (the dashboard's message history)."""

        def read(s: Session) -> list[SmsMessage]:
            query = (
                sa.select(SmsMessage)
                .where(
                    SmsMessage.business_id == business_id,  # type: ignore[arg-type]
                    SmsMessage.appointment_id == appointment_id,  # type: ignore[arg-type]
                )
                .order_by(SmsMessage.created_at, SmsMessage.id)  # type: ignore[arg-type]
            )
            return list(s.execute(query).scalars())

        return await in_session(self.engine, read)

    # ---- inbound texts -------------------------------------------------------------------

    async def receive(
        self, *, message_sid: str, business_id: str, from_number: str, to_number: str, body: str
    ) -> InboundSms | None:
        """Keep an inbound text; None when it is new (handle it, then `answered`), else the
        stored one: a retried webhook whose first delivery was answered gets that answer."""
        now = self.clock.now()
        values = {
            "message_sid": message_sid,
            "business_id": business_id,
            "from_number": from_number,
            "to_number": to_number,
            "body": body,
            "handled_as": RECEIVED,
            "received_at": now,
        }

        def write(s: Session) -> InboundSms | None:
            insert = claims.insert_for(s)(INBOUND).values(**values)
            fresh = s.execute(
                insert.on_conflict_do_nothing(index_elements=["message_sid"]).returning(
                    INBOUND.c.message_sid
                )
            ).first()
            if fresh is not None:
                return None
            row = s.get(InboundSms, message_sid)
            if row is None or row.handled_as == RECEIVED:
                return None  # its first delivery did not finish: handle it (idempotently)
            s.expunge(row)
            return row

        return await self._db(write)

    async def answered(
        self,
        message_sid: str,
        *,
        handled_as: str,
        reply: str | None,
        appointment_id: str | None = None,
    ) -> None:
        def write(s: Session) -> None:
            s.execute(
                sa.update(INBOUND)
                .where(INBOUND.c.message_sid == message_sid)
                .values(handled_as=handled_as, reply=reply, appointment_id=appointment_id)
            )

        await self._db(write)

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


def _opted_out_ids(s: Session, ids: list[str]) -> set[str]:
    """Which of the texts `ids` go to a number that opted out of their sender."""
    query = (
        sa.select(TABLE.c.id)
        .join(
            OPT_OUT,
            sa.and_(
                OPT_OUT.c.sender == TABLE.c.from_number,
                OPT_OUT.c.phone == TABLE.c.to_number,
            ),
        )
        .where(TABLE.c.id.in_(ids), OPT_OUT.c.opted_out.is_(True))
    )
    return set(s.execute(query).scalars())


def _stale_reminder_ids(s: Session, ids: list[str], now: datetime) -> set[str]:
    """Which of the texts `ids` are reminders of an appointment no longer ahead and confirmed
    (a reminder that waited out an outage or a cancellation is never sent late)."""
    query = (
        sa.select(TABLE.c.id)
        .join(APPOINTMENT, APPOINTMENT.c.id == TABLE.c.appointment_id)
        .where(
            TABLE.c.id.in_(ids),
            TABLE.c.kind == SmsKind.REMINDER.value,
            sa.or_(
                APPOINTMENT.c.status != AppointmentStatus.CONFIRMED.value,
                APPOINTMENT.c.start <= now,
            ),
        )
    )
    return set(s.execute(query).scalars())
