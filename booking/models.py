"""Persistent rows. Every row belongs to a business; datetimes are stored UTC and read back aware.

Appointments and holds store `block_start`/`block_end`: the slot widened by the service's buffers.
That block is what keeps a staff member busy, and what PostgreSQL's exclusion constraint guards.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
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


def json_field(default: Any) -> Any:
    """A JSON column (never NULL) starting as `default()`."""
    return Field(default_factory=default, sa_column=sa.Column(sa.JSON, nullable=False))


def utc_field(**kw: Any) -> Any:
    """An aware-UTC datetime column (`UTCDateTime`)."""
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
    phone_numbers: list[str] = json_field(list)
    transfer_number: str | None = None
    greeting: str | None = None
    policies: str | None = None
    address: str | None = None
    # booking.reminders.ReminderSettings as JSON; None: the defaults (24 h and 2 h before)
    reminders: dict[str, Any] | None = Field(
        default=None, sa_column=sa.Column(sa.JSON, nullable=True)
    )


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
    staff_ids: list[str] = json_field(list)
    position: int = 0
    # booking.reminders.ServiceReminders as JSON; None: the business's settings
    reminders: dict[str, Any] | None = Field(
        default=None, sa_column=sa.Column(sa.JSON, nullable=True)
    )


class Staff(SQLModel, table=True):
    business_id: str = Field(foreign_key="business.id", primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    name: str
    timezone: str | None = None
    weekly_hours: dict[str, Any] = json_field(dict)
    overrides: list[dict[str, Any]] = json_field(list)
    time_off: list[dict[str, Any]] = json_field(list)
    calendars: list[dict[str, Any]] = json_field(list)
    position: int = 0


class Contact(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("business_id", "phone"),)
    id: str = Field(default_factory=lambda: new_id("ct"), primary_key=True)
    business_id: str = Field(foreign_key="business.id", index=True)
    phone: str
    name: str | None = None
    email: str | None = None
    created_at: datetime = utc_field(nullable=False, default=utcnow)


class Call(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("call"), primary_key=True)
    business_id: str = Field(foreign_key="business.id", index=True)
    call_sid: str | None = Field(default=None, unique=True)
    from_number: str | None = None
    to_number: str | None = None
    contact_id: str | None = Field(default=None, foreign_key="contact.id")
    status: str = "in-progress"
    outcome: str | None = None
    started_at: datetime = utc_field(nullable=False, default=utcnow)
    ended_at: datetime | None = utc_field(nullable=True)
    duration_seconds: int | None = None
    transcript: list[dict[str, Any]] = json_field(list)
    summary: str | None = None
    channel: str | None = Field(default=None, max_length=16)  # relay, gather, sms (a text thread)


class ConversationState(SQLModel, table=True):
    """What a live conversation needs to go on in any worker: its history, tools' state, hand-off.

    Keyed by `call:<call id>` for a phone call and `web:<chat id>` for a dashboard chat; `version`
    goes up by one with every save (a save names the version it read, so a worker that lost the
    call to another cannot overwrite it), and `ended_at` is set once, by whoever ends it.
    """

    __tablename__ = "conversation_state"
    __table_args__ = (sa.Index("ix_conversation_state_idle", "ended_at", "updated_at"),)
    key: str = Field(primary_key=True, max_length=80)
    business_id: str = Field(foreign_key="business.id")
    call_id: str | None = Field(default=None, foreign_key="call.id", index=True)
    channel: str
    version: int = 0
    state: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # JSON
    updated_at: datetime = utc_field(nullable=False, default=utcnow)
    ended_at: datetime | None = utc_field(nullable=True)


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
    start: datetime = utc_field(nullable=False)
    end: datetime = utc_field(nullable=False)
    block_start: datetime = utc_field(nullable=False)
    block_end: datetime = utc_field(nullable=False)
    expires_at: datetime = utc_field(nullable=False)
    created_at: datetime = utc_field(nullable=False, default=utcnow)


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
    start: datetime = utc_field(nullable=False)
    end: datetime = utc_field(nullable=False)
    block_start: datetime = utc_field(nullable=False)
    block_end: datetime = utc_field(nullable=False)
    booked_by: str = "api"
    call_id: str | None = Field(default=None, foreign_key="call.id")
    notes: str | None = None
    rescheduled_from: str | None = None
    rescheduled_to: str | None = None
    sync_state: str = "not_synced"
    created_at: datetime = utc_field(nullable=False, default=utcnow)
    updated_at: datetime = utc_field(nullable=False, default=utcnow)
    caller_confirmed_at: datetime | None = utc_field(nullable=True)  # "C" to a reminder
    attendance: str | None = Field(default=None, max_length=16)  # Attendance, marked by staff
    attendance_at: datetime | None = utc_field(nullable=True)


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
    created_at: datetime = utc_field(nullable=False, default=utcnow)


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
    created_at: datetime = utc_field(nullable=False)


class SyncState(StrEnum):
    """Where an appointment stands with its staff member's calendar."""

    NOT_SYNCED = "not_synced"  # a write is due (new, failed, or changed since)
    SYNCED = "synced"
    NO_CALENDAR = "no_calendar"  # the staff member has no calendar to write to


class OutboxEvent(SQLModel, table=True):
    """A domain event written in the same transaction as the change it describes.

    Types: booking.created, booking.cancelled, booking.rescheduled, booking.confirmed,
    lead.created. Delivery
    (webhooks) reads from here; nothing is lost if delivery is down when the change happens.
    """

    __table_args__ = (sa.Index("ix_outbox_business_created", "business_id", "created_at"),)
    id: str = Field(default_factory=lambda: new_id("evt"), primary_key=True)
    business_id: str = Field(foreign_key="business.id", max_length=64)
    type: str
    payload: dict[str, Any] = json_field(dict)
    created_at: datetime = utc_field(nullable=False, default=utcnow)


class JobLease(SQLModel, table=True):
    """A singleton job's lease (`booking.claims`): the worker `owner` runs job `name` until
    `expires_at`, renewing it while alive; once it lapses any worker may take the job over."""

    __tablename__ = "job_lease"
    name: str = Field(primary_key=True, max_length=80)
    owner: str = Field(max_length=80)
    expires_at: datetime = utc_field(nullable=False)


class SmsStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"  # not sent: its appointment was cancelled or moved, or opted out


class Attendance(StrEnum):
    ATTENDED = "attended"
    NO_SHOW = "no_show"


class SmsKind(StrEnum):
    CONFIRMATION = "confirmation"
    REMINDER = "reminder"
    REPLY = "reply"
    WAITLIST = "waitlist"  # a freed time offered to someone waiting


class SmsMessage(SQLModel, table=True):
    """A text to send, kept until sent (with Twilio's message `sid`) or given up on (`error`).

    `key` names what the text is about (an appointment and its change), once per business: the
    same text queued twice, by any worker, is one row. A sender claims a row (`claim`,
    `claimed_until`, see `booking.claims`) before posting it, so two workers never send it both.
    """

    __tablename__ = "sms_message"
    __table_args__ = (
        sa.UniqueConstraint("business_id", "key", name="uq_sms_message_key"),
        sa.Index("ix_sms_message_due", "status", "next_attempt_at"),
        sa.Index("ix_sms_message_appointment", "appointment_id"),
        sa.Index("ix_sms_message_sid", "sid"),
    )
    id: str = Field(default_factory=lambda: new_id("sms"), primary_key=True, max_length=64)
    business_id: str = Field(foreign_key="business.id", max_length=64)
    key: str = Field(max_length=200)
    to_number: str = Field(max_length=40)
    from_number: str = Field(max_length=40)
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    status: str = Field(default=SmsStatus.PENDING.value, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = utc_field(nullable=False)
    claim: str | None = Field(default=None, max_length=40)
    claimed_until: datetime | None = utc_field(nullable=True)
    sid: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = utc_field(nullable=False, default=utcnow)
    sent_at: datetime | None = utc_field(nullable=True)
    kind: str | None = Field(default=None, max_length=16)  # SmsKind
    appointment_id: str | None = Field(default=None, max_length=64)
    # Twilio's status callbacks: queued, sent, delivered, undelivered, failed (and ErrorCode)
    delivery_status: str | None = Field(default=None, max_length=24)
    delivery_error: str | None = Field(default=None, max_length=16)
    delivery_at: datetime | None = utc_field(nullable=True)


class SmsOptOut(SQLModel, table=True):
    """A caller's STOP (or START) to one business number; honoured before every text from it."""

    __tablename__ = "sms_opt_out"
    sender: str = Field(primary_key=True, max_length=40)
    phone: str = Field(primary_key=True, max_length=40)
    business_id: str = Field(foreign_key="business.id", max_length=64)
    opted_out: bool
    source: str = Field(max_length=40)  # the keyword, or "twilio 21610"
    changed_at: datetime = utc_field(nullable=False)


class InboundSms(SQLModel, table=True):
    """A text a caller sent us, once per Twilio MessageSid (a retried webhook finds it here and
    gets the same answer), with what we made of it."""

    __tablename__ = "inbound_sms"
    __table_args__ = (sa.Index("ix_inbound_sms_from", "business_id", "from_number"),)
    message_sid: str = Field(primary_key=True, max_length=64)
    business_id: str = Field(foreign_key="business.id", max_length=64)
    from_number: str = Field(max_length=40)
    to_number: str = Field(max_length=40)
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    handled_as: str = Field(max_length=24)
    appointment_id: str | None = Field(default=None, max_length=64)
    reply: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    received_at: datetime = utc_field(nullable=False)


class WaitlistStatus(StrEnum):
    WAITING = "waiting"
    OFFERED = "offered"  # a freed slot is held for them; they were texted
    BOOKED = "booked"
    REMOVED = "removed"  # by the caller, staff, or its last day passed


class WaitlistEntry(SQLModel, table=True):
    """A caller waiting for a time of a service in a date range (optionally with one staff
    member). `passed` lists the offers they let go ("staff_id@start" in UTC ISO), so the next
    one goes to someone else."""

    __tablename__ = "waitlist_entry"
    __table_args__ = (sa.Index("ix_waitlist_entry_queue", "business_id", "status", "created_at"),)
    id: str = Field(default_factory=lambda: new_id("wait"), primary_key=True, max_length=64)
    business_id: str = Field(foreign_key="business.id", max_length=64)
    contact_id: str = Field(foreign_key="contact.id", max_length=64)
    phone: str = Field(max_length=40)
    name: str | None = Field(default=None, max_length=200)
    service_id: str = Field(max_length=64)
    staff_id: str | None = Field(default=None, max_length=64)
    first_day: date
    last_day: date
    status: str = Field(default=WaitlistStatus.WAITING.value, max_length=16)
    passed: list[str] = json_field(list)
    hold_id: str | None = Field(default=None, max_length=64)
    offered_start: datetime | None = utc_field(nullable=True)
    offered_staff_id: str | None = Field(default=None, max_length=64)
    offer_expires_at: datetime | None = utc_field(nullable=True)
    appointment_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = utc_field(nullable=False, default=utcnow)
    updated_at: datetime = utc_field(nullable=False, default=utcnow)
