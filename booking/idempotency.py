"""Exactly once, decided by the database: insert-if-absent, and idempotency keys.

Two processes handling the same thing (a call whose status callback Twilio retried to both, one
client request sent twice) must not both create a row. A read-then-insert cannot promise that on
PostgreSQL (both read "none"); `insert_once` lets a unique index decide, with
`INSERT ... ON CONFLICT DO NOTHING`: exactly one transaction inserts, the others insert nothing
(waiting, on PostgreSQL, until the winner commits) and then read and lock the winner's row.

`IdempotencyStore` does the same for a client's `Idempotency-Key`, as payment APIs do: the first
request with a key claims it; a retry with the same key and body gets the first answer again, one
with another body is refused (`KeyReused`), one while the first is still running is told so
(`RequestInProgress`). Answers the server could not give (5xx) are not kept, so a retry runs
again. A key lives for `KEEP`.

A claim whose request never answered is taken over after `LEASE` by a retry. The claim's time is
its token: a takeover stamps the key anew, so the request that lost it can no longer `finish` or
`release` it (its answer would overwrite, or its release drop, the new holder's claim). The one
taking over is told when the abandoned request began (`Claim.abandoned_at`): that request may
have done its work and died before keeping the answer, and the caller should look for that work
before doing it again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

from booking import errors
from booking.clock import Clock
from booking.db import in_session
from booking.models import IdempotentRequest

KEEP = timedelta(hours=24)
# A claim whose request never answered (its process died) is abandoned after this; every
# request is time-boxed far below it (calendar reads and writes take seconds at most).
LEASE = timedelta(minutes=5)
IN_PROGRESS, DONE = "in_progress", "done"


class KeyReused(errors.InvalidRequest):
    code = "idempotency_key_reused"


class RequestInProgress(errors.BookingError):
    code = "request_in_progress"
    retryable = True


def insert_once(session: Session, row: SQLModel, *key: str) -> bool:
    """Insert `row` unless a row with the same values in the unique `key` columns exists.

    True if this transaction inserted it. The row itself is not added to the session: read the
    stored one (with `with_for_update()` to update it) either way."""
    table: sa.Table = row.__table__  # type: ignore[attr-defined]
    values: dict[str, Any] = {}
    for column in table.columns:
        value = getattr(row, column.name)
        if value is None and (column.default is not None or column.server_default is not None):
            continue  # the column's default fills it, as the ORM would
        values[column.name] = value
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).values(values)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).values(values)
    else:
        raise NotImplementedError(f"insert_once does not support {dialect}")
    # RETURNING says whether a row went in (psycopg reports no rowcount for ON CONFLICT).
    stmt = stmt.on_conflict_do_nothing(index_elements=list(key)).returning(
        *table.primary_key.columns
    )
    return session.execute(stmt).first() is not None


def fingerprint(request: str, body: dict[str, Any]) -> str:
    """A hash naming one request: what it does (`request`, e.g. its method and path) and its
    parsed body, so key order and spacing do not make a retry look like another request."""
    text = json.dumps([request, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Replay:
    """The answer stored for a key: send it again."""

    status: int
    body: str


@dataclass(frozen=True)
class Claim:
    """This request holds the key: go ahead, then `finish` or `release` it with this claim."""

    business_id: str
    key: str
    token: datetime  # when this request claimed the key (the row's `created_at`)
    abandoned_at: datetime | None = None  # set on a takeover: when the abandoned request began


@dataclass
class IdempotencyStore:
    engine: Engine
    clock: Clock

    async def claim(self, *, business_id: str, key: str, request_hash: str) -> Replay | Claim:
        """Claim `key` for this request (go ahead, then `finish` or `release` the claim), or the
        stored answer of the request that claimed it first."""
        return await in_session(
            self.engine, lambda s: self._claim(s, business_id, key, request_hash), write=True
        )

    def _claim(self, s: Session, business_id: str, key: str, request_hash: str) -> Replay | Claim:
        now = self.clock.now()
        s.execute(
            sa.delete(IdempotentRequest).where(col(IdempotentRequest.created_at) <= now - KEEP)
        )
        for _ in range(3):  # the holder may release the key between our insert and our read
            row = IdempotentRequest(
                business_id=business_id,
                key=key,
                request_hash=request_hash,
                status=IN_PROGRESS,
                created_at=now,
            )
            if insert_once(s, row, "business_id", "key"):
                return Claim(business_id=business_id, key=key, token=now)
            held = s.exec(
                select(IdempotentRequest)
                .where(IdempotentRequest.business_id == business_id, IdempotentRequest.key == key)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).first()
            if held is None:
                continue
            if held.request_hash != request_hash:
                raise KeyReused(
                    "this Idempotency-Key was already used for a different request; "
                    "send a new key for a new request"
                )
            if held.status == DONE:
                assert held.response_status is not None and held.response_body is not None
                return Replay(status=held.response_status, body=held.response_body)
            if held.created_at > now - LEASE:
                raise RequestInProgress(
                    "a request with this Idempotency-Key is still being "
                    "processed; try again in a moment"
                )
            # Abandoned by a process that died: this request takes it, under a new token.
            abandoned_at, held.created_at = held.created_at, now
            s.add(held)
            return Claim(business_id=business_id, key=key, token=now, abandoned_at=abandoned_at)
        raise RequestInProgress("this Idempotency-Key is changing hands; try again in a moment")

    async def finish(self, claim: Claim, *, status: int, body: str) -> bool:
        """Keep the answer to the claimed request, for its retries. False if the claim was lost
        (taken over by a retry after `LEASE`): the answer is not kept."""
        return await in_session(
            self.engine,
            lambda s: self._mine(
                s,
                claim,
                sa.update(IdempotentRequest).values(
                    status=DONE, response_status=status, response_body=body
                ),
            ),
            write=True,
        )

    async def release(self, claim: Claim) -> bool:
        """Give the key back unanswered (the request failed on our side): a retry runs again.
        False if the claim was lost already."""
        return await in_session(
            self.engine, lambda s: self._mine(s, claim, sa.delete(IdempotentRequest)), write=True
        )

    @staticmethod
    def _mine(s: Session, claim: Claim, stmt: Any) -> bool:
        """Run an update or delete on the key's row while it is still this claim's."""
        table = IdempotentRequest.__table__  # type: ignore[attr-defined]
        result = s.execute(
            stmt.where(
                table.c.business_id == claim.business_id,
                table.c.key == claim.key,
                table.c.status == IN_PROGRESS,
                table.c.created_at == claim.token,
            ).returning(table.c.key)
        )
        return result.first() is not None
