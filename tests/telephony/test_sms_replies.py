"""Texts from callers (`POST /twilio/sms`) and the status of ours (`POST /twilio/sms/status`),
through the running app with Twilio's signature, against the REST fake, on SQLite and
PostgreSQL: carrier keywords, C / X replies to a reminder, a retried MessageSid, and reminders
sent once through the outbox, never to a number that opted out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from booking.clock import FixedClock
from booking.models import Appointment, AppointmentStatus, SmsStatus
from booking.reminders import ReminderPlanner
from booking.scheduler import Scheduler
from booking.sms_outbox import SmsStore
from telephony.sms import SmsSender
from telephony.sms_outbox import SmsOutbox
from telephony.sms_replies import Reply, classify
from tests.conftest import NOW, count_rows
from tests.fakes.llm_server import Call, FakeLLM, Text, ToolCalls
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_voice import TwiML
from tests.telephony.conftest import ACCOUNT_SID, CALLER, CLINIC, TOKEN, Desk, running_desk

NY = ZoneInfo("America/New_York")
TUESDAY_10 = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)  # 10:00 in New York
sids = iter(f"SM{n:032x}" for n in range(1, 10_000))


class RecordingWriter:
    def __init__(self) -> None:
        self.synced: list[str] = []

    async def sync_appointment(self, appointment_id: str) -> str:
        self.synced.append(appointment_id)
        return "synced"


@pytest.fixture
def writer() -> RecordingWriter:
    return RecordingWriter()


@pytest.fixture
async def desk(
    clinic: Engine, llm: FakeLLM, rest: FakeTwilioRest, writer: RecordingWriter
) -> AsyncIterator[Desk]:
    scheduler = Scheduler(engine=clinic, clock=FixedClock(NOW), writer=writer)
    async with running_desk(scheduler, llm, rest, run_jobs=False) as d:
        yield d


async def text(desk: Desk, body: str, *, sid: str | None = None, sender: str = CALLER) -> TwiML:
    return await desk.twilio.post(
        "/twilio/sms",
        MessageSid=sid or next(sids),
        AccountSid=ACCOUNT_SID,
        From=sender,
        To=CLINIC,
        Body=body,
        NumMedia="0",
    )


def message(answer: TwiML) -> str | None:
    assert answer.status == 200 and answer.root is not None, answer.xml
    found = answer.root.find("Message")
    return None if found is None else (found.text or "")


async def booked(desk: Desk, start: datetime = TUESDAY_10, phone: str = CALLER) -> Appointment:
    scheduler: Scheduler = desk.app.state.scheduler
    return await scheduler.book(
        business_id="clinic",
        name="Ana",
        phone=phone,
        service_id="cleaning",
        staff_id="lee",
        start=start,
        now=NOW,
    )


def status_of(engine: Engine, appointment_id: str) -> tuple[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, caller_confirmed_at FROM appointment WHERE id = :i"),
            {"i": appointment_id},
        ).one()
    return row.status, row.caller_confirmed_at


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("STOP", Reply.OPT_OUT),
        (" stop. ", Reply.OPT_OUT),
        ("Cancel", Reply.OPT_OUT),  # the carrier's word, never our cancel
        ("StopAll", Reply.OPT_OUT),
        ("stop all", Reply.OPT_OUT),
        ("unsubscribe", Reply.OPT_OUT),
        ("END", Reply.OPT_OUT),
        ("quit", Reply.OPT_OUT),
        ("start", Reply.OPT_IN),
        ("UNSTOP", Reply.OPT_IN),
        ("Yes!", Reply.YES),
        ("help", Reply.HELP),
        ("INFO", Reply.HELP),
        ("c", Reply.CONFIRM),
        ("Confirm", Reply.CONFIRM),
        ("x", Reply.CANCEL),
        ("please cancel my appointment", Reply.CANCEL),
        ("I need to cancel", Reply.CANCEL),
        ("stop texting me please", Reply.OTHER),  # carriers match whole messages only
        ("can I reschedule?", Reply.OTHER),
        ("", Reply.OTHER),
    ],
)
def test_keywords_are_whole_messages(body: str, kind: Reply) -> None:
    assert classify(body) is kind


async def test_c_confirms_and_x_cancels_the_callers_own_appointment(
    desk: Desk, writer: RecordingWriter
) -> None:
    mine = await booked(desk)
    theirs = await booked(desk, TUESDAY_10 + timedelta(hours=1), phone="+12025559999")
    answer = message(await text(desk, "C"))
    assert answer == (
        "Clinic: thanks, your Teeth cleaning on Tue Dec 1 at 10:00 AM is confirmed. See you then!"
    )
    status, confirmed_at = status_of(desk.engine, mine.id)
    assert status == AppointmentStatus.CONFIRMED and confirmed_at is not None
    assert (
        count_rows(desk.engine, "SELECT count(*) FROM outboxevent WHERE type = 'booking.confirmed'")
        == 1
    )

    # The calendar event must go: pretend Dr. Lee's calendar holds it.
    with desk.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE appointment SET sync_state = 'synced' WHERE id = :i"), {"i": mine.id}
        )
    answer = message(await text(desk, "please cancel my appointment"))
    assert answer == "Clinic: your Teeth cleaning on Tue Dec 1 at 10:00 AM is cancelled."
    assert status_of(desk.engine, mine.id)[0] == AppointmentStatus.CANCELLED
    assert writer.synced == [mine.id]  # written back, as any cancellation is
    assert status_of(desk.engine, theirs.id)[0] == AppointmentStatus.CONFIRMED
    assert (
        count_rows(desk.engine, "SELECT count(*) FROM outboxevent WHERE type = 'booking.cancelled'")
        == 1
    )
    # Nothing of theirs is reachable from this number.
    answer = message(await text(desk, "X"))
    assert answer is not None and "no upcoming appointment" in answer


async def test_a_retried_message_sid_is_handled_once(desk: Desk) -> None:
    mine = await booked(desk)
    first = await text(desk, "X", sid="SM" + "a" * 32)
    again = await text(desk, "X", sid="SM" + "a" * 32)
    assert message(first) == message(again) and "cancelled" in (message(first) or "")
    assert status_of(desk.engine, mine.id)[0] == AppointmentStatus.CANCELLED
    assert (
        count_rows(desk.engine, "SELECT count(*) FROM outboxevent WHERE type = 'booking.cancelled'")
        == 1
    )
    assert count_rows(desk.engine, "SELECT count(*) FROM inbound_sms") == 1


async def test_stop_opts_out_start_opts_back_in_and_help_says_how(desk: Desk) -> None:
    store = SmsStore.over(desk.engine)
    assert message(await text(desk, "STOP")) is None  # Twilio sends the carrier's confirmation
    assert await store.opted_out(sender=CLINIC, phone=CALLER)
    help_text = message(await text(desk, "help"))
    assert help_text == (
        "Clinic: appointment texts. Reply C to confirm, X to cancel, STOP to opt out. "
        f"Questions? Call {CLINIC}."
    )
    assert message(await text(desk, "START")) is None
    assert not await store.opted_out(sender=CLINIC, phone=CALLER)
    await text(desk, "cancel")  # a bare CANCEL is the carrier's opt-out, never an appointment's
    assert await store.opted_out(sender=CLINIC, phone=CALLER)
    mine = await booked(desk)
    assert status_of(desk.engine, mine.id)[0] == AppointmentStatus.CONFIRMED
    # YES opts back in and confirms.
    assert "confirmed" in (message(await text(desk, "yes")) or "")
    assert not await store.opted_out(sender=CLINIC, phone=CALLER)
    assert status_of(desk.engine, mine.id)[1] is not None
    # Anything else is a question for the agent.
    desk.llm.script(Text("Yes, free parking behind the building."))
    assert message(await text(desk, "do you have parking?")) == (
        "Yes, free parking behind the building."
    )


async def test_unsigned_and_forged_texts_get_403_and_touch_nothing(desk: Desk) -> None:
    await booked(desk)
    form = {"MessageSid": next(sids), "From": CALLER, "To": CLINIC, "Body": "X"}
    unsigned = await desk.twilio.post("/twilio/sms", signature=None, **form)
    forged = await desk.twilio.post("/twilio/sms", signature="bm90IGEgc2lnbmF0dXJl", **form)
    assert (unsigned.status, forged.status) == (403, 403)
    assert count_rows(desk.engine, "SELECT count(*) FROM inbound_sms") == 0
    assert (
        count_rows(desk.engine, "SELECT count(*) FROM appointment WHERE status = 'cancelled'") == 0
    )
    for bad in (
        {"From": CALLER, "To": CLINIC, "Body": "x"},  # no MessageSid
        {"MessageSid": "not a sid!", "From": CALLER, "To": CLINIC},
        {"MessageSid": next(sids), "From": CALLER, "To": CLINIC, "Body": "x" * 1601},
        {"MessageSid": next(sids), "From": CALLER, "To": CLINIC, "Body": "a\x00b"},
    ):
        answer = await desk.twilio.post("/twilio/sms", **bad)
        assert answer.status == 400, (bad, answer.xml)
    status = await desk.twilio.post(
        "/twilio/sms/status", signature=None, MessageSid=next(sids), MessageStatus="delivered"
    )
    assert status.status == 403


async def test_reminders_are_sent_once_with_delivery_status_and_never_after_stop(
    desk: Desk, rest: FakeTwilioRest
) -> None:
    first = await booked(desk)
    second = await booked(desk, TUESDAY_10 + timedelta(hours=1), phone="+12025554322")
    due = datetime(2026, 11, 30, 16, 30, tzinfo=UTC)
    clock = FixedClock(due)
    store = SmsStore.over(desk.engine, clock)
    sender = SmsSender(
        account_sid=ACCOUNT_SID,
        auth_token=TOKEN,
        api_base_url=rest.base_url,
        status_callback="https://desk.example.com/twilio/sms/status",
    )
    outbox = SmsOutbox(store, sender)
    try:
        await SmsStore.over(desk.engine).set_opt_out(
            business_id="clinic", sender=CLINIC, phone="+12025554322", opted_out=True, source="STOP"
        )
        planned = await ReminderPlanner(desk.engine).plan_due(now=due)
        assert {p.appointment_id for p in planned} == {first.id, second.id}
        assert await outbox.run_once() == 1  # the opted-out number's reminder is never posted
        assert await outbox.run_once() == 0
        [sent] = rest.messages
        assert sent.to == CALLER and "reminder of your Teeth cleaning" in sent.body
        assert sent.status_callback == "https://desk.example.com/twilio/sms/status"
        for state in ("sent", "delivered", "queued"):  # a late "queued" changes nothing
            answer = await desk.twilio.post(
                "/twilio/sms/status",
                MessageSid=sent.sid,
                MessageStatus=state,
                AccountSid=ACCOUNT_SID,
                From=CLINIC,
                To=CALLER,
            )
            assert answer.status == 204
        history = await store.history("clinic", first.id)
        assert [(h.kind, h.status, h.delivery_status) for h in history] == [
            ("reminder", SmsStatus.SENT.value, "delivered")
        ]
        [stopped] = await store.history("clinic", second.id)
        assert stopped.status == SmsStatus.CANCELLED.value and "opted out" in (stopped.error or "")
        # Twilio refusing with 21610 (a STOP it holds that we never saw) opts the number out.
        rest.unsubscribe(CALLER)
        third = await booked(desk, TUESDAY_10 - timedelta(hours=1))
        assert await ReminderPlanner(desk.engine).plan_due(now=due)
        assert await outbox.run_once() == 1
        [refused] = await store.history("clinic", third.id)
        assert refused.status == SmsStatus.FAILED.value and "21610" in (refused.error or "")
        assert await store.opted_out(sender=CLINIC, phone=CALLER)
    finally:
        await outbox.aclose()


async def test_a_cancellation_while_a_reminder_is_claimed_stops_it(
    desk: Desk, rest: FakeTwilioRest
) -> None:
    mine = await booked(desk)
    due = datetime(2026, 11, 30, 16, 30, tzinfo=UTC)
    store = SmsStore.over(desk.engine, FixedClock(due))
    outbox = SmsOutbox(
        store, SmsSender(account_sid=ACCOUNT_SID, auth_token=TOKEN, api_base_url=rest.base_url)
    )
    try:
        assert await ReminderPlanner(desk.engine).plan_due(now=due)
        [claimed] = await store.claim(lease=timedelta(seconds=60))  # a sender holds it
        scheduler: Scheduler = desk.app.state.scheduler
        await scheduler.cancel(business_id="clinic", appointment_id=mine.id)
        await outbox._send(claimed)  # the sender goes on: it re-reads before posting
        assert rest.messages == []
        [row] = await store.history("clinic", mine.id)
        assert row.status == SmsStatus.CANCELLED.value
    finally:
        await outbox.aclose()


# ---- text to book -----------------------------------------------------------------------------


def book_first(name: str) -> Any:
    def answer(messages: list[dict[str, Any]]) -> ToolCalls:
        results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
        slot = [r for r in results if "slots" in r][-1]["slots"][0]["slot_id"]
        return ToolCalls(Call("book_appointment", {"slot_id": slot, "name": name}))

    return answer


async def test_a_text_conversation_books_across_workers_and_ends_as_one_lead(desk: Desk) -> None:
    desk.llm.script(
        ToolCalls(
            Call(
                "check_availability", {"service": "cleaning", "date": "2026-12-07", "staff": "lee"}
            )
        ),
        Text("Dr. Lee has Monday, December 7 at 9:00 AM. Shall I book it?"),
        book_first("Ann Smith"),
        Text("Done: Monday, December 7 at 9:00 AM with Dr. Lee."),
        ToolCalls(Call("end_call"), text="You're welcome, see you Monday!"),
    )
    first_sid = next(sids)
    answer = message(
        await text(desk, "Hi, can I get a cleaning with Dr. Lee on Monday?", sid=first_sid)
    )
    assert answer == "Dr. Lee has Monday, December 7 at 9:00 AM. Shall I book it?"
    # The next text reaches a worker that never saw the thread.
    assert desk.board.sessions.pop(first_sid) is not None
    answer = message(await text(desk, "Yes please, I'm Ann Smith"))
    assert answer == "Done: Monday, December 7 at 9:00 AM with Dr. Lee."
    assert (
        count_rows(desk.engine, "SELECT count(*) FROM appointment WHERE status = 'confirmed'") == 1
    )
    assert count_rows(desk.engine, "SELECT count(*) FROM call") == 1  # one thread
    # Written for a text: the engine told the model so, after the phone's own prompt.
    notes = [m["content"] for m in desk.llm.requests[-1]["messages"] if m["role"] == "system"]
    assert len(notes) == 2 and "text message (SMS)" in notes[1]
    answer = message(await text(desk, "thanks!"))
    assert answer == "You're welcome, see you Monday!"
    await desk.board.drain()
    with desk.engine.connect() as conn:
        lead = conn.execute(sa.text("SELECT outcome, phone, call_id FROM lead")).one()
        call = conn.execute(sa.text("SELECT id, call_sid, ended_at, channel FROM call")).one()
    assert lead.outcome == "booked" and lead.phone == CALLER and lead.call_id == call.id
    assert call.call_sid == first_sid and call.ended_at is not None and call.channel == "sms"
    # A text after the thread ended starts a new one.
    desk.llm.script(Text("Hello again! How can I help?"))
    assert message(await text(desk, "one more question")) == "Hello again! How can I help?"
    assert count_rows(desk.engine, "SELECT count(*) FROM call") == 2


# ---- the waitlist -----------------------------------------------------------------------------


async def test_a_waitlist_offer_is_taken_with_yes_and_passed_with_no(desk: Desk) -> None:
    from booking.waitlist import Waitlist
    from tests.booking.test_waitlist import fill_tuesday

    scheduler: Scheduler = desk.app.state.scheduler
    booked = await fill_tuesday(scheduler)
    waitlist = Waitlist(scheduler)
    for phone, name in ((CALLER, "Ana"), ("+12025554322", "Bo")):
        await waitlist.join(
            business_id="clinic",
            phone=phone,
            name=name,
            service_id="checkup",
            first_day=TUESDAY_10.date(),
            last_day=TUESDAY_10.date(),
        )
    await scheduler.cancel(business_id="clinic", appointment_id=booked[2].id)
    assert await waitlist.offer_due()
    assert await waitlist.open_offer(business_id="clinic", phone=CALLER) is not None
    answer = message(await text(desk, "no"))
    assert answer is not None and "offer it to someone else" in answer
    assert await waitlist.offer_due()  # now Bo's
    answer = message(await text(desk, "Yes", sender="+12025554322"))
    assert (
        answer
        == "Clinic: your Checkup with Dr. Lee is booked for Tue Dec 1 at 10:00 AM. See you then!"
    )
    with desk.engine.connect() as conn:
        mine = (
            conn.execute(
                sa.text(
                    "SELECT a.booked_by FROM appointment a JOIN contact c ON c.id = a.contact_id "
                    "WHERE c.phone = '+12025554322' AND a.status = 'confirmed'"
                )
            )
            .scalars()
            .all()
        )
    assert mine == ["waitlist"]
