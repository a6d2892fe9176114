"""Who runs a background job, when several workers share one database: leases and row claims.

Chosen over a PostgreSQL job library (procrastinate, pgqueuer): those need PostgreSQL, and a
single-node SQLite install must keep its jobs; our jobs are periodic passes over rows we already
keep, so two primitives over plain SQL do it on both, and a dead worker's claim simply lapses.

- **Leases** (table `job_lease`): one worker at a time runs a singleton job (channel renewals,
  call expiry). The holder renews its lease every pass; a worker that dies stops renewing, and
  once `expires_at` has passed the next worker to ask takes the job over.
- **Row claims** (`claim`, `claimed_until` on a job's own rows: SMS texts, calendar connections):
  a worker stamps a batch of due rows with a fresh token and a deadline, works them, and clears
  the claim when done; only the token's holder may record the outcome. On PostgreSQL the
  candidates are read `FOR UPDATE SKIP LOCKED`, so workers take disjoint batches without
  waiting; on SQLite the write transaction (BEGIN IMMEDIATE) serialises claimers, and the
  UPDATE repeats the "unclaimed or lapsed" condition, so a row is never claimed twice either way.

Every function takes the session of a write transaction (`booking.db.in_session(...,
write=True)`): the caller decides what else belongs in that transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from booking.models import JobLease

LEASES = JobLease.__table__  # type: ignore[attr-defined]


def new_token() -> str:
    """A claim token or lease owner: unique per worker and claim."""
    return uuid.uuid4().hex


# ---- singleton leases ---------------------------------------------------------------------


def hold_lease(s: Session, name: str, *, owner: str, now: datetime, ttl: timedelta) -> bool:
    """Take or renew the lease on job `name` for `ttl`; True if `owner` holds it now.

    It is free when nobody ever held it, when `owner` already does (a renewal), or when the
    holder let it lapse (died or stopped renewing)."""
    until = now + ttl
    taken = s.execute(
        sa.update(LEASES)
        .where(
            LEASES.c.name == name,
            sa.or_(LEASES.c.owner == owner, LEASES.c.expires_at < now),
        )
        .values(owner=owner, expires_at=until)
    )
    if rowcount(taken):
        return True
    insert = insert_for(s)(LEASES).values(name=name, owner=owner, expires_at=until)
    # RETURNING, not rowcount: an INSERT ... ON CONFLICT DO NOTHING's rowcount is -1 on psycopg.
    added = insert.on_conflict_do_nothing(index_elements=["name"]).returning(LEASES.c.name)
    return s.execute(added).first() is not None


def release_lease(s: Session, name: str, *, owner: str) -> bool:
    """Give the lease up at once (a clean shutdown), if `owner` holds it."""
    gone = s.execute(sa.delete(LEASES).where(LEASES.c.name == name, LEASES.c.owner == owner))
    return bool(rowcount(gone))


def lease_holder(s: Session, name: str, *, now: datetime) -> str | None:
    """Who holds job `name`'s lease now (None: free or lapsed)."""
    row = s.execute(
        sa.select(LEASES.c.owner).where(LEASES.c.name == name, LEASES.c.expires_at >= now)
    ).first()
    return None if row is None else str(row[0])


# ---- per-row claims -----------------------------------------------------------------------


def claimable(table: sa.Table, now: datetime) -> sa.ColumnElement[bool]:
    """Rows nobody holds: never claimed, released, or claimed by a worker whose claim lapsed."""
    until = table.c.claimed_until
    return sa.or_(until.is_(None), until < now)


def claim_rows(
    s: Session,
    table: sa.Table,
    *,
    where: Sequence[sa.ColumnElement[bool]],
    now: datetime,
    lease: timedelta,
    limit: int,
    order_by: Sequence[Any] = (),
    token: str | None = None,
) -> tuple[str, list[Any]]:
    """Claim up to `limit` rows of `table` matching `where` that nobody holds, for `lease`.

    `table` has a single-column primary key and the columns `claim` and `claimed_until`.
    Returns the claim's token and the primary keys claimed (in `order_by` order)."""
    token = token or new_token()
    (pk,) = table.primary_key.columns
    free = [*where, claimable(table, now)]
    candidates = sa.select(pk).where(*free).order_by(*order_by).limit(limit)
    if s.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = list(s.execute(candidates).scalars())
    if not ids:
        return token, []
    s.execute(
        sa.update(table)
        .where(pk.in_(ids), *free)
        .values(claim=token, claimed_until=now + lease)
        .execution_options(synchronize_session=False)
    )
    held = set(s.execute(sa.select(pk).where(pk.in_(ids), table.c.claim == token)).scalars())
    return token, [i for i in ids if i in held]


def release_rows(s: Session, table: sa.Table, ids: Sequence[Any], *, token: str) -> int:
    """Clear `token`'s claim on `ids` (rows another worker took over meanwhile are left alone)."""
    (pk,) = table.primary_key.columns
    done = s.execute(
        sa.update(table)
        .where(pk.in_(list(ids)), table.c.claim == token)
        .values(claim=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )
    return rowcount(done)


def insert_for(s: Session) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_nothing` (PostgreSQL and SQLite)."""
    return postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert


def rowcount(result: Any) -> int:
    """How many rows an UPDATE, DELETE or INSERT touched."""
    return int(getattr(result, "rowcount", 0) or 0)
