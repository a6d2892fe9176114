"""The background jobs every worker runs (or a separate `frontdesk worker` process): calendar sync
and upkeep, the webhook outbox, the SMS outbox, call expiry, reminders and waitlist offers.

Each job may run in every worker at once: the database decides who does what
(`booking.claims`). Calendar connections, webhook deliveries and texts are claimed per row;
call expiry, the reminder planner and the waitlist's offers run under singleton leases. A
worker that dies holding a claim or a lease only delays that work until the claim lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from booking import claims
from booking.db import in_session

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from booking.reminders import ReminderPlanner
    from booking.scheduler import Scheduler
    from booking.waitlist import Waitlist
    from calendars.service import CalendarService
    from dashboard.webhooks import WebhookDispatcher
    from frontdesk.settings import Settings
    from telephony.sms_outbox import SmsOutbox

log = logging.getLogger(__name__)

EXPIRY_LEASE = "calls.expire"
REMINDER_LEASE = "reminders.plan"
WAITLIST_LEASE = "waitlist.offer"


@dataclass
class JobRunner:
    """Starts the periodic jobs as tasks of the running loop and stops them.

    Any part may be None (not configured): its job does not run. `switchboard` is anything with
    an async `expire_idle()` (telephony's Switchboard)."""

    scheduler: Scheduler
    calendars: CalendarService | None = None
    calendar_every: float = 300.0
    calendar_poll: float | None = None
    webhooks: WebhookDispatcher | None = None
    sms: SmsOutbox | None = None
    switchboard: Any = None
    expire_every: float = 60.0
    reminders: ReminderPlanner | None = None  # runs only with `sms`: it queues into the outbox
    waitlist: Waitlist | None = None  # likewise
    remind_every: float = 30.0  # both
    lag_every: float = 15.0  # how often the outboxes' lag is reported to the metrics
    owner: str = field(default_factory=claims.new_token)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Start every configured job."""
        if self.calendars is not None and self.calendar_every:
            jobs = self.calendars.jobs
            jobs.owner = self.owner
            jobs.upkeep_ttl = timedelta(seconds=max(3 * self.calendar_every, 60))
            self._run(
                "calendars",
                self.calendars.run_forever(self.calendar_every, poll=self.calendar_poll),
            )
        if self.webhooks is not None:
            self._run("webhooks", self.webhooks.run())
        if self.sms is not None:
            self._run("sms", self.sms.run())
        if getattr(self.switchboard, "expire_idle", None) is not None:
            self._run("calls.expire", self._every(self.expire_every, self._expire))
        if self.reminders is not None and self.sms is not None:
            self._run("reminders", self._every(self.remind_every, self._remind))
        if self.waitlist is not None and self.sms is not None:
            self._run("waitlist", self._every(self.remind_every, self._offer_waitlist))
        if self.webhooks is not None or self.sms is not None:
            self._run("lag", self._every(self.lag_every, self.report_lag))

    def _run(self, name: str, job: Awaitable[None]) -> None:
        async def logged() -> None:
            try:
                await job
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background job %s stopped", name)

        self._tasks.append(asyncio.create_task(logged(), name=f"job {name}"))

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await step()
            await asyncio.sleep(seconds)

    async def _expire(self) -> None:
        """One pass of call expiry, by whichever worker holds its lease."""
        now = self.scheduler.clock.now()
        ttl = timedelta(seconds=max(3 * self.expire_every, 30))
        try:
            held = await in_session(
                self.scheduler.engine,
                lambda s: claims.hold_lease(s, EXPIRY_LEASE, owner=self.owner, now=now, ttl=ttl),
                write=True,
            )
            if not held:
                return
            started = time.perf_counter()
            ok = False
            try:
                expired = await self.switchboard.expire_idle()
                ok = True
                if expired:
                    log.info("expired %d idle call(s)", expired)
            finally:
                _job_run("calls.expire", time.perf_counter() - started, ok)
        except Exception:
            log.exception("call expiry failed; trying again next pass")

    async def _remind(self) -> None:
        """Queue due reminders into the SMS outbox, whose job in every worker sends them."""
        assert self.reminders is not None
        planner = self.reminders
        await self._leased(REMINDER_LEASE, "reminders", lambda now: planner.plan_due(now=now))

    async def _offer_waitlist(self) -> None:
        """Offer freed times to the waitlist (and pass on offers left unanswered)."""
        assert self.waitlist is not None
        waitlist = self.waitlist
        await self._leased(WAITLIST_LEASE, "waitlist", lambda now: waitlist.offer_due(now=now))

    async def _leased(
        self, lease: str, job: str, work: Callable[[datetime], Awaitable[list[Any]]]
    ) -> None:
        """One pass of `work`, by whichever worker holds `lease`."""
        now = self.scheduler.clock.now()
        ttl = timedelta(seconds=max(3 * self.remind_every, 30))
        try:
            held = await in_session(
                self.scheduler.engine,
                lambda s: claims.hold_lease(s, lease, owner=self.owner, now=now, ttl=ttl),
                write=True,
            )
            if not held:
                return
            started = time.perf_counter()
            ok = False
            try:
                done = await work(now)
                ok = True
                if done:
                    log.info("%s: %d queued", job, len(done))
            finally:
                _job_run(job, time.perf_counter() - started, ok)
        except Exception:
            log.exception("%s failed; trying again next pass", job)

    async def report_lag(self) -> None:
        """How long the most overdue webhook delivery and text have waited past their time
        (0 when nothing is overdue), to `frontdesk.metrics.job_lag` when it exists."""
        from frontdesk import metrics

        report = getattr(metrics, "job_lag", None)
        if report is None:
            return
        sources: list[tuple[str, Callable[[], Awaitable[datetime | None]]]] = []
        if self.webhooks is not None:
            sources.append(("webhooks", self.webhooks.next_due))
        if self.sms is not None:
            sources.append(("sms", self.sms.store.next_due))
        for job, next_due in sources:
            try:
                due = await next_due()
            except Exception:
                log.exception("could not read the %s outbox's lag", job)
                continue
            now = self.scheduler.clock.now()
            report(job, 0.0 if due is None else max(0.0, (now - due).total_seconds()))

    async def aclose(self) -> None:
        """Stop every job; a claim or lease held now simply lapses."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _job_run(job: str, seconds: float, ok: bool) -> None:
    """Report a run to the metrics (`frontdesk.metrics.job_run`, when it exists)."""
    from frontdesk import metrics

    report = getattr(metrics, "job_run", None)
    if report is not None:
        report(job, seconds, ok)


def sms_outbox(settings: Settings, scheduler: Scheduler) -> SmsOutbox | None:
    """The durable SMS outbox over the scheduler's database, or None without Twilio credentials."""
    from booking.sms_outbox import SmsStore
    from telephony.sms import SmsSender
    from telephony.sms_outbox import SmsOutbox

    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
    if not (settings.twilio_account_sid and token):
        return None
    sender = SmsSender(
        account_sid=settings.twilio_account_sid,
        auth_token=token,
        api_base_url=settings.twilio_api_base_url,
        status_callback=f"{settings.public_base_url.rstrip('/')}/twilio/sms/status",
    )
    return SmsOutbox(
        SmsStore.over(scheduler.engine),
        sender,
        observer=_count_sms,
        lease=timedelta(seconds=settings.sms_lease_seconds),
    )


def _count_sms(outcome: str) -> None:
    from frontdesk import metrics

    if outcome in ("sent", "failed"):
        metrics.SMS.labels(outcome=outcome).inc()


def webhook_outcome(outcome: str) -> None:
    """Report a webhook attempt's outcome (`frontdesk.metrics.webhook_delivery`, when it exists)."""
    from frontdesk import metrics

    report = getattr(metrics, "webhook_delivery", None)
    if report is not None:
        report(outcome)


def job_runner(
    settings: Settings,
    scheduler: Scheduler,
    *,
    calendars: CalendarService | None,
    webhooks: WebhookDispatcher | None,
    sms: SmsOutbox | None,
    switchboard: Any,
) -> JobRunner:
    """The runner of every job, from settings (`FRONTDESK_CALENDAR_SYNC_SECONDS`, ...)."""
    from booking.reminders import ReminderPlanner
    from booking.waitlist import Waitlist

    return JobRunner(
        scheduler=scheduler,
        calendars=calendars,
        calendar_every=settings.calendar_sync_seconds,
        calendar_poll=settings.calendar_poll_seconds or None,
        webhooks=webhooks,
        sms=sms,
        switchboard=switchboard,
        reminders=ReminderPlanner(scheduler.engine, scheduler.clock) if sms is not None else None,
        waitlist=Waitlist(scheduler) if sms is not None else None,
        remind_every=settings.reminder_seconds,
    )


async def run_worker(
    settings: Settings, *, stop: asyncio.Event | None = None, lease: timedelta | None = None
) -> None:
    """The body of `frontdesk worker`: every job, without the web app, until `stop` is set (or
    the task is cancelled). `lease` overrides how long a claimed row stays claimed (a webhook
    batch, a text, a calendar refresh) before another worker may take it over."""
    from booking.conversations import ConversationStore
    from dashboard.webhooks import WebhookDispatcher
    from frontdesk.app import build_switchboard
    from frontdesk.wiring import build_scheduler, calendar_service

    scheduler = build_scheduler(settings)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(scheduler.engine.dispose)
        service = calendar_service(scheduler)
        if service is not None:
            stack.push_async_callback(service.close)
        if service is not None and lease is not None:
            service.jobs.claim_for = lease
        dispatcher = WebhookDispatcher(scheduler.engine, observer=webhook_outcome, lease=lease)
        stack.push_async_callback(dispatcher.aclose)
        sms = sms_outbox(settings, scheduler)
        if sms is not None:
            stack.push_async_callback(sms.aclose)
            sms.lease = lease or sms.lease
        board = build_switchboard(settings, scheduler)
        board.texts = sms
        board.store = ConversationStore.over(scheduler.engine, scheduler.clock)  # idle calls
        stack.push_async_callback(board.aclose)
        runner = job_runner(
            settings, scheduler, calendars=service, webhooks=dispatcher, sms=sms, switchboard=board
        )
        await runner.start()
        stack.push_async_callback(runner.aclose)
        if settings.worker_metrics_port is not None:
            stack.push_async_callback(await _serve_worker_http(settings, scheduler.engine))
        await (stop or asyncio.Event()).wait()


async def _serve_worker_http(settings: Settings, engine: Engine) -> Callable[[], Awaitable[None]]:
    """Start the worker's `/healthz`, `/readyz` and `/metrics` server; returns its stop."""
    import uvicorn

    from frontdesk.worker_http import worker_app

    if settings.api_key is None:
        raise ValueError("set FRONTDESK_API_KEY: the worker's /metrics needs it")
    app = worker_app(engine, settings.api_key.get_secret_value())
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.worker_metrics_port or 0,
        log_config=None,
        lifespan="off",
        access_log=False,
    )
    server = uvicorn.Server(config)
    # The worker's own SIGTERM/SIGINT handlers stop everything, this server included.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(), name="worker http")
    while not server.started:
        if task.done():
            task.result()  # the port is taken, say: raise why
            raise RuntimeError("the worker's HTTP server stopped at start")
        await asyncio.sleep(0.02)

    async def stop() -> None:
        server.should_exit = True
        await task

    return stop
