"""Exactly once, decided by the database: insert-if-absent for natural keys.

Two processes handling the same thing (a call whose status callback Twilio retried to both, one
client request sent twice) must not both create a row. A read-then-insert cannot promise that on
PostgreSQL (both read "none"); `insert_once` lets a unique index decide, with
`INSERT ... ON CONFLICT DO NOTHING`: exactly one transaction inserts, the others insert nothing
(waiting, on PostgreSQL, until the winner commits) and then read and lock the winner's row.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel


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
        *table.primary_key.columns)
    return session.execute(stmt).first() is not None
