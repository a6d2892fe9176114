"""The busy cache in the database (table `calendar_busy`, and each connection's `sync` state):
the reads and writes the busy-time code runs in worker threads."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session, col, select

from booking.busy import StaffCalendars
from booking.db import lock_staff
from booking.models import Business, Staff
from booking.rules import Interval
from booking.scheduler import staff_zone
from calendars.base import SyncResult
from calendars.models import CalendarBusyBlock, CalendarConnection, CalendarEvent


def window_has(state: dict[str, Any], start: datetime, end: datetime) -> bool:
    return datetime.fromisoformat(state["from"]) <= start and end <= datetime.fromisoformat(
        state["to"]
    )


def drifted(state: dict[str, Any], now: datetime, horizon: timedelta) -> bool:
    """True when the cached window no longer reaches far enough ahead (time moved on)."""
    if not state.get("to"):
        return True
    return datetime.fromisoformat(state["to"]) < now + horizon - timedelta(days=1)


def connections(s: Session, ids: list[str]) -> list[CalendarConnection]:
    return list(
        s.exec(
            select(CalendarConnection).where(
                col(CalendarConnection.id).in_(ids), CalendarConnection.status != "disconnected"
            )
        )
    )


def read_cache(
    s: Session, calendars: StaffCalendars, ids: list[str], start: datetime, end: datetime
) -> tuple[list[CalendarConnection], list[Interval]]:
    conns = connections(s, ids)
    block = CalendarBusyBlock.__table__.c  # type: ignore[attr-defined]
    wanted = (
        sa.or_(
            *(
                sa.and_(block.connection_id == c.id, block.calendar_id.in_(c.read_calendars))
                for c in conns
            )
        )
        if conns
        else sa.false()
    )
    rows = (
        s.connection()
        .execute(
            sa.select(block.start, block.end).where(
                block.business_id == calendars.business_id,
                block.staff_id == calendars.staff_id,
                wanted,
                block.start < end,
                block.end > start,
            )
        )
        .all()
    )
    return conns, [(a, b) for a, b in rows]  # UTCDateTime: aware UTC already


def busy_rows(s: Session, connection_id: str) -> Counter[tuple[str, str, str, str]]:
    """The busy cache of one connection, each interval once per time it is cached."""
    block = CalendarBusyBlock.__table__  # type: ignore[attr-defined]
    rows = (
        s.connection()
        .execute(
            sa.select(block.c.calendar_id, block.c.event_key, block.c.start, block.c.end).where(
                block.c.connection_id == connection_id
            )
        )
        .all()
    )
    return Counter((cal, key, a.isoformat(), b.isoformat()) for cal, key, a, b in rows)


def own_event_ids(s: Session, connection_id: str) -> set[str]:
    """The provider ids of the events Frontdesk wrote into this connection's calendars."""
    ids = s.exec(
        select(col(CalendarEvent.event_id)).where(
            CalendarEvent.connection_id == connection_id,
            col(CalendarEvent.event_id).is_not(None),
        )
    )
    return {i for i in ids if i is not None}


def connection_zone(s: Session, conn: CalendarConnection) -> ZoneInfo:
    staff = s.get(Staff, (conn.business_id, conn.staff_id))
    business = s.get(Business, conn.business_id)
    assert business is not None
    return staff_zone(staff, business) if staff else ZoneInfo(business.timezone)


def clear_dirty(s: Session, connection_id: str, seen: datetime) -> None:
    conn = s.get(CalendarConnection, connection_id)
    if conn is not None and conn.dirty_at is not None and conn.dirty_at <= seen:
        conn.dirty_at = None
        s.add(conn)


def store_sync(
    s: Session,
    connection_id: str,
    calendar_id: str,
    result: SyncResult,
    window: tuple[datetime, datetime],
    now: datetime,
) -> None:
    conn = s.get(CalendarConnection, connection_id)
    if conn is None or conn.status == "disconnected" or calendar_id not in conn.read_calendars:
        return  # unlinked, or this calendar no longer counts, while we read it
    # Two processes may sync one connection at once: one writes at a time.
    lock_staff(s, conn.business_id, f"calendar-cache\x00{connection_id}")
    own = own_event_ids(s, connection_id)
    table = CalendarBusyBlock.__table__  # type: ignore[attr-defined]
    mine = sa.and_(table.c.connection_id == connection_id, table.c.calendar_id == calendar_id)
    if result.full:
        s.execute(sa.delete(table).where(mine))
    else:
        gone = set(result.removed) | set(result.changed)
        for chunk in _chunks(sorted(gone), 500):
            s.execute(sa.delete(table).where(mine, table.c.event_key.in_(chunk)))
    rows = [
        dict(
            connection_id=connection_id,
            business_id=conn.business_id,
            staff_id=conn.staff_id,
            calendar_id=calendar_id,
            event_key=key,
            start=a,
            end=b,
        )
        for key, intervals in result.changed.items()
        if key not in own
        for a, b in intervals
    ]
    if rows:
        s.execute(sa.insert(table), rows)
    sync = dict(conn.sync)
    sync[calendar_id] = {
        "cursor": result.cursor,
        "synced_at": now.isoformat(),
        "from": window[0].isoformat(),
        "to": window[1].isoformat(),
    }
    conn.sync = sync
    conn.updated_at = now
    s.add(conn)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
