"""The dashboard's own rows: accounts, browser sessions, log-in attempts, the audit log and each
lead's status history. Like `booking.models`, every datetime is stored UTC and read back aware.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, Session, SQLModel

from booking.models import UTCDateTime, new_id, utcnow


def _when(**kw: Any) -> Any:
    return Field(sa_column=sa.Column(UTCDateTime(), **kw))


class Role(StrEnum):
    OWNER = "owner"  # the whole business
    STAFF = "staff"  # their own availability, calendars and appointments


class LeadStatus(StrEnum):
    NEW = "new"
    CONTACTED = "contacted"
    WON = "won"
    LOST = "lost"


class User(SQLModel, table=True):
    """A person who logs in to the dashboard. Emails are unique across businesses: the log-in
    form asks only for an email, so it must name one account."""

    __tablename__ = "dashboard_user"
    id: str = Field(default_factory=lambda: new_id("usr"), primary_key=True)
    business_id: str = Field(foreign_key="business.id", max_length=64, index=True)
    email: str = Field(unique=True)
    password_hash: str
    role: str = Role.OWNER.value
    staff_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = _when(nullable=False, default=utcnow)
    last_login_at: datetime | None = _when(nullable=True)


class WebSession(SQLModel, table=True):
    """A logged-in browser. Only a hash of the cookie's token is stored, so a leaked table
    cannot be replayed; `csrf` is the token every form of this session must send back."""

    __tablename__ = "dashboard_session"
    token_hash: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="dashboard_user.id", index=True)
    csrf: str
    created_at: datetime = _when(nullable=False, default=utcnow)
    expires_at: datetime = _when(nullable=False)


class LoginAttempt(SQLModel, table=True):
    """One failed log-in, counted per email and client address for rate limiting."""

    __tablename__ = "dashboard_login_attempt"
    __table_args__ = (sa.Index("ix_login_attempt_key", "email", "ip", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    email: str
    ip: str
    at: datetime = _when(nullable=False)


class AuditLog(SQLModel, table=True):
    """Who did what to which record: status changes, settings edits, cancellations, deletions."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_business_at", "business_id", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    business_id: str = Field(max_length=64)
    user_id: str | None = None
    actor: str  # the user's email, or "cli" / "system"
    action: str  # e.g. "lead.status", "appointment.cancel", "contact.delete"
    subject: str  # the record's id
    details: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    at: datetime = _when(nullable=False, default=utcnow)


class LeadStatusChange(SQLModel, table=True):
    """One step of a lead's status history, with the owner's note."""

    __tablename__ = "lead_status_change"
    id: int | None = Field(default=None, primary_key=True)
    business_id: str = Field(max_length=64)
    lead_id: str = Field(foreign_key="lead.id", index=True)
    from_status: str
    to_status: str
    note: str | None = None
    user_id: str | None = None
    actor: str
    at: datetime = _when(nullable=False, default=utcnow)


def audit(
    session: Session,
    *,
    business_id: str,
    actor: str,
    action: str,
    subject: str,
    at: datetime,
    user_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditLog:
    """Add an audit entry in the caller's transaction, so it lands with the change or not at all."""
    row = AuditLog(
        business_id=business_id,
        user_id=user_id,
        actor=actor,
        action=action,
        subject=subject,
        details=details or {},
        at=at,
    )
    session.add(row)
    return row
