"""The local calendar: a staff member's bookings as a subscribable ICS feed (for a phone's
calendar app), at a secret address signed with the server's key."""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import quote

import icalendar
from sqlmodel import Session, col, select

from booking import errors
from booking.models import Appointment, AppointmentStatus, Business, Staff
from calendars import chains
from calendars.runtime import CalendarRuntime


class BookingFeed:
    """Serves each staff member's confirmed appointments from a month ago to the horizon."""

    def __init__(self, runtime: CalendarRuntime) -> None:
        self.runtime = runtime

    def path(self, business_id: str, staff_id: str) -> str:
        """The secret path of a staff member's booking feed."""
        token = self.runtime.vault.sign(f"feed\x00{business_id}\x00{staff_id}")
        return f"/calendars/feed/{quote(business_id)}/{quote(staff_id)}/{token}.ics"

    def url(self, business_id: str, staff_id: str) -> str:
        return self.runtime.url(self.path(business_id, staff_id))

    async def feed(self, business_id: str, staff_id: str, token: str) -> bytes:
        """The staff member's confirmed appointments from a month ago to the horizon."""
        if not self.runtime.vault.verify(f"feed\x00{business_id}\x00{staff_id}", token):
            raise errors.NotFound("no such calendar feed")
        now = self.runtime.now()
        lo, hi = now - timedelta(days=31), now + self.runtime.horizon
        return await self.runtime.db(lambda s: _feed(s, business_id, staff_id, lo, hi, now))


def _feed(
    s: Session, business_id: str, staff_id: str, lo: datetime, hi: datetime, now: datetime
) -> bytes:
    staff = s.get(Staff, (business_id, staff_id))
    business = s.get(Business, business_id)
    if staff is None or business is None:
        raise errors.NotFound(f"no staff member {staff_id!r} at business {business_id!r}")
    rows = s.exec(
        select(Appointment)
        .where(
            Appointment.business_id == business_id,
            Appointment.staff_id == staff_id,
            Appointment.status == AppointmentStatus.CONFIRMED.value,
            Appointment.end > lo,
            Appointment.start < hi,
        )
        .order_by(col(Appointment.start))
    )
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//Frontdesk//Bookings//EN")
    calendar.add("version", "2.0")
    calendar.add("x-wr-calname", f"{staff.name} at {business.name} (Frontdesk)")
    calendar.add("x-published-ttl", "PT15M")
    for apt in rows:
        key = chains.chain_root(s, apt)
        spec = chains.event_spec(s, apt, key)
        event = icalendar.Event()
        # One UID for the whole reschedule chain: a calendar app moves the event it has.
        event.add("uid", f"{key}@frontdesk")
        event.add("dtstamp", now)
        event.add("last-modified", apt.updated_at)
        event.add("dtstart", apt.start)
        event.add("dtend", apt.end)
        event.add("summary", spec.summary)
        event.add("description", spec.description)
        event.add("status", "CONFIRMED")
        calendar.add_component(event)
    ical: bytes = calendar.to_ical()
    return ical
