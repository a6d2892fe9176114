"""Confirmation texts after a booking, cancellation or reschedule, sent with Twilio's REST client.

Sending never holds up a call and never fails one: `SmsSender.send` queues the message and returns;
a background task posts it (the Twilio client is synchronous, so in a worker thread) and retries
through `booking.retry.RetryPolicy` (exponential back-off with jitter) while a retry can help
(network errors, timeouts, 408, 429, 5xx), waiting what a refusal's `Retry-After` header asks
(Twilio's exception does not keep the answer's headers, so the HTTP client records them). A 4xx
such as an invalid number is logged once and dropped.

That in-memory retry loses a text if the process dies; the durable outbox
(`telephony.sms_outbox`) keeps texts in the database and uses `SmsSender.post_once` to post them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from booking.clock import Clock, SystemClock
from booking.retry import RetryPolicy, parse_retry_after, retryable_status

log = logging.getLogger(__name__)


class Change(StrEnum):
    BOOKED = "booked"
    CANCELLED = "cancelled"
    RESCHEDULED = "rescheduled"


@dataclass(frozen=True)
class Sms:
    to: str
    from_: str
    body: str


@dataclass(frozen=True)
class SentSms:
    sms: Sms
    sid: str
    attempts: int


def confirmation_text(
    change: Change,
    *,
    business_name: str,
    service_name: str,
    staff_name: str,
    start: datetime,
    timezone: str,
) -> str:
    """The text a caller gets after `change`, with the time in the business's zone."""
    local = start.astimezone(ZoneInfo(timezone))
    when = f"{local:%a %b} {local.day} at {local:%I:%M %p}".replace(" 0", " ")
    if change is Change.CANCELLED:
        return f"{business_name}: your {service_name} on {when} is cancelled."
    verb = "moved to" if change is Change.RESCHEDULED else "booked for"
    return f"{business_name}: your {service_name} with {staff_name} is {verb} {when}. See you then!"


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, TwilioRestException):
        return retryable_status(exc.status)
    return True  # connection errors, timeouts: the next try may get through


class SmsNotSent(Exception):
    """One failed post, with whether a retry can help (`retryable`: network errors, timeouts,
    408, 429, 5xx; not a 4xx such as Twilio's 21211 invalid number or 21610 unsubscribed),
    when the answer asked for it after how many seconds (`retry_after`), and Twilio's error
    `code` if it gave one."""

    def __init__(self, cause: Exception, retry_after: float | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retryable = _retryable(cause)
        self.retry_after = retry_after if self.retryable else None
        code = getattr(cause, "code", None)
        self.code = code if isinstance(code, int) else None


class _AnswerHeaders(TwilioHttpClient):  # type: ignore[misc]  # twilio is untyped
    """Twilio's HTTP client, remembering per worker thread the last answer's `Retry-After`
    (one post runs in one thread; `TwilioRestException` does not keep the headers)."""

    def __init__(self, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._last = threading.local()

    def request(self, *args: Any, **kwargs: Any) -> Response:
        self._last.retry_after = None
        response = super().request(*args, **kwargs)
        headers = response.headers
        value = headers.get("Retry-After") if headers is not None else None
        self._last.retry_after = value if isinstance(value, str) else None
        return response

    @property
    def retry_after(self) -> str | None:
        value = getattr(self._last, "retry_after", None)
        return value if isinstance(value, str) else None


class SmsSender:
    """Posts texts through `twilio.rest.Client`, retrying in the background.

    `attempts`, `backoff` (the first wait) and `max_backoff` (the longest) shape the retry
    policy; `clock` (the wall clock by default) measures a `Retry-After` date, `sleep` waits;
    both are injectable for tests. Setting `backoff` later takes effect
    for the texts queued after it.
    """

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        api_base_url: str | None = None,
        attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Clock | None = None,
        jitter: bool = True,
        status_callback: str | None = None,
    ) -> None:
        # The SDK's own timeout, so a hung request also frees its worker thread.
        self._http = _AnswerHeaders(timeout=timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        if api_base_url:
            # The Api domain builds every URL from its base_url; pointing it elsewhere is how
            # the SDK's own tests and regional setups reach a different host.
            self._client.api.base_url = api_base_url.rstrip("/")
        self._attempts = attempts
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._jitter = jitter
        self._timeout = timeout
        self._status_callback = status_callback  # where Twilio posts each text's status
        self.backoff = backoff
        self._tasks: set[asyncio.Task[SentSms | None]] = set()

    def send(self, sms: Sms) -> asyncio.Task[SentSms | None]:
        """Queue `sms`; the returned task finishes when it is sent or given up on."""
        task = asyncio.create_task(self._deliver(sms), name=f"sms to {sms.to}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def backoff(self) -> float:
        return self._retry.base

    @backoff.setter
    def backoff(self, seconds: float) -> None:
        self._retry = RetryPolicy(
            attempts=self._attempts,
            base=seconds,
            cap=self._max_backoff,
            max_retry_after=self._max_backoff,
            clock=self._clock,
            sleep=self._sleep,
            jitter=self._jitter,
        )

    async def _deliver(self, sms: Sms) -> SentSms | None:
        attempt = 0

        async def post() -> str:
            nonlocal attempt
            attempt += 1
            try:
                return await asyncio.wait_for(asyncio.to_thread(self._post, sms), self._timeout + 1)
            except SmsNotSent as refused:
                if refused.retryable and attempt < self._attempts:
                    log.warning(
                        "SMS to %s failed (attempt %d, retrying): %s", sms.to, attempt, refused
                    )
                raise
            except (TwilioException, OSError, TimeoutError) as exc:
                failed = SmsNotSent(exc)
                if failed.retryable and attempt < self._attempts:
                    log.warning("SMS to %s failed (attempt %d, retrying): %s", sms.to, attempt, exc)
                raise failed from None

        try:
            sid = await self._retry.call(post)
        except SmsNotSent as failed:
            log.error(
                "giving up on SMS to %s after %d attempt(s): %s", sms.to, attempt, failed.cause
            )
            return None
        log.info("sent SMS %s to %s", sid, sms.to)
        return SentSms(sms=sms, sid=sid, attempts=attempt)

    async def post_once(self, sms: Sms) -> str:
        """Post `sms` once, with no retry (the durable outbox keeps its own schedule);
        Twilio's message SID, or `SmsNotSent` saying whether a retry can help."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._post, sms), self._timeout + 1)
        except SmsNotSent:
            raise
        except (TwilioException, OSError, TimeoutError) as exc:
            raise SmsNotSent(exc) from None

    async def find_sent(self, sms: Sms, *, since: datetime) -> str | None:
        """The SID of a message Twilio already has from `sms.from_` to `sms.to` with this body,
        created at or after `since` (a sender that died after posting it); None when there is
        none, or when Twilio cannot say (then the text is posted again)."""
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._find, sms, since), self._timeout + 1
            )
        except (TwilioException, OSError, TimeoutError) as exc:
            log.warning("could not look up earlier sends to %s: %s", sms.to, exc)
            return None

    def _find(self, sms: Sms, since: datetime) -> str | None:
        for message in self._client.messages.list(to=sms.to, from_=sms.from_, limit=50):
            created = message.date_created
            if message.body == sms.body and (created is None or created >= since):
                return str(message.sid)
        return None

    def _post(self, sms: Sms) -> str:
        try:
            extra = {"status_callback": self._status_callback} if self._status_callback else {}
            message = self._client.messages.create(
                to=sms.to, from_=sms.from_, body=sms.body, **extra
            )
        except TwilioRestException as exc:
            # In the worker thread that received the answer, whose Retry-After it was.
            wait = parse_retry_after(self._http.retry_after, self._clock.now())
            raise SmsNotSent(exc, retry_after=wait) from None
        return str(message.sid)

    async def drain(self) -> None:
        """Wait for every queued text to be sent or given up on."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        session = getattr(self._client.http_client, "session", None)
        if session is not None:
            session.close()
