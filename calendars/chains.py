"""Reschedule chains, and the calendar event that shows one.

A reschedule makes a new appointment linked to the old one (`rescheduled_from` /
`rescheduled_to`); the chain is one event in the staff member's calendar for its whole life,
keyed by the chain's first appointment id, and it shows the chain's latest appointment.
"""

from __future__ import annotations

from sqlmodel import Session

from booking.models import Appointment, Business, Contact, Service, Staff
from calendars.base import EventSpec


def follow(s: Session, row: Appointment, link: str) -> Appointment:
    """The end of a reschedule chain, following `rescheduled_from` or `rescheduled_to`."""
    seen = {row.id}
    while (next_id := getattr(row, link)) is not None:
        following = s.get(Appointment, next_id)
        if following is None or following.id in seen:
            break
        seen.add(following.id)
        row = following
    return row


def chain_root(s: Session, row: Appointment) -> str:
    """The chain's first appointment id: the calendar event's key for the chain's whole life."""
    return follow(s, row, "rescheduled_from").id


def head(s: Session, row: Appointment) -> Appointment:
    """The latest appointment of a reschedule chain (where the calendar event belongs now)."""
    return follow(s, row, "rescheduled_to")


def event_spec(s: Session, apt: Appointment, key: str) -> EventSpec:
    service = s.get(Service, (apt.business_id, apt.service_id))
    contact = s.get(Contact, apt.contact_id)
    business = s.get(Business, apt.business_id)
    staff = s.get(Staff, (apt.business_id, apt.staff_id))
    assert business is not None
    service_name = service.name if service else apt.service_id
    who = (contact.name if contact and contact.name else None) or "caller"
    lines = [f"Caller: {who}"]
    if contact is not None and contact.phone:
        lines.append(f"Phone: {contact.phone}")
    lines.append(f"Service: {service_name}")
    if apt.notes:
        lines.append(f"Notes: {apt.notes}")
    lines.append(f"Booked by Frontdesk for {business.name} (appointment {apt.id})")
    return EventSpec(
        key=key,
        summary=f"{service_name}: {who}",
        description="\n".join(lines),
        start=apt.start,
        end=apt.end,
        timezone=(staff.timezone if staff else None) or business.timezone,
    )
