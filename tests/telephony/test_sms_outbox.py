"""The durable SMS outbox against the local Twilio REST fake, on SQLite and PostgreSQL: one text
per key however many workers queue it, sent once, retried after a 5xx / 429, given up on at once
for a permanent refusal, recorded with Twilio's SID."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from booking.clock import FixedClock
from booking.models import SmsStatus
from booking.sms_outbox import SmsStore
from telephony.sms import Sms, SmsSender
from telephony.sms_outbox import SmsOutbox
from tests.conftest import NOW
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.telephony.conftest import ACCOUNT_SID, TOKEN

SMS = Sms(to="+12025554321", from_="+12025550100", body="Clinic: you're booked.")
BUSINESS = "clinic"


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
async def outboxes(
    clinic: Engine, rest: FakeTwilioRest, clock: FixedClock
) -> AsyncIterator[Callable[..., SmsOutbox]]:
    made: list[SmsOutbox] = []

    def make(**kw: Any) -> SmsOutbox:
        sender = SmsSender(account_sid=ACCOUNT_SID, auth_token=TOKEN, api_base_url=rest.base_url)
        outcomes: list[str] = []
        box = SmsOutbox(SmsStore.over(clinic, clock), sender, observer=outcomes.append, **kw)
        box.outcomes = outcomes  # type: ignore[attr-defined]
        made.append(box)
        return box

    yield make
    for box in made:
        await box.aclose()


async def test_one_key_queued_by_two_workers_is_one_text_sent_once_with_its_sid(
    outboxes: Callable[..., SmsOutbox], rest: FakeTwilioRest
) -> None:
    a, b = outboxes(), outboxes()
    queued = await asyncio.gather(
        a.queue(business_id=BUSINESS, key="apt_1:booked", sms=SMS),
        b.queue(business_id=BUSINESS, key="apt_1:booked", sms=SMS),
    )
    assert sorted(queued) == [False, True]
    await a.drain()
    await b.drain()
    assert await a.run_once() == 0 and await b.run_once() == 0  # nothing left to send
    [message] = rest.messages
    assert (message.to, message.from_, message.body) == (SMS.to, SMS.from_, SMS.body)
    row = await a.store.get(BUSINESS, "apt_1:booked")
    assert row is not None and row.status == SmsStatus.SENT.value
    assert row.sid == message.sid and row.attempts == 1 and row.sent_at is not None
    assert row.claim is None and row.claimed_until is None


async def test_a_server_error_is_retried_after_the_backoff(
    outboxes: Callable[..., SmsOutbox], rest: FakeTwilioRest, clock: FixedClock
) -> None:
    box = outboxes(backoff=(30, 60))
    rest.fail_next(1, status=500)
    assert await box.queue(business_id=BUSINESS, key="k", sms=SMS)
    await box.drain()
    row = await box.store.get(BUSINESS, "k")
    assert row is not None and row.status == SmsStatus.PENDING.value and row.attempts == 1
    assert row.next_attempt_at == NOW + timedelta(seconds=30) and "20500" in (row.error or "")
    assert await box.run_once() == 0  # not due yet
    clock.at = NOW + timedelta(seconds=30)
    assert await box.run_once() == 1
    row = await box.store.get(BUSINESS, "k")
    assert row is not None and row.status == SmsStatus.SENT.value and row.attempts == 2
    assert [m.sid for m in rest.messages] == [row.sid] and rest.attempts == 2
    assert box.outcomes == ["retry", "sent"]  # type: ignore[attr-defined]


async def test_a_429_waits_what_retry_after_asks_when_longer(
    outboxes: Callable[..., SmsOutbox], rest: FakeTwilioRest
) -> None:
    box = outboxes(backoff=(5,))
    rest.fail_next(1, status=429, retry_after="120")
    await box.queue(business_id=BUSINESS, key="k", sms=SMS)
    await box.drain()
    row = await box.store.get(BUSINESS, "k")
    assert row is not None and row.next_attempt_at == NOW + timedelta(seconds=120)


async def test_an_invalid_number_fails_at_once_without_retry(
    outboxes: Callable[..., SmsOutbox], rest: FakeTwilioRest, clock: FixedClock
) -> None:
    box = outboxes()
    bad = Sms(to="2025554321", from_=SMS.from_, body="hi")
    await box.queue(business_id=BUSINESS, key="k", sms=bad)
    await box.drain()
    row = await box.store.get(BUSINESS, "k")
    assert row is not None and row.status == SmsStatus.FAILED.value and row.attempts == 1
    assert "21211" in (row.error or "") and row.sid is None
    clock.at = NOW + timedelta(days=1)
    assert await box.run_once() == 0 and rest.attempts == 1
    assert box.outcomes == ["failed"]  # type: ignore[attr-defined]


async def test_the_last_attempt_gives_up(
    outboxes: Callable[..., SmsOutbox], rest: FakeTwilioRest, clock: FixedClock
) -> None:
    box = outboxes(backoff=(1,))
    rest.fail_next(2, status=503)
    await box.queue(business_id=BUSINESS, key="k", sms=SMS)
    await box.drain()
    clock.at = NOW + timedelta(seconds=1)
    assert await box.run_once() == 1
    row = await box.store.get(BUSINESS, "k")
    assert row is not None and row.status == SmsStatus.FAILED.value and row.attempts == 2
    assert rest.messages == []


async def test_two_workers_draining_one_outbox_send_each_text_once(
    outboxes: Callable[..., SmsOutbox], rest: FakeTwilioRest
) -> None:
    a, b = outboxes(batch=5), outboxes(batch=5)
    for n in range(30):
        body = f"text {n}"
        assert await a.store.enqueue(
            business_id=BUSINESS, key=f"k{n}", to_number=SMS.to, from_number=SMS.from_, body=body
        )

    async def drain(box: SmsOutbox) -> int:
        total = 0
        while sent := await box.run_once():
            total += sent
        return total

    done = await asyncio.gather(drain(a), drain(b))
    assert sum(done) == 30
    assert sorted(m.body for m in rest.messages) == sorted(f"text {n}" for n in range(30))


async def test_a_dead_senders_claim_lapses_and_another_worker_sends_it(
    outboxes: Callable[..., SmsOutbox], rest: FakeTwilioRest, clock: FixedClock
) -> None:
    box = outboxes(lease=timedelta(seconds=60))
    await box.store.enqueue(
        business_id=BUSINESS, key="k", to_number=SMS.to, from_number=SMS.from_, body=SMS.body
    )
    [held] = await box.store.claim(lease=timedelta(seconds=60))  # a worker that then died
    assert await box.run_once() == 0
    clock.at = NOW + timedelta(seconds=61)
    assert await box.run_once() == 1
    assert len(rest.messages) == 1
    assert not await box.store.sent(held, sid="SMlate")  # the dead claim records nothing
    row = await box.store.get(BUSINESS, "k")
    assert row is not None and row.sid == rest.messages[0].sid


async def test_a_text_a_dead_sender_had_posted_is_found_at_twilio_not_sent_twice(
    outboxes: Callable[..., SmsOutbox], rest: FakeTwilioRest, clock: FixedClock
) -> None:
    box = outboxes(lease=timedelta(seconds=60))
    await box.store.enqueue(
        business_id=BUSINESS, key="k", to_number=SMS.to, from_number=SMS.from_, body=SMS.body
    )
    await box.store.claim(lease=timedelta(seconds=60))  # a worker that then died...
    posted = await box.sender.post_once(SMS)  # ...after Twilio accepted the text
    # Another text to the same number, from the same sender, is not mistaken for it.
    await box.sender.post_once(Sms(to=SMS.to, from_=SMS.from_, body="Something else."))
    clock.at = NOW + timedelta(seconds=61)
    assert await box.run_once() == 1
    assert len(rest.messages) == 2  # nothing posted again
    row = await box.store.get(BUSINESS, "k")
    assert row is not None and row.status == SmsStatus.SENT.value and row.sid == posted


async def test_a_lapsed_claim_whose_text_twilio_never_got_is_posted(
    outboxes: Callable[..., SmsOutbox], rest: FakeTwilioRest, clock: FixedClock
) -> None:
    box = outboxes(lease=timedelta(seconds=60))
    await box.store.enqueue(
        business_id=BUSINESS, key="k", to_number=SMS.to, from_number=SMS.from_, body=SMS.body
    )
    [held] = await box.store.claim(lease=timedelta(seconds=60))
    clock.at = NOW + timedelta(seconds=61)
    [again] = await box.store.claim(lease=timedelta(seconds=60))
    assert again.recovering and not held.recovering
    await box._send(again)
    [message] = rest.messages
    row = await box.store.get(BUSINESS, "k")
    assert row is not None and row.sid == message.sid
