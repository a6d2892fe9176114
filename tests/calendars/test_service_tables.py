"""The calendar tables live in `calendars.models`; the migrations create them, and booking's
view of `calendarconnection` (`booking.busy.LINKED_CALENDARS`) names columns the table has."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine

import booking.models
from booking.busy import LINKED_CALENDARS, linked_calendars
from booking.db import session_scope
from calendars import models
from calendars.models import CalendarConnection

CALENDAR_TABLES = {
    "calendarconnection",
    "calendar_busy",
    "calendarchannel",
    "calendarevent",
    "oauthflow",
}


def _table(model: type) -> sa.Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, sa.Table)
    return table


def test_the_calendar_tables_are_mapped_in_calendars_not_booking() -> None:
    mapped = {
        _table(m).name
        for m in (
            models.CalendarConnection,
            models.CalendarBusyBlock,
            models.CalendarChannel,
            models.CalendarEvent,
            models.OAuthFlow,
        )
    }
    assert mapped == CALENDAR_TABLES
    for name in ("CalendarConnection", "CalendarBusyBlock", "CalendarChannel", "CalendarEvent"):
        assert not hasattr(booking.models, name)
    assert not hasattr(booking.models, "OAuthFlow")


def test_the_migrated_schema_matches_the_calendar_models(engine: Engine) -> None:
    """Moving the models changed no table: alembic finds no difference for them."""
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), _table_metadata())
    ours = [d for d in diff if _names_calendar_table(d)]
    assert ours == []


def _table_metadata() -> sa.MetaData:
    meta = sa.MetaData()
    for model in (
        booking.models.Business,
        models.CalendarConnection,
        models.CalendarBusyBlock,
        models.CalendarChannel,
        models.CalendarEvent,
        models.OAuthFlow,
    ):
        _table(model).to_metadata(meta)
    return meta


def _names_calendar_table(change: object) -> bool:
    items = change if isinstance(change, list) else [change]
    for item in items:
        for part in item if isinstance(item, tuple) else (item,):
            name = getattr(part, "name", None) if not isinstance(part, str) else part
            table = getattr(part, "table", None)
            if name in CALENDAR_TABLES or getattr(table, "name", None) in CALENDAR_TABLES:
                return True
    return False


def test_bookings_view_of_the_connections_names_their_columns() -> None:
    columns = _table(CalendarConnection).c
    assert LINKED_CALENDARS.name == _table(CalendarConnection).name
    for column in LINKED_CALENDARS.c:
        assert column.name in columns


def test_linked_calendars_reads_the_staff_members_accounts(clinic: Engine) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(clinic, write=True) as s:
        for n, (staff, write, status) in enumerate(
            [
                ("lee", "work", "ok"),
                ("lee", None, "needs_relink"),
                ("lee", "old", "disconnected"),
                ("kim", "home", "ok"),
            ]
        ):
            s.add(
                CalendarConnection(
                    id=f"cal_{n}",
                    business_id="clinic",
                    staff_id=staff,
                    provider="caldav",
                    name=f"{staff} {n}",
                    write_calendar=write,
                    status=status,
                    created_at=t0 + timedelta(minutes=n),
                )
            )
    with session_scope(clinic) as s:
        lee = linked_calendars(s, "clinic", ["lee"])
        both = linked_calendars(s, "clinic", ["lee", "kim"])
        none = linked_calendars(s, "clinic", [])
        elsewhere = linked_calendars(s, "other", ["lee"])
    assert [(c.connection_id, c.writes) for c in lee] == [("cal_0", True), ("cal_1", False)]
    assert [c.connection_id for c in both] == ["cal_0", "cal_1", "cal_3"]
    assert none == [] and elsewhere == []
