"""Live calls in this process: one `CallSession` (with its conversation) per Twilio CallSid.

Kept in memory because a conversation holds an open LLM history; a session idle past its time to
live is handed back by `expired()` so its lead can still be recorded. After a restart the
registry is empty and the doors build a fresh session for a call they do not know.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.engine import Conversation, Handoff
from booking.models import Business


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

    @property
    def transcript(self) -> list[dict[str, Any]]:
        """The whole call's transcript, across every conversation it had."""
        return [*self.earlier_transcript, *self.conversation.transcript]

    @property
    def booked(self) -> list[str]:
        """Appointments booked or moved in this call, by any of its conversations."""
        return [a for c in (*self.earlier, self.conversation) for a in c.booked]

    @property
    def cancelled(self) -> list[str]:
        return [a for c in (*self.earlier, self.conversation) for a in c.cancelled]


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
        if existing is not None:
            return existing
        session.last_seen = self._monotonic()
        self._by_sid[session.call_sid] = session
        return session

    def pop(self, call_sid: str) -> CallSession | None:
        return self._by_sid.pop(call_sid, None)

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
