"""What an attacker (or a broken proxy) can send to the Twilio doors: every odd body gets a clear
4xx before anything is written, and no relay frame ends in a traceback."""

from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import count_rows
from tests.fakes.llm_server import Text
from tests.fakes.twilio_voice import SIGNATURE
from tests.telephony.conftest import CALLER, CLINIC, PUBLIC_URL, Desk

SID = "CA" + "3" * 32
CALL = {"CallSid": SID, "From": CALLER, "To": CLINIC, "CallStatus": "ringing"}
ENDPOINTS = [
    "/twilio/voice",
    "/twilio/gather",
    "/twilio/connect-action",
    "/twilio/dial-status",
    "/twilio/status",
]
FORM = {"content-type": "application/x-www-form-urlencoded"}


def rows(desk: Desk) -> int:
    return sum(
        count_rows(desk.engine, f"SELECT count(*) FROM {table}")
        for table in ("call", "lead", "contact")
    )


async def post_raw(
    desk: Desk, path: str, body: bytes, *, signed_params: dict[str, str] | None = None
) -> httpx.Response:
    headers = dict(FORM)
    if signed_params is not None:
        headers[SIGNATURE] = desk.twilio.sign(PUBLIC_URL + path, signed_params)
    return await desk.twilio.http.post(path, content=body, headers=headers)


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_body_that_is_not_utf8_is_a_400(desk: Desk, path: str) -> None:
    body = urlencode(CALL).encode() + b"&SpeechResult=caf\xe9"
    unsigned = await post_raw(desk, path, body)
    signed = await post_raw(desk, path, body, signed_params=CALL)
    escaped = await post_raw(
        desk, path, urlencode(CALL).encode() + b"&From=%FF%FE", signed_params=CALL
    )
    assert (unsigned.status_code, signed.status_code, escaped.status_code) == (400, 400, 400)
    assert "UTF-8" in unsigned.text
    assert rows(desk) == 0


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_body_over_64_kb_is_a_413(desk: Desk, path: str) -> None:
    big = {**CALL, "SpeechResult": "a" * (65 * 1024)}
    declared = await post_raw(desk, path, urlencode(big).encode(), signed_params=big)

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(70):  # no Content-Length: the cap holds on the stream too
            yield b"a" * 1024

    streamed = await desk.twilio.http.post(path, content=chunks(), headers=FORM)
    assert declared.status_code == streamed.status_code == 413
    assert rows(desk) == 0


def test_the_body_caps_are_fastapis_route_limits_not_hand_written_readers() -> None:
    """One body cap, FastAPI's own (`max_body_size`), declared on every Twilio webhook and on
    Graph's notification route; no module keeps a copy of a capped reader."""
    from fastapi.routing import APIRoute

    from calendars import microsoft
    from calendars import web as calendar_web
    from telephony import voice

    def limits(routes: list[object]) -> dict[str, int | None]:
        return {
            route.path: route.max_body_size
            for route in routes
            if isinstance(route, APIRoute) and "POST" in route.methods
        }

    assert limits(voice.router.routes) == dict.fromkeys(ENDPOINTS, 64 * 1024)
    assert limits(calendar_web.router.routes)["/calendars/notify/microsoft"] == (
        microsoft.MAX_NOTIFICATION_BODY
    )
    assert not hasattr(voice, "capped_body") and not hasattr(calendar_web, "capped_body")


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_signed_form_without_a_call_sid_is_a_400(desk: Desk, path: str) -> None:
    params = {"From": CALLER, "To": CLINIC, "CallStatus": "completed"}
    answer = await desk.twilio.post(path, **params)
    assert answer.status == 400, answer.xml
    assert "CallSid" in answer.xml
    assert rows(desk) == 0


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/twilio/voice", {"CallSid": "CA\x00" + "1" * 31}),
        ("/twilio/voice", {"CallSid": "x" * 500}),
        ("/twilio/voice", {"From": "+1202555\x004321"}),
        ("/twilio/voice", {"To": "+1" * 300}),
        ("/twilio/gather", {"Confidence": "very"}),
        ("/twilio/status", {"CallStatus": "completed", "CallDuration": "soon"}),
        ("/twilio/status", {"CallStatus": "completed", "CallDuration": "9" * 30}),
        ("/twilio/status", {"CallStatus": "completed", "CallDuration": "-5"}),
    ],
)
async def test_signed_forms_with_wrong_fields_are_a_400(
    desk: Desk, path: str, fields: dict[str, str]
) -> None:
    answer = await desk.twilio.post(path, **{**CALL, **fields})
    assert answer.status == 400, answer.xml
    assert rows(desk) == 0


async def test_a_bad_signature_is_still_a_403_after_the_body_checks(desk: Desk) -> None:
    answer = await desk.twilio.post("/twilio/voice", signature="bm9wZQ==", **CALL)
    assert answer.status == 403
    assert rows(desk) == 0


async def test_a_good_call_still_works_after_hostile_posts(desk: Desk) -> None:
    await post_raw(desk, "/twilio/voice", b"\xff\xfe", signed_params={})
    answer = await desk.twilio.post("/twilio/voice", **CALL)
    assert answer.status == 200 and answer.verbs == ["Connect"]
    assert count_rows(desk.engine, "SELECT count(*) FROM call") == 1


# ---- the relay websocket ---------------------------------------------------------------------

HOSTILE_FRAMES: list[str | bytes] = [
    b"\x00\x01binary",
    "x" * (200 * 1024),
    "[" * 100_000,
    '{"type":' * 20_000,
    "[1, 2]",
    "42",
    "null",
    '"prompt"',
    '{"type": 7}',
    '{"type": "prompt", "voicePrompt": "hi \\ud800 there"}',
    '{"type": "setup", "callSid": "CA\\udc00"}',
    '{"type": "setup", "callSid": "CA\\u0000' + "1" * 31 + '"}',
    '{"type": "setup", "callSid": "' + SID + '", "from": "+1\\u0000"}',
    '{"type": "prompt", "voicePrompt": ' + json.dumps("a" * 70_000) + "}",
]


async def test_hostile_relay_frames_are_ignored_and_the_call_goes_on(
    desk: Desk, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await desk.twilio.post("/twilio/voice", **CALL)
    assert answer.status == 200
    desk.llm.script(Text("We're open nine to five."))
    with caplog.at_level(logging.INFO):
        async with desk.twilio.relay(
            answer.relay_url, call_sid=SID, from_number=CALLER, to_number=CLINIC, setup=False
        ) as relay:
            for frame in HOSTILE_FRAMES:  # before setup
                await relay.ws.send(frame)
            await relay.send({"type": "setup", "callSid": SID, "from": CALLER, "to": CLINIC})
            for frame in HOSTILE_FRAMES:  # and during the call
                await relay.ws.send(frame)
            reply = await relay.say("When are you open?")
    assert "nine to five" in reply.text
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    # Nothing the frames carried reached the conversation or the database.
    [request] = desk.llm.requests
    user_turns = [m["content"] for m in request["messages"] if m["role"] == "user"]
    assert len(user_turns) == 1 and "When are you open?" in user_turns[0]
    assert "aaaa" not in user_turns[0]
    assert count_rows(desk.engine, "SELECT count(*) FROM call") == 1


# ---- caller IDs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caller_id",
    [
        "anonymous",
        "Anonymous",
        "restricted",
        "unknown",
        "unavailable",
        "blocked",
        "+266696687",
        "+7378742833",
        "+86282452253",
        "+2562533",
        "client:alice",
        "sip:alice@example.com",
        "",
    ],
)
async def test_a_withheld_caller_id_is_a_call_without_a_number(desk: Desk, caller_id: str) -> None:
    answer = await desk.twilio.post("/twilio/voice", **{**CALL, "From": caller_id})
    assert answer.status == 200 and answer.verbs == ["Connect"], answer.xml
    session = desk.board.sessions.get(SID)
    assert session is not None and session.caller is None
    assert count_rows(desk.engine, "SELECT count(*) FROM call") == 1


async def test_a_real_caller_id_is_kept_in_e164(desk: Desk) -> None:
    await desk.twilio.post("/twilio/voice", **CALL)
    session = desk.board.sessions.get(SID)
    assert session is not None and session.caller == CALLER
