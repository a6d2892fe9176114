"""calendars.channels: only one process takes the renewal of a change channel."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine

from booking.db import session_scope
from calendars.channels import _claim_channel
from calendars.models import CalendarChannel, CalendarConnection
from tests.conftest import NOW


def test_the_first_claim_of_a_channel_wins_and_a_second_with_the_same_view_loses(
    clinic: Engine,
) -> None:
    expires = NOW + timedelta(minutes=5)
    with session_scope(clinic) as s:
        s.add(
            CalendarConnection(
                id="conn1", business_id="clinic", staff_id="lee", provider="google", name="g"
            )
        )
        s.flush()
        s.add(
            CalendarChannel(
                id="ch1",
                connection_id="conn1",
                calendar_id="primary",
                token="t",
                expires_at=expires,
            )
        )
    with session_scope(clinic) as s:
        seen = s.get(CalendarChannel, "ch1")
        assert seen is not None
        s.expunge(seen)  # what both processes read before claiming
    with session_scope(clinic) as s:
        assert _claim_channel(s, seen, NOW) is True
    with session_scope(clinic) as s:
        assert _claim_channel(s, seen, NOW) is False  # the row moved on: someone else renews
        row = s.get(CalendarChannel, "ch1")
        assert row is not None and row.expires_at == expires + timedelta(minutes=10)
