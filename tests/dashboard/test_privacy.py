"""Privacy: a contact's data exported as JSON, and erased (calls, transcripts, leads) with their
appointments kept anonymised and an audit entry; other contacts and businesses untouched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from booking.calls import CallLog
from booking.db import session_scope
from booking.models import Appointment, Contact, OutboxEvent
from booking.scheduler import Scheduler
from dashboard.models import AuditLog, LeadStatusChange, audit
from dashboard.webhook_models import WebhookDelivery
from dashboard.webhooks import WebhookDispatcher, Webhooks
from tests.conftest import count_rows
from tests.dashboard.conftest import csrf_of

ANN = "+12025550001"
BOB = "+12025550002"
START = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)  # Monday 09:00 in New York


@dataclass
class World:
    ann: str  # contact ids
    bob: str
    salon_ann: str
    appointment: str
    ann_call: str
    bob_call: str
    ann_lead: str


async def _call(scheduler: Scheduler, business_id: str, sid: str, phone: str, words: str) -> str:
    calls = CallLog.over(scheduler.engine, scheduler.clock)
    call = await calls.start_call(
        business_id=business_id, call_sid=sid, from_number=phone, to_number="+12025550100"
    )
    await calls.save_transcript(
        call.id,
        [{"role": "caller", "text": words}, {"role": "agent", "text": "Certainly."}],
        summary=f"summary: {words}",
    )
    return call.id


@pytest.fixture
async def world(scheduler: Scheduler, accounts: dict[str, str]) -> World:
    """Ann called the clinic, booked and left a lead; Bob called the clinic; a different
    person with Ann's number called the salon. The clinic has a webhook."""
    await Webhooks(scheduler.engine).create(
        business_id="clinic",
        url="http://127.0.0.1:9/x",
        event_types=["booking.created", "lead.created"],
    )
    ann_call = await _call(scheduler, "clinic", "CA1", ANN, "I need a cleaning, Ann here")
    apt = await scheduler.book(
        business_id="clinic",
        service_id="cleaning",
        staff_id="lee",
        start=START,
        name="Ann Smith",
        phone=ANN,
        notes="allergic to latex",
        call_id=ann_call,
        booked_by="agent",
    )
    lead = await scheduler.record_lead(
        business_id="clinic",
        phone=ANN,
        name="Ann Smith",
        reason="Booked a cleaning",
        outcome="booked",
        appointment_id=apt.id,
        call_id=ann_call,
    )
    with session_scope(scheduler.engine, write=True) as s:
        s.add(
            LeadStatusChange(
                business_id="clinic",
                lead_id=lead.id,
                from_status="new",
                to_status="contacted",
                note="Called Ann back",
                actor="owner",
                at=START - timedelta(days=1),
            )
        )
        audit(
            s,
            business_id="clinic",
            actor="owner@clinic.test",
            action="lead.status",
            subject=lead.id,
            at=START - timedelta(days=1),
            details={"from": "new", "to": "contacted", "note": "Called Ann back"},
        )
    await scheduler.hold(
        business_id="clinic",
        service_id="cleaning",
        staff_id="lee",
        start=START + timedelta(hours=2),
        holder=ANN,
    )
    bob_call = await _call(scheduler, "clinic", "CA2", BOB, "Bob asking about prices")
    await scheduler.record_lead(
        business_id="clinic", phone=BOB, name="Bob Jones", reason="prices", call_id=bob_call
    )
    await _call(scheduler, "salon", "CA3", ANN, "Salon caller wants a haircut")
    await scheduler.record_lead(business_id="salon", phone=ANN, name="Ann Other", reason="haircut")
    async with WebhookDispatcher(scheduler.engine) as dispatcher:
        await dispatcher.fan_out()  # deliveries that copy Ann's events (never sent here)

    with session_scope(scheduler.engine) as s:
        contacts = {(c.business_id, c.phone): c.id for c in s.exec(select(Contact))}
    return World(
        ann=contacts["clinic", ANN],
        bob=contacts["clinic", BOB],
        salon_ann=contacts["salon", ANN],
        appointment=apt.id,
        ann_call=ann_call,
        bob_call=bob_call,
        ann_lead=lead.id,
    )


def dump(engine: Engine, sql: str) -> str:
    """Rows of a query as one string, to search for leftovers."""
    with engine.connect() as conn:
        return json.dumps([list(map(str, r)) for r in conn.exec_driver_sql(sql)])


async def test_the_export_holds_everything_about_the_contact(
    owner: httpx.AsyncClient,
    world: World,
    scheduler: Scheduler,
) -> None:
    page = await owner.get("/privacy", params={"q": "ann"})
    assert page.status_code == 200 and f"/privacy/contacts/{world.ann}" in page.text
    assert world.bob not in page.text and world.salon_ann not in page.text
    page = await owner.get(f"/privacy/contacts/{world.ann}")
    assert "Download JSON" in page.text
    r = await owner.get(f"/privacy/contacts/{world.ann}/export.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert "attachment" in r.headers["content-disposition"]
    doc = r.json()
    assert doc["contact"]["id"] == world.ann and doc["contact"]["name"] == "Ann Smith"
    [call] = doc["calls"]
    assert call["id"] == world.ann_call
    assert call["transcript"][0]["text"] == "I need a cleaning, Ann here"
    assert call["summary"].startswith("summary:")
    [lead] = doc["leads"]
    assert lead["id"] == world.ann_lead
    assert [h["note"] for h in lead["status_history"]] == ["Called Ann back"]
    [apt] = doc["appointments"]
    assert apt["id"] == world.appointment and apt["notes"] == "allergic to latex"
    assert sorted(e["type"] for e in doc["outbox_events"]) == ["booking.created", "lead.created"]
    text = r.text
    assert "Bob" not in text and "Salon caller" not in text and "Ann Other" not in text
    with session_scope(scheduler.engine) as s:
        [entry] = s.exec(select(AuditLog).where(AuditLog.action == "contact.export")).all()
    assert (entry.actor, entry.subject) == ("owner@clinic.test", world.ann)


async def test_erasing_deletes_calls_and_leads_and_keeps_the_appointment_anonymised(
    owner: httpx.AsyncClient,
    world: World,
    scheduler: Scheduler,
) -> None:
    engine = scheduler.engine
    page = await owner.get(f"/privacy/contacts/{world.ann}/delete")
    assert page.status_code == 200 and "cannot be undone" in page.text
    csrf = csrf_of(page.text)
    r = await owner.post(
        f"/privacy/contacts/{world.ann}/delete", data={"csrf_token": csrf, "confirm": "yes"}
    )
    assert r.status_code == 422 and "Type DELETE" in r.text
    assert count_rows(engine, "SELECT count(*) FROM contact WHERE id = :i", i=world.ann) == 1
    r = await owner.post(
        f"/privacy/contacts/{world.ann}/delete", data={"csrf_token": csrf, "confirm": "DELETE"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/privacy?erased=1"

    # Gone: the contact, Ann's call with its transcript, her lead and its history.
    assert count_rows(engine, "SELECT count(*) FROM contact WHERE id = :i", i=world.ann) == 0
    assert count_rows(engine, "SELECT count(*) FROM call WHERE id = :i", i=world.ann_call) == 0
    assert count_rows(engine, "SELECT count(*) FROM lead WHERE id = :i", i=world.ann_lead) == 0
    assert count_rows(engine, "SELECT count(*) FROM lead_status_change") == 0
    assert count_rows(engine, "SELECT count(*) FROM hold") == 0
    # Kept: the appointment, still blocking the calendar, with nobody's name on it.
    with session_scope(engine) as s:
        apt = s.get(Appointment, world.appointment)
        assert apt is not None and apt.status == "confirmed" and apt.notes is None
        assert apt.call_id is None
        placeholder = s.get(Contact, apt.contact_id)
        assert placeholder is not None and placeholder.name is None and placeholder.phone == ""
    slots = await scheduler.search(
        business_id="clinic",
        service_id="cleaning",
        staff_id="lee",
        start=START,
        end=START + timedelta(hours=1),
    )
    assert START not in [slot.start for slot in slots.slots]
    # Nothing of hers is left in the events or the webhook bodies copied from them.
    for sql in (
        "SELECT * FROM outboxevent WHERE business_id = 'clinic'",
        "SELECT * FROM webhook_delivery",  # the clinic's webhook only
        "SELECT * FROM contact WHERE business_id = 'clinic'",
        "SELECT * FROM appointment",
        "SELECT * FROM audit_log",
    ):
        leftovers = dump(engine, sql)
        assert "Ann" not in leftovers and ANN not in leftovers and "latex" not in leftovers, sql
    with session_scope(engine) as s:
        [status] = s.exec(select(AuditLog).where(AuditLog.action == "lead.status")).all()
    assert status.details == {"from": "new", "to": "contacted", "note": None}
    # Who erased what, when: ids and counts, no personal data.
    with session_scope(engine) as s:
        [entry] = s.exec(select(AuditLog).where(AuditLog.action == "contact.delete")).all()
    assert (entry.actor, entry.subject, entry.business_id) == (
        "owner@clinic.test",
        world.ann,
        "clinic",
    )
    assert entry.at == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # the app's clock
    assert entry.details["calls_deleted"] == [world.ann_call]
    assert entry.details["leads_deleted"] == [world.ann_lead]
    assert entry.details["appointments_anonymised"] == [world.appointment]
    # Untouched: Bob, and the salon's caller who shares Ann's number.
    assert count_rows(engine, "SELECT count(*) FROM call WHERE id = :i", i=world.bob_call) == 1
    assert count_rows(engine, "SELECT count(*) FROM lead WHERE phone = :p", p=BOB) == 1
    assert count_rows(engine, "SELECT count(*) FROM contact WHERE id = :i", i=world.salon_ann) == 1
    assert count_rows(engine, "SELECT count(*) FROM call WHERE business_id = 'salon'") == 1
    assert (
        count_rows(
            engine, "SELECT count(*) FROM lead WHERE business_id = 'salon' AND name = 'Ann Other'"
        )
        == 1
    )
    with session_scope(engine) as s:
        salon_events = s.exec(select(OutboxEvent).where(OutboxEvent.business_id == "salon"))
        assert [e.payload["name"] for e in salon_events] == ["Ann Other"]
    # The erased contact is no longer listed, and a new call from her starts afresh.
    page = await owner.get("/privacy?erased=1")
    assert "The contact was erased" in page.text and world.ann not in page.text
    again = await scheduler.book(
        business_id="clinic",
        service_id="cleaning",
        staff_id="lee",
        start=START + timedelta(hours=2),
        name="Ann Smith",
        phone=ANN,
    )
    assert again.contact_id not in (world.ann, placeholder.id)


async def test_erasing_scrubs_undelivered_webhook_bodies(
    owner: httpx.AsyncClient,
    world: World,
    scheduler: Scheduler,
) -> None:
    with session_scope(scheduler.engine) as s:
        bodies = [d.body for d in s.exec(select(WebhookDelivery))]
    assert any("Ann Smith" in b for b in bodies)
    page = await owner.get(f"/privacy/contacts/{world.ann}/delete")
    await owner.post(
        f"/privacy/contacts/{world.ann}/delete",
        data={"csrf_token": csrf_of(page.text), "confirm": "DELETE"},
    )
    with session_scope(scheduler.engine) as s:
        deliveries = list(s.exec(select(WebhookDelivery)))
    assert len(deliveries) == len(bodies)
    for d in deliveries:
        body = json.loads(d.body)
        assert "Ann" not in d.body and body["type"] in ("booking.created", "lead.created")


async def test_privacy_is_for_the_owner_of_that_business_only(
    owner: httpx.AsyncClient,
    staff: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    client_for,
    world: World,
    scheduler: Scheduler,  # type: ignore[no-untyped-def]
) -> None:
    assert (await staff.get("/privacy")).status_code == 403
    assert (await staff.get(f"/privacy/contacts/{world.ann}/export.json")).status_code == 403
    assert (await anonymous.get(f"/privacy/contacts/{world.ann}/export.json")).status_code == 303
    async with client_for("owner@salon.test") as salon:
        page = await salon.get("/privacy")
        assert world.ann not in page.text and world.salon_ann in page.text
        assert (await salon.get(f"/privacy/contacts/{world.ann}")).status_code == 404
        r = await salon.get(f"/privacy/contacts/{world.ann}/export.json")
        assert r.status_code == 404
        r = await salon.post(
            f"/privacy/contacts/{world.ann}/delete",
            data={"csrf_token": csrf_of(page.text), "confirm": "DELETE"},
        )
        assert r.status_code == 404
    r = await owner.post(
        f"/privacy/contacts/{world.ann}/delete", data={"csrf_token": "forged", "confirm": "DELETE"}
    )
    assert r.status_code == 403
    assert (
        count_rows(scheduler.engine, "SELECT count(*) FROM contact WHERE id = :i", i=world.ann) == 1
    )
    assert (
        count_rows(
            scheduler.engine, "SELECT count(*) FROM audit_log WHERE action = 'contact.delete'"
        )
        == 0
    )
