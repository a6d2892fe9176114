"""A contact's personal data: everything we hold about them, as JSON, and erasing it.

What belongs to a contact, within one business: the `Contact` row; calls linked to it or made
from its number, with their transcripts; leads linked to it or logged with its number, with their
status history; its appointments; and outbox events (and the webhook deliveries copied from them)
whose payload names the contact, its number, or one of those records.

Erasing deletes the contact, its calls and leads (and any hold in its name), and scrubs names and
numbers from its outbox events, their webhook deliveries and earlier audit entries about them.
Appointments stay for the calendar, moved to the business's anonymous placeholder contact, with
their notes cleared; those already written to a calendar are marked for the write-back job to
rewrite without the name. One audit entry records who erased what and when, by ids and counts
only: the audit log must not keep what was erased.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, col, select

from booking import errors
from booking.models import Appointment, Call, Contact, Hold, Lead, OutboxEvent, SyncState
from dashboard.models import AuditLog, LeadStatusChange, audit
from dashboard.webhook_models import WebhookDelivery
from dashboard.webhooks import message_body

# The placeholder's phone: not a number, so no caller's lookup can ever match it.
ANONYMOUS_PHONE = ""
PERSONAL_KEYS = frozenset(
    {
        "name",
        "phone",
        "email",
        "from_number",
        "caller_phone",
        "notes",
        "note",
        "reason",
        "summary",
        "transcript",
    }
)
EXPORT_VERSION = 1


@dataclass
class ContactRecords:
    """Everything a business holds about one contact."""

    contact: Contact
    calls: list[Call]
    leads: list[Lead]
    history: list[LeadStatusChange]
    appointments: list[Appointment]
    events: list[OutboxEvent]


@dataclass(frozen=True)
class Erasure:
    """What erasing a contact did, by ids and counts."""

    contact_id: str
    calls: list[str]
    leads: list[str]
    appointments: list[str]
    events: int
    deliveries: int


def find_contacts(s: Session, business_id: str, text: str, *, limit: int = 50) -> list[Contact]:
    """The business's contacts whose name contains `text` or whose number contains its digits."""
    q = select(Contact).where(Contact.business_id == business_id, Contact.phone != ANONYMOUS_PHONE)
    text = text.strip()
    if text:
        digits = "".join(ch for ch in text if ch.isdigit())
        match = sa.func.lower(sa.func.coalesce(Contact.name, "")).contains(
            text.lower(), autoescape=True
        )
        if len(digits) >= 3:
            match = sa.or_(match, Contact.phone.contains(digits, autoescape=True))  # type: ignore[attr-defined]
        q = q.where(match)
    return list(s.exec(q.order_by(col(Contact.created_at).desc(), col(Contact.id)).limit(limit)))


def load_contact(s: Session, business_id: str, contact_id: str) -> Contact:
    row = s.get(Contact, contact_id)
    if row is None or row.business_id != business_id or row.phone == ANONYMOUS_PHONE:
        raise errors.NotFound(f"no contact {contact_id}")
    return row


def records(s: Session, business_id: str, contact_id: str) -> ContactRecords:
    """Everything about the contact, read in one transaction."""
    contact = load_contact(s, business_id, contact_id)
    leads = list(
        s.exec(
            select(Lead)
            .where(
                Lead.business_id == business_id,
                sa.or_(col(Lead.contact_id) == contact.id, col(Lead.phone) == contact.phone),
            )
            .order_by(col(Lead.created_at), col(Lead.id))
        )
    )
    appointments = list(
        s.exec(
            select(Appointment)
            .where(
                Appointment.business_id == business_id,
                Appointment.contact_id == contact.id,
            )
            .order_by(col(Appointment.start), col(Appointment.id))
        )
    )
    # A call from a withheld number is theirs through the lead or booking it produced.
    named = {c for c in [*(x.call_id for x in leads), *(x.call_id for x in appointments)] if c}
    calls = list(
        s.exec(
            select(Call)
            .where(
                Call.business_id == business_id,
                sa.or_(
                    col(Call.contact_id) == contact.id,
                    col(Call.from_number) == contact.phone,
                    col(Call.id).in_(sorted(named)),
                ),
            )
            .order_by(col(Call.started_at), col(Call.id))
        )
    )
    if calls:  # and every lead of those calls
        known = {lead.id for lead in leads}
        leads += [
            lead
            for lead in s.exec(
                select(Lead).where(
                    Lead.business_id == business_id,
                    Lead.call_id.in_([c.id for c in calls]),  # type: ignore[union-attr]
                )
            )
            if lead.id not in known
        ]
        leads.sort(key=lambda lead: (lead.created_at, lead.id))
    history = (
        list(
            s.exec(
                select(LeadStatusChange)
                .where(
                    col(LeadStatusChange.lead_id).in_([lead.id for lead in leads]),
                )
                .order_by(col(LeadStatusChange.at), col(LeadStatusChange.id))
            )
        )
        if leads
        else []
    )
    keys = {
        contact.id,
        contact.phone,
        *(c.id for c in calls),
        *(lead.id for lead in leads),
        *(a.id for a in appointments),
    }
    return ContactRecords(
        contact, calls, leads, history, appointments, _events_naming(s, business_id, keys)
    )


def _events_naming(s: Session, business_id: str, keys: set[str]) -> list[OutboxEvent]:
    """The business's outbox events whose payload holds one of `keys` as a value."""
    text = sa.cast(OutboxEvent.payload, sa.Text)
    # A quick textual filter in SQL, then an exact check of the payload's values.
    candidates = s.exec(
        select(OutboxEvent)
        .where(
            OutboxEvent.business_id == business_id,
            sa.or_(*(text.contains(k, autoescape=True) for k in sorted(keys))),
        )
        .order_by(col(OutboxEvent.created_at), col(OutboxEvent.id))
    )
    return [e for e in candidates if keys & set(_values(e.payload))]


def _values(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [v for item in value.values() for v in _values(item)]
    if isinstance(value, list):
        return [v for item in value for v in _values(item)]
    return [value] if isinstance(value, str) else []


# ---- export -------------------------------------------------------------------------------


def _row(row: SQLModel) -> dict[str, Any]:
    return row.model_dump(mode="json")


def export(found: ContactRecords, *, at: datetime) -> dict[str, Any]:
    """The contact's data as one JSON document."""
    history: dict[str, list[dict[str, Any]]] = {}
    for step in found.history:
        history.setdefault(step.lead_id, []).append(_row(step))
    return {
        "format": "frontdesk.contact-export",
        "version": EXPORT_VERSION,
        "exported_at": at.astimezone(UTC).isoformat(),
        "business_id": found.contact.business_id,
        "contact": _row(found.contact),
        "calls": [_row(c) for c in found.calls],
        "leads": [
            {**_row(lead), "status_history": history.get(lead.id, [])} for lead in found.leads
        ],
        "appointments": [_row(a) for a in found.appointments],
        "outbox_events": [_row(e) for e in found.events],
    }


# ---- erasure ------------------------------------------------------------------------------


def placeholder(s: Session, business_id: str) -> Contact:
    """The business's anonymous contact, which erased contacts' appointments are moved to."""
    row = s.exec(
        select(Contact).where(Contact.business_id == business_id, Contact.phone == ANONYMOUS_PHONE)
    ).first()
    if row is None:
        row = Contact(business_id=business_id, phone=ANONYMOUS_PHONE, name=None, email=None)
        s.add(row)
        s.flush()
    return row


def scrub(value: Any) -> Any:
    """`value` (an event payload) with every personal field emptied, at any depth."""
    if isinstance(value, dict):
        return {k: None if k in PERSONAL_KEYS else scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def erase(
    s: Session, *, business_id: str, contact_id: str, actor: str, user_id: str | None, at: datetime
) -> Erasure:
    """Delete the contact with its calls and leads; anonymise its appointments; audit it."""
    found = records(s, business_id, contact_id)
    call_ids = [c.id for c in found.calls]
    lead_ids = [lead.id for lead in found.leads]
    anonymous = placeholder(s, business_id)
    for apt in found.appointments:
        apt.contact_id = anonymous.id
        apt.notes = None
        if apt.call_id in call_ids:
            apt.call_id = None
        if apt.sync_state == SyncState.SYNCED:
            apt.sync_state = SyncState.NOT_SYNCED.value  # rewrite the event without the name
        apt.updated_at = at
        s.add(apt)
    deliveries = _scrub_events(s, found.events)
    # Earlier audit entries about these records may quote them (a status note): keep the
    # entries, empty the quotes.
    for entry in s.exec(
        select(AuditLog).where(
            AuditLog.business_id == business_id,
            col(AuditLog.subject).in_([found.contact.id, *lead_ids, *call_ids]),
        )
    ):
        entry.details = scrub(entry.details)
        s.add(entry)
    # A hold may name its holder by number or by call, until it is cleaned up.
    s.execute(
        sa.delete(Hold).where(
            col(Hold.business_id) == business_id,
            col(Hold.holder).in_([found.contact.phone, *(f"call:{c}" for c in call_ids)]),
        )
    )
    if lead_ids:
        s.execute(sa.delete(LeadStatusChange).where(col(LeadStatusChange.lead_id).in_(lead_ids)))
        s.execute(sa.delete(Lead).where(col(Lead.id).in_(lead_ids)))
    if call_ids:
        # Another contact's records may point at these calls (a call about someone else).
        s.execute(sa.update(Lead).where(col(Lead.call_id).in_(call_ids)).values(call_id=None))
        s.execute(
            sa.update(Appointment)
            .where(col(Appointment.call_id).in_(call_ids))
            .values(call_id=None)
        )
        s.execute(sa.delete(Call).where(col(Call.id).in_(call_ids)))
    s.flush()
    s.delete(found.contact)
    result = Erasure(
        contact_id=found.contact.id,
        calls=call_ids,
        leads=lead_ids,
        appointments=[a.id for a in found.appointments],
        events=len(found.events),
        deliveries=deliveries,
    )
    audit(
        s,
        business_id=business_id,
        actor=actor,
        user_id=user_id,
        action="contact.delete",
        subject=found.contact.id,
        at=at,
        details={
            "calls_deleted": result.calls,
            "leads_deleted": result.leads,
            "appointments_anonymised": result.appointments,
            "outbox_events_scrubbed": result.events,
            "webhook_deliveries_scrubbed": result.deliveries,
        },
    )
    s.flush()
    return result


def _scrub_events(s: Session, events: list[OutboxEvent]) -> int:
    """Empty personal fields in the events and in the webhook bodies copied from them."""
    scrubbed = 0
    for event in events:
        event.payload = scrub(event.payload)
        s.add(event)
        body = message_body(event.type, event.created_at, event.payload)
        for delivery in s.exec(select(WebhookDelivery).where(WebhookDelivery.event_id == event.id)):
            delivery.body = body
            s.add(delivery)
            scrubbed += 1
    return scrubbed
