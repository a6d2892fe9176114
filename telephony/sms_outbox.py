"""The durable SMS outbox: confirmation texts kept in the database until Twilio accepts them.

`SmsOutbox.queue` (the switchboard's `Texts`) writes the text once per key (a second queue of
the same key, by any worker, is a no-op) and then tries to send it at once, in the background,
under its row claim. A job (`run`, one per worker) sends whatever else is due: texts whose
first try failed, retried after `backoff` (or what a 429's Retry-After asks, if longer), and
texts whose sender died holding the claim, once the claim lapses. A refusal a retry cannot
change (Twilio's 21211 invalid number, 21610 unsubscribed: any 4xx but 408 and 429) is
recorded as failed at once. Each text is recorded with Twilio's message SID.

A sender that dies after Twilio accepted a text and before it recorded the SID leaves the text
claimed; Twilio's Messages API has no idempotency key, so the sender that takes it over once the
claim lapses first lists the messages Twilio has to that number from that sender and records the
one with the same body, created since the text was queued, instead of posting it again. Only a
message Twilio accepted but does not list yet (or a lookup that fails) is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from booking.sms_outbox import ClaimedSms, SmsStore
from telephony.sms import Sms, SmsNotSent, SmsSender

log = logging.getLogger(__name__)

BACKOFF: tuple[float, ...] = (10, 30, 120, 600, 1800, 3600)  # seconds before attempt n + 2
LEASE = timedelta(seconds=60)  # longer than one post's time limit (the sender's timeout + 1 s)
POLL_INTERVAL = 2.0
SEND_CLOCK_SKEW = timedelta(minutes=5)  # between our clock and Twilio's date_created
UNSUBSCRIBED = 21610  # Twilio: "Attempt to send to unsubscribed recipient"


class SmsOutbox:
    """Queues texts durably and sends them through `sender` (`SmsSender.post_once`).

    `observer(outcome)` hears "sent", "retry" and "failed" (the metrics)."""

    def __init__(
        self,
        store: SmsStore,
        sender: SmsSender,
        *,
        lease: timedelta = LEASE,
        backoff: tuple[float, ...] = BACKOFF,
        poll_interval: float = POLL_INTERVAL,
        batch: int = 20,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.lease = lease
        self.backoff = backoff
        self.poll_interval = poll_interval
        self.batch = batch
        self.observer = observer
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def max_attempts(self) -> int:
        return len(self.backoff) + 1

    async def queue(
        self,
        *,
        business_id: str,
        key: str,
        sms: Sms,
        kind: str | None = None,
        appointment_id: str | None = None,
    ) -> bool:
        """Keep `sms` under `key` and start sending it; False if `key` was queued before."""
        sms_id = await self.store.enqueue(
            business_id=business_id,
            key=key,
            to_number=sms.to,
            from_number=sms.from_,
            body=sms.body,
            kind=kind,
            appointment_id=appointment_id,
        )
        if sms_id is None:
            return False
        self._spawn(self._send_now(sms_id), name=f"sms {sms_id}")
        return True

    async def _send_now(self, sms_id: str) -> None:
        for claimed in await self.store.claim(lease=self.lease, sms_id=sms_id):
            await self._send(claimed)

    async def run_once(self) -> int:
        """Send one batch of due texts; how many were tried."""
        due = await self.store.claim(lease=self.lease, limit=self.batch)
        await asyncio.gather(*(self._send(d) for d in due))
        return len(due)

    async def run(self) -> None:
        """The job: send due texts until cancelled."""
        while True:
            try:
                busy = await self.run_once() >= self.batch
            except Exception:
                log.exception("SMS outbox pass failed; trying again shortly")
                busy = False
            if not busy:
                await asyncio.sleep(self.poll_interval)

    def send_soon(self, sms_id: str) -> None:
        """Start sending a text queued in the store by someone else (the reminder planner)."""
        self._spawn(self._send_now(sms_id), name=f"sms {sms_id}")

    async def _send(self, due: ClaimedSms) -> None:
        sms = Sms(to=due.to_number, from_=due.from_number, body=due.body)
        if not await self.store.still_pending(due):
            # Voided since it was claimed (its appointment was cancelled or moved, or the
            # number opted out): what voided it stands.
            log.info("SMS %s (%s) is no longer to be sent", due.id, due.key)
            return
        if due.recovering and due.created_at is not None:
            earlier = await self.sender.find_sent(sms, since=due.created_at - SEND_CLOCK_SKEW)
            if earlier is not None:
                if await self.store.sent(due, sid=earlier):
                    log.info("SMS %s was already sent as %s by a sender that died", due.id, earlier)
                    self._observe("sent")
                return
        try:
            sid = await self.sender.post_once(sms)
        except SmsNotSent as refused:
            await self._refused(due, refused)
            return
        if await self.store.sent(due, sid=sid):
            log.info("sent SMS %s (%s) as %s", due.id, due.key, sid)
            self._observe("sent")
        else:
            log.warning("SMS %s was sent as %s after its claim lapsed", due.id, sid)

    async def _refused(self, due: ClaimedSms, refused: SmsNotSent) -> None:
        attempts = due.attempts + 1
        error = f"{type(refused.cause).__name__}: {refused}"
        if refused.code is not None:
            error = f"Twilio error {refused.code}: {refused}"
        if refused.code == UNSUBSCRIBED:
            # The carrier or Twilio holds a STOP we never saw: record it, so nothing else from
            # this number is posted to them until they text START.
            await self.store.set_opt_out(
                business_id=due.business_id,
                sender=due.from_number,
                phone=due.to_number,
                opted_out=True,
                source=f"twilio {UNSUBSCRIBED}",
            )
        if not refused.retryable or attempts >= self.max_attempts:
            log.error("giving up on SMS %s after %d attempt(s): %s", due.id, attempts, error)
            await self.store.failed(due, error=error, retry_in=None)
            self._observe("failed")
            return
        wait = max(self.backoff[attempts - 1], refused.retry_after or 0.0)
        log.warning("SMS %s failed (attempt %d, retry in %g s): %s", due.id, attempts, wait, error)
        await self.store.failed(due, error=error, retry_in=wait)
        self._observe("retry")

    def _observe(self, outcome: str) -> None:
        if self.observer is not None:
            try:
                self.observer(outcome)
            except Exception:
                log.exception("SMS outcome observer failed")

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(_logged(coro), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the sends `queue` started."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Stop the sends in flight (their claims lapse; the job sends them later) and the
        transport."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.sender.aclose()


async def _logged(coro: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await coro
        except Exception:
            log.exception("sending an SMS failed; the outbox job retries it")
