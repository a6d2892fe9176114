"""Persistent rows. Every row belongs to a business; datetimes are stored UTC and read back aware.

Appointments and holds store `block_start`/`block_end`: the slot widened by the service's buffers.
That block is what keeps a staff member busy, and what PostgreSQL's exclusion constraint guards.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC out; SQLite keeps naive UTC, PostgreSQL a timestamptz."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("refusing to store a naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(default: Any) -> Any:
    return Field(default_factory=default, sa_column=sa.Column(sa.JSON, nullable=False))


def _when(**kw: Any) -> Any:
    return Field(sa_column=sa.Column(UTCDateTime(), **kw))


class AppointmentStatus(StrEnum):
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    RESCHEDULED = "rescheduled"


class LeadOutcome(StrEnum):
    BOOKED = "booked"
    CALLBACK = "callback"
    MESSAGE = "message"
    NOT_INTERESTED = "not_interested"
    SPAM = "spam"


class Business(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    name: str
    timezone: str
    phone_numbers: list[str] = _json(list)
    transfer_number: str | None = None
    greeting: str | None = None
    policies: str | None = None


class Service(SQLModel, table=True):
    business_id: str = Field(foreign_key="business.id", primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    name: str
    duration_minutes: int
    buffer_before_minutes: int = 0
    buffer_after_minutes: int = 0
    min_notice_minutes: int = 0
    max_days_ahead: int = 60
    slot_step_minutes: int = 15
    staff_ids: list[str] = _json(list)
    position: int = 0


class Staff(SQLModel, table=True):
    business_id: str = Field(foreign_key="business.id", primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    name: str
    timezone: str | None = None
    weekly_hours: dict[str, Any] = _json(dict)
    overrides: list[dict[str, Any]] = _json(list)
    time_off: list[dict[str, Any]] = _json(list)
    calendars: list[dict[str, Any]] = _json(list)
    position: int = 0


class Contact(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("business_id", "phone"),)
    id: str = Field(default_factory=lambda: new_id("ct"), primary_key=True)
    business_id: str = Field(foreign_key="business.id", index=True)
    phone: str
    name: str | None = None
    email: str | None = None
    created_at: datetime = _when(nullable=False, default=utcnow)


class Call(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("call"), primary_key=True)
    business_id: str = Field(foreign_key="business.id", index=True)
    call_sid: str | None = Field(default=None, unique=True)
    from_number: str | None = None
    to_number: str | None = None
    contact_id: str | None = Field(default=None, foreign_key="contact.id")
    status: str = "in-progress"
    outcome: str | None = None
    started_at: datetime = _when(nullable=False, default=utcnow)
    ended_at: datetime | None = _when(nullable=True)
    duration_seconds: int | None = None
    transcript: list[dict[str, Any]] = _json(list)
    summary: str | None = None


class Hold(SQLModel, table=True):
    __table_args__ = (
        sa.UniqueConstraint("business_id", "holder"),
        sa.Index("ix_hold_busy", "business_id", "staff_id", "block_start"),
    )
    id: str = Field(default_factory=lambda: new_id("hold"), primary_key=True)
    business_id: str = Field(foreign_key="business.id")
    service_id: str
    staff_id: str
    holder: str
    start: datetime = _when(nullable=False)
    end: datetime = _when(nullable=False)
    block_start: datetime = _when(nullable=False)
    block_end: datetime = _when(nullable=False)
    expires_at: datetime = _when(nullable=False)
    created_at: datetime = _when(nullable=False, default=utcnow)


class Appointment(SQLModel, table=True):
    __table_args__ = (
        sa.Index("ix_appointment_staff_block", "business_id", "staff_id", "block_start"),
        sa.Index(
            "ix_appointment_busy", "business_id", "staff_id", "block_start", "block_end", "status"
        ),
    )
    id: str = Field(default_factory=lambda: new_id("apt"), primary_key=True)
    business_id: str = Field(foreign_key="business.id")
    service_id: str
    staff_id: str
    contact_id: str = Field(foreign_key="contact.id", index=True)
    status: str = AppointmentStatus.CONFIRMED.value
    start: datetime = _when(nullable=False)
    end: datetime = _when(nullable=False)
    block_start: datetime = _when(nullable=False)
    block_end: datetime = _when(nullable=False)
    booked_by: str = "api"
    call_id: str | None = Field(default=None, foreign_key="call.id")
    notes: str | None = None
    rescheduled_from: str | None = None
    rescheduled_to: str | None = None
    sync_state: str = "not_synced"
    created_at: datetime = _when(nullable=False, default=utcnow)
    updated_at: datetime = _when(nullable=False, default=utcnow)


class Lead(SQLModel, table=True):
    """What a caller wanted. A call has at most one lead: the unique index makes that a database
    guarantee, so a retried or doubled end-of-call handler updates the lead instead."""

    __table_args__ = (sa.Index("uq_lead_call", "call_id", unique=True),)
    id: str = Field(default_factory=lambda: new_id("lead"), primary_key=True)
    business_id: str = Field(foreign_key="business.id", index=True)
    contact_id: str | None = Field(default=None, foreign_key="contact.id")
    call_id: str | None = Field(default=None, foreign_key="call.id")
    appointment_id: str | None = Field(default=None, foreign_key="appointment.id")
    name: str | None = None
    phone: str | None = None
    reason: str | None = None
    outcome: str = LeadOutcome.CALLBACK.value
    status: str = "new"
    created_at: datetime = _when(nullable=False, default=utcnow)


class IdempotentRequest(SQLModel, table=True):
    """A client's `Idempotency-Key` for one business: the request it named (a hash of its body),
    and once answered, the answer, replayed for a retry with the same key (see
    `booking.idempotency`). A row is kept for a day; an expired one is purged by the next claim.
    """

    __tablename__ = "idempotency_key"
    __table_args__ = (sa.Index("ix_idempotency_key_created_at", "created_at"),)
    business_id: str = Field(foreign_key="business.id", primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    status: str = "in_progress"  # in_progress | done
    response_status: int | None = None
    response_body: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = _when(nullable=False)


class SyncState(StrEnum):
    """Where an appointment stands with its staff member's calendar."""

    NOT_SYNCED = "not_synced"  # a write is due (new, failed, or changed since)
    SYNCED = "synced"
    NO_CALENDAR = "no_calendar"  # the staff member has no calendar to write to


class CalendarConnection(SQLModel, table=True):
    """A staff member's linked calendar account (Google, Microsoft, CalDAV, ICS).

    `secret` is encrypted (refresh token, or CalDAV password); `settings` is not secret.
    `read_calendars` are the calendars whose busy time counts; `write_calendar` receives
    bookings. `sync` keeps, per calendar, the incremental cursor and the window the busy cache
    covers. `dirty_at` is set by a change notification and cleared by the sync it triggers.
    """

    __table_args__ = (sa.Index("ix_calendar_connection_staff", "business_id", "staff_id"),)
    id: str = Field(default_factory=lambda: new_id("cal"), primary_key=True)
    business_id: str = Field(foreign_key="business.id", max_length=64)
    staff_id: str = Field(max_length=64)
    provider: str
    name: str
    settings: dict[str, Any] = _json(dict)
    secret: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False))
    read_calendars: list[str] = _json(list)
    write_calendar: str | None = None
    status: str = "ok"  # ok | needs_relink | error
    last_error: str | None = None
    sync: dict[str, Any] = _json(dict)
    dirty_at: datetime | None = _when(nullable=True)
    created_at: datetime = _when(nullable=False, default=utcnow)
    updated_at: datetime = _when(nullable=False, default=utcnow)


class CalendarBusyBlock(SQLModel, table=True):
    """The busy cache: one linked calendar event's busy time inside the cached window."""

    __tablename__ = "calendar_busy"
    __table_args__ = (
        sa.Index("ix_calendar_busy_staff", "business_id", "staff_id", "start"),
        sa.Index("ix_calendar_busy_event", "connection_id", "calendar_id", "event_key"),
    )
    id: int | None = Field(default=None, primary_key=True)
    connection_id: str = Field(foreign_key="calendarconnection.id")
    business_id: str = Field(max_length=64)
    staff_id: str = Field(max_length=64)
    calendar_id: str
    event_key: str
    start: datetime = _when(nullable=False)
    end: datetime = _when(nullable=False)


class CalendarChannel(SQLModel, table=True):
    """A live change subscription (Google watch channel, Graph subscription) we must renew."""

    id: str = Field(primary_key=True)  # the provider's channel / subscription id
    connection_id: str = Field(foreign_key="calendarconnection.id", index=True)
    calendar_id: str
    token: str
    resource_id: str | None = None
    expires_at: datetime = _when(nullable=False)
    created_at: datetime = _when(nullable=False, default=utcnow)


class CalendarEvent(SQLModel, table=True):
    """Where an appointment (its reschedule chain, keyed by the first id) lives in a calendar."""

    key: str = Field(primary_key=True)  # first appointment id of the chain
    business_id: str = Field(foreign_key="business.id", max_length=64)
    connection_id: str = Field(foreign_key="calendarconnection.id")
    calendar_id: str
    event_id: str | None = None
    deleted: bool = False
    attempts: int = 0
    last_error: str | None = None
    updated_at: datetime = _when(nullable=False, default=utcnow)
    # Set while a writer talks to the provider about this event; others wait for it to lapse.
    writing_until: datetime | None = _when(nullable=True)


class OAuthFlow(SQLModel, table=True):
    """An OAuth authorization in progress, found again by its `state` at the callback."""

    state: str = Field(primary_key=True)
    provider: str
    business_id: str = Field(max_length=64)
    staff_id: str = Field(max_length=64)
    flow: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # encrypted JSON
    return_to: str | None = None
    expires_at: datetime = _when(nullable=False)


class OutboxEvent(SQLModel, table=True):
    """A domain event written in the same transaction as the change it describes.

    Types: booking.created, booking.cancelled, booking.rescheduled, lead.created. Delivery
    (webhooks) reads from here; nothing is lost if delivery is down when the change happens.
    """

    __table_args__ = (sa.Index("ix_outbox_business_created", "business_id", "created_at"),)
    id: str = Field(default_factory=lambda: new_id("evt"), primary_key=True)
    business_id: str = Field(foreign_key="business.id", max_length=64)
    type: str
    payload: dict[str, Any] = _json(dict)
    created_at: datetime = _when(nullable=False, default=utcnow)
