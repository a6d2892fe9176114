"""Slot search with three linked calendars (CalDAV on Radicale, Google and Microsoft fakes).

Three staff members each link one kind of calendar holding ~150 events over the booking horizon;
one search covers 14 days for all three. Reported:

- warm: the busy cache is filled (what a caller's question costs normally);
- cold: the cache is emptied before every search, so each search first syncs all three
  calendars over the whole horizon (what the first caller after linking would wait);
- live re-check: the read of one staff member's calendars for one slot, straight from the
  provider, that every booking makes before it confirms.

The servers are the tests' own (tests/fakes, tests/calendars/*_harness.py) on loopback, so the
figures are this process's cost plus loopback HTTP, not the providers' real network latency.

    .venv/bin/python bench/calendar_search.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' fake servers and harnesses

import _setup  # noqa: E402
from _setup import NOW, TZ, Latency  # noqa: E402

from booking.busy import StaffCalendars  # noqa: E402
from booking.clock import FixedClock  # noqa: E402
from booking.db import session_scope  # noqa: E402
from booking.scheduler import Scheduler  # noqa: E402
from calendars.models import CalendarBusyBlock, CalendarConnection  # noqa: E402
from calendars.secrets import Vault, new_key  # noqa: E402
from calendars.service import CalendarService  # noqa: E402
from tests.calendars import caldav_harness, google_harness, microsoft_harness  # noqa: E402

BUSINESS_ID = "bench-calendars"
KINDS = ("caldav", "google", "microsoft")


def events(seed: int, count: int) -> list[tuple[datetime, datetime]]:
    rng = random.Random(seed)
    first = NOW.astimezone(TZ).date()
    out = []
    while len(out) < count:
        day = first + timedelta(days=rng.randrange(0, 85))
        if day.weekday() >= 5:
            continue
        start = datetime(day.year, day.month, day.day, 9, tzinfo=TZ) + timedelta(
            minutes=15 * rng.randrange(0, 30)
        )
        out.append(
            (
                start.astimezone(UTC),
                (start + timedelta(minutes=rng.choice([30, 45, 60, 90]))).astimezone(UTC),
            )
        )
    return out


async def main(quick: bool) -> None:
    # The bench has no public URL for notifications; linking says so in a warning per link.
    logging.getLogger("calendars.service").setLevel(logging.ERROR)
    per_calendar = 40 if quick else 150
    warm_runs, cold_runs, live_runs = (20, 3, 10) if quick else (200, 10, 50)
    ids = _setup.staff_ids(3)
    with _setup.sqlite_engine() as engine:
        _setup.seed_business(engine, BUSINESS_ID, staff_count=3)
        async with AsyncExitStack() as stack:
            harnesses = {
                "caldav": await stack.enter_async_context(caldav_harness.harness()),
                "google": await stack.enter_async_context(
                    google_harness.harness(provider_timeout=10.0)
                ),
                "microsoft": await stack.enter_async_context(
                    microsoft_harness.harness(timeout=10.0)
                ),
            }
            print(f"filling three calendars with {per_calendar} events each ...", flush=True)
            for n, kind in enumerate(KINDS):
                for start, end in events(n, per_calendar):
                    await harnesses[kind].add_event(start=start, end=end)
            service = CalendarService(
                engine=engine,
                vault=Vault(new_key()),
                providers={k: h.provider for k, h in harnesses.items()},
                oauth={k: harnesses[k].extra["oauth"] for k in ("google", "microsoft")},
                now=lambda: NOW,
                public_base_url="http://127.0.0.1:9",
            )
            scheduler = Scheduler(
                engine=engine, calendars=service, writer=service, clock=FixedClock(NOW)
            )
            for sid, kind in zip(ids, KINDS, strict=True):
                h = harnesses[kind]
                if kind == "caldav":
                    conn = await service.link_caldav(
                        business_id=BUSINESS_ID,
                        staff_id=sid,
                        url=h.account.settings["url"],
                        username=h.account.settings["username"],
                        password=h.account.secret["password"],
                    )
                else:
                    conn = await service.link_tokens(
                        kind, business_id=BUSINESS_ID, staff_id=sid, tokens=h.extra["token_set"]
                    )
                await service.choose_calendars(
                    conn.id, business_id=BUSINESS_ID, read=[h.calendar_id], write=h.calendar_id
                )

            start = datetime.combine(NOW.astimezone(TZ).date(), datetime.min.time(), TZ)
            end = start + timedelta(days=14)

            async def search() -> float:
                t0 = time.perf_counter()
                await scheduler.search(
                    business_id=BUSINESS_ID, service_id=_setup.SERVICE_ID, start=start, end=end
                )
                return time.perf_counter() - t0

            def empty_cache() -> None:
                with session_scope(engine, write=True) as s:
                    s.execute(sa.delete(CalendarBusyBlock))
                    s.execute(sa.update(CalendarConnection).values(sync={}))

            await search()  # warm-up
            warm = [await search() for _ in range(warm_runs)]
            cold = []
            for _ in range(cold_runs):
                await asyncio.to_thread(empty_cache)
                cold.append(await search())

            async def live_check() -> float:
                ctx_calendars = []
                conns = await service.connections(BUSINESS_ID)
                for conn in conns:
                    ctx_calendars.append(
                        StaffCalendars(
                            business_id=BUSINESS_ID,
                            staff_id=conn.staff_id,
                            tz=TZ,
                            links=({"provider": conn.provider, "connection_id": conn.id},),
                        )
                    )
                slot = start + timedelta(days=2, hours=10)
                t0 = time.perf_counter()
                await asyncio.gather(
                    *(
                        service.busy(c, start=slot, end=slot + timedelta(hours=1), live=True)
                        for c in ctx_calendars
                    )
                )
                return time.perf_counter() - t0

            live = [await live_check() for _ in range(live_runs)]
    print(
        "Slot search, 14 days, 3 staff, each with one linked calendar "
        f"(CalDAV/Radicale, Google fake, Graph fake; {per_calendar} events each):"
    )
    print(f"  warm cache           {Latency(warm).line()}")
    print(f"  cold cache (sync)    {Latency(cold).line()}")
    print(f"  live re-check (3 providers at once, 1 h) {Latency(live).line()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events and runs (CI)")
    asyncio.run(main(parser.parse_args().quick))
