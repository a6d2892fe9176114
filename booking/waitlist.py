"""The waitlist: callers told "nothing then" wait for a service in a date range (optionally with
one staff member), first come first served, and are texted when a time opens up.

A pass (`Waitlist.offer_due`, run by one worker at a time under a job lease) looks, oldest entry
first, for a bookable time in each waiting entry's range that it has not passed on. It holds that
time for the entry (an ordinary hold, `offer_minutes` long, so no one else, on the phone or on
the list, can take or be offered it meanwhile), then, in one transaction, moves the entry from
waiting to offered (only if it is still waiting: two passes cannot both offer it) and queues the
offer text in the SMS outbox under a key of its own (once). A time freed by a cancellation or a
move, or opened by new hours, is found by the next pass.

"YES" to the offer books the held time (`accept`), through the same booking function as a call;
"NO" (`decline`) or silence until the hold runs out (`expire_offers`) passes it on: the entry
notes the time as passed and goes back to waiting, and the next pass offers that time to the next
person waiting. An entry whose last day has gone is removed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session, col, select

from booking import claims, errors, phones
from booking.db import in_session
from booking.models import (
    Appointment,
    Business,
    Contact,
    Hold,
    Service,
    SmsKind,
    SmsMessage,
    SmsStatus,
    Staff,
    WaitlistEntry,
    WaitlistStatus,
    new_id,
)
from booking.scheduler import Scheduler, check_phone

log = logging.getLogger(__name__)

ENTRY = WaitlistEntry.__table__  # type: ignore[attr-defined]
SMS = SmsMessage.__table__  # type: ignore[attr-defined]
OFFER_MINUTES = 30
MAX_RANGE_DAYS = 60
MAX_WAITING_PER_CALLER = 5
PASS_LIMIT = 200  # entries looked at per pass
TRIES_PER_ENTRY = 3  # times tried per entry per pass (another hold may win a race)


def _passed_key(staff_id: str, start: datetime) -> str:
    return f"{staff_id}@{start.astimezone(UTC).isoformat()}"


def offer_text(
    *, business: str, service: str, staff: str, start: datetime, tz: ZoneInfo, minutes: int
) -> str:
    local = start.astimezone(tz)
    when = f"{local:%a %b} {local.day} at {local:%I:%M %p}".replace(" 0", " ")
    return (
        f"{business}: a {service} with {staff} opened up on {when}. Reply YES to book it "
        f"(held for you for {minutes} minutes) or NO to pass."
    )


@dataclass(frozen=True)
class Offer:
    entry_id: str
    sms_id: str | None
    start: datetime
    staff_id: str


@dataclass
class Waitlist:
    scheduler: Scheduler
    offer_minutes: int = OFFER_MINUTES

    def _now(self, now: datetime | None) -> datetime:
        return (now or self.scheduler.clock.now()).astimezone(UTC)

    # ---- joining and leaving --------------------------------------------------------------

    async def join(
        self,
        *,
        business_id: str,
        phone: str,
        name: str | None,
        service_id: str,
        first_day: date,
        last_day: date,
        staff_id: str | None = None,
        now: datetime | None = None,
    ) -> WaitlistEntry:
        now = self._now(now)
        number = check_phone(phone)
        if last_day < first_day:
            raise errors.InvalidRequest("the last day is before the first")
        if (last_day - first_day).days >= MAX_RANGE_DAYS:
            raise errors.InvalidRequest(f"wait for at most {MAX_RANGE_DAYS} days at a time")

        def write(s: Session) -> WaitlistEntry:
            business = s.get(Business, business_id)
            if business is None:
                raise errors.NotFound(f"no business {business_id!r}")
            today = now.astimezone(ZoneInfo(business.timezone)).date()
            if last_day < today:
                raise errors.InvalidRequest("those days are past")
            service = s.get(Service, (business_id, service_id))
            if service is None:
                raise errors.NotFound(f"no service {service_id!r} at {business.name}")
            if staff_id is not None and staff_id not in service.staff_ids:
                raise errors.InvalidRequest(f"{staff_id} does not do {service.name}")
            contact = s.exec(
                select(Contact).where(Contact.business_id == business_id, Contact.phone == number)
            ).first()
            if contact is None:
                contact = Contact(business_id=business_id, phone=number, name=name)
                s.add(contact)
                s.flush()
            waiting = s.exec(
                select(sa.func.count())
                .select_from(WaitlistEntry)
                .where(
                    WaitlistEntry.business_id == business_id,
                    WaitlistEntry.phone == number,
                    col(WaitlistEntry.status).in_(
                        [WaitlistStatus.WAITING.value, WaitlistStatus.OFFERED.value]
                    ),
                )
            ).one()
            if int(waiting) >= MAX_WAITING_PER_CALLER:
                raise errors.InvalidRequest("that number is already waiting for enough times")
            row = WaitlistEntry(
                business_id=business_id,
                contact_id=contact.id,
                phone=number,
                name=(name or contact.name or None),
                service_id=service_id,
                staff_id=staff_id,
                first_day=max(first_day, today),
                last_day=last_day,
                # The queue's order: when they joined, by the wall clock (an injected clock
                # standing still must not make two callers join at once).
                created_at=max(now, datetime.now(UTC)),
                updated_at=now,
            )
            s.add(row)
            s.flush()
            return row

        return await in_session(self.scheduler.engine, write, write=True)

    async def entries(
        self, business_id: str, *, statuses: Sequence[WaitlistStatus] | None = None
    ) -> list[WaitlistEntry]:
        def read(s: Session) -> list[WaitlistEntry]:
            query = select(WaitlistEntry).where(WaitlistEntry.business_id == business_id)
            if statuses:
                query = query.where(col(WaitlistEntry.status).in_([x.value for x in statuses]))
            return list(s.exec(query.order_by(col(WaitlistEntry.created_at))))

        return await in_session(self.scheduler.engine, read)

    async def remove(self, business_id: str, entry_id: str, *, now: datetime | None = None) -> bool:
        """Take an entry off the list (its held offer, if any, is let go)."""
        now = self._now(now)

        def write(s: Session) -> str | None:
            row = s.get(WaitlistEntry, entry_id)
            if row is None or row.business_id != business_id:
                raise errors.NotFound(f"no waitlist entry {entry_id}")
            if row.status not in (WaitlistStatus.WAITING, WaitlistStatus.OFFERED):
                return None
            hold = row.hold_id
            row.status, row.hold_id, row.updated_at = WaitlistStatus.REMOVED.value, None, now
            s.add(row)
            return hold or ""

        hold = await in_session(self.scheduler.engine, write, write=True)
        if hold:
            await self._release(business_id, hold)
        return hold is not None

    # ---- offering ------------------------------------------------------------------------

    async def offer_due(self, *, now: datetime | None = None) -> list[Offer]:
        """Offer a freed time to each waiting entry that has one, oldest first; the offers made."""
        now = self._now(now)
        await self.expire_offers(now=now)
        waiting = await in_session(self.scheduler.engine, lambda s: _waiting(s, now))
        offers: list[Offer] = []
        for entry, tz in waiting:
            offer = await self._offer(entry, tz, now)
            if offer is not None:
                offers.append(offer)
        return offers

    async def _offer(self, entry: WaitlistEntry, tz: ZoneInfo, now: datetime) -> Offer | None:
        start = datetime.combine(entry.first_day, time(0), tzinfo=tz)
        end = datetime.combine(entry.last_day + timedelta(days=1), time(0), tzinfo=tz)
        holder = f"waitlist:{entry.id}"
        try:
            found = await self.scheduler.search(
                business_id=entry.business_id,
                service_id=entry.service_id,
                staff_id=entry.staff_id,
                start=max(start, now),
                end=end,
                now=now,
            )
        except errors.BookingError as exc:
            log.warning("waitlist entry %s cannot be searched: %s", entry.id, exc)
            return None
        passed = set(entry.passed)
        tries = 0
        for slot in found.slots:
            if _passed_key(slot.staff_id, slot.start) in passed:
                continue
            if tries >= TRIES_PER_ENTRY:
                return None
            tries += 1
            try:
                hold = await self.scheduler.hold(
                    business_id=entry.business_id,
                    service_id=entry.service_id,
                    staff_id=slot.staff_id,
                    start=slot.start,
                    holder=holder,
                    now=now,
                    minutes=self.offer_minutes,
                )
            except errors.SlotUnavailable:
                continue  # taken meanwhile: the next time
            offer = await in_session(
                self.scheduler.engine,
                partial(
                    _mark_offered,
                    entry_id=entry.id,
                    hold=hold,
                    tz=tz,
                    minutes=self.offer_minutes,
                    now=now,
                ),
                write=True,
            )
            if offer is None:  # another pass offered this entry first
                await self._release(entry.business_id, hold.id)
            return offer
        return None

    async def expire_offers(self, *, now: datetime | None = None) -> int:
        """Offers whose hold ran out unanswered pass on: back to waiting, that time passed."""
        now = self._now(now)

        def write(s: Session) -> int:
            rows = list(
                s.exec(
                    select(WaitlistEntry).where(
                        WaitlistEntry.status == WaitlistStatus.OFFERED.value,
                        col(WaitlistEntry.offer_expires_at) <= now,
                    )
                )
            )
            for row in rows:
                _pass_on(row, now)
                s.add(row)
            return len(rows)

        return await in_session(self.scheduler.engine, write, write=True)

    # ---- answers -------------------------------------------------------------------------

    async def open_offer(
        self, *, business_id: str, phone: str, now: datetime | None = None
    ) -> WaitlistEntry | None:
        """The caller's offer still held for them, if any."""
        now = self._now(now)
        number = phones.to_e164(phone)

        def read(s: Session) -> WaitlistEntry | None:
            return s.exec(
                select(WaitlistEntry)
                .where(
                    WaitlistEntry.business_id == business_id,
                    WaitlistEntry.phone == number,
                    WaitlistEntry.status == WaitlistStatus.OFFERED.value,
                    col(WaitlistEntry.offer_expires_at) > now,
                )
                .order_by(col(WaitlistEntry.offer_expires_at))
            ).first()

        return await in_session(self.scheduler.engine, read)

    async def accept(self, entry: WaitlistEntry, *, now: datetime | None = None) -> Appointment:
        """Book the time held for `entry` (raises the booking's own errors if it cannot)."""
        now = self._now(now)
        if entry.hold_id is None:
            raise errors.InvalidRequest("that offer is no longer held")
        appointment = await self.scheduler.book(
            business_id=entry.business_id,
            name=entry.name or "Waitlist caller",
            phone=entry.phone,
            hold_id=entry.hold_id,
            holder=f"waitlist:{entry.id}",
            booked_by="waitlist",
            now=now,
        )

        def write(s: Session) -> None:
            s.execute(
                sa.update(ENTRY)
                .where(ENTRY.c.id == entry.id)
                .values(
                    status=WaitlistStatus.BOOKED.value,
                    appointment_id=appointment.id,
                    hold_id=None,
                    updated_at=now,
                )
            )

        await in_session(self.scheduler.engine, write, write=True)
        return appointment

    async def decline(self, entry: WaitlistEntry, *, now: datetime | None = None) -> None:
        """ "NO": the time passes to the next person; the caller keeps waiting for another."""
        now = self._now(now)
        hold = entry.hold_id

        def write(s: Session) -> None:
            row = s.get(WaitlistEntry, entry.id)
            if row is not None and row.status == WaitlistStatus.OFFERED:
                _pass_on(row, now)
                s.add(row)

        await in_session(self.scheduler.engine, write, write=True)
        if hold:
            await self._release(entry.business_id, hold)

    async def _release(self, business_id: str, hold_id: str) -> None:
        # Already gone (it ran out, or was booked): nothing to let go.
        with contextlib.suppress(errors.BookingError):
            await self.scheduler.release_hold(business_id=business_id, hold_id=hold_id)


def _waiting(s: Session, now: datetime) -> list[tuple[WaitlistEntry, ZoneInfo]]:
    """Waiting entries whose range is not over, oldest first (those past it are removed)."""
    out: list[tuple[WaitlistEntry, ZoneInfo]] = []
    zones: dict[str, ZoneInfo] = {}
    rows = s.exec(
        select(WaitlistEntry, Business.timezone)
        .join(Business, col(Business.id) == col(WaitlistEntry.business_id))
        .where(WaitlistEntry.status == WaitlistStatus.WAITING.value)
        .order_by(col(WaitlistEntry.created_at), col(WaitlistEntry.id))
        .limit(PASS_LIMIT)
    )
    for entry, zone in rows:
        tz = zones.setdefault(zone, ZoneInfo(zone))
        s.expunge(entry)
        if entry.last_day < now.astimezone(tz).date():
            s.execute(
                sa.update(ENTRY)
                .where(ENTRY.c.id == entry.id, ENTRY.c.status == WaitlistStatus.WAITING.value)
                .values(status=WaitlistStatus.REMOVED.value, updated_at=now)
            )
            continue
        out.append((entry, tz))
    return out


def _mark_offered(
    s: Session, *, entry_id: str, hold: Hold, tz: ZoneInfo, minutes: int, now: datetime
) -> Offer | None:
    """Waiting -> offered, and the offer text queued, in one transaction; None if the entry
    was not waiting any more."""
    start, staff_id, expires, hold_id = hold.start, hold.staff_id, hold.expires_at, hold.id
    done = s.execute(
        sa.update(ENTRY)
        .where(ENTRY.c.id == entry_id, ENTRY.c.status == WaitlistStatus.WAITING.value)
        .values(
            status=WaitlistStatus.OFFERED.value,
            hold_id=hold_id,
            offered_start=start,
            offered_staff_id=staff_id,
            offer_expires_at=expires,
            updated_at=now,
        )
    )
    if not claims.rowcount(done):
        return None
    entry = s.get(WaitlistEntry, entry_id)
    assert entry is not None
    business = s.get(Business, entry.business_id)
    service = s.get(Service, (entry.business_id, entry.service_id))
    staff = s.get(Staff, (entry.business_id, staff_id))
    sender = next(iter(business.phone_numbers), None) if business is not None else None
    if business is None or sender is None:
        return Offer(entry_id, None, start, staff_id)  # held, but nobody can be texted
    body = offer_text(
        business=business.name,
        service=service.name if service is not None else entry.service_id,
        staff=staff.name if staff is not None else staff_id,
        start=start,
        tz=tz,
        minutes=minutes,
    )
    sms_id = new_id("sms")
    insert = claims.insert_for(s)(SMS).values(
        id=sms_id,
        business_id=entry.business_id,
        key=f"waitlist:{entry_id}:{_passed_key(staff_id, start)}",
        to_number=entry.phone,
        from_number=sender,
        body=body,
        status=SmsStatus.PENDING.value,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        kind=SmsKind.WAITLIST.value,
    )
    s.execute(insert.on_conflict_do_nothing(index_elements=["business_id", "key"]))
    return Offer(entry_id, sms_id, start, staff_id)


def _pass_on(row: WaitlistEntry, now: datetime) -> None:
    if row.offered_start is not None and row.offered_staff_id is not None:
        row.passed = [*row.passed, _passed_key(row.offered_staff_id, row.offered_start)][-200:]
    row.status = WaitlistStatus.WAITING.value
    row.hold_id = None
    row.offered_start = row.offered_staff_id = row.offer_expires_at = None
    row.updated_at = now
