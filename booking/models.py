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
        sa.Index("ix_appointment_busy", "business_id", "staff_id", "block_start", "block_end",
                 "status"),
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
