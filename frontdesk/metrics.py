"""Prometheus metrics (`/metrics`), with the standard `prometheus-client`.

One process: the default registry. Several workers: set `PROMETHEUS_MULTIPROC_DIR` to an empty
directory every worker can write (the same for all, emptied before they start); each worker
then writes its figures there and a scrape of any worker sums them all.

Names follow Prometheus's conventions (`frontdesk_` prefix, `_total` counters, `_seconds`
histograms) and labels stay low-cardinality: a channel or an outcome, never a call SID, a phone
number or an id. The figures are recorded where the events happen, through observers the
composition root injects (`CallMetrics`, `SchedulerMetrics`, `CountedSmsSender`): the inner
packages do not import this module.
"""

from __future__ import annotations

import asyncio
import os

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

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A turn's server time is tens of milliseconds when all is well, seconds when the LLM is slow.
TURN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

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

__all__ = [
    "ACTIVE_CALLS",
    "BOOKINGS",
    "CALLS",
    "CONTENT_TYPE_LATEST",
    "LEADS",
    "SMS",
    "TURN_FIRST_TOKEN",
    "CallMetrics",
    "CountedSmsSender",
    "SchedulerMetrics",
    "scrape",
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


class CountedSmsSender(SmsSender):
    """An `SmsSender` that counts how each text ended."""

    def send(self, sms: Sms) -> asyncio.Task[SentSms | None]:
        task = super().send(sms)
        task.add_done_callback(_count_sms)
        return task


def _count_sms(task: asyncio.Task[SentSms | None]) -> None:
    sent = not task.cancelled() and task.exception() is None and task.result() is not None
    SMS.labels(outcome="sent" if sent else "failed").inc()


def scrape() -> bytes:
    """The text exposition of every metric: this process's, or every worker's when
    `PROMETHEUS_MULTIPROC_DIR` is set."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
