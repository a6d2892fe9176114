"""Durable conversation state: what a live call or chat needs to go on in any worker.

Each save names the version it last read or wrote and succeeds only if the stored version is still
that one (compare-and-set), so a worker that lost a conversation to another cannot overwrite the
newer state. `end` sets `ended_at` once: the one caller it returns True to is the one that finishes
the conversation (and records its lead). JSON encoding and decoding run in the worker thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from booking.clock import Clock, SystemClock
from booking.db import in_session
from booking.models import Call, ConversationState

T = TypeVar("T")

_STATE: sa.Table = ConversationState.__table__  # type: ignore[attr-defined]


def call_key(call_id: str) -> str:
    """The store key of a phone call's conversation."""
    return f"call:{call_id}"


def chat_key(chat_id: str) -> str:
    """The store key of a dashboard try-it chat's conversation."""
    return f"web:{chat_id}"


@dataclass(frozen=True)
class StoredConversation:
    key: str
    business_id: str
    call_id: str | None
    channel: str
    version: int
    state: dict[str, Any]
    updated_at: datetime
    ended_at: datetime | None


class StaleConversation(Exception):
    """Another worker saved a newer version of this conversation."""


def _stored(row: ConversationState) -> StoredConversation:
    state = json.loads(row.state)
    return StoredConversation(
        key=row.key,
        business_id=row.business_id,
        call_id=row.call_id,
        channel=row.channel,
        version=row.version,
        state=state if isinstance(state, dict) else {},
        updated_at=row.updated_at,
        ended_at=row.ended_at,
    )


@dataclass
class ConversationStore:
    """Loads, saves (compare-and-set on version), lists idle and ends conversations."""

    engine: Engine
    clock: Clock

    @classmethod
    def over(cls, engine: Engine, clock: Clock | None = None) -> ConversationStore:
        return cls(engine=engine, clock=clock or SystemClock())

    async def _db(self, fn: Callable[[Session], T], *, write: bool = False) -> T:
        return await in_session(self.engine, fn, write=write)

    async def load(self, key: str) -> StoredConversation | None:
        def read(s: Session) -> StoredConversation | None:
            row = s.get(ConversationState, key)
            return _stored(row) if row is not None else None

        return await self._db(read)

    async def version(self, key: str) -> int | None:
        """The stored version of `key` (None: never saved); reads one column."""

        def read(s: Session) -> int | None:
            stmt = select(ConversationState.version).where(ConversationState.key == key)
            return s.exec(stmt).first()

        return await self._db(read)

    async def save(
        self,
        key: str,
        *,
        business_id: str,
        call_id: str | None,
        channel: str,
        state: dict[str, Any],
        version: int,
    ) -> int:
        """Write `state` as version `version + 1` and return it, iff the stored version is still
        `version` (0: never saved, a new row); otherwise raise StaleConversation."""
        if version < 0:
            raise ValueError("version must be >= 0")
        now = self.clock.now()

        def write(s: Session) -> int:
            # Core statements, not the ORM: a call saves at every turn.
            body = json.dumps(state, separators=(",", ":"))
            conn = s.connection()
            if version == 0:
                conn.execute(
                    sa.insert(_STATE).values(
                        key=key,
                        business_id=business_id,
                        call_id=call_id,
                        channel=channel,
                        version=1,
                        state=body,
                        updated_at=now,
                    )
                )
            else:
                result = conn.execute(
                    sa.update(_STATE)
                    .where(_STATE.c.key == key, _STATE.c.version == version)
                    .values(version=version + 1, state=body, updated_at=now)
                )
                if result.rowcount != 1:
                    raise StaleConversation(key)
            return version + 1

        try:
            return await self._db(write, write=True)
        except IntegrityError as exc:
            # Another worker inserted the first version between our read and our insert.
            raise StaleConversation(key) from exc

    async def idle(
        self, *, before: datetime, limit: int = 100, prefix: str = ""
    ) -> list[StoredConversation]:
        """Conversations not ended and last saved before `before`, oldest first; only keys
        starting with `prefix` ("call:" for phone calls), if given."""

        def read(s: Session) -> list[StoredConversation]:
            stmt = (
                select(ConversationState)
                .where(col(ConversationState.ended_at).is_(None))
                .where(ConversationState.updated_at < before)
            )
            if prefix:
                stmt = stmt.where(col(ConversationState.key).startswith(prefix, autoescape=True))
            stmt = stmt.order_by(
                col(ConversationState.updated_at), col(ConversationState.key)
            ).limit(max(0, limit))
            return [_stored(r) for r in s.exec(stmt).all()]

        return await self._db(read)

    async def open_thread(
        self, *, business_id: str, channel: str, from_number: str, since: datetime
    ) -> str | None:
        """The call SID of the caller's conversation on `channel` (a text thread) that is not
        ended and was saved at or after `since`; the latest if several."""

        def read(s: Session) -> str | None:
            stmt = (
                select(Call.call_sid)
                .join(ConversationState, col(ConversationState.call_id) == col(Call.id))
                .where(
                    ConversationState.business_id == business_id,
                    ConversationState.channel == channel,
                    col(ConversationState.ended_at).is_(None),
                    ConversationState.updated_at >= since,
                    Call.from_number == from_number,
                )
                .order_by(col(ConversationState.updated_at).desc())
                .limit(1)
            )
            return s.exec(stmt).first()

        return await self._db(read)

    async def end(self, key: str) -> bool:
        """Mark `key` ended; True only for the one caller that set it."""
        now = self.clock.now()

        def write(s: Session) -> bool:
            table = ConversationState.__table__  # type: ignore[attr-defined]
            result = s.execute(
                sa.update(table)
                .where(table.c.key == key, table.c.ended_at.is_(None))
                .values(ended_at=now)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

        return await self._db(write, write=True)

    async def end_idle(self, *, prefix: str, before: datetime) -> int:
        """End every conversation under `prefix` last saved before `before` (abandoned try-it
        chats: their holds lapse on their own); how many."""
        now = self.clock.now()

        def write(s: Session) -> int:
            table = ConversationState.__table__  # type: ignore[attr-defined]
            result = s.execute(
                sa.update(table)
                .where(
                    table.c.key.startswith(prefix, autoescape=True),
                    table.c.ended_at.is_(None),
                    table.c.updated_at < before,
                )
                .values(ended_at=now)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

        return await self._db(write, write=True)

    async def purge(self, *, ended_before: datetime) -> int:
        """Delete conversations ended before `ended_before` (a call's transcript stays on its
        Call row); how many."""

        def write(s: Session) -> int:
            table = ConversationState.__table__  # type: ignore[attr-defined]
            result = s.execute(
                sa.delete(table).where(
                    table.c.ended_at.is_not(None), table.c.ended_at < ended_before
                )
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

        return await self._db(write, write=True)
