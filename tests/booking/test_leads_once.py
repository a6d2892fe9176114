"""One lead (and one `lead.created` event) per call, whatever races: two processes handling the
same calls, each also retried (Twilio retries its status callback), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from booking.clock import FixedClock
from booking.db import make_engine, migrate, session_scope
from booking.models import Call
from booking.scheduler import Scheduler
from tests.conftest import NOW, count_rows

CALLS = 40


def _phone(i: int) -> str:
    return f"+1202555{100 + i:04d}"


def _finish_calls(url: str, barrier, calls: list[str], results) -> None:  # type: ignore[no-untyped-def]
    """One server process: finish every call, then take the retried status callback too."""
    engine = make_engine(url)
    scheduler = Scheduler(engine=engine, clock=FixedClock(NOW))

    async def run() -> None:
        for i, call_id in enumerate(calls):
            barrier.wait(timeout=60)  # both processes hit the same call at the same moment
            for attempt in ("left a message", "status callback retried"):
                await scheduler.record_lead(
                    business_id="clinic",
                    phone=_phone(i),
                    name=f"Caller {i}",
                    reason=attempt,
                    outcome="message",
                    call_id=call_id,
                )

    try:
        asyncio.run(run())
        results.put("ok")
    except Exception as exc:  # reported to the test, which fails on anything unexpected
        results.put(f"error: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


def _collect(results, procs: list[mp.process.BaseProcess]) -> list[str]:  # type: ignore[no-untyped-def]
    """Each process's report; a process that died without one is reported by its exit code."""
    outcomes: list[str] = []
    deadline = time.monotonic() + 180
    while len(outcomes) < len(procs) and time.monotonic() < deadline:
        try:
            outcomes.append(results.get(timeout=1))
        except queue.Empty:
            if all(p.exitcode is not None for p in procs) and results.empty():
                break
    for p in procs:
        p.join(timeout=30)
        if p.exitcode is None:
            p.terminate()
    missing = len(procs) - len(outcomes)
    return outcomes + [f"no report (exit codes {[p.exitcode for p in procs]})"] * missing


def _calls(engine: Engine) -> list[str]:
    rows = [
        Call(
            business_id="clinic",
            call_sid=f"CA{i:032d}",
            from_number=_phone(i),
            to_number="+12025550100",
            status="completed",
        )
        for i in range(CALLS)
    ]
    with session_scope(engine, write=True) as s:
        s.add_all(rows)
    return [r.id for r in rows]


def test_two_processes_finishing_the_same_calls_log_one_lead_each(
    clinic: Engine, db_url: str
) -> None:
    calls = _calls(clinic)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_finish_calls, args=(db_url, barrier, calls, results)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    outcomes = _collect(results, procs)
    assert outcomes == ["ok", "ok"]
    assert count_rows(clinic, "SELECT count(*) FROM lead") == CALLS
    assert count_rows(clinic, "SELECT count(DISTINCT call_id) FROM lead") == CALLS
    assert count_rows(clinic, "SELECT count(*) FROM contact") == CALLS
    assert (
        count_rows(clinic, "SELECT count(*) FROM outboxevent WHERE type = 'lead.created'") == CALLS
    )
    # The retry took the existing lead: its first reason stays, the later ones follow it.
    with clinic.connect() as conn:
        reasons = conn.execute(sa.text("SELECT reason FROM lead")).scalars().all()
    assert all(r.startswith("left a message; then: status callback retried") for r in reasons)


async def test_a_second_record_for_a_call_updates_its_lead(
    scheduler: Scheduler, clinic: Engine
) -> None:
    [call_id] = _calls(clinic)[:1]
    first = await scheduler.record_lead(
        business_id="clinic",
        phone=_phone(0),
        name=None,
        reason="price of whitening",
        outcome="message",
        call_id=call_id,
    )
    again = await scheduler.record_lead(
        business_id="clinic",
        phone=_phone(0),
        name="Ann",
        reason="booked a cleaning",
        outcome="booked",
        call_id=call_id,
        now=NOW + timedelta(minutes=3),
    )
    assert again.id == first.id
    assert (again.name, again.outcome, again.reason, again.created_at) == (
        "Ann",
        "booked",
        "price of whitening; then: booked a cleaning",
        NOW,
    )
    assert count_rows(clinic, "SELECT count(*) FROM outboxevent WHERE type = 'lead.created'") == 1
    other = await scheduler.record_lead(
        business_id="clinic", phone=_phone(0), name="Ann", reason="no call", outcome="callback"
    )
    assert other.id != first.id  # leads without a call are never merged
    assert count_rows(clinic, "SELECT count(*) FROM contact") == 1


@pytest.fixture
def unmigrated(db_url: str) -> Engine:
    return make_engine(db_url)


def test_the_migration_merges_the_duplicate_leads_of_each_call(unmigrated: Engine) -> None:
    """Databases that already hold duplicate leads (logged by the race) are cleaned on upgrade:
    the earliest lead stays and takes in what the later ones knew, as `record_lead` does."""
    from alembic import command
    from alembic.config import Config

    from booking.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with unmigrated.execution_options(frontdesk_write=True).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
    t = {"t": NOW}
    with unmigrated.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO business (id, name, timezone, phone_numbers) "
                "VALUES ('clinic', 'Clinic', 'America/New_York', '[]')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO contact (id, business_id, phone, created_at) "
                "VALUES ('contact_1', 'clinic', '+12025550123', :t)"
            ),
            t,
        )
        conn.execute(
            sa.text(
                "INSERT INTO appointment (id, business_id, service_id, staff_id, contact_id, "
                "status, "
                'start, "end", block_start, block_end, booked_by, sync_state, created_at, '
                "updated_at) VALUES ('appt_1', 'clinic', 'cleaning', 'lee', 'contact_1', 'booked', "
                ":t, :t, :t, :t, 'voice', 'no_calendar', :t, :t)"
            ),
            t,
        )
        conn.execute(
            sa.text(
                "INSERT INTO call (id, business_id, status, started_at, transcript) "
                "VALUES ('call_1', 'clinic', 'completed', :t, '[]'), "
                "('call_2', 'clinic', 'completed', :t, '[]'), "
                "('call_3', 'clinic', 'completed', :t, '[]')"
            ),
            t,
        )
        leads = [  # id, call, minutes, reason, outcome, appointment, status, name, contact
            (
                "lead_b",
                "call_1",
                1,
                "booked a cleaning",
                "booked",
                "appt_1",
                "contacted",
                None,
                "contact_1",
            ),
            ("lead_a", "call_1", 0, "price of whitening", "message", None, "new", None, None),
            ("lead_c", "call_1", 2, "price of whitening", "message", None, "won", "Ann", None),
            ("lead_d", "call_2", 0, "why", "message", None, "new", None, None),
            ("lead_e", None, 0, "why", "message", None, "new", None, None),
            ("lead_f", None, 0, "why", "message", None, "new", None, None),
            # Of won and lost the one an owner set last stands; not_interested gives way.
            ("lead_g", "call_3", 0, None, "not_interested", None, "lost", None, None),
            ("lead_h", "call_3", 1, "call me back", "callback", None, "won", None, None),
        ]
        for lead_id, call_id, minutes, reason, outcome, appt, status, name, contact in leads:
            conn.execute(
                sa.text(
                    "INSERT INTO lead (id, business_id, call_id, reason, outcome, appointment_id, "
                    "status, name, contact_id, created_at) VALUES (:id, 'clinic', :call, :reason, "
                    ":outcome, :appt, :status, :name, :contact, :t)"
                ),
                {
                    "id": lead_id,
                    "call": call_id,
                    "reason": reason,
                    "outcome": outcome,
                    "appt": appt,
                    "status": status,
                    "name": name,
                    "contact": contact,
                    "t": NOW + timedelta(minutes=minutes),
                },
            )
        for lead_id, to_status, minutes in [
            ("lead_b", "contacted", 5),
            ("lead_c", "won", 6),
            ("lead_h", "won", 4),
            ("lead_g", "lost", 7),
        ]:
            conn.execute(
                sa.text(
                    "INSERT INTO lead_status_change (business_id, lead_id, from_status, to_status, "
                    "actor, at) VALUES ('clinic', :lead, 'new', :to, 'owner', :t)"
                ),
                {"lead": lead_id, "to": to_status, "t": NOW + timedelta(minutes=minutes)},
            )
    migrate(unmigrated)
    with unmigrated.connect() as conn:
        kept = {
            r.id: r
            for r in conn.execute(
                sa.text(
                    "SELECT id, reason, outcome, appointment_id, status, name, contact_id FROM lead"
                )
            )
        }
        moved = (
            conn.execute(sa.text("SELECT lead_id FROM lead_status_change ORDER BY at"))
            .scalars()
            .all()
        )
    assert sorted(kept) == ["lead_a", "lead_d", "lead_e", "lead_f", "lead_g"]
    merged = kept["lead_a"]
    assert (
        merged.outcome,
        merged.appointment_id,
        merged.reason,
        merged.status,
        merged.name,
        merged.contact_id,
    ) == (
        "booked",
        "appt_1",
        "price of whitening; then: booked a cleaning",
        "won",
        "Ann",
        "contact_1",
    )
    assert tuple(kept["lead_d"])[1:] == ("why", "message", None, "new", None, None)
    assert (kept["lead_g"].outcome, kept["lead_g"].reason, kept["lead_g"].status) == (
        "callback",
        "call me back",
        "lost",
    )
    # The history of a dropped duplicate moves to the kept lead.
    assert moved == ["lead_g", "lead_a", "lead_a", "lead_g"]
    with pytest.raises(sa.exc.IntegrityError), unmigrated.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO lead (id, business_id, call_id, outcome, status, created_at) "
                "VALUES ('lead_z', 'clinic', 'call_2', 'message', 'new', :t)"
            ),
            {"t": NOW},
        )
    unmigrated.dispose()
