"""Twilio's messaging webhooks.

    POST /twilio/sms          a caller texts the business number: keywords, C / X replies
                              (`telephony.sms_replies`), answered with messaging TwiML
    POST /twilio/sms/status   an outbound text's status callback (queued, sent, delivered,
                              undelivered, failed; ErrorCode), recorded on the text

Checked like the voice webhooks (`telephony.voice.signed`): capped body (413), UTF-8 form (400),
Twilio signature (403, touching nothing), then the form's fields (400).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from twilio.twiml.messaging_response import MessagingResponse

from booking.sms_outbox import SmsStore
from telephony.sms_replies import SmsReplies
from telephony.sms_threads import SmsThreads
from telephony.voice import MAX_BODY, signed
from telephony.wire import IncomingSms, SmsStatusUpdate

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/twilio", tags=["twilio"], include_in_schema=False, max_body_size=MAX_BODY
)


def replies(request: Request) -> SmsReplies:
    """The app's text replies (`app.state.sms_replies`), made on first use when the lifespan
    did not set them (an app built for a test)."""
    state = request.app.state
    found: SmsReplies | None = getattr(state, "sms_replies", None)
    if found is None:
        scheduler = state.scheduler
        found = state.sms_replies = SmsReplies(
            scheduler,
            SmsStore.over(scheduler.engine, scheduler.clock),
            threads=SmsThreads(state.switchboard) if hasattr(state, "switchboard") else None,
        )
    return found


@router.post("/sms")
async def incoming_sms(request: Request) -> Response:
    form = await signed(request, IncomingSms)
    reply = await replies(request).handle(form)
    response = MessagingResponse()
    if reply:
        response.message(reply)
    return Response(content=response.to_xml(), media_type="application/xml")


@router.post("/sms/status")
async def sms_status(request: Request) -> Response:
    form = await signed(request, SmsStatusUpdate)
    recorded = await replies(request).store.delivery(
        sid=form.message_sid, status=form.message_status, error_code=form.error_code
    )
    if not recorded:
        log.info("status %s for text %s not recorded", form.message_status, form.message_sid)
    return Response(status_code=204)
