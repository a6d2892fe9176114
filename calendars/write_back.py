"""Write-back: booking's `CalendarWriter` port.

`sync_appointment` writes a booking, cancellation or reschedule into the staff member's chosen
calendar, idempotently (the provider's own means, keyed by the first appointment id of a
reschedule chain); a failure leaves the appointment `not_synced` for `retry_pending`, which the
background job runs with a back-off per appointment.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from booking import errors
from booking.models import Appointment, AppointmentStatus, SyncState
from calendars import chains
from calendars.accounts import Accounts
from calendars.base import EventSpec, NeedsRelink
from calendars.models import CalendarBusyBlock, CalendarConnection, CalendarEvent
from calendars.runtime import CalendarRuntime

log = logging.getLogger(__name__)

# Back-off between write-back attempts of one appointment: 30 s, 1, 2, 4 ... up to 60 minutes.
RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(minutes=60)


class WriteBack:
    """Makes staff calendars show their appointments."""

    def __init__(self, runtime: CalendarRuntime, accounts: Accounts) -> None:
        self.runtime = runtime
        self.accounts = accounts

    async def sync_appointment(self, appointment_id: str) -> str:
        """Make the calendar match the appointment's reschedule chain as it stands now.

        One writer at a time per chain (a lease in the database, so across processes too); a
        writer that finds the lease taken leaves the appointment `not_synced`, and the writer
        holding it notices the change when it finishes and writes again."""
        db, now = self.runtime.db, self.runtime.now
        target_id = appointment_id
        for _ in range(4):
            plan = await db(
                partial(
                    _plan,
                    appointment_id=target_id,
                    now=now(),
                    lease=self.runtime.write_lease,
                ),
                write=True,
            )
            if plan.state is not None:
                return (
                    plan.state if plan.appointment_id == appointment_id else SyncState.SYNCED.value
                )
            try:
                event_id = await self._apply(plan)
            except BaseException as exc:
                message = str(exc) or type(exc).__name__
                await asyncio.shield(
                    db(partial(_write_failed, plan=plan, error=message, now=now()), write=True)
                )
                if isinstance(exc, NeedsRelink) and plan.calling is not None:
                    # The connection whose call was refused: removing the event from an old,
                    # revoked account must not flag the healthy account it moves to.
                    await self.accounts.mark(plan.calling.id, "needs_relink", str(exc))
                if isinstance(exc, errors.CalendarUnavailable | asyncio.CancelledError):
                    raise
                raise errors.CalendarUnavailable(f"calendar write failed: {message}") from exc
            done = await db(
                partial(_write_done, plan=plan, event_id=event_id, now=now()), write=True
            )
            if done:
                return SyncState.SYNCED.value
            target_id = plan.appointment_id  # the chain's head: it changed while we wrote
        return SyncState.NOT_SYNCED.value

    async def _apply(self, plan: _Plan) -> str | None:
        """Carry out one write plan against the provider(s); returns the event id written."""
        if plan.remove is not None:  # the event lives where it should not (any more)
            conn, cal, event_id = plan.remove
            plan.calling = conn
            provider = self.runtime.provider(conn.provider)
            account = await self.accounts.account(conn)
            if event_id is None:
                # An earlier write's answer was lost: it may have landed. The idempotent create
                # finds it (or makes it), so it can be deleted by its id.
                assert plan.spec is not None
                event_id = await provider.put_event(
                    account, calendar_id=cal, event=plan.spec, event_id=None
                )
                plan.remove = (conn, cal, event_id)
            await provider.delete_event(account, calendar_id=cal, event_id=event_id)
        if plan.target is None or plan.spec is None:
            return None
        conn = plan.target
        plan.calling = conn
        assert conn.write_calendar is not None
        return await self.runtime.provider(conn.provider).put_event(
            await self.accounts.account(conn),
            calendar_id=conn.write_calendar,
            event=plan.spec,
            event_id=plan.event_id,
        )

    async def retry_pending(self, *, limit: int = 50) -> int:
        """Finish write-backs that failed or never ran; returns how many now synced."""
        now = self.runtime.now()
        ids = await self.runtime.db(lambda s: _pending(s, now, limit))
        done = 0
        for appointment_id in ids:
            try:
                if await self.sync_appointment(appointment_id) == SyncState.SYNCED:
                    done += 1
            except errors.CalendarUnavailable as exc:
                log.info("write-back of %s still failing: %s", appointment_id, exc)
            except Exception:  # one bad appointment must not block the rest
                log.exception("write-back of %s failed", appointment_id)
        return done


# ---- write plans (run in worker threads) ---------------------------------------------------


@dataclass
class _Plan:
    appointment_id: str
    status: str
    updated_at: datetime | None = None
    key: str = ""
    state: str | None = None  # set when there is nothing to do: the final sync_state
    target: CalendarConnection | None = None
    spec: EventSpec | None = None
    event_id: str | None = None
    remove: tuple[CalendarConnection, str, str | None] | None = None
    calling: CalendarConnection | None = None  # the connection the provider call in flight is for


def _plan(s: Session, appointment_id: str, now: datetime, lease: timedelta) -> _Plan:
    """Decide the calendar writes that make the calendar match one appointment's chain."""
    given = s.get(Appointment, appointment_id)
    if given is None:
        raise errors.NotFound(f"no appointment {appointment_id}")
    apt = chains.head(s, given)
    if given.id != apt.id and given.sync_state != SyncState.SYNCED:
        _set_state(s, given, SyncState.SYNCED)  # its successor carries the event on
    plan = _Plan(appointment_id=apt.id, status=apt.status, updated_at=apt.updated_at)
    if apt.sync_state == SyncState.SYNCED:
        plan.state = SyncState.SYNCED.value
        return plan
    plan.key = chains.chain_root(s, apt)
    ev = s.get(CalendarEvent, plan.key)
    if ev is not None and ev.writing_until is not None and ev.writing_until > now:
        plan.state = SyncState.NOT_SYNCED.value  # another writer is at it; it will see this
        return plan
    # An event exists, or may exist: a write whose answer was lost may have landed.
    maybe_there = ev is not None and not ev.deleted
    target = None
    if apt.status == AppointmentStatus.CONFIRMED:
        target = s.exec(
            select(CalendarConnection)
            .where(
                CalendarConnection.business_id == apt.business_id,
                CalendarConnection.staff_id == apt.staff_id,
                col(CalendarConnection.status).in_(("ok", "error")),
                col(CalendarConnection.write_calendar).is_not(None),
            )
            .order_by(col(CalendarConnection.created_at))
        ).first()
    moved = False
    if ev is not None and maybe_there:
        moved = target is None or (target.id, target.write_calendar) != (
            ev.connection_id,
            ev.calendar_id,
        )
        old = s.get(CalendarConnection, ev.connection_id)
        if moved and old is not None and old.status != "disconnected":
            plan.remove = (old, ev.calendar_id, ev.event_id)
    if target is None and plan.remove is None:
        cancelled = apt.status == AppointmentStatus.CANCELLED
        state = SyncState.SYNCED if ev is not None or cancelled else SyncState.NO_CALENDAR
        plan.state = _set_state(s, apt, state)
        return plan
    if ev is None:
        assert target is not None
        ev = CalendarEvent(
            key=plan.key,
            business_id=apt.business_id,
            connection_id=target.id,
            calendar_id=target.write_calendar or "",
        )
        try:
            with s.begin_nested():
                s.add(ev)
        except IntegrityError:  # another writer got there first: let it finish
            plan.state = SyncState.NOT_SYNCED.value
            return plan
    elif maybe_there and not moved:
        plan.event_id = ev.event_id  # None after a lost answer: the create is idempotent
    ev.writing_until = now + lease
    s.add(ev)
    plan.target = target
    plan.spec = chains.event_spec(s, apt, plan.key)
    return plan


def _set_state(s: Session, apt: Appointment, state: SyncState) -> str:
    apt.sync_state = state.value
    s.add(apt)
    return state.value


def _write_done(s: Session, plan: _Plan, event_id: str | None, now: datetime) -> bool:
    """Record a finished write; False when the chain changed meanwhile (write again)."""
    ev = s.get(CalendarEvent, plan.key)
    if ev is not None:
        if plan.target is not None:
            ev.connection_id = plan.target.id
            ev.calendar_id = plan.target.write_calendar or ""
            ev.event_id, ev.deleted = event_id, False
            _forget_event(s, plan.target.id, event_id)
        else:
            ev.deleted = True
        if plan.remove is not None:
            _forget_event(s, plan.remove[0].id, plan.remove[2])
        ev.attempts, ev.last_error, ev.updated_at = 0, None, now
        ev.writing_until = None
        s.add(ev)
    apt = s.get(Appointment, plan.appointment_id)
    if apt is None:
        return True
    head = chains.head(s, apt)
    if head.id != apt.id or apt.status != plan.status or apt.updated_at != plan.updated_at:
        # Cancelled or moved while we wrote: what we wrote is stale. Leave the chain's head
        # owed a write, so this writer (or the retry job) writes what stands now.
        _set_state(s, head, SyncState.NOT_SYNCED)
        plan.appointment_id = head.id
        return False
    apt.sync_state = SyncState.SYNCED.value
    s.add(apt)
    return True


def _forget_event(s: Session, connection_id: str, event_id: str | None) -> None:
    # Our own event in the busy cache would block the time of the very appointment it shows.
    if event_id is not None:
        s.execute(
            sa.delete(CalendarBusyBlock).where(
                col(CalendarBusyBlock.connection_id) == connection_id,
                col(CalendarBusyBlock.event_key) == event_id,
            )
        )


def _write_failed(s: Session, plan: _Plan, error: str, now: datetime) -> None:
    ev = s.get(CalendarEvent, plan.key) if plan.key else None
    if ev is not None:
        ev.attempts += 1
        ev.last_error, ev.updated_at = error[:500], now
        ev.writing_until = None
        s.add(ev)
    apt = s.get(Appointment, plan.appointment_id)
    if apt is not None and apt.sync_state != SyncState.NOT_SYNCED:
        apt.sync_state = SyncState.NOT_SYNCED.value
        s.add(apt)


def _pending(s: Session, now: datetime, limit: int) -> list[str]:
    rows = s.exec(
        select(Appointment)
        .where(
            Appointment.sync_state == SyncState.NOT_SYNCED.value,
            Appointment.status != AppointmentStatus.RESCHEDULED.value,
        )
        .order_by(col(Appointment.updated_at))
        .limit(limit * 4)
    )
    due: list[str] = []
    for apt in rows:
        ev = s.get(CalendarEvent, chains.chain_root(s, apt))
        if ev is not None and ev.attempts:
            wait = min(RETRY_BASE * (2 ** (ev.attempts - 1)), RETRY_CAP)
            if ev.updated_at + wait > now:
                continue
        due.append(apt.id)
        if len(due) >= limit:
            break
    return due
