"""Which calendars of a linked account count: read for busy time, and the one bookings go to.

`default_choice` is what a new connection starts with: the calendars the provider marks as the
user's own busy ones are read (a family, holiday or someone else's shared calendar is not), and
bookings are written to the provider's primary/default calendar. `resolve` turns what a person
typed (calendar names, case-insensitive, or provider ids) into ids, so the CLI and the dashboard
can let them choose by name.
"""

from __future__ import annotations

from collections.abc import Sequence

from booking.errors import InvalidRequest
from calendars.base import CalendarInfo


def default_choice(calendars: Sequence[CalendarInfo]) -> tuple[list[str], str | None]:
    """(ids read by default, id written by default).

    Read: the calendars with `counts_busy`; when none has it, the primary one; when there is
    no primary either, all of them. Write: the primary calendar when it is writable, else the
    first writable calendar that is read, else None (nothing is written back)."""
    read = [c for c in calendars if c.counts_busy]
    if not read:
        read = [c for c in calendars if c.primary] or list(calendars)
    primary = next((c for c in calendars if c.primary and c.writable), None)
    if primary is not None:
        return [c.id for c in read], primary.id
    first_writable = next((c for c in read if c.writable), None)
    return [c.id for c in read], first_writable.id if first_writable else None


def resolve(calendars: Sequence[CalendarInfo], wanted: Sequence[str]) -> list[str]:
    """Calendar names (case-insensitive) or ids -> ids, in the order given, without repeats.

    An exact id wins over a name. Blank entries are skipped. Raises `InvalidRequest` naming
    every unknown or ambiguous entry and listing the calendars the account has."""
    by_id = {c.id: c for c in calendars}
    ids: list[str] = []
    unknown: list[str] = []
    ambiguous: list[str] = []
    for raw in wanted:
        entry = raw.strip()
        if not entry:
            continue
        if entry in by_id:
            found = entry
        else:
            named = [c for c in calendars if c.name.strip().casefold() == entry.casefold()]
            if not named:
                unknown.append(entry)
                continue
            if len(named) > 1:
                ambiguous.append(f"{entry!r} ({' / '.join(c.id for c in named)})")
                continue
            found = named[0].id
        if found not in ids:
            ids.append(found)
    if unknown or ambiguous:
        problems = []
        if unknown:
            problems.append("no calendar " + ", ".join(repr(u) for u in unknown))
        if ambiguous:
            problems.append(
                "more than one calendar is called " + ", ".join(ambiguous) + "; give the id instead"
            )
        raise InvalidRequest(f"{'; '.join(problems)} in this account. {describe(calendars)}")
    return ids


def describe(calendars: Sequence[CalendarInfo]) -> str:
    """The account's calendars by name, for messages: "It has: Work, Family (read-only)"."""
    if not calendars:
        return "It has no calendars."
    names = []
    for c in calendars:
        notes = [n for n, on in (("primary", c.primary), ("read-only", not c.writable)) if on]
        names.append(f"{c.name} ({', '.join(notes)})" if notes else c.name)
    return "It has: " + ", ".join(names) + "."


def name_of(calendars: Sequence[CalendarInfo], calendar_id: str) -> str:
    """The name a person knows a calendar by (its id when the account no longer has it)."""
    return next((c.name for c in calendars if c.id == calendar_id), calendar_id)


def summary(calendars: Sequence[CalendarInfo], read: Sequence[str], write: str | None) -> str:
    """What a connection reads and writes, by name: "Reads: Work, Family · Writes: Work"."""
    reads = ", ".join(name_of(calendars, i) for i in read) or "nothing"
    writes = name_of(calendars, write) if write else "nothing"
    return f"Reads: {reads} · Writes: {writes}"
