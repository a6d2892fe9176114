"""The calendar tables: linked accounts, their busy cache, change channels, written events and
OAuth flows in progress.

They belong to `calendars/`: booking never imports them. The schema is created by the
migrations in `booking/migrations` (0003, 0006, 0010), like every other table; the table names
are the ones SQLModel derives (`calendarconnection`, `calendar_busy`, `calendarchannel`,
`calendarevent`, `oauthflow`). Booking reads which staff have a calendar that takes bookings
through `booking.busy.LINKED_CALENDARS`, a view of `calendarconnection`'s columns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from booking.models import json_field, new_id, utc_field, utcnow


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
    settings: dict[str, Any] = json_field(dict)
    secret: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False))
    read_calendars: list[str] = json_field(list)
    write_calendar: str | None = None
    status: str = "ok"  # ok | needs_relink | error
    last_error: str | None = None
    sync: dict[str, Any] = json_field(dict)
    dirty_at: datetime | None = utc_field(nullable=True)
    created_at: datetime = utc_field(nullable=False, default=utcnow)
    updated_at: datetime = utc_field(nullable=False, default=utcnow)
    # The scheduled sync's per-row claim (`booking.claims`): one worker refreshes it at a time.
    claim: str | None = Field(default=None, max_length=40)
    claimed_until: datetime | None = utc_field(nullable=True)


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
    start: datetime = utc_field(nullable=False)
    end: datetime = utc_field(nullable=False)


class CalendarChannel(SQLModel, table=True):
    """A live change subscription (Google watch channel, Graph subscription) we must renew."""

    id: str = Field(primary_key=True)  # the provider's channel / subscription id
    connection_id: str = Field(foreign_key="calendarconnection.id", index=True)
    calendar_id: str
    token: str
    resource_id: str | None = None
    expires_at: datetime = utc_field(nullable=False)
    created_at: datetime = utc_field(nullable=False, default=utcnow)


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
    updated_at: datetime = utc_field(nullable=False, default=utcnow)
    # Set while a writer talks to the provider about this event; others wait for it to lapse.
    writing_until: datetime | None = utc_field(nullable=True)


class OAuthFlow(SQLModel, table=True):
    """An OAuth authorization in progress, found again by its `state` at the callback."""

    state: str = Field(primary_key=True)
    provider: str
    business_id: str = Field(max_length=64)
    staff_id: str = Field(max_length=64)
    flow: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # encrypted JSON
    return_to: str | None = None
    expires_at: datetime = utc_field(nullable=False)
