"""Text to book: a caller's texts that are not keywords or replies to a reminder are a
conversation with the same engine as the phone (channel "sms"): same tools, same scoping to the
caller's own number and appointments, the same rules against claiming a booking that was not
made, answers written for a text (the engine adds a note to the prompt; fillers are dropped).

A thread is a call in all but sound: the switchboard opens it as a Call (its SID is the first
text's MessageSid), saves its state after every text, so the next text may reach any worker, and
ends it as one lead, either when the agent hands off or after the idle time of a call, by the
idle-call job. The dashboard shows it with the calls. A text that arrives while the caller's
previous one is still being answered on another worker is answered, but only one of the two
saves wins (the store's compare-and-set): the thread goes on from the winner's.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from datetime import timedelta

from agent.engine import Filler, Handoff, Speech
from booking.models import Business
from telephony.switchboard import CALL_IDLE_SECONDS, Switchboard
from telephony.wire import CallStatusUpdate

log = logging.getLogger(__name__)

CHANNEL = "sms"
TROUBLE = "Sorry, something went wrong on our side. Please call us at {number}."


class SmsThreads:
    def __init__(self, board: Switchboard, *, idle: timedelta | None = None) -> None:
        self.board = board
        self.idle = idle or timedelta(seconds=CALL_IDLE_SECONDS)

    async def reply(
        self, *, business: Business, phone: str, sender: str, body: str, message_sid: str
    ) -> str:
        """The agent's answer to one text, saved before it is returned."""
        board = self.board
        store = board.store
        since = board.scheduler.clock.now() - self.idle
        sid = None
        if store is not None:
            sid = await store.open_thread(
                business_id=business.id, channel=CHANNEL, from_number=phone, since=since
            )
        if sid is None:
            session = await board.open(
                business=business,
                call_sid=message_sid,
                from_number=phone,
                to_number=sender,
                channel=CHANNEL,
                greet=False,
            )
        else:
            session = await board.resume(
                call_sid=sid, from_number=phone, to_number=sender, channel=CHANNEL
            )
        written: list[str] = []
        handoff: Handoff | None = None
        async with session.turn_lock:
            try:
                async with aclosing(session.conversation.reply(body)) as events:
                    async for event in events:
                        if isinstance(event, Speech):
                            written.append(event.text)
                        elif isinstance(event, Handoff):
                            handoff = event
                            break
                        elif not isinstance(event, Filler):
                            log.warning("unexpected engine event %r", event)
            except Exception:
                log.exception("the text conversation failed on %s", session.call_sid)
                await board.save(session)
                return TROUBLE.format(number=sender)
            finally:
                board.turn_done(session)
            await board.save(session)
        text = " ".join(written).strip()
        if handoff is not None:
            if handoff.transfer_to:
                text = f"{text} Please call {handoff.transfer_to} to talk to someone.".strip()
            await board.close(
                CallStatusUpdate(CallSid=session.call_sid, CallStatus="completed")  # type: ignore[call-arg]
            )
        return text or f"{business.name}: sorry, I didn't get that. You can also call {sender}."
