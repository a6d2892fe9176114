"""Prometheus metrics (`/metrics`), with the standard `prometheus-client`.

One process: the default registry. Several workers: set `PROMETHEUS_MULTIPROC_DIR` to an empty
directory every worker can write (the same for all, emptied before they start); each worker
then writes its figures there and a scrape of any worker sums them all.

Names follow Prometheus's conventions (`frontdesk_` prefix, `_total` counters, `_seconds`
histograms) and labels stay low-cardinality: a channel or an outcome, never a call SID, a phone
number or an id. The figures are recorded where the events happen, through observers the
composition root injects (`CallMetrics`, `SchedulerMetrics`, `AgentMetrics`,
`CountedSmsSender`, `MeteredProvider`) or that `frontdesk.jobs` looks up here (`job_lag`, `job_run`,
`webhook_delivery`): the inner packages do not import this module.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from telephony.sms import SentSms, Sms, SmsSender

if TYPE_CHECKING:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from booking.rules import Interval
    from calendars.base import (
        Account,
        CalendarInfo,
        CalendarProvider,
        Channel,
        EventSpec,
        SyncResult,
    )

T = TypeVar("T")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A turn's server time is tens of milliseconds when all is well, seconds when the LLM is slow.
TURN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A tool is a database read or write (milliseconds), or a calendar provider's answer (seconds).
TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A job's pass: a few queries when there is little to do, a minute when a batch is large.
JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WEBHOOK_OUTCOMES = ("delivered", "retry", "failed")
# The calendar kinds (`CalendarProvider.name`): any other is reported as "other", so the label
# stays a handful of values whatever a provider calls itself.
CALENDAR_KINDS = ("google", "microsoft", "caldav", "ics")
# What a provider is asked (`calendars.base.CalendarProvider`); `aclose` only lets go of local
# connections and is not a request.
CALENDAR_OPERATIONS = (
    "check",
    "list_calendars",
    "busy",
    "sync",
    "put_event",
    "delete_event",
    "watch",
    "renew",
    "stop",
)

CALLS = Counter("frontdesk_calls", "Calls answered, by channel (relay or gather)", ["channel"])
ACTIVE_CALLS = Gauge(
    "frontdesk_active_calls",
    "ConversationRelay calls with an open socket",
    multiprocess_mode="livesum",
)
TURN_FIRST_TOKEN = Histogram(
    "frontdesk_turn_first_token_seconds",
    "Server time from a caller's final transcript to the first words sent back to be spoken",
    ["channel"],
    buckets=TURN_BUCKETS,
)
BOOKINGS = Counter(
    "frontdesk_bookings",
    "Appointments booked, by who booked them (agent, api, cli)",
    ["booked_by"],
)
LEADS = Counter(
    "frontdesk_leads",
    "New leads, by outcome (booked, callback, message, not_interested, spam)",
    ["outcome"],
)
SMS = Counter(
    "frontdesk_sms",
    "Confirmation texts by outcome: sent, or failed (given up on after the retries)",
    ["outcome"],
)

MODEL_FIRST_TOKEN = Histogram(
    "frontdesk_model_first_token_seconds",
    "From sending a request to the LLM to its first streamed chunk (every request of a turn)",
    buckets=TURN_BUCKETS,
)
TOOL_SECONDS = Histogram(
    "frontdesk_tool_seconds",
    "The agent's tool calls: how long each ran, by tool and outcome (ok, or error: the tool "
    "answered the model with an error)",
    ["tool", "outcome"],
    buckets=TOOL_BUCKETS,
)
# Every worker reads the same outbox from the same database, so the freshest reading is the true
# one: "mostrecent" shows it, where "max" would keep a dead worker's last (stale) figure forever.
JOB_LAG = Gauge(
    "frontdesk_job_lag_seconds",
    "How long the most overdue item of an outbox (webhooks, sms) has waited past its time; "
    "0 when nothing is overdue",
    ["job"],
    multiprocess_mode="mostrecent",
)
JOB_RUN = Histogram(
    "frontdesk_job_run_seconds",
    "One pass of a background job (calls.expire), by job and outcome (ok or error)",
    ["job", "outcome"],
    buckets=JOB_BUCKETS,
)
WEBHOOK_DELIVERIES = Counter(
    "frontdesk_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered, retry (it failed and will be tried again) "
    "or failed (given up on)",
    ["outcome"],
)
CALENDAR_SECONDS = Histogram(
    "frontdesk_calendar_request_seconds",
    "Calls to a calendar provider (its retries and waits included), by provider kind (google, "
    "microsoft, caldav, ics) and operation (busy, sync, put_event, ...), whatever their outcome",
    ["provider", "operation"],
    buckets=TOOL_BUCKETS,
)
CALENDAR_ERRORS = Counter(
    "frontdesk_calendar_errors",
    "Calls to a calendar provider that raised, by provider kind and operation",
    ["provider", "operation"],
)
for _outcome in WEBHOOK_OUTCOMES:  # each outcome is scraped from 0, so rate() sees the first one
    WEBHOOK_DELIVERIES.labels(outcome=_outcome)

__all__ = [
    "ACTIVE_CALLS",
    "BOOKINGS",
    "CALENDAR_ERRORS",
    "CALENDAR_SECONDS",
    "CALLS",
    "CONTENT_TYPE_LATEST",
    "JOB_LAG",
    "JOB_RUN",
    "LEADS",
    "MODEL_FIRST_TOKEN",
    "SMS",
    "TOOL_SECONDS",
    "TURN_FIRST_TOKEN",
    "WEBHOOK_DELIVERIES",
    "AgentMetrics",
    "CallMetrics",
    "CountedSmsSender",
    "MeteredProvider",
    "SchedulerMetrics",
    "job_lag",
    "job_run",
    "metered",
    "scrape",
    "webhook_delivery",
]


class CallMetrics:
    """What the phone side reports (telephony's `CallObserver`)."""

    def call_started(self, channel: str) -> None:
        CALLS.labels(channel=channel).inc()

    def relay_opened(self) -> None:
        ACTIVE_CALLS.inc()

    def relay_closed(self) -> None:
        ACTIVE_CALLS.dec()

    def first_token(self, channel: str, seconds: float) -> None:
        TURN_FIRST_TOKEN.labels(channel=channel).observe(seconds)


class SchedulerMetrics:
    """What the scheduler reports (booking's `SchedulerObserver`)."""

    def booked(self, booked_by: str) -> None:
        BOOKINGS.labels(booked_by=booked_by).inc()

    def lead_created(self, outcome: str) -> None:
        LEADS.labels(outcome=outcome).inc()


class AgentMetrics:
    """What the agent reports (agent's `AgentObserver`). Tool names are the agent's own: a call
    to a tool that does not exist is refused before it runs and is not reported."""

    def model_first_token(self, seconds: float) -> None:
        MODEL_FIRST_TOKEN.observe(seconds)

    def tool_call(self, name: str, seconds: float, ok: bool) -> None:
        TOOL_SECONDS.labels(tool=name, outcome="ok" if ok else "error").observe(seconds)


def job_lag(job: str, seconds: float) -> None:
    """The lag of the outbox `job` (`frontdesk.jobs.JobRunner.report_lag`)."""
    JOB_LAG.labels(job=job).set(seconds)


def job_run(job: str, seconds: float, ok: bool) -> None:
    """One pass of the background job `job` and whether it finished without an error."""
    JOB_RUN.labels(job=job, outcome="ok" if ok else "error").observe(seconds)


def webhook_delivery(outcome: str) -> None:
    """One webhook attempt's outcome (the dispatcher's observer, through `frontdesk.jobs`)."""
    if outcome in WEBHOOK_OUTCOMES:
        WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()


class CountedSmsSender(SmsSender):
    """An `SmsSender` that counts how each text ended."""

    def send(self, sms: Sms) -> asyncio.Task[SentSms | None]:
        task = super().send(sms)
        task.add_done_callback(_count_sms)
        return task


def _count_sms(task: asyncio.Task[SentSms | None]) -> None:
    sent = not task.cancelled() and task.exception() is None and task.result() is not None
    SMS.labels(outcome="sent" if sent else "failed").inc()


class MeteredProvider:
    """A calendar provider that times every call it hands to `inner` and counts the ones that
    raise (the exception goes on unchanged), labelled with the provider's kind and the method.

    Everything else (`name`, `writable`, `notifies`, a provider's own attributes) is read from
    `inner`, so the wrapper stands wherever the provider did. A cancelled call (a caller's
    time-out) is timed but not counted as an error: the provider did not fail."""

    def __init__(self, inner: CalendarProvider) -> None:
        self.inner = inner
        kind = str(getattr(inner, "name", ""))
        self._kind = kind if kind in CALENDAR_KINDS else "other"
        for operation in CALENDAR_OPERATIONS:  # scraped from 0, so rate() sees the first error
            CALENDAR_ERRORS.labels(provider=self._kind, operation=operation)

    # `name`, `writable` and `notifies` are the inner provider's, read and set through.
    @property
    def name(self) -> str:
        return self.inner.name

    @name.setter
    def name(self, value: str) -> None:
        self.inner.name = value

    @property
    def writable(self) -> bool:
        return self.inner.writable

    @writable.setter
    def writable(self, value: bool) -> None:
        self.inner.writable = value

    @property
    def notifies(self) -> bool:
        return self.inner.notifies

    @notifies.setter
    def notifies(self, value: bool) -> None:
        self.inner.notifies = value

    def __getattr__(self, attribute: str) -> Any:
        # Only called for what this class does not define: a provider's own attributes.
        if attribute == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    def __repr__(self) -> str:
        return f"MeteredProvider({self.inner!r})"

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except Exception:
            CALENDAR_ERRORS.labels(provider=self._kind, operation=operation).inc()
            raise
        finally:
            CALENDAR_SECONDS.labels(provider=self._kind, operation=operation).observe(
                time.perf_counter() - started
            )

    async def check(self, account: Account) -> None:
        await self._timed("check", self.inner.check(account))

    async def list_calendars(self, account: Account) -> list[CalendarInfo]:
        return await self._timed("list_calendars", self.inner.list_calendars(account))

    async def busy(
        self,
        account: Account,
        *,
        calendar_ids: list[str],
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
    ) -> list[Interval]:
        return await self._timed(
            "busy",
            self.inner.busy(account, calendar_ids=calendar_ids, tz=tz, start=start, end=end),
        )

    async def sync(
        self,
        account: Account,
        *,
        calendar_id: str,
        tz: ZoneInfo,
        cursor: str | None,
        start: datetime,
        end: datetime,
    ) -> SyncResult:
        return await self._timed(
            "sync",
            self.inner.sync(
                account, calendar_id=calendar_id, tz=tz, cursor=cursor, start=start, end=end
            ),
        )

    async def put_event(
        self, account: Account, *, calendar_id: str, event: EventSpec, event_id: str | None
    ) -> str:
        return await self._timed(
            "put_event",
            self.inner.put_event(account, calendar_id=calendar_id, event=event, event_id=event_id),
        )

    async def delete_event(self, account: Account, *, calendar_id: str, event_id: str) -> None:
        await self._timed(
            "delete_event",
            self.inner.delete_event(account, calendar_id=calendar_id, event_id=event_id),
        )

    async def watch(
        self, account: Account, *, calendar_id: str, callback_url: str, token: str
    ) -> Channel | None:
        return await self._timed(
            "watch",
            self.inner.watch(
                account, calendar_id=calendar_id, callback_url=callback_url, token=token
            ),
        )

    async def renew(self, account: Account, channel: Channel) -> Channel | None:
        return await self._timed("renew", self.inner.renew(account, channel))

    async def stop(self, account: Account, channel: Channel) -> None:
        await self._timed("stop", self.inner.stop(account, channel))

    async def aclose(self) -> None:
        await self.inner.aclose()


def metered(providers: dict[str, CalendarProvider]) -> dict[str, CalendarProvider]:
    """Every provider of `providers` wrapped in a `MeteredProvider`."""
    return {kind: MeteredProvider(provider) for kind, provider in providers.items()}


def scrape() -> bytes:
    """The text exposition of every metric: this process's, or every worker's when
    `PROMETHEUS_MULTIPROC_DIR` is set."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        forget_dead_workers(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


_LIVE_GAUGE = re.compile(r"gauge_live\w+?_(\d+)\.db")


def forget_dead_workers(path: str) -> None:
    """Drop the live-gauge files (`frontdesk_active_calls`) of worker processes that are gone.

    A worker that exits cleanly, or is killed with SIGKILL, never says so; its last figure would
    be summed forever. The shared directory is on one machine, so a pid that no longer exists
    there is a worker that died (a reused pid keeps its file a while longer: harmless)."""
    pids = {int(m.group(1)) for name in os.listdir(path) if (m := _LIVE_GAUGE.fullmatch(name))}
    for pid in pids - {os.getpid()}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, another user's
