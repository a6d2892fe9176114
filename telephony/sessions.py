"""The calls this process is serving: one `CallSession` (with its conversation) per Twilio CallSid.

A session is this worker's working copy of a call. With a conversation store (the app sets one)
the switchboard saves it as each turn completes, and any worker that gets a call's next turn,
reconnected websocket or status callback rebuilds the session from the store when it holds no
copy or an older version than the stored one (`version`). A session idle past its time to live is
handed back by `expired()`; without a store that is where its lead is recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.engine import Conversation, Handoff
from booking.models import Business

STATE_VERSION = 1


@dataclass
class CallSession:
    call_sid: str
    call_id: str
    business: Business
    caller: str | None
    channel: str
    conversation: Conversation
    greeting: str = ""
    handoff: Handoff | None = None
    silences: int = 0
    confirmed: set[str] = field(default_factory=set)  # change keys already texted
    turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: set[asyncio.Task[None]] = field(default_factory=set)  # after-turn work
    # Conversations this call already ended (a transfer nobody answered), and what they said.
    earlier: list[Conversation] = field(default_factory=list)
    earlier_transcript: list[dict[str, Any]] = field(default_factory=list)
    last_seen: float = 0.0
    relay_connects: int = 0  # relay websockets this call has opened, across workers
    # Durable state: the stored version this copy last read or wrote (0: never stored), whether
    # it has changes not yet written, the write in flight, and whether another worker has since
    # saved a newer version (this copy must not be used or saved again).
    version: int = 0
    dirty: bool = False
    saving: asyncio.Task[None] | None = None
    stale: bool = False
    saved: dict[str, Any] | None = None  # the state as last read from or written to the store

    @property
    def transcript(self) -> list[dict[str, Any]]:
        """The whole call's transcript, across every conversation it had."""
        return [*self.earlier_transcript, *self.conversation.transcript]

    @property
    def booked(self) -> list[str]:
        """Appointments booked or moved in this call, by any of its conversations."""
        return _unique(a for c in (*self.earlier, self.conversation) for a in c.booked)

    @property
    def cancelled(self) -> list[str]:
        return _unique(a for c in (*self.earlier, self.conversation) for a in c.cancelled)

    def to_state(self) -> dict[str, Any]:
        """What another worker needs to go on with this call (JSON-able, taken on the loop)."""
        handoff = self.handoff
        return {
            "v": STATE_VERSION,
            "call_sid": self.call_sid,
            "caller": self.caller,
            "greeting": self.greeting,
            "handoff": None
            if handoff is None
            else {"reason": handoff.reason, "transfer_to": handoff.transfer_to},
            "silences": self.silences,
            "confirmed": sorted(self.confirmed),
            "earlier_transcript": [dict(e) for e in self.earlier_transcript],
            "relay_connects": self.relay_connects,
            "conversation": self.conversation.snapshot(),
        }


def _unique(ids: Any) -> list[str]:
    return list(dict.fromkeys(ids))


def handoff_of(state: dict[str, Any]) -> Handoff | None:
    raw = state.get("handoff")
    if not isinstance(raw, dict) or not isinstance(raw.get("reason"), str):
        return None
    transfer_to = raw.get("transfer_to")
    return Handoff(
        reason=raw["reason"], transfer_to=transfer_to if isinstance(transfer_to, str) else None
    )


class CallSessions:
    """CallSid → session, with an idle expiry."""

    def __init__(
        self, *, ttl: float = 2 * 3600, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._monotonic = monotonic
        self._by_sid: dict[str, CallSession] = {}

    def __len__(self) -> int:
        return len(self._by_sid)

    def get(self, call_sid: str) -> CallSession | None:
        session = self._by_sid.get(call_sid)
        if session is not None:
            session.last_seen = self._monotonic()
        return session

    def add(self, session: CallSession) -> CallSession:
        """Register `session`, or return the one already registered for its CallSid."""
        existing = self.get(session.call_sid)
        if existing is not None and not existing.stale:
            return existing
        return self.replace(session)

    def replace(self, session: CallSession) -> CallSession:
        """Register `session` in place of any copy of its call this process held."""
        session.last_seen = self._monotonic()
        self._by_sid[session.call_sid] = session
        return session

    def discard(self, session: CallSession) -> None:
        """Forget `session` (if it is still the registered copy of its call)."""
        if self._by_sid.get(session.call_sid) is session:
            del self._by_sid[session.call_sid]

    def pop(self, call_sid: str) -> CallSession | None:
        return self._by_sid.pop(call_sid, None)

    def live(self) -> list[CallSession]:
        return list(self._by_sid.values())

    def expired(self) -> list[CallSession]:
        """Remove and return the sessions idle for longer than the time to live."""
        cutoff = self._monotonic() - self._ttl
        stale = [s for s in self._by_sid.values() if s.last_seen < cutoff]
        for session in stale:
            del self._by_sid[session.call_sid]
        return stale

    def drain(self) -> list[CallSession]:
        sessions = list(self._by_sid.values())
        self._by_sid.clear()
        return sessions
