"""The agent's slot search: a few well-spread options over one or two days, any staff member.

`Scheduler.availability(..., limit=3)` is what the check_availability tool asks for: three options
to read to the caller. It is timed end to end (the database read of the window's busy time, the
search) at 10 and at 200 staff, on SQLite and on PostgreSQL when FRONTDESK_TEST_DATABASE_URL is set,
against the baseline in the same run: the full listing of the same window (every slot of every
staff member) spread to the same three. Both must give the same options (checked on every run).
Targets (p95): under 5 ms at 10 staff, under 10 ms at 200 staff.

Busy time: 2,000 appointments a staff member over a year at 10 staff, 100 at 200 staff (20,000
stored either way); the clock is a Monday morning, the window Tuesday and Wednesday, once all day
and once afternoons only (13:00-17:00).

    .venv/bin/python bench/agent_search.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import time as clock_time
from datetime import timedelta
from typing import Any

import _setup
from _setup import NOW, Latency
from sqlalchemy.engine import Engine

from booking.clock import FixedClock
from booking.scheduler import Scheduler
from booking.slots import spread

BUSINESS_ID = "bench-agent-search"
PG_DATABASE = "frontdesk_bench_agent"
TARGETS_MS = {10: 5.0, 200: 10.0}
BUSY_PER_STAFF = {10: 2000, 200: 100}
OPTIONS = 3
FIRST_DAY = NOW.astimezone(_setup.TZ).date() + timedelta(days=1)
LAST_DAY = FIRST_DAY + timedelta(days=1)
WINDOWS: dict[str, dict[str, Any]] = {
    "two days": {},
    "two afternoons": {"earliest": clock_time(13), "latest": clock_time(17)},
}


async def timed(
    scheduler: Scheduler, window: dict[str, Any], runs: int, warmup: int
) -> tuple[Latency, Latency, int]:
    """The agent's search and the full listing spread, interleaved; how many slots in all."""
    lazy, full, total = [], [], 0
    query = {
        "business_id": BUSINESS_ID,
        "service_id": _setup.SERVICE_ID,
        "first_day": FIRST_DAY,
        "last_day": LAST_DAY,
        **window,
    }
    for n in range(warmup + runs):
        t0 = time.perf_counter()
        options = await scheduler.availability(**query, limit=OPTIONS)
        t1 = time.perf_counter()
        every = await scheduler.availability(**query)
        spread_options = spread(every.slots, OPTIONS)
        t2 = time.perf_counter()
        if options.slots != spread_options:
            raise AssertionError(f"the agent's search differs: {options.slots} {spread_options}")
        if n >= warmup:
            lazy.append(t1 - t0)
            full.append(t2 - t1)
        total = len(every.slots)
    return Latency(lazy), Latency(full), total


def run(label: str, engine: Engine, staff: int, runs: int, warmup: int) -> bool:
    postgres = engine.dialect.name == "postgresql"
    if postgres:
        _setup.delete_business(engine, BUSINESS_ID)
    ids = _setup.staff_ids(staff)
    busy = _setup.busy_year(20261203 + staff, ids, BUSY_PER_STAFF[staff])
    contact_id = _setup.seed_business(engine, BUSINESS_ID, staff_count=staff)
    stored = _setup.store_busy(engine, BUSINESS_ID, contact_id, busy, merge_overlaps=postgres)
    ok = True
    try:
        scheduler = Scheduler(engine=engine, clock=FixedClock(NOW))
        for name, window in WINDOWS.items():
            lazy, full, total = asyncio.run(timed(scheduler, window, runs, warmup))
            target = TARGETS_MS[staff]
            met = lazy.pct(95) < target
            ok = ok and met
            print(
                f"  {label}, {staff} staff ({stored:,} stored), {name} ({total:,} slots): "
                f"agent search p50 {lazy.pct(50):.2f} ms, p95 {lazy.pct(95):.2f} ms "
                f"(target < {target:.0f} ms: {'ok' if met else 'MISSED'}); full listing "
                f"spread p50 {full.pct(50):.2f} ms, p95 {full.pct(95):.2f} ms "
                f"({full.pct(50) / lazy.pct(50):.1f}x the agent search at p50)"
            )
    finally:
        _setup.delete_business(engine, BUSINESS_ID)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-second run for CI smoke tests")
    args = parser.parse_args()
    runs, warmup = (10, 2) if args.quick else (100, 10)
    print(
        f"the agent's search: {OPTIONS} options, {FIRST_DAY} .. {LAST_DAY} ({_setup.TZ.key}), "
        f"any staff member; {os.cpu_count()} cores; Python {sys.version.split()[0]}"
    )
    ok = True
    pg_url = os.environ.get("FRONTDESK_TEST_DATABASE_URL")
    for staff in TARGETS_MS:
        with _setup.sqlite_engine() as engine:
            ok = run("SQLite", engine, staff, runs, warmup) and ok
        if pg_url:
            with _setup.postgres_engine(pg_url, PG_DATABASE) as engine:
                ok = run("PostgreSQL", engine, staff, runs, warmup) and ok
    if not pg_url:
        print("PostgreSQL skipped: FRONTDESK_TEST_DATABASE_URL is not set")
    if not ok:
        print("a target was missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
