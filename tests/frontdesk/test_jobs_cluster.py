"""Three real worker processes (`frontdesk.jobs.run_worker`) over one PostgreSQL database: 1,000
webhook events to a local receiver and 100 due calendar syncs (ICS feeds served locally) are each
delivered / run exactly once; a worker killed with SIGKILL mid-batch leaves nothing stuck past its
lease. In one process, on SQLite and PostgreSQL: call expiry and calendar upkeep run in one
worker at a time, and another takes over once the holder's lease lapses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from booking.db import make_engine, migrate, session_scope
from booking.models import OutboxEvent
from booking.scheduler import Scheduler
from calendars.models import CalendarConnection
from calendars.secrets import Vault, new_key
from calendars.service import CalendarService
from dashboard.webhook_models import WebhookDelivery
from dashboard.webhooks import WebhookDispatcher, Webhooks
from frontdesk.jobs import JobRunner
from frontdesk.settings import Settings
from frontdesk.wiring import build_calendar_service
from tests.conftest import seed_clinic

LEASE = 4.0  # seconds a claim lasts in the workers
FEED = (
    b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:a\r\n"
    b"DTSTAMP:20261101T000000Z\r\nDTSTART:20261201T100000Z\r\nDTEND:20261201T110000Z\r\n"
    b"END:VEVENT\r\nEND:VCALENDAR\r\n"
)

WORKER = """
import asyncio, sys
from datetime import timedelta
from frontdesk.jobs import run_worker
from frontdesk.settings import Settings
asyncio.run(run_worker(Settings(), lease=timedelta(seconds=float(sys.argv[1]))))
"""


class Hits:
    """A local HTTP server counting requests: webhook POSTs by `webhook-id`, feed GETs by path."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.counts: Counter[str] = Counter()
        lock = threading.Lock()
        hits = self

        class Handler(BaseHTTPRequestHandler):
            def _count(self, key: str) -> None:
                with lock:
                    hits.counts[key] += 1

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                time.sleep(delay)
                self._count(self.headers.get("webhook-id") or "?")
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                self._count(self.path)
                self.send_response(200)
                self.send_header("content-type", "text/calendar")
                self.send_header("content-length", str(len(FEED)))
                self.end_headers()
                self.wfile.write(FEED)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def env(pg_url: str) -> Iterator[dict[str, str]]:
    key = new_key()
    yield {
        **os.environ,
        "FRONTDESK_DATABASE_URL": pg_url,
        "FRONTDESK_SECRET_KEY": key,
        "FRONTDESK_CALENDAR_SYNC_SECONDS": "1",
        "FRONTDESK_CALENDAR_POLL_SECONDS": "0",
        "FRONTDESK_ALLOW_PRIVATE_URLS": "true",
    }


def seed(env: dict[str, str], receiver: Hits, feeds: Hits | None, *, events: int) -> None:
    engine = make_engine(env["FRONTDESK_DATABASE_URL"])
    try:
        fill(engine, env, receiver, feeds, events=events)
    finally:
        engine.dispose()
    if feeds is not None:
        feeds.counts.clear()  # linking read each feed once; count only the workers' syncs


def fill(
    engine: Engine, env: dict[str, str], receiver: Hits, feeds: Hits | None, *, events: int
) -> None:
    migrate(engine)
    seed_clinic(engine)

    async def setup() -> None:
        await Webhooks(engine).create(
            business_id="clinic", url=receiver.url + "/hook", event_types=["booking.created"]
        )
        if feeds is None:
            return
        settings = Settings(
            database_url=env["FRONTDESK_DATABASE_URL"],
            secret_key=SecretStr(env["FRONTDESK_SECRET_KEY"]),
            allow_private_urls=True,
        )
        service = build_calendar_service(settings, engine)
        try:
            for n in range(100):
                await service.link_ics(
                    business_id="clinic", staff_id="lee", source=f"{feeds.url}/{n}.ics"
                )
        finally:
            await service.close()

    asyncio.run(setup())
    start = datetime.now(UTC) - timedelta(minutes=1)
    with session_scope(engine, write=True) as s:
        for n in range(events):
            s.add(
                OutboxEvent(
                    business_id="clinic",
                    type="booking.created",
                    payload={"n": n},
                    created_at=start + timedelta(microseconds=n),
                )
            )
        # Every linked feed is due now: as if a change notification had come for each.
        s.execute(sa.update(CalendarConnection).values(dirty_at=datetime.now(UTC)))


def workers(env: dict[str, str], logs: Path, count: int = 3) -> list[subprocess.Popen[bytes]]:
    """`count` worker processes, each logging to `logs/worker-<n>.log`."""
    procs = []
    for n in range(count):
        with (logs / f"worker-{n}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, str(LEASE)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def delivered(env: dict[str, str]) -> int:
    engine = make_engine(env["FRONTDESK_DATABASE_URL"])
    try:
        with session_scope(engine) as s:
            return int(
                s.execute(
                    sa.select(sa.func.count())
                    .select_from(WebhookDelivery)
                    .where(WebhookDelivery.status == "delivered")  # type: ignore[arg-type]
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_three_workers_deliver_each_event_and_run_each_sync_once(
    env: dict[str, str], tmp_path: Path
) -> None:
    receiver, feeds = Hits(), Hits()
    try:
        seed(env, receiver, feeds, events=1000)
        procs = workers(env, tmp_path)
        try:
            done = wait_until(lambda: len(receiver.counts) >= 1000 and len(feeds.counts) >= 100, 40)
            time.sleep(1.5)  # room for a second delivery or sync, if one were coming
        finally:
            stop(procs)
        assert done, (len(receiver.counts), len(feeds.counts))
        assert len(receiver.counts) == 1000 and set(receiver.counts.values()) == {1}
        assert len(feeds.counts) == 100 and set(feeds.counts.values()) == {1}
        assert delivered(env) == 1000
    finally:
        receiver.close()
        feeds.close()


@pytest.mark.postgres
def test_a_worker_killed_mid_batch_leaves_nothing_stuck_past_its_lease(
    env: dict[str, str], tmp_path: Path
) -> None:
    receiver = Hits(delay=0.01)
    try:
        seed(env, receiver, None, events=1000)
        procs = workers(env, tmp_path)
        try:
            assert wait_until(lambda: len(receiver.counts) >= 200, 30)
            procs[0].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            procs[0].wait()
            done = wait_until(lambda: delivered(env) >= 1000, LEASE + 20)
            took = time.monotonic() - killed_at
        finally:
            stop(procs)
        assert done, delivered(env)
        assert len(receiver.counts) == 1000
        # At least once: only what the killed worker had posted but not recorded comes twice.
        twice = sum(1 for c in receiver.counts.values() if c > 1)
        assert twice <= 50 and max(receiver.counts.values()) <= 2
        assert took < LEASE + 15
    finally:
        receiver.close()


# ---- in one process, on SQLite and PostgreSQL: the singleton jobs' leases ---------------------


class Board:
    """Stands in for the switchboard: counts the call-expiry passes it is asked to run."""

    def __init__(self) -> None:
        self.passes = 0

    async def expire_idle(self) -> int:
        self.passes += 1
        return 0


async def test_call_expiry_runs_in_one_of_two_workers(scheduler: Scheduler) -> None:
    boards = [Board(), Board()]
    runners = [JobRunner(scheduler=scheduler, switchboard=b, expire_every=0.02) for b in boards]
    for runner in runners:
        await runner.start()
    await asyncio.sleep(0.5)
    for runner in runners:
        await runner.aclose()
    passes = sorted(b.passes for b in boards)
    assert passes[0] == 0 and passes[1] >= 5


async def test_calendar_upkeep_runs_in_one_worker_until_its_lease_lapses(clinic: Engine) -> None:
    clock = [datetime(2026, 11, 30, 12, 0, tzinfo=UTC)]
    services = [
        CalendarService(engine=clinic, vault=Vault(new_key()), providers={}, now=lambda: clock[0])
        for _ in range(2)
    ]
    upkept: list[int] = []
    for n, service in enumerate(services):

        async def upkeep(n: int = n) -> None:
            upkept.append(n)

        service.jobs.upkeep = upkeep  # type: ignore[method-assign]
        service.jobs.upkeep_ttl = timedelta(seconds=30)
    try:
        for _ in range(3):
            for service in services:
                await service.tick()
            clock[0] += timedelta(seconds=10)
        assert upkept == [0, 0, 0]  # the first holder renews; the other never runs it
        clock[0] += timedelta(seconds=31)  # the first worker died: its lease lapses
        await services[1].tick()
        assert upkept == [0, 0, 0, 1]
    finally:
        for service in services:
            await service.close()


async def test_the_outboxes_lag_is_reported(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frontdesk import metrics

    lags: dict[str, float] = {}
    monkeypatch.setattr(metrics, "job_lag", lags.__setitem__, raising=False)
    hook = await Webhooks(scheduler.engine).create(
        business_id="clinic", url="http://127.0.0.1:9/hook", event_types=["booking.created"]
    )
    now = scheduler.clock.now()
    with session_scope(scheduler.engine, write=True) as s:
        s.add(
            WebhookDelivery(
                webhook_id=hook.id,
                event_id="evt_1",
                event_type="booking.created",
                body="{}",
                next_attempt_at=now - timedelta(seconds=30),
                created_at=now,
            )
        )
    dispatcher = WebhookDispatcher(scheduler.engine, clock=scheduler.clock)
    try:
        await JobRunner(scheduler=scheduler, webhooks=dispatcher).report_lag()
    finally:
        await dispatcher.aclose()
    assert lags == {"webhooks": 30.0}
