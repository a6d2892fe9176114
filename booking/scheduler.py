"""The booking service: slot search over stored rules and busy time, holds, bookings, leads.

Every public method is async and safe to call from the event loop: database work runs in a worker
thread, linked calendars are read through the `CalendarBusy` port. Writes that claim time run in
one transaction under the staff member's write lock (see `booking.db`), re-checking the slot with
the same `find_slots` that offered it, so a racing caller can never get the same time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property, lru_cache
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from booking import errors, phones
from booking.busy import (
    CalendarBusy,
    CalendarWriter,
    LinkedCalendar,
    NoCalendars,
    NoWriter,
    StaffCalendars,
    linked_calendars,
)
from booking.catalog import Catalog
from booking.clock import Clock, SystemClock
from booking.db import in_session, lock_staff
from booking.idempotency import insert_once
from booking.models import (
    Appointment,
    AppointmentStatus,
    Attendance,
    Business,
    Contact,
    Hold,
    Lead,
    LeadOutcome,
    OutboxEvent,
    Service,
    SmsMessage,
    Staff,
    SyncState,
)
from booking.recurrence import MAX_YEAR, MIN_YEAR
from booking.reminders import void_reminders
from booking.rules import STORED, Availability, Interval
from booking.slots import (
    MAX_BLOCK,
    ServiceSpec,
    Slot,
    StaffSpec,
    earliest_start,
    filter_time_of_day,
    find_options,
    find_slots,
    horizon,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def check_phone(phone: str, region: str = phones.DEFAULT_REGION) -> str:
    """The phone number in E.164 (a national one read in `region`), or `InvalidRequest`."""
    return phones.to_e164(phone, region)


def service_spec(row: Service) -> ServiceSpec:
    return ServiceSpec(
        id=row.id,
        duration=timedelta(minutes=row.duration_minutes),
        slot_step=timedelta(minutes=row.slot_step_minutes),
        buffer_before=timedelta(minutes=row.buffer_before_minutes),
        buffer_after=timedelta(minutes=row.buffer_after_minutes),
        min_notice=timedelta(minutes=row.min_notice_minutes),
        max_days_ahead=row.max_days_ahead,
        staff_ids=tuple(row.staff_ids),
    )


def staff_zone(row: Staff, business: Business) -> ZoneInfo:
    return ZoneInfo(row.timezone or business.timezone)


def staff_spec(row: Staff, business: Business) -> StaffSpec:
    key = json.dumps([row.weekly_hours, row.overrides, row.time_off], sort_keys=True)
    return StaffSpec(id=row.id, tz=staff_zone(row, business), availability=_rules(key))


@lru_cache(maxsize=1024)
def _rules(key: str) -> Availability:
    # Keyed on the stored rules themselves, so an edit is seen by the very next search.
    weekly_hours, overrides, time_off = json.loads(key)
    # As stored: a rule saved before today's limits is kept, and expands as busy time.
    return Availability.model_validate(
        {"weekly_hours": weekly_hours, "overrides": overrides, "time_off": time_off},
        context=STORED,
    )


def check_when(value: datetime, name: str) -> datetime:
    """`value` if it is aware and in the years bookings may use (1970-2199); else InvalidRequest."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise errors.InvalidRequest(f"{name} must carry a UTC offset")
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or not MIN_YEAR <= in_utc.year <= MAX_YEAR:
        raise errors.InvalidRequest(
            f"{name} {value.isoformat()} is outside the years {MIN_YEAR}-{MAX_YEAR}"
        )
    return value


def check_day(value: date, name: str) -> date:
    """`value` if it lies in the years bookings may use (1970-2199); else InvalidRequest."""
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise errors.InvalidRequest(
            f"{name} {value.isoformat()} is outside the years {MIN_YEAR}-{MAX_YEAR}"
        )
    return value


@dataclass
class Context:
    """A business, one service and the staff who may do it, loaded for one operation."""

    business: Business
    service: ServiceSpec
    service_row: Service
    staff_rows: list[Staff]
    staff: list[StaffSpec]
    connections: list[LinkedCalendar] = field(default_factory=list)

    def only(self, staff_id: str) -> Context | None:
        """This context narrowed to one of its staff; None if they are not among them."""
        for row, spec in zip(self.staff_rows, self.staff, strict=True):
            if row.id == staff_id:
                return replace(
                    self,
                    staff_rows=[row],
                    staff=[spec],
                    connections=[c for c in self.connections if c.staff_id == staff_id],
                )
        return None

    def writes_calendar(self, staff_id: str) -> bool:
        return any(c.writes for c in self._connections_of.get(staff_id, ()))

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.business.timezone)

    @cached_property
    def _rows_by_id(self) -> dict[str, Staff]:
        return {r.id: r for r in self.staff_rows}

    @cached_property
    def _connections_of(self) -> dict[str, list[LinkedCalendar]]:
        # Looked up per staff member in every search: a scan per member would make a search
        # quadratic in the staff (200 staff: 40,000 row reads on the event loop).
        out: dict[str, list[LinkedCalendar]] = {}
        for c in self.connections:
            out.setdefault(c.staff_id, []).append(c)
        return out

    def has_calendars(self, staff_id: str) -> bool:
        """Whether `staff_id` has a linked calendar (cheaper than building `calendars`)."""
        return bool(self._rows_by_id[staff_id].calendars) or staff_id in self._connections_of

    def calendars(self, staff_id: str) -> StaffCalendars:
        row = self._rows_by_id[staff_id]
        return StaffCalendars(
            business_id=self.business.id,
            staff_id=row.id,
            tz=staff_zone(row, self.business),
            links=tuple(row.calendars)
            + tuple(
                {"provider": c.provider, "connection_id": c.connection_id}
                for c in self._connections_of.get(staff_id, ())
            ),
        )


@dataclass
class SlotSearch:
    timezone: str
    slots: list[Slot]


class SchedulerObserver(Protocol):
    """Told of each booking and each new lead once committed (the app's metrics)."""

    def booked(self, booked_by: str) -> None: ...
    def lead_created(self, outcome: str) -> None: ...


@dataclass
class Scheduler:
    """The domain's front door. `calendars` reads linked calendars; `clock` says what now is."""

    engine: Engine
    calendars: CalendarBusy = field(default_factory=NoCalendars)
    clock: Clock = field(default_factory=SystemClock)
    hold_minutes: int = 5
    calendar_timeout: float = 4.0
    writer: CalendarWriter = field(default_factory=NoWriter)
    write_timeout: float = 4.0
    observer: SchedulerObserver | None = None
    catalog: Catalog = field(default_factory=Catalog)

    # ---- plumbing -------------------------------------------------------------------------

    async def _db(self, fn: Callable[[Session], T], *, write: bool = False) -> T:
        return await in_session(self.engine, fn, write=write)

    def _context(
        self, s: Session, business_id: str | None, service_id: str, staff_id: str | None
    ) -> Context:
        """`_load_context`, from this worker's catalogue while the business is unchanged."""
        bid = business_id or _resolve_business(s, None)

        def load() -> Context:
            ctx = _load_context(s, bid, service_id, None)
            # Kept past this session: a rollback here must not expire what other operations read.
            for row in (ctx.business, ctx.service_row, *ctx.staff_rows):
                s.expunge(row)
            return ctx

        ctx = self.catalog.get(s, bid, ("context", service_id), load)
        if staff_id is None:
            return ctx
        # Someone outside the service, or unknown: the full load says which, as it always has.
        return ctx.only(staff_id) or _load_context(s, bid, service_id, staff_id)

    def _now(self, now: datetime | None) -> datetime:
        return check_when(now or self.clock.now(), "now").astimezone(UTC)

    # ---- businesses -----------------------------------------------------------------------

    async def resolve_business(self, business_id: str | None) -> str:
        """The business id to use; may be left out while there is only one business."""
        return await self._db(lambda s: _resolve_business(s, business_id))

    async def business(self, business_id: str | None = None) -> Business:
        def load(s: Session) -> Business:
            row = s.get(Business, _resolve_business(s, business_id))
            assert row is not None
            return row

        return await self._db(load)

    async def business_by_number(self, phone: str) -> Business:
        number = check_phone(phone)

        def numbers(s: Session) -> dict[str, Business]:
            answers: dict[str, Business] = {}
            for row in s.exec(select(Business).order_by(col(Business.id))):
                s.expunge(row)  # shared past this session, read-only
                for each in row.phone_numbers:
                    answers.setdefault(each, row)
            return answers

        def load(s: Session) -> Business:
            row = self.catalog.across(s, "numbers", lambda: numbers(s)).get(number)
            if row is None:
                raise errors.NotFound(f"no business answers {number}")
            return row

        return await self._db(load)

    async def services(self, business_id: str) -> list[Service]:
        return await self._db(lambda s: _services(s, business_id))

    async def staff(self, business_id: str) -> list[Staff]:
        return await self._db(lambda s: _staff(s, business_id))

    async def business_with_team(
        self, business_id: str | None = None
    ) -> tuple[Business, list[Service], list[Staff]]:
        """The business, its services and its staff in one read (a call's first turn needs all
        three, and each trip to a worker thread costs more than its query)."""

        def team(s: Session, bid: str) -> tuple[Business, list[Service], list[Staff]]:
            row = s.get(Business, _resolve_business(s, bid))
            assert row is not None
            services, staff = _services(s, row.id), _staff(s, row.id)
            for each in (row, *services, *staff):
                s.expunge(each)  # shared past this session, read-only
            return row, services, staff

        def load(s: Session) -> tuple[Business, list[Service], list[Staff]]:
            bid = business_id or _resolve_business(s, None)
            row, services, staff = self.catalog.get(s, bid, ("team",), lambda: team(s, bid))
            return row, list(services), list(staff)

        return await self._db(load)

    # ---- slot search ----------------------------------------------------------------------

    async def search(
        self,
        *,
        business_id: str | None,
        service_id: str,
        start: datetime,
        end: datetime,
        staff_id: str | None = None,
        now: datetime | None = None,
        holder: str | None = None,
    ) -> SlotSearch:
        """Every bookable slot starting in `[start, end)`; `holder`'s own hold does not block."""
        now = self._now(now)
        check_when(start, "the start")
        check_when(end, "the end")
        if end <= start:
            raise errors.InvalidRequest("the end of the window must be after its start")

        def find(ctx: Context, busy: dict[str, list[Interval]]) -> list[Slot]:
            return find_slots(
                service=ctx.service, staff=ctx.staff, start=start, end=end, now=now, busy=busy
            )

        ctx, slots = await self._find(
            business_id,
            service_id,
            lambda tz: (start, end),
            find,
            staff_id=staff_id,
            now=now,
            holder=holder,
        )
        return SlotSearch(timezone=ctx.business.timezone, slots=slots)

    async def _find(
        self,
        business_id: str | None,
        service_id: str,
        window: Callable[[ZoneInfo], tuple[datetime, datetime]],
        find: Callable[[Context, dict[str, list[Interval]]], R],
        *,
        staff_id: str | None,
        now: datetime,
        holder: str | None,
    ) -> tuple[Context, R]:
        """`find(ctx, busy)` given every staff member's busy time around the window (`window`
        of the business's zone): the stored appointments and holds, and the linked calendars'
        cached busy time.

        `find` is CPU-bound (rules expanded, candidates checked), so it runs off the event loop
        that every live call shares: in the same trip to a worker thread as the database read
        when no staff member has a linked calendar to ask first."""

        def load(s: Session) -> tuple[Context, dict[str, list[Interval]], tuple[R] | None]:
            ctx = self._context(s, business_id, service_id, staff_id)
            lo, hi = ctx.service.reach(*window(ctx.tz))
            busy = _stored_busy(s, ctx, [m.id for m in ctx.staff], lo, hi, now, holder=holder)
            if any(ctx.has_calendars(m.id) for m in ctx.staff):
                return ctx, busy, None
            return ctx, busy, (find(ctx, busy),)

        ctx, busy, found = await self._db(load)
        if found is not None:
            return ctx, found[0]
        lo, hi = ctx.service.reach(*window(ctx.tz))
        linked = await self._linked_busy(ctx, [m.id for m in ctx.staff], lo, hi, live=False)
        for staff_id_, intervals in linked.items():
            busy.setdefault(staff_id_, []).extend(intervals)
        return ctx, await asyncio.to_thread(find, ctx, busy)

    async def availability(
        self,
        *,
        business_id: str | None,
        service_id: str,
        first_day: date,
        last_day: date,
        staff_id: str | None = None,
        now: datetime | None = None,
        earliest: time | None = None,
        latest: time | None = None,
        holder: str | None = None,
        limit: int | None = None,
    ) -> SlotSearch:
        """Slots from `first_day` through `last_day` (dates in the business's zone).

        `earliest`/`latest` keep slots starting within those local times; `limit` returns that
        many well-spread options instead of every slot.
        """
        check_day(first_day, "the first date")
        check_day(last_day, "the last date")
        if last_day < first_day:
            raise errors.InvalidRequest("the last date is before the first")
        if (last_day - first_day).days > 366:
            raise errors.InvalidRequest("search at most a year at a time")
        now = self._now(now)

        def window(tz: ZoneInfo) -> tuple[datetime, datetime]:
            start = datetime.combine(first_day, time(), tz)
            return start, datetime.combine(last_day + timedelta(days=1), time(), tz)

        def find(ctx: Context, busy: dict[str, list[Interval]]) -> list[Slot]:
            start, end = window(ctx.tz)
            if limit is not None:
                # A few options (the agent's search): the same answer as spreading the full
                # listing, without building every staff member's every slot first.
                return find_options(
                    service=ctx.service,
                    staff=ctx.staff,
                    start=start,
                    end=end,
                    now=now,
                    busy=busy,
                    count=limit,
                    tz=ctx.tz,
                    earliest=earliest,
                    latest=latest,
                )
            slots = find_slots(
                service=ctx.service, staff=ctx.staff, start=start, end=end, now=now, busy=busy
            )
            if earliest is None and latest is None:
                return slots
            return filter_time_of_day(slots, ctx.tz, earliest=earliest, latest=latest)

        ctx, slots = await self._find(
            business_id, service_id, window, find, staff_id=staff_id, now=now, holder=holder
        )
        return SlotSearch(timezone=ctx.business.timezone, slots=slots)

    async def _linked_busy(
        self, ctx: Context, staff_ids: Sequence[str], lo: datetime, hi: datetime, *, live: bool
    ) -> dict[str, list[Interval]]:
        ids = [sid for sid in staff_ids if ctx.has_calendars(sid)]
        if not ids:
            return {}

        async def one(sid: str) -> list[Interval]:
            try:
                return await asyncio.wait_for(
                    self.calendars.busy(ctx.calendars(sid), start=lo, end=hi, live=live),
                    self.calendar_timeout,
                )
            except TimeoutError:
                raise errors.CalendarUnavailable(
                    "a linked calendar did not answer in time"
                ) from None

        if live:
            results = await asyncio.gather(*(one(sid) for sid in ids))
            return dict(zip(ids, results, strict=True))
        # Slot search: a calendar that cannot be read keeps only its own staff member from
        # being offered; the search fails only when no one it asked about is left.
        answers = await asyncio.gather(*(one(sid) for sid in ids), return_exceptions=True)
        busy: dict[str, list[Interval]] = {}
        failed: list[errors.CalendarUnavailable] = []
        for sid, answer in zip(ids, answers, strict=True):
            if isinstance(answer, errors.CalendarUnavailable):
                log.warning("staff %s offers no times: %s", sid, answer)
                failed.append(answer)
                busy[sid] = [(lo, hi)]
            elif isinstance(answer, BaseException):
                raise answer
            else:
                busy[sid] = answer
        if failed and len(failed) == len(staff_ids):
            raise failed[0]
        return busy

    # ---- holds ----------------------------------------------------------------------------

    async def hold(
        self,
        *,
        business_id: str | None,
        service_id: str,
        staff_id: str,
        start: datetime,
        holder: str,
        now: datetime | None = None,
        minutes: int | None = None,
    ) -> Hold:
        """Keep a slot for `minutes` (default `hold_minutes`) while the caller decides; replaces
        their earlier hold."""
        now = self._now(now)
        if not holder:
            raise errors.InvalidRequest("a hold needs a holder (the caller)")
        ctx, linked = await self._prepare_claim(
            business_id, service_id, staff_id, start, now=now, holder=holder
        )

        def write(s: Session) -> Hold:
            def check() -> None:
                _check_slot(s, ctx, staff_id, start, now, linked, holder=holder)

            lock_staff(s, ctx.business.id, staff_id, check=check)
            check()
            existing = s.exec(
                select(Hold).where(Hold.business_id == ctx.business.id, Hold.holder == holder)
            ).first()
            if existing is not None:
                s.delete(existing)
                s.flush()
            block = ctx.service.block(start)
            row = Hold(
                business_id=ctx.business.id,
                service_id=service_id,
                staff_id=staff_id,
                holder=holder,
                start=start.astimezone(UTC),
                end=(start + ctx.service.duration).astimezone(UTC),
                block_start=block[0].astimezone(UTC),
                block_end=block[1].astimezone(UTC),
                expires_at=now + timedelta(minutes=minutes or self.hold_minutes),
                created_at=now,
            )
            s.add(row)
            s.flush()
            return row

        return await self._write(write)

    async def release_hold(self, *, business_id: str | None, hold_id: str) -> None:
        def write(s: Session) -> None:
            bid = _resolve_business(s, business_id)
            row = s.get(Hold, hold_id)
            if row is None or row.business_id != bid:
                raise errors.NotFound(f"no hold {hold_id}")
            s.delete(row)

        await self._write(write)

    async def _prepare_claim(
        self,
        business_id: str | None,
        service_id: str,
        staff_id: str,
        start: datetime,
        *,
        now: datetime,
        holder: str | None,
        ignore_appointment: str | None = None,
    ) -> tuple[Context, list[Interval]]:
        """Load the context and read the staff member's calendars live for the slot's block.

        Then a read-only check: a caller who already lost need not queue for the write lock. The
        same check runs again under the lock; that one is the guarantee. Without linked calendars
        the check shares the context's trip to the database."""
        check_when(start, "the start time")

        def check(s: Session, ctx: Context, linked: list[Interval]) -> None:
            _check_slot(
                s,
                ctx,
                staff_id,
                start,
                now,
                linked,
                holder=holder,
                ignore_appointment=ignore_appointment,
            )

        def load(s: Session) -> tuple[Context, bool]:
            ctx = self._context(s, business_id, service_id, staff_id)
            if ctx.has_calendars(staff_id):
                return ctx, False
            check(s, ctx, [])
            return ctx, True

        ctx, checked = await self._db(load)
        if checked:
            return ctx, []
        lo, hi = ctx.service.block(start)
        linked = (await self._linked_busy(ctx, [staff_id], lo, hi, live=True)).get(staff_id, [])
        await self._db(lambda s: check(s, ctx, linked))
        return ctx, linked

    async def _write(self, fn: Callable[[Session], T]) -> T:
        try:
            return await self._db(fn, write=True)
        except IntegrityError as exc:
            # PostgreSQL's exclusion constraint caught an overlap the lock should have prevented.
            if "appointment_no_overlap" in str(exc.orig):
                raise errors.SlotTaken("that time was just taken") from None
            raise
        except OperationalError as exc:
            if "database is locked" in str(exc.orig):
                raise errors.Busy("the booking system is busy; please try again") from None
            raise

    async def _write_back(self, appointment: Appointment) -> Appointment:
        """Write the change into the staff member's calendar, time-boxed.

        The booking stands either way: a calendar that fails or is slow leaves the appointment
        `not_synced`, and the retry job (`calendars.service`) finishes the write later."""
        if appointment.sync_state == SyncState.NO_CALENDAR:
            return appointment
        try:
            state = await asyncio.wait_for(
                self.writer.sync_appointment(appointment.id), self.write_timeout
            )
        except (TimeoutError, errors.CalendarUnavailable) as exc:
            log.warning(
                "calendar write for %s deferred to the retry job: %s",
                appointment.id,
                exc or "timed out",
            )
            return appointment
        except Exception:  # the change is committed: report it, and let the retry job write
            log.exception("calendar write for %s failed; deferred to the retry job", appointment.id)
            return appointment
        appointment.sync_state = state
        return appointment

    # ---- appointments ---------------------------------------------------------------------

    async def book(
        self,
        *,
        business_id: str | None,
        name: str,
        phone: str,
        service_id: str | None = None,
        staff_id: str | None = None,
        start: datetime | None = None,
        hold_id: str | None = None,
        holder: str | None = None,
        email: str | None = None,
        notes: str | None = None,
        booked_by: str = "api",
        call_id: str | None = None,
        now: datetime | None = None,
    ) -> Appointment:
        """Book a slot, from a hold (`hold_id`) or straight (`service_id`, `staff_id`, `start`)."""
        now = self._now(now)
        name = (name or "").strip()
        if not name:
            raise errors.InvalidRequest("a booking needs the caller's name")
        if hold_id is not None:
            held = await self._db(lambda s: _live_hold(s, business_id, hold_id, now))
            service_id, staff_id, start = held.service_id, held.staff_id, held.start
            holder = held.holder
        if service_id is None or staff_id is None or start is None:
            raise errors.InvalidRequest("give a hold, or a service, staff member and start time")
        ctx, linked = await self._prepare_claim(
            business_id, service_id, staff_id, start, now=now, holder=holder
        )
        phone = check_phone(phone, phones.region_for(ctx.business.phone_numbers))
        slot_start = start

        def write(s: Session) -> Appointment:
            def check() -> None:
                _check_slot(s, ctx, staff_id, slot_start, now, linked, holder=holder)

            lock_staff(s, ctx.business.id, staff_id, check=check)
            if hold_id is not None:
                _live_hold(s, ctx.business.id, hold_id, now)  # still ours after the wait?
            check()
            contact = _upsert_contact(s, ctx.business.id, phone, name, email)
            row = _new_appointment(
                ctx,
                staff_id,
                slot_start,
                contact.id,
                now,
                booked_by=booked_by,
                call_id=call_id,
                notes=notes,
            )
            s.add(row)
            if holder:
                _drop_holds(s, ctx.business.id, holder)
            s.flush()
            _emit(s, "booking.created", appointment_payload(row, contact))
            return row

        appointment = await self._write(write)
        if self.observer is not None:
            self.observer.booked(booked_by)
        log.info(
            "booked %s for %s with %s at %s",
            appointment.id,
            service_id,
            staff_id,
            appointment.start.isoformat(),
        )
        return await self._write_back(appointment)

    async def cancel(
        self,
        *,
        business_id: str | None,
        appointment_id: str,
        phone: str | None = None,
        now: datetime | None = None,
    ) -> Appointment:
        """Cancel an appointment; `phone` scopes it to that caller's own appointments."""
        now = self._now(now)

        def write(s: Session) -> Appointment:
            row = _own_appointment(s, business_id, appointment_id, phone)
            lock_staff(s, row.business_id, row.staff_id)
            s.refresh(row)
            if row.status != AppointmentStatus.CONFIRMED:
                raise errors.AppointmentNotActive(f"appointment {row.id} is already {row.status}")
            row.status = AppointmentStatus.CANCELLED.value
            row.updated_at = now
            if row.sync_state != SyncState.NO_CALENDAR:
                row.sync_state = SyncState.NOT_SYNCED.value  # the calendar event must go
            s.add(row)
            s.flush()
            void_reminders(s, row.id, now)
            _emit(s, "booking.cancelled", appointment_payload(row, s.get(Contact, row.contact_id)))
            return row

        return await self._write_back(await self._write(write))

    async def reschedule(
        self,
        *,
        business_id: str | None,
        appointment_id: str,
        start: datetime,
        staff_id: str | None = None,
        phone: str | None = None,
        holder: str | None = None,
        now: datetime | None = None,
    ) -> Appointment:
        """Move an appointment: the new time is secured before the old one is released."""
        now = self._now(now)
        old = await self._db(lambda s: _own_appointment(s, business_id, appointment_id, phone))
        if old.status != AppointmentStatus.CONFIRMED:
            raise errors.AppointmentNotActive(f"appointment {old.id} is already {old.status}")
        new_staff = staff_id or old.staff_id
        ctx, linked = await self._prepare_claim(
            old.business_id,
            old.service_id,
            new_staff,
            start,
            now=now,
            holder=holder,
            ignore_appointment=old.id,
        )

        def write(s: Session) -> Appointment:
            for sid in sorted({old.staff_id, new_staff}):  # fixed order: no deadlock
                lock_staff(s, old.business_id, sid)
            current = s.get(Appointment, old.id)
            assert current is not None
            if current.status != AppointmentStatus.CONFIRMED:
                raise errors.AppointmentNotActive(f"appointment {old.id} is already moved")
            _check_slot(
                s, ctx, new_staff, start, now, linked, holder=holder, ignore_appointment=old.id
            )
            # Release the old block first inside this transaction, so the exclusion constraint
            # allows an overlapping move; the commit makes both changes visible at once.
            current.status = AppointmentStatus.RESCHEDULED.value
            current.updated_at = now
            s.add(current)
            s.flush()
            void_reminders(s, current.id, now)
            row = _new_appointment(
                ctx,
                new_staff,
                start,
                current.contact_id,
                now,
                booked_by=current.booked_by,
                call_id=current.call_id,
                notes=current.notes,
            )
            row.rescheduled_from = current.id
            if current.sync_state != SyncState.NO_CALENDAR:
                row.sync_state = SyncState.NOT_SYNCED.value  # the calendar event must move
            s.add(row)
            s.flush()
            current.rescheduled_to = row.id
            s.add(current)
            if holder:
                _drop_holds(s, ctx.business.id, holder)
            payload = appointment_payload(row, s.get(Contact, row.contact_id))
            _emit(
                s,
                "booking.rescheduled",
                {
                    **payload,
                    "previous_start": current.start.isoformat(),
                    "previous_staff_id": current.staff_id,
                },
            )
            return row

        return await self._write_back(await self._write(write))

    async def confirm_by_caller(
        self, *, business_id: str, appointment_id: str, phone: str, now: datetime | None = None
    ) -> Appointment:
        """The caller said yes to a reminder: mark their own appointment confirmed by them
        (once; a second "C" keeps the first time)."""
        now = self._now(now)

        def write(s: Session) -> Appointment:
            row = _own_appointment(s, business_id, appointment_id, phone)
            if row.status != AppointmentStatus.CONFIRMED:
                raise errors.AppointmentNotActive(f"appointment {row.id} is already {row.status}")
            if row.caller_confirmed_at is None:
                row.caller_confirmed_at = now
                row.updated_at = now
                s.add(row)
                s.flush()
                _emit(
                    s,
                    "booking.confirmed",
                    appointment_payload(row, s.get(Contact, row.contact_id)),
                )
            return row

        return await self._write(write)

    async def mark_attendance(
        self,
        *,
        business_id: str,
        appointment_id: str,
        attendance: Attendance | None,
        now: datetime | None = None,
    ) -> Appointment:
        """Staff say whether the caller came (None: unmark). Only a confirmed appointment that
        has started can be marked."""
        now = self._now(now)

        def write(s: Session) -> Appointment:
            row = _own_appointment(s, business_id, appointment_id, None)
            if row.status != AppointmentStatus.CONFIRMED:
                raise errors.AppointmentNotActive(f"appointment {row.id} is {row.status}")
            if attendance is not None and row.start > now:
                raise errors.InvalidRequest("an appointment can be marked once it has started")
            row.attendance = attendance.value if attendance is not None else None
            row.attendance_at = now if attendance is not None else None
            row.updated_at = now
            s.add(row)
            s.flush()
            return row

        return await self._write(write)

    async def no_shows(self, *, business_id: str, contact_ids: Sequence[str]) -> dict[str, int]:
        """How many appointments each contact missed (marked no-show), for leads and contacts."""
        if not contact_ids:
            return {}

        def load(s: Session) -> dict[str, int]:
            query = (
                sa.select(col(Appointment.contact_id), sa.func.count())
                .where(
                    col(Appointment.business_id) == business_id,
                    col(Appointment.attendance) == Attendance.NO_SHOW.value,
                    col(Appointment.contact_id).in_(list(contact_ids)),
                )
                .group_by(col(Appointment.contact_id))
            )
            return {cid: int(n) for cid, n in s.execute(query)}

        return await self._db(load)

    async def next_for_caller(
        self, *, business_id: str, phone: str, now: datetime | None = None
    ) -> Appointment | None:
        """The caller's appointment a text reply is about: the one we last texted them about
        (a reminder or confirmation) while it is still ahead, else their next one."""
        now = self._now(now)
        number = check_phone(phone)

        def load(s: Session) -> Appointment | None:
            contact = s.exec(
                select(Contact).where(Contact.business_id == business_id, Contact.phone == number)
            ).first()
            if contact is None:
                return None
            ahead = list(
                s.exec(
                    select(Appointment)
                    .where(
                        Appointment.business_id == business_id,
                        Appointment.contact_id == contact.id,
                        Appointment.status == AppointmentStatus.CONFIRMED.value,
                        col(Appointment.start) > now,
                    )
                    .order_by(col(Appointment.start))
                    .limit(20)
                )
            )
            if not ahead:
                return None
            texted = s.exec(
                select(SmsMessage.appointment_id)
                .where(
                    SmsMessage.business_id == business_id,
                    SmsMessage.to_number == number,
                    col(SmsMessage.appointment_id).in_([a.id for a in ahead]),
                )
                .order_by(col(SmsMessage.created_at).desc())
                .limit(1)
            ).first()
            return next((a for a in ahead if a.id == texted), ahead[0])

        return await self._db(load)

    async def get_appointment(self, *, business_id: str | None, appointment_id: str) -> Appointment:
        return await self._db(lambda s: _own_appointment(s, business_id, appointment_id, None))

    async def appointments(
        self,
        *,
        business_id: str | None,
        start: datetime | None = None,
        end: datetime | None = None,
        staff_id: str | None = None,
        phone: str | None = None,
        include_inactive: bool = False,
    ) -> list[Appointment]:
        """Appointments of a business, optionally in a window, of one staff member or caller."""

        for value, name in ((start, "the start"), (end, "the end")):
            if value is not None:
                check_when(value, name)

        def load(s: Session) -> list[Appointment]:
            bid = _resolve_business(s, business_id)
            q = select(Appointment).where(Appointment.business_id == bid)
            if not include_inactive:
                q = q.where(Appointment.status == AppointmentStatus.CONFIRMED.value)
            if start is not None:
                q = q.where(Appointment.end > start)
            if end is not None:
                q = q.where(Appointment.start < end)
            if staff_id is not None:
                q = q.where(Appointment.staff_id == staff_id)
            if phone is not None:
                contact = s.exec(
                    select(Contact).where(
                        Contact.business_id == bid, Contact.phone == check_phone(phone)
                    )
                ).first()
                if contact is None:
                    return []
                q = q.where(Appointment.contact_id == contact.id)
            return list(s.exec(q.order_by(col(Appointment.start))))

        return await self._db(load)

    async def call_appointments(self, *, business_id: str, call_id: str) -> list[Appointment]:
        """The confirmed appointments booked during one call, oldest booking first (a worker that
        takes a call over adopts those its predecessor made but did not save)."""

        def load(s: Session) -> list[Appointment]:
            q = select(Appointment).where(
                Appointment.business_id == business_id,
                Appointment.call_id == call_id,
                Appointment.status == AppointmentStatus.CONFIRMED.value,
            )
            return list(s.exec(q.order_by(col(Appointment.created_at), col(Appointment.id))))

        return await self._db(load)

    async def contact(self, contact_id: str) -> Contact | None:
        return await self._db(lambda s: s.get(Contact, contact_id))

    # ---- leads ----------------------------------------------------------------------------

    async def record_lead(
        self,
        *,
        business_id: str | None,
        phone: str | None,
        name: str | None = None,
        reason: str | None = None,
        outcome: str = LeadOutcome.CALLBACK.value,
        appointment_id: str | None = None,
        call_id: str | None = None,
        now: datetime | None = None,
    ) -> Lead:
        """Log a caller as a lead (a contact is created or updated from the phone number).

        A call has one lead: recording again for the same `call_id` updates that lead."""
        now = self._now(now)
        if outcome not in {o.value for o in LeadOutcome}:
            raise errors.InvalidRequest(
                f"outcome must be one of {', '.join(o.value for o in LeadOutcome)}"
            )

        created: list[bool] = []  # this call's lead is new (set by the attempt that commits)

        def write(s: Session) -> Lead:
            created.clear()
            bid = _resolve_business(s, business_id)
            number = None
            if phone:  # a national number is read in the business's country, as `book` does
                business = s.get(Business, bid)
                assert business is not None
                number = check_phone(phone, phones.region_for(business.phone_numbers))
            contact = _upsert_contact(s, bid, number, name, None) if number else None
            row = Lead(
                business_id=bid,
                contact_id=contact.id if contact else None,
                call_id=call_id,
                appointment_id=appointment_id,
                name=name,
                phone=number,
                reason=reason,
                outcome=outcome,
                created_at=now,
            )
            # One call, one lead, decided by the unique index on the call: of two processes
            # finishing the same call only one inserts (and announces it); the other updates.
            if insert_once(s, row, "call_id"):
                stored = s.get(Lead, row.id)
                assert stored is not None
                _emit(s, "lead.created", lead_payload(stored))
                created.append(True)
                return stored
            existing = s.exec(
                select(Lead)
                .where(Lead.call_id == call_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).one()
            if existing.business_id != bid:
                raise errors.InvalidRequest(f"call {call_id} belongs to another business")
            # What the call did later updates its lead (a booking after a message makes it a
            # booked lead); the first reason stays, the new one follows.
            if outcome == LeadOutcome.BOOKED or existing.outcome == LeadOutcome.NOT_INTERESTED:
                existing.outcome = outcome
            if appointment_id:
                existing.appointment_id = appointment_id
            if reason and reason != existing.reason:
                existing.reason = (
                    f"{existing.reason}; then: {reason}" if existing.reason else reason
                )
            existing.name = existing.name or name
            s.add(existing)
            s.flush()
            return existing

        lead = await self._db(write, write=True)
        if created and self.observer is not None:
            self.observer.lead_created(outcome)
        return lead

    async def leads(
        self, *, business_id: str | None, outcome: str | None = None, limit: int = 100
    ) -> list[Lead]:
        def load(s: Session) -> list[Lead]:
            bid = _resolve_business(s, business_id)
            q = select(Lead).where(Lead.business_id == bid)
            if outcome:
                q = q.where(Lead.outcome == outcome)
            return list(s.exec(q.order_by(col(Lead.created_at).desc()).limit(limit)))

        return await self._db(load)


# ---- helpers that run inside one session -------------------------------------------------


def _resolve_business(s: Session, business_id: str | None) -> str:
    if business_id:
        if s.get(Business, business_id) is None:
            raise errors.NotFound(f"no business {business_id!r}")
        return business_id
    ids = list(s.exec(select(Business.id).limit(2)))
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise errors.NotFound("no business is set up yet; import a business file first")
    raise errors.AmbiguousBusiness("there are several businesses: say which one")


def _load_context(
    s: Session, business_id: str | None, service_id: str, staff_id: str | None
) -> Context:
    bid = _resolve_business(s, business_id)
    business = s.get(Business, bid)
    assert business is not None
    service = s.get(Service, (bid, service_id))
    if service is None:
        raise errors.NotFound(f"no service {service_id!r} at {business.name}")
    if staff_id is not None and staff_id not in service.staff_ids:
        if s.get(Staff, (bid, staff_id)) is None:
            raise errors.NotFound(f"no staff member {staff_id!r} at {business.name}")
        raise errors.InvalidRequest(f"{staff_id} does not do {service.name}")
    wanted = [staff_id] if staff_id is not None else list(service.staff_ids)
    rows = list(
        s.exec(
            select(Staff)
            .where(Staff.business_id == bid, col(Staff.id).in_(wanted))
            .order_by(col(Staff.position))
        )
    )
    connections = linked_calendars(s, bid, wanted)
    return Context(
        business=business,
        service=service_spec(service),
        service_row=service,
        staff_rows=rows,
        staff=[staff_spec(r, business) for r in rows],
        connections=connections,
    )


def _stored_busy(
    s: Session,
    ctx: Context,
    staff_ids: Sequence[str],
    lo: datetime,
    hi: datetime,
    now: datetime,
    *,
    holder: str | None,
    ignore_appointment: str | None = None,
) -> dict[str, list[Interval]]:
    """Blocks of confirmed appointments and live holds (not `holder`'s) overlapping `[lo, hi)`."""
    bid = ctx.business.id
    busy: dict[str, list[Interval]] = {sid: [] for sid in staff_ids}
    apt, hold = Appointment.__table__.c, Hold.__table__.c  # type: ignore[attr-defined]
    q = sa.select(apt.staff_id, _raw(apt.block_start), _raw(apt.block_end)).where(
        apt.business_id == bid,
        _one_of(s, apt.staff_id, staff_ids),
        # Blocks never exceed MAX_BLOCK, so the index scan on block_start is bounded both ways.
        apt.block_start > lo - MAX_BLOCK,
        apt.block_start < hi,
        apt.block_end > lo,
        apt.status == AppointmentStatus.CONFIRMED.value,
    )
    if ignore_appointment is not None:
        q = q.where(apt.id != ignore_appointment)
    hq = sa.select(hold.staff_id, _raw(hold.block_start), _raw(hold.block_end)).where(
        hold.business_id == bid,
        _one_of(s, hold.staff_id, staff_ids),
        hold.block_start > lo - MAX_BLOCK,
        hold.block_start < hi,
        hold.block_end > lo,
        hold.expires_at > now,
    )
    if holder is not None:
        hq = hq.where(hold.holder != holder)
    # One statement, one round trip to the database.
    for sid, a, b in s.connection().execute(sa.union_all(q, hq)).all():
        busy[sid].append((_utc(a), _utc(b)))
    return busy


def _one_of(
    s: Session, column: sa.ColumnElement[str], values: Sequence[str]
) -> sa.ColumnElement[bool]:
    """`column IN values`; on PostgreSQL as `= ANY(array)`: one parameter however many staff,
    so the statement stays short enough for the driver's parse cache (200 staff as 200
    placeholders cost a search ~2 ms to render and parse)."""
    if s.get_bind().dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(sa.String())))
    return column.in_(values)


def _raw(column: sa.ColumnElement[datetime]) -> sa.ColumnElement[str]:
    # Slot search reads thousands of these: skip the ORM's per-value conversion (see _utc).
    return sa.type_coerce(column, sa.String())


def _utc(value: str | datetime) -> datetime:
    """A stored instant as aware UTC: SQLite gives back naive UTC text, PostgreSQL a datetime."""
    if isinstance(value, str):
        return datetime.fromisoformat(value + "+00:00")
    return value.astimezone(UTC)


def _services(s: Session, business_id: str) -> list[Service]:
    stmt = select(Service).where(Service.business_id == business_id)
    return list(s.exec(stmt.order_by(col(Service.position))))


def _staff(s: Session, business_id: str) -> list[Staff]:
    stmt = select(Staff).where(Staff.business_id == business_id)
    return list(s.exec(stmt.order_by(col(Staff.position))))


def _check_slot(
    s: Session,
    ctx: Context,
    staff_id: str,
    start: datetime,
    now: datetime,
    linked: list[Interval],
    *,
    holder: str | None,
    ignore_appointment: str | None = None,
) -> None:
    """Raise the precise `SlotUnavailable` unless `start` is a bookable slot right now."""
    member = next(m for m in ctx.staff if m.id == staff_id)
    svc = ctx.service
    if start < earliest_start(svc, now):
        raise errors.TooSoon(f"{svc.id} needs {_minutes(svc.min_notice)} minutes' notice")
    if start >= horizon(svc, now):
        raise errors.TooFarAhead(f"{svc.id} can be booked at most {svc.max_days_ahead} days ahead")
    window = {
        "service": svc,
        "staff": [member],
        "start": start,
        "end": start + timedelta(microseconds=1),
        "now": now,
    }
    if not find_slots(**window):  # type: ignore[arg-type]
        raise errors.OutsideHours("that is not a time this staff member offers for this service")
    lo, hi = svc.block(start)
    stored = _stored_busy(
        s, ctx, [staff_id], lo, hi, now, holder=holder, ignore_appointment=ignore_appointment
    )
    busy = {staff_id: [*stored[staff_id], *linked]}
    if not find_slots(**window, busy=busy):  # type: ignore[arg-type]
        raise errors.SlotTaken("that time was just taken")


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def _live_hold(s: Session, business_id: str | None, hold_id: str, now: datetime) -> Hold:
    bid = _resolve_business(s, business_id)
    row = s.get(Hold, hold_id)
    if row is None or row.business_id != bid:
        raise errors.HoldExpired("that hold has expired or was replaced; check the time again")
    if row.expires_at <= now:
        raise errors.HoldExpired("that hold has expired; check the time again")
    return row


def _drop_holds(s: Session, business_id: str, holder: str) -> None:
    s.execute(
        sa.delete(Hold).where(col(Hold.business_id) == business_id, col(Hold.holder) == holder)
    )


def _upsert_contact(
    s: Session, business_id: str, phone: str, name: str | None, email: str | None
) -> Contact:
    """The business's contact for `phone`, created if new (one per number, decided by the
    unique index, so two processes never race to two contacts), else updated under a lock."""
    created = insert_once(
        s,
        Contact(business_id=business_id, phone=phone, name=name, email=email),
        "business_id",
        "phone",
    )
    row = s.exec(
        select(Contact)
        .where(Contact.business_id == business_id, Contact.phone == phone)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if not created:
        row.name = name or row.name
        row.email = email or row.email
        s.add(row)
        s.flush()
    return row


def _new_appointment(
    ctx: Context,
    staff_id: str,
    start: datetime,
    contact_id: str,
    now: datetime,
    *,
    booked_by: str,
    call_id: str | None,
    notes: str | None,
) -> Appointment:
    block = ctx.service.block(start)
    synced = SyncState.NOT_SYNCED if ctx.writes_calendar(staff_id) else SyncState.NO_CALENDAR
    return Appointment(
        business_id=ctx.business.id,
        service_id=ctx.service.id,
        staff_id=staff_id,
        contact_id=contact_id,
        start=start.astimezone(UTC),
        end=(start + ctx.service.duration).astimezone(UTC),
        block_start=block[0].astimezone(UTC),
        block_end=block[1].astimezone(UTC),
        booked_by=booked_by,
        call_id=call_id,
        notes=notes,
        created_at=now,
        updated_at=now,
        sync_state=synced.value,
    )


def _own_appointment(
    s: Session, business_id: str | None, appointment_id: str, phone: str | None
) -> Appointment:
    bid = _resolve_business(s, business_id)
    row = s.get(Appointment, appointment_id)
    if row is None or row.business_id != bid:
        raise errors.NotFound(f"no appointment {appointment_id}")
    if phone is not None:
        contact = s.get(Contact, row.contact_id)
        if contact is None or contact.phone != check_phone(phone):
            raise errors.NotYourAppointment("that appointment is not one of yours")
    return row


def _emit(s: Session, type_: str, payload: dict[str, object]) -> None:
    """Record a domain event in the outbox, in the transaction of the change it describes."""
    business_id = payload["business_id"]
    assert isinstance(business_id, str)
    s.add(OutboxEvent(business_id=business_id, type=type_, payload=payload))


def appointment_payload(row: Appointment, contact: Contact | None) -> dict[str, object]:
    return {
        "id": row.id,
        "business_id": row.business_id,
        "service_id": row.service_id,
        "staff_id": row.staff_id,
        "status": row.status,
        "start": row.start.isoformat(),
        "end": row.end.isoformat(),
        "notes": row.notes,
        "booked_by": row.booked_by,
        "call_id": row.call_id,
        "rescheduled_from": row.rescheduled_from,
        "contact": {"id": contact.id, "name": contact.name, "phone": contact.phone}
        if contact is not None
        else None,
    }


def lead_payload(row: Lead) -> dict[str, object]:
    return {
        "id": row.id,
        "business_id": row.business_id,
        "name": row.name,
        "phone": row.phone,
        "reason": row.reason,
        "outcome": row.outcome,
        "status": row.status,
        "call_id": row.call_id,
        "appointment_id": row.appointment_id,
        "created_at": row.created_at.isoformat(),
    }
