"""Outgoing webhooks: the endpoints an owner registered, and one delivery per (endpoint, event).

An outbox event fans out once: the dispatcher adds a `WebhookFanout` marker for it in the same
transaction as the deliveries it creates, so a second dispatcher (or a restart) skips it. A
delivery's `body` is frozen at fan-out, so every retry sends the same bytes under the same
`webhook-id` (the event id), as the Standard Webhooks spec asks.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from booking.models import UTCDateTime, new_id, utcnow

# What an owner can subscribe to; the outbox's domain events.
EVENT_TYPES = (
    "booking.created",
    "booking.cancelled",
    "booking.rescheduled",
    "booking.confirmed",  # the caller answered a reminder with "C"
    "lead.created",
)
TEST_EVENT_TYPE = "webhook.test"


def _when(**kw: Any) -> Any:
    return Field(sa_column=sa.Column(UTCDateTime(), **kw))


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # due at `next_attempt_at` (or being attempted, under a claim)
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # every attempt used up


class Webhook(SQLModel, table=True):
    """An endpoint that receives a business's events, signed with its own secret."""

    id: str = Field(default_factory=lambda: new_id("wh"), primary_key=True)
    business_id: str = Field(foreign_key="business.id", max_length=64, index=True)
    url: str
    secret: str  # "whsec_" + base64 of 32 random bytes
    event_types: list[str] = Field(
        default_factory=list, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    active: bool = True
    description: str | None = None
    created_at: datetime = _when(nullable=False, default=utcnow)


class WebhookDelivery(SQLModel, table=True):
    """One event's journey to one endpoint: its attempts so far and how the last one went.

    `claim` is set by the dispatcher that is attempting it, with `next_attempt_at` pushed past
    the attempt's time limit, so no other dispatcher picks it up meanwhile; a dispatcher that
    died mid-attempt simply lets the claim lapse.
    """

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        sa.UniqueConstraint("webhook_id", "event_id"),
        sa.Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
        sa.Index("ix_webhook_delivery_log", "webhook_id", "created_at"),
    )
    id: str = Field(default_factory=lambda: new_id("whd"), primary_key=True)
    webhook_id: str = Field(foreign_key="webhook.id")
    event_id: str  # the outbox event's id, or a test message's; sent as webhook-id
    event_type: str
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    status: str = DeliveryStatus.PENDING.value
    attempts: int = 0
    next_attempt_at: datetime = _when(nullable=False)
    claim: str | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    last_response_ms: int | None = None
    last_attempt_at: datetime | None = _when(nullable=True)
    created_at: datetime = _when(nullable=False, default=utcnow)


class WebhookFanout(SQLModel, table=True):
    """Marks an outbox event as fanned out; `event_created_at` bounds the next scan."""

    __tablename__ = "webhook_fanout"
    event_id: str = Field(primary_key=True)
    event_created_at: datetime = _when(nullable=False, index=True)
    deliveries: int = 0
