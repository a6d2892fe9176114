"""Slot search latency: 14 days, 10 staff, 2,000 busy intervals each over a year.

(a) `find_slots` alone with the busy intervals passed in (the whole year, and only the window's);
(b) `Scheduler.search` end to end on a SQLite file, the busy time stored as appointments;
(c) the same on PostgreSQL when FRONTDESK_TEST_DATABASE_URL is set (in its own database,
    `frontdesk_bench`, created if missing; only the bench business's rows are touched);
(d) on each database, hostile recurring time off stored for every staff member against the
    clean figure: the costliest rules time off accepts, and a FREQ=MINUTELY row saved before
    rules were limited (it must read as busy, not expand 14 million minutes). Target: <= 2x.

    .venv/bin/python bench/slot_search.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import _setup
from _setup import NOW, TZ, Latency
from sqlalchemy.engine import Engine
from sqlmodel import select

from booking.clock import FixedClock
from booking.db import session_scope
from booking.models import Staff
from booking.recurrence import compile_rule
from booking.rules import Availability, Interval
from booking.scheduler import Scheduler
from booking.slots import ServiceSpec, Slot, StaffSpec, find_slots

TARGET_P95_MS = 10.0
TARGET_RATIO = 2.0
# Accepted, and the costliest to expand: a COUNT walked from 1970 when first compiled, a rule that
# never matches (dateutil walks it day by day to the year 9999), a daily rule from 1970.
WORST_ACCEPTED = [
    {
        "rrule": "FREQ=YEARLY;BYDAY=53MO,53TU,53WE,53TH,53FR,53SA,53SU;COUNT=10000",
        "start": "1970-01-05T12:00",
        "end": "1970-01-05T13:00",
    },
    {
        "rrule": "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
        "start": "1970-01-01T08:00",
        "end": "1970-01-01T09:00",
    },
    {"rrule": "FREQ=DAILY", "start": "1970-01-01T12:30", "end": "1970-01-01T13:30"},
]
# Refused today; a row saved before the limits must not be expanded.
STORED_MINUTELY = [
    {"rrule": "FREQ=MINUTELY", "start": "2000-01-01T00:00", "end": "2000-01-01T00:01"}
]
HOSTILE = {"worst accepted rules": WORST_ACCEPTED, "stored FREQ=MINUTELY row": STORED_MINUTELY}
BUSINESS_ID = "bench-slot-search"
PG_DATABASE = "frontdesk_bench"


def window() -> tuple[datetime, datetime]:
    """14 days from local midnight of NOW's date."""
    start = datetime.combine(NOW.astimezone(TZ).date(), datetime.min.time(), TZ)
    return start, start + timedelta(days=14)


def specs(ids: Sequence[str]) -> tuple[ServiceSpec, list[StaffSpec]]:
    service = ServiceSpec(
        id=_setup.SERVICE_ID,
        duration=_setup.DURATION,
        slot_step=_setup.SLOT_STEP,
        buffer_after=_setup.BUFFER_AFTER,
        min_notice=_setup.MIN_NOTICE,
        max_days_ahead=_setup.MAX_DAYS_AHEAD,
        staff_ids=tuple(ids),
    )
    rules = Availability.model_validate({"weekly_hours": _setup.WEEKLY_HOURS})
    return service, [StaffSpec(id=sid, tz=TZ, availability=rules) for sid in ids]


def bench_pure(
    busy: Mapping[str, Sequence[Interval]], ids: Sequence[str], runs: int, warmup: int
) -> tuple[list[Slot], Latency]:
    service, staff = specs(ids)
    start, end = window()
    samples = []
    slots: list[Slot] = []
    for n in range(warmup + runs):
        t0 = time.perf_counter()
        slots = find_slots(service=service, staff=staff, start=start, end=end, now=NOW, busy=busy)
        if n >= warmup:
            samples.append(time.perf_counter() - t0)
    return slots, Latency(samples)


def in_window(busy: Mapping[str, Sequence[Interval]]) -> dict[str, list[Interval]]:
    """The busy intervals `Scheduler.search` would load for the window (block overlap)."""
    start, end = window()
    lo, hi = start, end + _setup.DURATION + _setup.BUFFER_AFTER
    return {sid: [(a, b) for a, b in iv if a < hi and b > lo] for sid, iv in busy.items()}


async def bench_scheduler(engine: Engine, runs: int, warmup: int) -> tuple[list[Slot], Latency]:
    scheduler = Scheduler(engine=engine, clock=FixedClock(NOW))
    start, end = window()
    samples = []
    slots: list[Slot] = []
    for n in range(warmup + runs):
        t0 = time.perf_counter()
        result = await scheduler.search(
            business_id=BUSINESS_ID, service_id=_setup.SERVICE_ID, start=start, end=end
        )
        if n >= warmup:
            samples.append(time.perf_counter() - t0)
        slots = result.slots
    return slots, Latency(samples)


def set_time_off(engine: Engine, time_off: list[dict[str, str]]) -> None:
    """Store `time_off` for every bench staff member, as a save before any check could."""
    with session_scope(engine, write=True) as s:
        for row in s.exec(select(Staff).where(Staff.business_id == BUSINESS_ID)):
            row.time_off = time_off
            s.add(row)


def run_hostile(
    label: str, engine: Engine, clean: Latency, runs: int, warmup: int
) -> dict[str, tuple[Latency, float]]:
    """Scheduler.search with each hostile set of rules stored, against the clean figure."""
    for rule in WORST_ACCEPTED:
        compile_rule(rule["rrule"], datetime.fromisoformat(rule["start"]))  # accepted today
    out = {}
    try:
        for name, time_off in HOSTILE.items():
            set_time_off(engine, time_off)
            slots, latency = asyncio.run(bench_scheduler(engine, runs, warmup))
            ratio = latency.pct(50) / clean.pct(50)
            print(f"  {label} with {name}: {len(slots)} slots; {latency.line()}")
            out[name] = (latency, ratio)
    finally:
        set_time_off(engine, [])
    return out


def run_database(
    label: str,
    engine: Engine,
    busy: Mapping[str, Sequence[Interval]],
    expected: list[Slot],
    runs: int,
    warmup: int,
) -> tuple[Latency, dict[str, tuple[Latency, float]]]:
    postgres = engine.dialect.name == "postgresql"
    if postgres:
        _setup.delete_business(engine, BUSINESS_ID)
    t0 = time.perf_counter()
    contact_id = _setup.seed_business(engine, BUSINESS_ID, staff_count=len(busy))
    rows = _setup.store_busy(engine, BUSINESS_ID, contact_id, busy, merge_overlaps=postgres)
    seeded = time.perf_counter() - t0
    merged = " (overlapping intervals merged: exclusion constraint)" if postgres else ""
    print(f"  seeded {rows:,} confirmed appointments{merged} in {seeded:.1f} s")
    try:
        slots, latency = asyncio.run(bench_scheduler(engine, runs, warmup))
        same = "yes" if slots == expected else "NO"
        print(f"  {label}: {len(slots)} slots (same as find_slots: {same})")
        print(f"  {label}: {latency.line()}")
        hostile = run_hostile(label, engine, latency, runs, warmup)
    finally:
        if postgres:
            _setup.delete_business(engine, BUSINESS_ID)
    return latency, hostile


def ratio_verdict(ratio: float) -> str:
    met = ratio <= TARGET_RATIO
    return f"p50 {ratio:.2f}x the clean search {'<=' if met else '>'} {TARGET_RATIO:.0f}x " + (
        "(meets target)" if met else "(MISSES target)"
    )


def verdict(latency: Latency) -> str:
    p95 = latency.pct(95)
    return f"p95 {p95:.2f} ms {'<' if p95 < TARGET_P95_MS else '>='} {TARGET_P95_MS:.0f} ms " + (
        "(meets target)" if p95 < TARGET_P95_MS else "(MISSES target)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-second run for CI smoke tests")
    parser.add_argument("--seed", type=int, default=20260223)
    parser.add_argument("--staff", type=int, default=10)
    parser.add_argument("--busy-per-staff", type=int, default=2000)
    args = parser.parse_args()
    pure_runs, full_runs, warmup = (20, 10, 3) if args.quick else (200, 100, 10)

    ids = _setup.staff_ids(args.staff)
    busy = _setup.busy_year(args.seed, ids, args.busy_per_staff)
    start, end = window()
    print(
        f"slot search: {len(ids)} staff x {args.busy_per_staff:,} busy intervals over a year "
        f"({sum(map(len, busy.values())):,} in all); window {start:%Y-%m-%d} .. {end:%Y-%m-%d} "
        f"({TZ.key}), {int(_setup.DURATION.total_seconds() // 60)}-min service, "
        f"{int(_setup.SLOT_STEP.total_seconds() // 60)}-min step; {os.cpu_count()} cores; "
        f"Python {sys.version.split()[0]}" + ("; --quick" if args.quick else "")
    )

    print("(a) find_slots, busy passed in")
    expected, pure_year = bench_pure(busy, ids, pure_runs, warmup)
    print(f"  whole year of busy:   {len(expected)} slots; {pure_year.line()}")
    windowed = in_window(busy)
    slots, pure_window = bench_pure(windowed, ids, pure_runs, warmup)
    assert slots == expected, "window-filtered busy gave different slots"
    print(
        f"  window's busy only ({sum(map(len, windowed.values()))} intervals): "
        f"{len(slots)} slots; {pure_window.line()}"
    )

    results = {"find_slots (year of busy)": pure_year, "find_slots (window's busy)": pure_window}
    ratios: dict[str, float] = {}
    print("(b) Scheduler.search, SQLite file database; (d) with hostile time off")
    with _setup.sqlite_engine() as engine:
        results["Scheduler.search SQLite"], hostile = run_database(
            "SQLite", engine, busy, expected, full_runs, warmup
        )
        ratios.update({f"SQLite, {name}": ratio for name, (_, ratio) in hostile.items()})
    pg_url = os.environ.get("FRONTDESK_TEST_DATABASE_URL")
    if pg_url:
        print(f"(c) Scheduler.search, PostgreSQL (database {PG_DATABASE}); (d) hostile time off")
        with _setup.postgres_engine(pg_url, PG_DATABASE) as engine:
            results["Scheduler.search PostgreSQL"], hostile = run_database(
                "PostgreSQL", engine, busy, expected, full_runs, warmup
            )
            ratios.update({f"PostgreSQL, {name}": ratio for name, (_, ratio) in hostile.items()})
    else:
        print("(c) PostgreSQL skipped: FRONTDESK_TEST_DATABASE_URL is not set")

    print("summary:")
    for name, latency in results.items():
        print(f"  {name:30s} {verdict(latency)}")
    for name, ratio in ratios.items():
        print(f"  hostile: {name:38s} {ratio_verdict(ratio)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
