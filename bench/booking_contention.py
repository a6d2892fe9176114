"""Booking under contention: many callers race for few slots through `Scheduler.book`.

Each round offers a handful of slots on a new day and sends `--callers-per-slot` callers at each,
all released at once: first as asyncio tasks in one process, then spread over `--processes`
spawned processes (each with its own engine and event loop). Afterwards every slot must hold
exactly one confirmed appointment and nothing else may have been booked. Runs on a SQLite file,
and on PostgreSQL when FRONTDESK_TEST_DATABASE_URL is set (in its own database,
`frontdesk_bench_contention`, created if missing; only the bench businesses' rows are touched).

    .venv/bin/python bench/booking_contention.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import _setup
import sqlalchemy as sa
from _setup import NOW, TZ, Latency
from sqlalchemy.engine import Engine
from sqlmodel import select

from booking import errors
from booking.clock import FixedClock
from booking.db import make_engine, session_scope
from booking.models import Appointment, AppointmentStatus
from booking.scheduler import Scheduler

PG_DATABASE = "frontdesk_bench_contention"
# Local start times a 30-minute slot (+10 min buffer) fits in 09:00-12:30 / 13:30-17:00.
SLOT_TIMES = ("09:00", "10:00", "11:00", "13:30", "14:30", "15:30")

Target = tuple[str, datetime]  # (staff id, start)
Attempt = tuple[str, datetime, int]  # (staff id, start, caller number)
Outcome = tuple[str, float]  # (what happened, seconds)


@dataclass
class Plan:
    """Which slots each round offers and who calls for them, in the order they are released."""

    rounds: list[list[Attempt]]

    @property
    def targets(self) -> set[Target]:
        return {(sid, start) for attempts in self.rounds for sid, start, _ in attempts}


def make_plan(*, rounds: int, slots: int, callers: int, staff: Sequence[str], seed: int) -> Plan:
    if slots > len(staff) * len(SLOT_TIMES):
        raise SystemExit(f"at most {len(staff) * len(SLOT_TIMES)} slots per round")
    rng = random.Random(seed)
    days = _weekdays_after(NOW.astimezone(TZ).date(), rounds)
    caller = 0
    out = []
    for day in days:
        attempts = []
        for i in range(slots):
            hh, mm = SLOT_TIMES[i // len(staff)].split(":")
            start = datetime.combine(day, datetime.min.time(), TZ).replace(
                hour=int(hh), minute=int(mm)
            )
            for _ in range(callers):
                attempts.append((staff[i % len(staff)], start, caller))
                caller += 1
        rng.shuffle(attempts)
        out.append(attempts)
    return Plan(out)


def _weekdays_after(day: date, count: int) -> list[date]:
    out = []
    while len(out) < count:
        day += timedelta(days=1)
        if day.weekday() < 5:
            out.append(day)
    return out


async def attempt(scheduler: Scheduler, business_id: str, target: Attempt) -> Outcome:
    """One caller trying to book; losing with `SlotTaken` is the expected outcome for most."""
    staff_id, start, n = target
    t0 = time.perf_counter()
    try:
        await scheduler.book(
            business_id=business_id,
            name=f"Caller {n}",
            phone=f"+1{2025550000 + n}",
            service_id=_setup.SERVICE_ID,
            staff_id=staff_id,
            start=start,
            booked_by="bench",
        )
        outcome = "booked"
    except errors.SlotTaken:
        outcome = "taken"
    except errors.BookingError as exc:  # a wrong answer for a racing caller: report it
        outcome = type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - an untranslated database error is a finding
        outcome = f"crash:{type(exc).__name__}"
    return outcome, time.perf_counter() - t0


async def release(
    scheduler: Scheduler, business_id: str, attempts: Sequence[Attempt]
) -> list[Outcome]:
    """Start every attempt as its own task, then let them all go at once."""
    go = asyncio.Event()

    async def caller(target: Attempt) -> Outcome:
        await go.wait()
        return await attempt(scheduler, business_id, target)

    tasks = [asyncio.create_task(caller(a)) for a in attempts]
    await asyncio.sleep(0)  # let every task reach the gate
    go.set()
    return list(await asyncio.gather(*tasks))


@dataclass
class Result:
    outcomes: list[Outcome]
    wall: float


async def _run_tasks(engine: Engine, business_id: str, plan: Plan) -> Result:
    scheduler = Scheduler(engine=engine, clock=FixedClock(NOW))
    await scheduler.business(business_id)  # open a connection before the clock starts
    outcomes: list[Outcome] = []
    wall = 0.0
    for attempts in plan.rounds:
        t0 = time.perf_counter()
        outcomes += await release(scheduler, business_id, attempts)
        wall += time.perf_counter() - t0
    return Result(outcomes, wall)


def run_tasks(engine: Engine, url: str, business_id: str, plan: Plan, processes: int) -> Result:
    return asyncio.run(_run_tasks(engine, business_id, plan))


def process_main(
    url: str, business_id: str, rounds: list[list[Attempt]], barrier: Any, results: Any
) -> None:
    """A spawned process: its own engine and loop; each round starts on the shared barrier."""
    engine = make_engine(url)

    async def main() -> None:
        scheduler = Scheduler(engine=engine, clock=FixedClock(NOW))
        await scheduler.business(business_id)
        for attempts in rounds:
            await asyncio.to_thread(barrier.wait)
            results.put(await release(scheduler, business_id, attempts))

    try:
        asyncio.run(main())
    finally:
        engine.dispose()


def run_processes(engine: Engine, url: str, business_id: str, plan: Plan, processes: int) -> Result:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    shares = [[attempts[p::processes] for attempts in plan.rounds] for p in range(processes)]
    workers = [
        ctx.Process(target=process_main, args=(url, business_id, share, barrier, results))
        for share in shares
    ]
    for w in workers:
        w.start()
    outcomes: list[Outcome] = []
    wall = 0.0
    try:
        for _ in plan.rounds:
            barrier.wait(timeout=120)
            t0 = time.perf_counter()
            for _ in workers:
                outcomes += results.get(timeout=120)
            wall += time.perf_counter() - t0
    finally:
        for w in workers:
            w.join(timeout=30)
    failed = [w.exitcode for w in workers if w.exitcode != 0]
    if failed:
        raise RuntimeError(f"worker processes exited with {failed}")
    return Result(outcomes, wall)


def bookings_per_slot(engine: Engine, business_id: str) -> Counter[Target]:
    with session_scope(engine) as s:
        rows = s.exec(
            select(Appointment.staff_id, Appointment.start, sa.func.count())
            .where(
                Appointment.business_id == business_id,
                Appointment.status == AppointmentStatus.CONFIRMED.value,
            )
            .group_by(Appointment.staff_id, Appointment.start)
        )
        return Counter({(sid, start): n for sid, start, n in rows})


Runner = Callable[[Engine, str, str, Plan, int], Result]


def scenario(
    label: str, engine: Engine, url: str, business_id: str, plan: Plan, run: Runner, processes: int
) -> bool:
    """Seed a business, race the plan through `run`, check one booking per slot, print figures."""
    _setup.delete_business(engine, business_id)
    _setup.seed_business(engine, business_id)
    try:
        result = run(engine, url, business_id, plan, processes)
        counts = bookings_per_slot(engine, business_id)
    finally:
        if engine.dialect.name == "postgresql":
            _setup.delete_business(engine, business_id)
    targets = plan.targets
    wrong = {t: n for t, n in counts.items() if t not in targets or n != 1}
    missing = [t for t in targets if t not in counts]
    outcomes = Counter(o for o, _ in result.outcomes)
    ok = not wrong and not missing and outcomes["booked"] == len(targets)
    attempts = len(result.outcomes)
    latency = Latency([s for _, s in result.outcomes])
    print(
        f"  {label}: {len(targets)} slots, {attempts} attempts in {len(plan.rounds)} rounds, "
        f"wall {result.wall:.2f} s"
    )
    print("    outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(
        f"    one booking per slot: {'yes' if ok else 'NO'} "
        f"({sum(counts.values())} confirmed appointments for {len(targets)} slots"
        + (f"; wrong {len(wrong)}, missing {len(missing)}" if wrong or missing else "")
        + ")"
    )
    print(
        f"    {outcomes['booked'] / result.wall:7.1f} bookings/s  "
        f"{attempts / result.wall:7.1f} attempts/s"
    )
    print(f"    attempt latency: {latency.line()}")
    return ok


def backend(name: str, make: Callable[[], Any], plan: Plan, processes: int) -> bool:
    ok = True
    with make() as engine:
        url = engine.url.render_as_string(hide_password=False)
        print(f"{name}:")
        ok &= scenario(
            f"{len(plan.rounds[0])} asyncio tasks per round, 1 process",
            engine,
            url,
            "bench-contention-tasks",
            plan,
            run_tasks,
            processes,
        )
        ok &= scenario(
            f"{processes} spawned processes, {len(plan.rounds[0])} callers per round",
            engine,
            url,
            "bench-contention-processes",
            plan,
            run_processes,
            processes,
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-second run for CI smoke tests")
    parser.add_argument("--slots", type=int, default=12, help="slots offered per round")
    parser.add_argument("--callers-per-slot", type=int, default=20)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--processes", type=int)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    processes = args.processes or (2 if args.quick else 8)
    slots = min(args.slots, 4) if args.quick else args.slots
    callers = min(args.callers_per_slot, 10) if args.quick else args.callers_per_slot

    plan = make_plan(
        rounds=rounds, slots=slots, callers=callers, staff=_setup.staff_ids(), seed=args.seed
    )
    print(
        f"booking contention: {slots} slots x {callers} callers per round, {rounds} rounds; "
        f"{os.cpu_count()} cores; Python {sys.version.split()[0]}"
        + ("; --quick" if args.quick else "")
    )
    ok = backend("SQLite file database", _setup.sqlite_engine, plan, processes)
    pg_url = os.environ.get("FRONTDESK_TEST_DATABASE_URL")
    if pg_url:
        ok &= backend(
            f"PostgreSQL (database {PG_DATABASE})",
            lambda: _setup.postgres_engine(pg_url, PG_DATABASE),
            plan,
            processes,
        )
    else:
        print("PostgreSQL skipped: FRONTDESK_TEST_DATABASE_URL is not set")
    print("result: every slot booked exactly once" if ok else "result: DOUBLE OR MISSED BOOKINGS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
