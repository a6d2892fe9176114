"""Confirmation texts through the real Twilio REST client against the local fake."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from telephony.sms import Change, Sms, SmsSender, confirmation_text
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.telephony.conftest import ACCOUNT_SID, TOKEN

SMS = Sms(to="+12025554321", from_="+12025550100", body="Clinic: you're booked.")


def sender(rest: FakeTwilioRest, **kw: Any) -> SmsSender:
    return SmsSender(
        account_sid=ACCOUNT_SID, auth_token=TOKEN, api_base_url=rest.base_url, backoff=0.01, **kw
    )


async def test_a_text_is_posted_to_twilio_messages(rest: FakeTwilioRest) -> None:
    sms = sender(rest)
    try:
        sent = await sms.send(SMS)
    finally:
        await sms.aclose()
    assert sent is not None and sent.sid.startswith("SM") and sent.attempts == 1
    [message] = rest.messages
    assert (message.to, message.from_, message.body) == (SMS.to, SMS.from_, SMS.body)


async def test_a_server_error_is_retried_until_it_goes_through(rest: FakeTwilioRest) -> None:
    rest.fail_next(2, status=500)
    sms = sender(rest)
    try:
        sent = await sms.send(SMS)
    finally:
        await sms.aclose()
    assert sent is not None and sent.attempts == 3
    assert rest.attempts == 3 and len(rest.messages) == 1


async def test_a_rejected_number_is_not_retried(rest: FakeTwilioRest) -> None:
    sms = sender(rest)
    try:
        sent = await sms.send(Sms(to="2025554321", from_=SMS.from_, body="hi"))
    finally:
        await sms.aclose()
    assert sent is None and rest.attempts == 1


async def test_an_unreachable_api_gives_up_without_raising() -> None:
    sms = SmsSender(
        account_sid=ACCOUNT_SID,
        auth_token=TOKEN,
        api_base_url="http://127.0.0.1:9",
        backoff=0.01,
        attempts=2,
    )
    try:
        sent = await asyncio.wait_for(sms.send(SMS), 10)
    finally:
        await sms.aclose()
    assert sent is None


class RecordedSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def recorded(rest: FakeTwilioRest, sleep: RecordedSleep, attempts: int = 5) -> SmsSender:
    return SmsSender(
        account_sid=ACCOUNT_SID,
        auth_token=TOKEN,
        api_base_url=rest.base_url,
        attempts=attempts,
        backoff=1.0,
        max_backoff=3.0,
        sleep=sleep,
        jitter=False,
    )


@pytest.mark.parametrize("status", [500, 503, 429, 408])
async def test_retries_wait_the_doubling_backoff_up_to_its_cap(
    rest: FakeTwilioRest, status: int
) -> None:
    rest.fail_next(3, status=status)
    sleep = RecordedSleep()
    sms = recorded(rest, sleep)
    try:
        sent = await sms.send(SMS)
    finally:
        await sms.aclose()
    assert sent is not None and sent.attempts == 4
    assert sleep.waits == [1.0, 2.0, 3.0]
    assert rest.attempts == 4 and len(rest.messages) == 1


async def test_retries_stop_after_the_attempts(rest: FakeTwilioRest) -> None:
    rest.fail_next(5, status=500)
    sleep = RecordedSleep()
    sms = recorded(rest, sleep, attempts=3)
    try:
        sent = await sms.send(SMS)
    finally:
        await sms.aclose()
    assert sent is None and rest.attempts == 3 and rest.messages == []
    assert sleep.waits == [1.0, 2.0]


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_a_client_error_is_not_retried(rest: FakeTwilioRest, status: int) -> None:
    rest.fail_next(1, status=status)
    sleep = RecordedSleep()
    sms = recorded(rest, sleep)
    try:
        sent = await sms.send(SMS)
    finally:
        await sms.aclose()
    assert sent is None and rest.attempts == 1 and sleep.waits == []


async def test_a_429_waits_what_its_retry_after_asks(rest: FakeTwilioRest) -> None:
    rest.fail_next(2, status=429, retry_after="2.5")
    sleep = RecordedSleep()
    sms = recorded(rest, sleep)
    try:
        sent = await sms.send(SMS)
    finally:
        await sms.aclose()
    assert sent is not None and sent.attempts == 3
    assert sleep.waits == [2.5, 2.5]  # the header's wait, not the back-off's 1 and 2 s


async def test_a_retry_after_date_is_measured_with_the_injected_clock(
    rest: FakeTwilioRest,
) -> None:
    from booking.clock import FixedClock

    rest.fail_next(1, status=503, retry_after="Wed, 02 Dec 2026 10:00:02 GMT")
    sleep = RecordedSleep()
    sms = SmsSender(
        account_sid=ACCOUNT_SID,
        auth_token=TOKEN,
        api_base_url=rest.base_url,
        max_backoff=3.0,
        sleep=sleep,
        clock=FixedClock(datetime(2026, 12, 2, 10, 0, tzinfo=UTC)),
        jitter=False,
    )
    try:
        sent = await sms.send(SMS)
    finally:
        await sms.aclose()
    assert sent is not None and sleep.waits == [2.0]


async def test_a_retry_after_longer_than_the_policy_waits_gives_up(rest: FakeTwilioRest) -> None:
    rest.fail_next(5, status=429, retry_after="3600")
    sleep = RecordedSleep()
    sms = recorded(rest, sleep)
    try:
        sent = await sms.send(SMS)
    finally:
        await sms.aclose()
    assert sent is None and rest.attempts == 1 and sleep.waits == []


def test_texts_say_the_time_in_the_business_zone() -> None:
    start = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)
    text = confirmation_text(
        Change.BOOKED,
        business_name="Clinic",
        service_name="Teeth cleaning",
        staff_name="Dr. Lee",
        start=start,
        timezone="America/New_York",
    )
    assert text == (
        "Clinic: your Teeth cleaning with Dr. Lee is booked for Mon Dec 7 at 9:00 AM. See you then!"
    )
    moved = confirmation_text(
        Change.RESCHEDULED,
        business_name="Clinic",
        service_name="Checkup",
        staff_name="Dr. Lee",
        start=start,
        timezone="America/New_York",
    )
    assert "moved to Mon Dec 7 at 9:00 AM" in moved
    cancelled = confirmation_text(
        Change.CANCELLED,
        business_name="Clinic",
        service_name="Checkup",
        staff_name="Dr. Lee",
        start=start,
        timezone="America/New_York",
    )
    assert cancelled == "Clinic: your Checkup on Mon Dec 7 at 9:00 AM is cancelled."
