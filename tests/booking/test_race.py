"""Racing callers in separate processes get exactly one booking, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from booking import errors
from booking.clock import FixedClock
from booking.db import make_engine
from booking.scheduler import Scheduler
from tests.conftest import NOW, count_rows

SLOT = datetime(2026, 12, 7, 9, 0, tzinfo=ZoneInfo("America/New_York"))


def _book_after_barrier(url: str, barrier, phone: str, results) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(url)
    scheduler = Scheduler(engine=engine, clock=FixedClock(NOW))
    barrier.wait(timeout=60)
    try:
        asyncio.run(
            scheduler.book(
                business_id=None,
                service_id="cleaning",
                staff_id="lee",
                start=SLOT,
                name="Racer",
                phone=phone,
            )
        )
        results.put("booked")
    except errors.SlotTaken:
        results.put("taken")
    except Exception as exc:  # reported to the test, which fails on anything unexpected
        results.put(f"error: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


def test_racing_processes_get_exactly_one_booking(clinic: Engine, db_url: str) -> None:
    ctx = mp.get_context("spawn")
    n = 8
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_book_after_barrier, args=(db_url, barrier, f"+1212555{i:04d}", results))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(outcomes) == ["booked"] + ["taken"] * (n - 1)
    assert count_rows(clinic, "SELECT count(*) FROM appointment WHERE status = 'confirmed'") == 1


def test_twenty_cli_bookings_started_at_once_give_one_success(clinic: Engine, db_url: str) -> None:
    env = {**os.environ, "FRONTDESK_DATABASE_URL": db_url, "FRONTDESK_LOG_LEVEL": "WARNING"}
    cmd = [
        sys.executable,
        "-m",
        "frontdesk.cli",
        "book",
        "--service",
        "cleaning",
        "--staff",
        "lee",
        "--start",
        SLOT.isoformat(),
        "--name",
        "Racer",
        "--now",
        NOW.isoformat(),
    ]
    procs = [
        subprocess.Popen(
            [*cmd, "--phone", f"+1312555{i:04d}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    finished = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    winners = [out for code, out, _ in finished if code == 0]
    losers = [err for code, _, err in finished if code != 0]
    assert len(winners) == 1, (winners, losers[:3])
    assert winners[0].strip().startswith("apt_")
    assert len(losers) == 19
    assert all("error: that time was just taken" in err for err in losers), losers[:2]
    assert count_rows(clinic, "SELECT count(*) FROM appointment WHERE status = 'confirmed'") == 1
