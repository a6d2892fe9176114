"""Outgoing webhooks: signed per Standard Webhooks, delivered from the outbox, retried with backoff.

Every domain change writes an `OutboxEvent` in its own transaction. The `WebhookDispatcher`, a
background task of the web app, polls for it:

1. **Fan-out.** Each new outbox event becomes one `WebhookDelivery` per active endpoint of its
   business subscribed to its type, and a `WebhookFanout` marker, in one transaction. The marker's
   primary key and the (endpoint, event) unique key make a second dispatcher's try fail instead of
   duplicating; on PostgreSQL `FOR UPDATE SKIP LOCKED` keeps two dispatchers off the same events
   to begin with, on SQLite the write lock serialises them.
2. **Claim.** Due deliveries are claimed in a write transaction: a fresh claim token, and
   `next_attempt_at` pushed past the attempt's time limit (a lease that lapses if we die).
3. **Attempt.** POST the frozen body with `webhook-id` (the event id, the same on every retry),
   `webhook-timestamp` (this attempt's Unix seconds) and `webhook-signature`
   (`v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed by the base64-decoded secret).
4. **Record.** Only the claim's holder records: 2xx is delivered; anything else waits
   `RETRY_DELAYS[n]` before attempt n + 2, and after the last one the delivery has failed.

Finished deliveries are kept `LOG_RETENTION` for the owner's delivery log, then pruned.

Database work runs in worker threads; requests are time-boxed; the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from booking import errors
from booking.clock import Clock, SystemClock
from booking.db import in_session
from booking.models import OutboxEvent, new_id
from calendars.netguard import check_public_url
from dashboard.webhook_models import (
    EVENT_TYPES,
    TEST_EVENT_TYPE,
    DeliveryStatus,
    Webhook,
    WebhookDelivery,
    WebhookFanout,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes
RETRY_DELAYS: tuple[float, ...] = (5, 30, 120, 600, 3600, 6 * 3600, 12 * 3600)  # seconds
REQUEST_TIMEOUT = 10.0
POLL_INTERVAL = 1.0
# An event committed this long after an already fanned-out one (by its created_at) is still found;
# transactions are short, so only clock skew between processes needs this much room.
FANOUT_LAG = timedelta(hours=1)
USER_AGENT = "Frontdesk-Webhooks/0.1"
LOG_RETENTION = timedelta(days=30)  # finished deliveries are kept this long for the log
PRUNE_EVERY = 3600.0  # seconds between clean-ups of the log


# ---- signing ------------------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret in the spec's form: `whsec_` and the base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, *, msg_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header's value for one message."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, *, msg_id: str, body: str, now: datetime) -> dict[str, str]:
    timestamp = int(now.timestamp())
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id=msg_id, timestamp=timestamp, body=body),
    }


def message_body(event_type: str, at: datetime, data: dict[str, Any]) -> str:
    """The JSON body: `type`, `timestamp` (when it happened, ISO 8601) and the event's `data`."""
    stamp = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps(
        {"type": event_type, "timestamp": stamp, "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )


def check_url(url: str) -> str:
    """The endpoint URL, if it is an absolute http(s) URL with a host."""
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.InvalidRequest(
            "the webhook URL must start with http:// or https:// and name a host"
        )
    if len(url) > 2000:
        raise errors.InvalidRequest("the webhook URL is too long")
    return url


def check_event_types(event_types: list[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown:
        raise errors.InvalidRequest(
            f"unknown event types: {', '.join(unknown)}; choose from {', '.join(EVENT_TYPES)}"
        )
    if not event_types:
        raise errors.InvalidRequest("choose at least one event type")
    return [t for t in EVENT_TYPES if t in event_types]


# ---- the owner's endpoints ----------------------------------------------------------------


@dataclass
class Webhooks:
    """A business's endpoints and their delivery log."""

    engine: Engine
    allow_private: bool = True  # the web layer passes FRONTDESK_ALLOW_PRIVATE_URLS

    async def _db(self, fn: Callable[[Session], T], *, write: bool = False) -> T:
        return await in_session(self.engine, fn, write=write)

    async def create(
        self, *, business_id: str, url: str, event_types: list[str], description: str | None = None
    ) -> Webhook:
        await check_public_url(check_url(url), allow_private=self.allow_private)
        row = Webhook(
            business_id=business_id,
            url=check_url(url),
            event_types=check_event_types(event_types),
            secret=new_secret(),
            description=(description or "").strip()[:200] or None,
        )

        def write(s: Session) -> Webhook:
            s.add(row)
            s.flush()
            return row

        return await self._db(write, write=True)

    async def of_business(self, business_id: str) -> list[Webhook]:
        return await self._db(
            lambda s: list(
                s.exec(
                    select(Webhook)
                    .where(Webhook.business_id == business_id)
                    .order_by(col(Webhook.created_at), col(Webhook.id))
                )
            )
        )

    async def get(self, *, business_id: str, webhook_id: str) -> Webhook:
        return await self._db(lambda s: _own(s, business_id, webhook_id))

    async def update(
        self,
        *,
        business_id: str,
        webhook_id: str,
        url: str | None = None,
        event_types: list[str] | None = None,
        active: bool | None = None,
        description: str | None = None,
    ) -> Webhook:
        if url is not None:
            await check_public_url(check_url(url), allow_private=self.allow_private)

        def write(s: Session) -> Webhook:
            row = _own(s, business_id, webhook_id)
            if url is not None:
                row.url = check_url(url)
            if event_types is not None:
                row.event_types = check_event_types(event_types)
            if active is not None:
                row.active = active
            if description is not None:
                row.description = description.strip()[:200] or None
            s.add(row)
            s.flush()
            return row

        return await self._db(write, write=True)

    async def delete(self, *, business_id: str, webhook_id: str) -> None:
        """Remove an endpoint and its delivery log; pending deliveries are dropped with it."""

        def write(s: Session) -> None:
            row = _own(s, business_id, webhook_id)
            s.execute(sa.delete(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == row.id))
            s.delete(row)

        await self._db(write, write=True)

    async def deliveries(
        self, *, business_id: str, webhook_id: str, limit: int = 50
    ) -> list[WebhookDelivery]:
        """The endpoint's delivery log, newest first."""

        def load(s: Session) -> list[WebhookDelivery]:
            _own(s, business_id, webhook_id)
            return list(
                s.exec(
                    select(WebhookDelivery)
                    .where(WebhookDelivery.webhook_id == webhook_id)
                    .order_by(
                        col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc()
                    )
                    .limit(limit)
                )
            )

        return await self._db(load)


def _own(s: Session, business_id: str, webhook_id: str) -> Webhook:
    row = s.get(Webhook, webhook_id)
    if row is None or row.business_id != business_id:
        raise errors.NotFound(f"no webhook {webhook_id}")
    return row


# ---- delivery -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """How one POST went: a status code, or an error that kept us from getting one."""

    status_code: int | None
    error: str | None
    response_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class _Due:
    delivery_id: str
    claim: str
    url: str
    secret: str
    event_id: str
    body: str


async def post_signed(
    client: httpx.AsyncClient, due: _Due, *, now: datetime, time_limit: float
) -> Attempt:
    """POST one signed message, time-boxed; never raises for the endpoint's failures."""
    headers = signed_headers(due.secret, msg_id=due.event_id, body=due.body, now=now)
    started = time.perf_counter()

    def elapsed() -> int:
        return round((time.perf_counter() - started) * 1000)

    try:
        async with asyncio.timeout(time_limit):
            # Streamed and never read: an endpoint's answer body is not ours to download.
            async with client.stream(
                "POST", due.url, content=due.body.encode(), headers=headers
            ) as response:
                return Attempt(response.status_code, None, elapsed())
    except TimeoutError:
        return Attempt(None, f"timed out after {time_limit:g} s", elapsed())
    except httpx.HTTPError as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}"[:500], elapsed())


class WebhookDispatcher:
    """Fans the outbox out to endpoints and delivers, retrying with backoff. One per process;
    several processes may run one each against the same database."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock | None = None,
        timeout: float = REQUEST_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
        batch: int = 50,
        concurrency: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
        lease: timedelta | None = None,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.lease = lease  # None: long enough for every wave of a batch (see deliver_due)
        self.observer = observer  # hears each attempt's outcome: delivered, retry or failed
        self.clock = clock or SystemClock()
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.retry_delays = retry_delays
        self.batch = batch
        self._client = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, transport=transport
        )
        self.concurrency = concurrency
        self._limit = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays) + 1

    async def __aenter__(self) -> WebhookDispatcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _db(self, fn: Callable[[Session], T], *, write: bool = False) -> T:
        return await in_session(self.engine, fn, write=write)

    # ---- the background loop --------------------------------------------------------------

    def start(self) -> None:
        """Run the polling loop as a task of the current event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="webhook-dispatcher")

    async def run(self) -> None:
        next_prune = 0.0
        while True:
            try:
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY
                    await self.prune()
                busy = await self.run_once() >= self.batch
            except Exception:
                log.exception("webhook dispatch failed; trying again shortly")
                busy = False
            if not busy:
                await asyncio.sleep(self.poll_interval)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()

    # ---- one round ------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Fan out new outbox events, then attempt every due delivery; the attempts made."""
        while await self.fan_out() >= self.batch:
            pass
        return await self.deliver_due()

    async def fan_out(self) -> int:
        """Turn one batch of new outbox events into deliveries; how many events it took."""
        now = self.clock.now()
        # A read first: an idle poll must not queue for SQLite's write lock every second.
        if not await self._db(lambda s: bool(s.exec(_new_events(s).limit(1)).first())):
            return 0
        try:
            return await self._db(lambda s: _fan_out(s, now, self.batch), write=True)
        except IntegrityError:
            # Another dispatcher fanned out some of the same events first; ours rolled back
            # whole, and the next round finds only what is still new.
            log.info("another dispatcher fanned out these events first")
            return 0

    async def next_due(self) -> datetime | None:
        """When the most overdue pending delivery was due (the job's lag is now minus this)."""

        def read(s: Session) -> datetime | None:
            row = s.exec(_due(self.clock.now()).limit(1)).first()
            return None if row is None else row.next_attempt_at

        return await self._db(read)

    async def prune(self) -> int:
        """Forget finished deliveries older than `LOG_RETENTION`; how many went."""
        before = self.clock.now() - LOG_RETENTION
        return await self._db(lambda s: _prune(s, before), write=True)

    async def deliver_due(self) -> int:
        now = self.clock.now()
        # A claimed batch is sent a few at a time: the lease must outlast every wave of it.
        waves = -(-self.batch // max(1, self.concurrency))
        lease = self.lease or timedelta(seconds=waves * self.timeout + 30)
        if not await self._db(lambda s: bool(s.exec(_due(now).limit(1)).first())):
            return 0
        due = await self._db(lambda s: _claim(s, now, lease, self.batch), write=True)
        if due:
            await asyncio.gather(*(self._attempt(d) for d in due))
        return len(due)

    async def _attempt(self, due: _Due, *, max_attempts: int | None = None) -> Attempt:
        async with self._limit:
            attempt = await post_signed(
                self._client, due, now=self.clock.now(), time_limit=self.timeout
            )
        limit = max_attempts or self.max_attempts
        recorded = self.clock.now()
        outcome = await self._db(
            lambda s: _record(s, due, attempt, recorded, limit, self.retry_delays), write=True
        )
        if outcome is not None and self.observer is not None:
            self.observer(outcome)
        if not attempt.ok:
            # Scheme and host only: webhook URLs often carry a token in their path or query.
            where = urlsplit(due.url)
            log.info(
                "webhook delivery %s to %s://%s failed: %s",
                due.delivery_id,
                where.scheme,
                where.hostname,
                attempt.error or f"HTTP {attempt.status_code}",
            )
        return attempt

    async def send_test(self, *, business_id: str, webhook_id: str) -> WebhookDelivery:
        """Deliver a `webhook.test` message to one endpoint now, once, and log it."""
        now = self.clock.now()
        token = uuid.uuid4().hex

        def create(s: Session) -> _Due:
            hook = _own(s, business_id, webhook_id)
            event_id = new_id("evt_test")
            body = message_body(
                TEST_EVENT_TYPE,
                now,
                {
                    "business_id": business_id,
                    "webhook_id": hook.id,
                    "message": "A test event from Frontdesk.",
                },
            )
            row = WebhookDelivery(
                webhook_id=hook.id,
                event_id=event_id,
                event_type=TEST_EVENT_TYPE,
                body=body,
                claim=token,
                next_attempt_at=now + timedelta(seconds=self.timeout + 30),
                created_at=now,
            )
            s.add(row)
            s.flush()
            return _Due(row.id, token, hook.url, hook.secret, event_id, body)

        due = await self._db(create, write=True)
        await self._attempt(due, max_attempts=1)
        return await self._db(lambda s: _delivery(s, due.delivery_id))


def _delivery(s: Session, delivery_id: str) -> WebhookDelivery:
    row = s.get(WebhookDelivery, delivery_id)
    if row is None:
        raise errors.NotFound("the webhook was deleted meanwhile")
    return row


def _new_events(s: Session) -> SelectOfScalar[OutboxEvent]:
    """Outbox events not fanned out yet, oldest first, from the scan window on."""
    floor = s.exec(select(sa.func.max(WebhookFanout.event_created_at))).one()
    q = (
        select(OutboxEvent)
        .outerjoin(WebhookFanout, col(WebhookFanout.event_id) == OutboxEvent.id)
        .where(col(WebhookFanout.event_id).is_(None))
    )
    if floor is not None:
        q = q.where(col(OutboxEvent.created_at) >= floor - FANOUT_LAG)
    return q.order_by(col(OutboxEvent.created_at), col(OutboxEvent.id))


def _fan_out(s: Session, now: datetime, batch: int) -> int:
    q = _new_events(s).limit(batch).with_for_update(skip_locked=True, of=OutboxEvent)
    events = list(s.exec(q))
    if not events:
        return 0
    hooks = list(
        s.exec(
            select(Webhook).where(
                Webhook.business_id.in_({e.business_id for e in events}),  # type: ignore[attr-defined]
                Webhook.active == True,  # noqa: E712
            )
        )
    )  # noqa: E712
    for event in events:
        subscribed = [
            h for h in hooks if h.business_id == event.business_id and event.type in h.event_types
        ]
        body = message_body(event.type, event.created_at, event.payload)
        for hook in subscribed:
            s.add(
                WebhookDelivery(
                    webhook_id=hook.id,
                    event_id=event.id,
                    event_type=event.type,
                    body=body,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        s.add(
            WebhookFanout(
                event_id=event.id, event_created_at=event.created_at, deliveries=len(subscribed)
            )
        )
    s.flush()
    return len(events)


def _prune(s: Session, before: datetime) -> int:
    gone = s.execute(
        sa.delete(WebhookDelivery).where(
            col(WebhookDelivery.status) != DeliveryStatus.PENDING.value,
            col(WebhookDelivery.created_at) < before,
        )
    )
    floor = s.exec(select(sa.func.max(WebhookFanout.event_created_at))).one()
    if floor is not None:
        # Markers well below the scan window are never looked at again.
        s.execute(
            sa.delete(WebhookFanout).where(
                col(WebhookFanout.event_created_at) < min(before, floor - 2 * FANOUT_LAG)
            )
        )
    return int(gone.rowcount or 0)  # type: ignore[attr-defined]


def _due(now: datetime) -> SelectOfScalar[WebhookDelivery]:
    """Pending deliveries whose time has come, to active endpoints, most overdue first."""
    return (
        select(WebhookDelivery)
        .join(Webhook, col(Webhook.id) == WebhookDelivery.webhook_id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
            col(WebhookDelivery.next_attempt_at) <= now,
            Webhook.active == True,  # noqa: E712
        )
        .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
    )


def _claim(s: Session, now: datetime, lease: timedelta, batch: int) -> list[_Due]:
    rows = list(
        s.exec(_due(now).limit(batch).with_for_update(skip_locked=True, of=WebhookDelivery))
    )
    wanted = {d.webhook_id for d in rows}
    hooks = {h.id: h for h in s.exec(select(Webhook).where(col(Webhook.id).in_(wanted)))}
    due = []
    for delivery in rows:
        hook = hooks[delivery.webhook_id]
        delivery.claim = uuid.uuid4().hex
        delivery.next_attempt_at = now + lease
        s.add(delivery)
        due.append(
            _Due(
                delivery.id, delivery.claim, hook.url, hook.secret, delivery.event_id, delivery.body
            )
        )
    return due


def _record(
    s: Session,
    due: _Due,
    attempt: Attempt,
    now: datetime,
    max_attempts: int,
    delays: tuple[float, ...],
) -> str | None:
    """Record the attempt if we still hold its claim; its outcome: delivered, retry or failed."""
    row = s.get(WebhookDelivery, due.delivery_id, with_for_update=True)
    if row is None or row.claim != due.claim:
        return None  # deleted meanwhile, or our lease lapsed and another dispatcher took over
    row.claim = None
    row.attempts += 1
    row.last_status_code = attempt.status_code
    row.last_error = attempt.error
    row.last_response_ms = attempt.response_ms
    row.last_attempt_at = now
    outcome = "retry"
    if attempt.ok:
        row.status = outcome = DeliveryStatus.DELIVERED.value
    elif row.attempts >= max_attempts:
        row.status = outcome = DeliveryStatus.FAILED.value
    else:
        delay = delays[min(row.attempts, len(delays)) - 1]
        row.next_attempt_at = now + timedelta(seconds=delay)
    s.add(row)
    return outcome


# ---- the app's background task ------------------------------------------------------------


def start_dispatcher(
    app: FastAPI,
    *,
    engine: Engine | None = None,
    observer: Callable[[str], None] | None = None,
    run: bool = True,
) -> WebhookDispatcher:
    """The app's dispatcher (test sends use it), delivering in the background unless `run` is
    False (a job runner or a separate worker delivers); call from the app's lifespan."""
    dispatcher = WebhookDispatcher(engine or app.state.scheduler.engine, observer=observer)
    if run:
        dispatcher.start()
    app.state.webhook_dispatcher = dispatcher
    return dispatcher


async def stop_dispatcher(app: FastAPI) -> None:
    """Stop the background task (before the engine is disposed)."""
    dispatcher: WebhookDispatcher | None = getattr(app.state, "webhook_dispatcher", None)
    app.state.webhook_dispatcher = None
    if dispatcher is not None:
        await dispatcher.aclose()
