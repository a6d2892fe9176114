"""Each worker's in-memory copy of what searches and bookings load about a business: its row,
services, staff and linked calendars (the catalogue), checked against the database before use.

Loading 200 staff rows through the ORM costs a search about 15 ms on PostgreSQL, for data that
changes a few times a day. The database keeps a revision number per business that triggers bump
on any change to those tables (migration 0011), so a worker reuses what it loaded while the
revision is the one it loaded at: one indexed read in the same transaction as the search's own,
and a change made by any worker, or by hand in SQL, is seen by the very next operation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel import Session

CATALOG_REVISION = sa.table(
    "catalog_revision",
    sa.column("business_id", sa.String),
    sa.column("revision", sa.BigInteger),
)

V = TypeVar("V")


def fingerprint(s: Session) -> tuple[int, int]:
    """Every business's catalogue at once: it changes whenever any revision is bumped or a
    business is added (revisions only grow, and a deleted business keeps its row)."""
    t = CATALOG_REVISION.c
    count, total = (
        s.connection()
        .execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(t.revision), 0)))
        .one()
    )
    return int(count), int(total)


def revision(s: Session, business_id: str) -> int | None:
    """The business's catalogue revision; None when it has none (no such business)."""
    t = CATALOG_REVISION.c
    value = (
        s.connection()
        .execute(sa.select(t.revision).where(t.business_id == business_id))
        .scalar_one_or_none()
    )
    return None if value is None else int(value)


class Catalog:
    """Values derived from a business's catalogue, each kept with the revision it was loaded at.

    Read the revision before loading: in a transaction that sees a newer catalogue than the
    revision read, the value is stored under the older revision and only reloaded once more; the
    other order could keep an old catalogue under a new revision for good. Values are shared by
    every operation in the process, so they must be treated as read-only.
    """

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, Hashable], tuple[int, Any]] = OrderedDict()
        self._across: dict[Hashable, tuple[tuple[int, int], Any]] = {}
        self._lock = threading.Lock()

    def get(self, s: Session, business_id: str, key: Hashable, load: Callable[[], V]) -> V:
        """The value for (`business_id`, `key`), from memory when the catalogue is unchanged,
        else from `load()` (whose errors propagate, and are not kept)."""
        current = revision(s, business_id)
        if current is None:
            return load()
        slot = (business_id, key)
        with self._lock:
            entry = self._entries.get(slot)
            if entry is not None and entry[0] == current:
                self._entries.move_to_end(slot)
                value: V = entry[1]
                return value
        value = load()
        with self._lock:
            self._entries[slot] = (current, value)
            self._entries.move_to_end(slot)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def across(self, s: Session, key: Hashable, load: Callable[[], V]) -> V:
        """Like `get`, for a value derived from every business (e.g. who answers a number),
        kept while no business's catalogue has changed."""
        current = fingerprint(s)
        with self._lock:
            entry = self._across.get(key)
            if entry is not None and entry[0] == current:
                value: V = entry[1]
                return value
        value = load()
        with self._lock:
            self._across[key] = (current, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)
