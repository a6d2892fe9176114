"""Shared set-up for the bench scripts: a demo-sized business, a year of busy time, databases.

The business: one service done by 10 staff in New York, Monday to Friday 09:00-17:00 with a lunch
break. The clock is fixed on a Monday morning two weeks before the spring-forward change, so every
search window crosses a DST transition.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError

from booking.db import make_engine, migrate, session_scope
from booking.models import Appointment, Business, Contact, Service, Staff
from booking.rules import Interval

TZ = ZoneInfo("America/New_York")
NOW = datetime(2026, 2, 23, 13, 0, tzinfo=UTC)  # Monday 08:00 in New York; DST starts 2026-03-08
SERVICE_ID = "consult"
DURATION = timedelta(minutes=30)
BUFFER_AFTER = timedelta(minutes=10)
MIN_NOTICE = timedelta(minutes=60)
SLOT_STEP = timedelta(minutes=15)
MAX_DAYS_AHEAD = 60
WORKDAY = ("09:00-12:30", "13:30-17:00")
WEEKLY_HOURS = {day: list(WORKDAY) for day in ("mon", "tue", "wed", "thu", "fri")}
CONTACT_PHONE = "+13125550000"


def staff_ids(count: int = 10) -> list[str]:
    return [f"staff-{i:02d}" for i in range(1, count + 1)]


def seed_business(engine: Engine, business_id: str, *, staff_count: int = 10) -> str:
    """Business, service, staff and one contact; returns the contact's id."""
    ids = staff_ids(staff_count)
    with session_scope(engine, write=True) as s:
        s.add(
            Business(
                id=business_id,
                name=f"Bench {business_id}",
                timezone=TZ.key,
                phone_numbers=["+12025550100"],
            )
        )
        s.flush()
        s.add(
            Service(
                business_id=business_id,
                id=SERVICE_ID,
                name="Consultation",
                duration_minutes=int(DURATION.total_seconds() // 60),
                buffer_after_minutes=int(BUFFER_AFTER.total_seconds() // 60),
                min_notice_minutes=int(MIN_NOTICE.total_seconds() // 60),
                slot_step_minutes=int(SLOT_STEP.total_seconds() // 60),
                max_days_ahead=MAX_DAYS_AHEAD,
                staff_ids=ids,
            )
        )
        for position, sid in enumerate(ids):
            s.add(
                Staff(
                    business_id=business_id,
                    id=sid,
                    name=f"Staff {position + 1}",
                    weekly_hours=WEEKLY_HOURS,
                    position=position,
                )
            )
        contact = Contact(business_id=business_id, phone=CONTACT_PHONE, name="Bench Caller")
        s.add(contact)
        s.flush()
        return contact.id


def busy_year(seed: int, ids: Sequence[str], per_staff: int) -> dict[str, list[Interval]]:
    """`per_staff` random busy intervals for each staff member, over the year around NOW.

    15-120 minutes (shorter ones likelier) starting on the quarter hour inside 09:00-17:00 on
    weekdays, placed independently, so some overlap each other as real calendars do.
    """
    rng = random.Random(seed)
    first = NOW.astimezone(TZ).date() - timedelta(days=182)
    weekdays = [d for d in (first + timedelta(days=i) for i in range(365)) if d.weekday() < 5]
    minutes = [15, 30, 45, 60, 75, 90, 105, 120]
    weights = [6, 10, 6, 8, 2, 3, 1, 2]
    out: dict[str, list[Interval]] = {}
    for sid in ids:
        intervals = []
        for _ in range(per_staff):
            length = rng.choices(minutes, weights)[0]
            quarter = rng.randrange((8 * 60 - length) // 15 + 1)
            day = rng.choice(weekdays)
            start = _local(day, 9 * 60 + quarter * 15)
            intervals.append((start, start + timedelta(minutes=length)))
        out[sid] = sorted(intervals)
    return out


def _local(day: date, minutes: int) -> datetime:
    wall = datetime.combine(day, time(minutes // 60, minutes % 60), TZ)
    return wall.astimezone(UTC)


def store_busy(
    engine: Engine,
    business_id: str,
    contact_id: str,
    busy: Mapping[str, Sequence[Interval]],
    *,
    merge_overlaps: bool,
) -> int:
    """Write busy intervals as confirmed appointment blocks, in bulk; returns the row count.

    PostgreSQL's exclusion constraint rejects overlapping confirmed blocks of one staff member
    (as a real database never holds them), so with `merge_overlaps` each run of overlapping
    intervals is stored as one appointment over their union: same busy time, same slots.
    """
    rows: list[dict[str, object]] = []
    for sid, intervals in busy.items():
        blocks = _merged(intervals) if merge_overlaps else sorted(intervals)
        for n, (a, b) in enumerate(blocks):
            rows.append(
                {
                    "id": f"apt_{sid}_{n}",
                    "business_id": business_id,
                    "service_id": SERVICE_ID,
                    "staff_id": sid,
                    "contact_id": contact_id,
                    "status": "confirmed",
                    "start": a,
                    "end": b,
                    "block_start": a,
                    "block_end": b,
                    "booked_by": "bench",
                    "sync_state": "not_synced",
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            )
    with engine.execution_options(frontdesk_write=True).begin() as conn:
        for chunk in range(0, len(rows), 5000):
            conn.execute(sa.insert(Appointment.__table__), rows[chunk : chunk + 5000])
    if engine.dialect.name == "postgresql":
        # As autovacuum soon would: statistics, and the visibility map index-only scans use.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE appointment")
    return len(rows)


def _merged(intervals: Sequence[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if out and a < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def delete_business(engine: Engine, business_id: str) -> None:
    """Remove one business and every row of it (only ever a bench business)."""
    with engine.execution_options(frontdesk_write=True).begin() as conn:
        conn.execute(
            sa.text("DELETE FROM calendar_busy WHERE business_id = :b"), {"b": business_id}
        )
        for table in ("calendarchannel", "calendarevent"):
            conn.execute(
                sa.text(
                    f'DELETE FROM "{table}" WHERE connection_id IN '
                    "(SELECT id FROM calendarconnection WHERE business_id = :b)"
                ),
                {"b": business_id},
            )
        for table in (
            "lead_status_change",
            "lead",
            "outboxevent",
            "calendarconnection",
            "appointment",
            "hold",
            "call",
            "contact",
            "staff",
            "service",
        ):
            conn.execute(
                sa.text(f'DELETE FROM "{table}" WHERE business_id = :b'), {"b": business_id}
            )
        conn.execute(sa.text("DELETE FROM business WHERE id = :b"), {"b": business_id})


@contextmanager
def sqlite_engine() -> Iterator[Engine]:
    """A migrated SQLite file database in a fresh temporary directory."""
    with TemporaryDirectory(prefix="frontdesk-bench-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        migrate(engine)
        try:
            yield engine
        finally:
            engine.dispose()


def postgres_url(base_url: str, database: str) -> str:
    """The URL of `database` on the server of `base_url`, created first if it does not exist.

    The bench works in a database of its own so it never touches anyone else's tables.
    """
    admin = make_engine(base_url, isolation_level="AUTOCOMMIT")
    url = admin.url.set(database=database).render_as_string(hide_password=False)
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
            ).first()
            if exists is None:
                try:
                    conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
                except ProgrammingError as exc:  # another bench run created it meanwhile
                    if "already exists" not in str(exc.orig):
                        raise
    finally:
        admin.dispose()
    return url


@contextmanager
def postgres_engine(base_url: str, database: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url(base_url, database))
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@dataclass
class Latency:
    """Percentiles of a list of durations in seconds, reported in milliseconds."""

    samples: list[float]

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples)
        rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)  # nearest-rank percentile
        return ordered[rank] * 1000

    def line(self) -> str:
        mean = statistics.fmean(self.samples) * 1000
        return (
            f"p50 {self.pct(50):7.2f} ms  p95 {self.pct(95):7.2f} ms  "
            f"p99 {self.pct(99):7.2f} ms  max {max(self.samples) * 1000:7.2f} ms  "
            f"mean {mean:7.2f} ms  (n={len(self.samples)})"
        )
