"""Reminders with three `frontdesk serve` workers on one PostgreSQL, two of them killed (-9)
while their texts are in flight at Twilio: every due reminder is queued once and reaches its
caller once; the survivor takes the lapsed claims over and finds the texts the dead workers had
posted (Twilio's message list) instead of posting them again."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from booking.db import session_scope
from booking.models import Appointment, Business, Contact
from tests.cluster.test_calls_survive_workers import database, llm, rest, rows, running, until
from tests.fakes.llm_server import FakeLLM
from tests.fakes.twilio_rest import FakeTwilioRest

__all__ = ["database", "llm", "rest"]
pytestmark = pytest.mark.postgres

COUNT = 40


def seed(engine: Engine) -> None:
    """40 appointments whose day-before reminder is due (booked days ago), quiet hours off."""
    now = datetime.now(UTC)
    with session_scope(engine, write=True) as s:
        business = s.get(Business, "clinic")
        assert business is not None
        business.reminders = {"quiet_hours": None}
        s.add(business)
        for n in range(COUNT):
            contact = Contact(business_id="clinic", phone=f"+120255520{n:02d}", name=f"C{n}")
            s.add(contact)
            s.flush()
            start = now + timedelta(hours=3, minutes=30 * n)  # the 24 h reminder is due
            s.add(
                Appointment(
                    business_id="clinic",
                    service_id="checkup",
                    staff_id="lee",
                    contact_id=contact.id,
                    start=start,
                    end=start + timedelta(minutes=30),
                    block_start=start,
                    block_end=start + timedelta(minutes=30),
                    created_at=now - timedelta(days=3),
                    updated_at=now - timedelta(days=3),
                )
            )


async def test_reminders_go_once_each_when_a_worker_dies_sending(
    pg_url: str, database: Engine, llm: FakeLLM, rest: FakeTwilioRest, tmp_path: Path
) -> None:
    seed(database)
    rest.delay = 0.3  # a slow API: sends are in flight when the worker dies
    async with running(
        pg_url,
        llm,
        rest,
        tmp_path,
        FRONTDESK_REMINDER_SECONDS="0.5",
        FRONTDESK_SMS_LEASE_SECONDS="3",
    ) as cluster:
        await until(lambda: rest.attempts > 0, within=30)
        cluster.workers["a"].kill()
        cluster.workers["b"].kill()  # whoever was sending: two of three die at once

        def all_sent() -> bool:
            sent = rows(database, "SELECT count(*) FROM sms_message WHERE status = 'sent'")
            return bool(sent[0][0] == COUNT)

        started = time.monotonic()
        await until(all_sent, within=40)
        took = time.monotonic() - started
    queued = rows(database, "SELECT key, status, sid FROM sms_message WHERE kind = 'reminder'")
    assert len(queued) == COUNT and {r.status for r in queued} == {"sent"}
    assert all(r.sid for r in queued)
    with database.connect() as conn:
        appointments = conn.execute(sa.text("SELECT count(*) FROM appointment")).scalar_one()
    assert appointments == COUNT
    per_caller = Counter(m.to for m in rest.messages)
    assert set(per_caller) == {f"+120255520{n:02d}" for n in range(COUNT)}
    repeats = sum(n - 1 for n in per_caller.values())
    assert repeats == 0, per_caller
    assert len(rest.messages) == COUNT
    assert took < 30  # the claims lapse after 3 s: the survivor finishes soon after
