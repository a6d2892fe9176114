"""The voice webhooks: signatures, idempotent calls, the TwiML Twilio gets, and closing calls."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from booking.clock import FixedClock
from booking.scheduler import Scheduler
from tests.conftest import NOW, count_rows
from tests.fakes.llm_server import Call, Text, ToolCalls
from tests.telephony.conftest import CALLER, CLINIC, PUBLIC_URL, TRANSFER, Desk

CALL = {
    "CallSid": "CA" + "1" * 32,
    "From": CALLER,
    "To": CLINIC,
    "CallStatus": "ringing",
    "AccountSid": "AC" + "0" * 32,
    "Direction": "inbound",
}


async def test_a_forged_signature_is_refused_and_touches_nothing(desk: Desk) -> None:
    forged = await desk.twilio.post("/twilio/voice", signature="bm90IGEgc2lnbmF0dXJl", **CALL)
    missing = await desk.twilio.post("/twilio/voice", signature=None, **CALL)
    assert forged.status == 403 and missing.status == 403
    assert count_rows(desk.engine, "SELECT count(*) FROM call") == 0


async def test_a_signature_over_other_parameters_is_refused(desk: Desk) -> None:
    # Signed for one caller, delivered with another: the form is part of what is signed.
    signature = desk.twilio.sign(PUBLIC_URL + "/twilio/voice", CALL)
    tampered = {**CALL, "From": "+12025550000"}
    answer = await desk.twilio.post("/twilio/voice", signature=signature, **tampered)
    assert answer.status == 403
    assert count_rows(desk.engine, "SELECT count(*) FROM call") == 0


async def test_the_signature_is_checked_against_the_public_url(desk: Desk) -> None:
    # What a naive check would use: the URL the app itself sees behind the proxy.
    signature = desk.twilio.sign(desk.url + "/twilio/voice", CALL)
    answer = await desk.twilio.post("/twilio/voice", signature=signature, **CALL)
    assert answer.status == 403


async def test_a_forged_websocket_is_refused_before_accept(desk: Desk) -> None:
    answer = await desk.twilio.post("/twilio/voice", **CALL)
    url = answer.relay_url
    for signature in ("bm90IGEgc2lnbmF0dXJl", None):
        try:
            async with desk.twilio.relay(
                url,
                call_sid=CALL["CallSid"],
                from_number=CALLER,
                to_number=CLINIC,
                signature=signature,
                setup=False,
            ):
                raise AssertionError("the websocket was accepted")
        except Exception as exc:  # websockets.InvalidStatus
            assert "403" in str(exc), exc


async def test_a_retried_webhook_makes_one_call(desk: Desk) -> None:
    first = await desk.twilio.post("/twilio/voice", **CALL)
    second = await desk.twilio.post("/twilio/voice", **CALL)
    assert first.status == second.status == 200
    assert first.relay_url == second.relay_url
    assert count_rows(desk.engine, "SELECT count(*) FROM call") == 1


async def test_relay_mode_answers_with_connect_conversation_relay(desk: Desk) -> None:
    answer = await desk.twilio.post("/twilio/voice", **CALL)
    assert answer.status == 200 and answer.verbs == ["Connect"]
    connect = answer.find("Connect")
    assert connect.attrib["action"] == f"{PUBLIC_URL}/twilio/connect-action"
    relay = answer.find("Connect/ConversationRelay")
    url = urlsplit(relay.attrib["url"])
    assert (url.scheme, url.netloc, url.path) == ("wss", "desk.example.com", "/twilio/relay")
    call_id = parse_qs(url.query)["call"][0]
    assert (
        count_rows(
            desk.engine,
            "SELECT count(*) FROM call WHERE id = :i AND call_sid = :s AND business_id = 'clinic'",
            i=call_id,
            s=CALL["CallSid"],
        )
        == 1
    )
    assert relay.attrib["welcomeGreeting"]
    assert relay.attrib["language"] == "en-US"
    assert relay.attrib["dtmfDetection"] == "true"
    assert relay.attrib["applicationReconnect"] == "true"  # Twilio reconnects a dropped socket


async def test_an_unknown_number_gets_a_polite_goodbye(desk: Desk) -> None:
    answer = await desk.twilio.post("/twilio/voice", **{**CALL, "To": "+12025559999"})
    assert answer.status == 200 and answer.verbs == ["Say", "Hangup"]
    assert "not set up" in answer.said
    assert count_rows(desk.engine, "SELECT count(*) FROM call") == 0


async def test_gather_mode_runs_turn_by_turn_with_say(gather_desk: Desk) -> None:
    desk = gather_desk
    answer = await desk.twilio.post("/twilio/voice", **CALL)
    assert answer.verbs == ["Gather"]
    gather = answer.find("Gather")
    assert gather.attrib["input"] == "speech" and gather.attrib["speechTimeout"] == "auto"
    assert gather.attrib["action"] == f"{PUBLIC_URL}/twilio/gather"
    assert answer.find("Gather/Say").text

    desk.llm.script(Text("We're open nine to five, Monday to Friday. Anything else?"))
    turn = await desk.twilio.post(
        "/twilio/gather",
        **{**CALL, "CallStatus": "in-progress"},
        SpeechResult="When are you open?",
        Confidence="0.93",
    )
    assert turn.verbs == ["Gather"]
    assert "nine to five" in turn.said
    last_user = desk.llm.requests[-1]["messages"][-1]
    assert last_user["role"] == "user" and "When are you open?" in last_user["content"]


async def test_gather_silence_reprompts_then_says_goodbye(gather_desk: Desk) -> None:
    desk = gather_desk
    await desk.twilio.post("/twilio/voice", **CALL)
    answers = [await desk.twilio.post("/twilio/gather", **CALL, SpeechResult="") for _ in range(3)]
    assert [a.verbs for a in answers] == [["Gather"], ["Gather"], ["Say", "Hangup"]]
    assert desk.llm.requests == []


async def test_gather_transfer_dials_and_a_failed_dial_takes_a_message(
    gather_desk: Desk, scheduler: Scheduler
) -> None:
    assert isinstance(scheduler.clock, FixedClock)
    scheduler.clock.at = NOW + timedelta(hours=3)  # 10:00 in New York: someone can answer
    desk = gather_desk
    await desk.twilio.post("/twilio/voice", **CALL)
    desk.llm.script(
        ToolCalls(Call("transfer_to_human", {"reason": "wants a person"})),
        Text("Let me put you through."),
    )
    answer = await desk.twilio.post("/twilio/gather", **CALL, SpeechResult="A person please.")
    assert "Dial" in answer.verbs, answer.xml
    dial = answer.find("Dial")
    assert dial.text == TRANSFER
    assert dial.attrib["action"] == f"{PUBLIC_URL}/twilio/dial-status"

    busy = await desk.twilio.post("/twilio/dial-status", **CALL, DialCallStatus="no-answer")
    assert busy.verbs == ["Gather"] and "take a message" in busy.said

    desk.llm.script(Text("Of course. What's your name?"))
    after = await desk.twilio.post("/twilio/gather", **CALL, SpeechResult="Take a message.")
    assert after.verbs == ["Gather"] and "your name" in after.said

    done = await desk.twilio.post("/twilio/dial-status", **CALL, DialCallStatus="completed")
    assert done.verbs == ["Hangup"]


async def test_the_status_callback_closes_the_call_once(gather_desk: Desk) -> None:
    desk = gather_desk
    await desk.twilio.post("/twilio/voice", **CALL)
    desk.llm.script(Text("Happy to help. What's your name?"))
    await desk.twilio.post("/twilio/gather", **CALL, SpeechResult="Hi there.")
    ringing = await desk.twilio.post("/twilio/status", **{**CALL, "CallStatus": "in-progress"})
    assert ringing.status == 204
    assert count_rows(desk.engine, "SELECT count(*) FROM call WHERE ended_at IS NULL") == 1
    for _ in range(2):  # Twilio retries callbacks
        closed = await desk.twilio.post(
            "/twilio/status", **{**CALL, "CallStatus": "completed"}, CallDuration="37"
        )
        assert closed.status == 204
    assert (
        count_rows(
            desk.engine,
            "SELECT count(*) FROM call WHERE status = 'completed' "
            "AND duration_seconds = 37 AND ended_at IS NOT NULL",
        )
        == 1
    )
    assert (
        count_rows(
            desk.engine,
            "SELECT count(*) FROM call WHERE CAST(transcript AS TEXT) LIKE '%Hi there.%'",
        )
        == 1
    )
    assert count_rows(desk.engine, "SELECT count(*) FROM lead") == 1
    assert len(desk.board.sessions) == 0
