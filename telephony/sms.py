"""Confirmation texts after a booking, cancellation or reschedule, sent with Twilio's REST client.

Sending never holds up a call and never fails one: `SmsSender.send` queues the message and returns;
a background task posts it (the Twilio client is synchronous, so in a worker thread) and retries
with exponential backoff while a retry can help (network errors, 429, 5xx). A 4xx such as an
invalid number is logged once and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

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
        return exc.status == 429 or exc.status >= 500
    return True  # connection errors, timeouts: the next try may get through


class SmsSender:
    """Posts texts through `twilio.rest.Client`, retrying in the background."""

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
    ) -> None:
        # The SDK's own timeout, so a hung request also frees its worker thread.
        self._client = Client(
            account_sid, auth_token, http_client=TwilioHttpClient(timeout=timeout)
        )
        if api_base_url:
            # The Api domain builds every URL from its base_url; pointing it elsewhere is how
            # the SDK's own tests and regional setups reach a different host.
            self._client.api.base_url = api_base_url.rstrip("/")
        self._attempts = attempts
        self.backoff = backoff
        self._max_backoff = max_backoff
        self._timeout = timeout
        self._tasks: set[asyncio.Task[SentSms | None]] = set()

    def send(self, sms: Sms) -> asyncio.Task[SentSms | None]:
        """Queue `sms`; the returned task finishes when it is sent or given up on."""
        task = asyncio.create_task(self._deliver(sms), name=f"sms to {sms.to}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, sms: Sms) -> SentSms | None:
        delay = self.backoff
        for attempt in range(1, self._attempts + 1):
            try:
                sid = await asyncio.wait_for(asyncio.to_thread(self._post, sms), self._timeout + 1)
            except (TwilioException, OSError, TimeoutError) as exc:
                if not _retryable(exc) or attempt == self._attempts:
                    log.error(
                        "giving up on SMS to %s after %d attempt(s): %s", sms.to, attempt, exc
                    )
                    return None
                log.warning(
                    "SMS to %s failed (attempt %d, retrying in %.1fs): %s",
                    sms.to,
                    attempt,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            log.info("sent SMS %s to %s", sid, sms.to)
            return SentSms(sms=sms, sid=sid, attempts=attempt)
        return None

    def _post(self, sms: Sms) -> str:
        message = self._client.messages.create(to=sms.to, from_=sms.from_, body=sms.body)
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
