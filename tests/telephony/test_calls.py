"""The call log: idempotent on the provider's call id, closed once."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine

from booking.calls import CallLog
from booking.clock import FixedClock
from tests.conftest import NOW, count_rows


async def test_the_same_call_sid_twice_is_one_call(clinic: Engine) -> None:
    calls = CallLog(engine=clinic, clock=FixedClock(NOW))
    first = await calls.start_call(
        business_id="clinic", call_sid="CA1", from_number="+12025554321", to_number="+12025550100"
    )
    again = await calls.start_call(
        business_id="clinic", call_sid="CA1", from_number="+12025554321", to_number="+12025550100"
    )
    assert again.id == first.id
    assert count_rows(clinic, "SELECT count(*) FROM call") == 1


async def test_racing_retries_of_one_webhook_make_one_call(clinic: Engine) -> None:
    calls = CallLog(engine=clinic, clock=FixedClock(NOW))
    rows = await asyncio.gather(
        *(
            calls.start_call(
                business_id="clinic", call_sid="CA2", from_number=None, to_number="+12025550100"
            )
            for _ in range(8)
        )
    )
    assert len({row.id for row in rows}) == 1
    assert count_rows(clinic, "SELECT count(*) FROM call") == 1


async def test_only_the_request_that_created_the_call_is_told_so(clinic: Engine) -> None:
    calls = CallLog(engine=clinic, clock=FixedClock(NOW))
    started = await asyncio.gather(
        *(
            calls.begin_call(
                business_id="clinic", call_sid="CA4", from_number=None, to_number="+12025550100"
            )
            for _ in range(8)
        )
    )
    assert [created for _, created in started].count(True) == 1
    assert len({call.id for call, _ in started}) == 1


async def test_finishing_a_call_twice_keeps_the_first_close(clinic: Engine) -> None:
    calls = CallLog(engine=clinic, clock=FixedClock(NOW))
    await calls.start_call(business_id="clinic", call_sid="CA3", from_number=None, to_number=None)
    await calls.save_transcript(
        (await calls.get_by_sid("CA3")).id,  # type: ignore[union-attr]
        [{"role": "user", "content": "hi"}],
    )
    closed = await calls.finish_call(
        "CA3", status="completed", duration_seconds=42, outcome="message"
    )
    again = await calls.finish_call("CA3", status="failed", duration_seconds=1)
    assert (again.status, again.duration_seconds, again.outcome) == ("completed", 42, "message")
    assert closed.ended_at is not None and (closed.ended_at - closed.started_at).seconds == 42
    assert again.transcript == [{"role": "user", "content": "hi"}]
