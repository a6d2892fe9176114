"""What each provider's test module hands the shared contract suite and the service tests.

Every provider (Google, Microsoft, CalDAV) has a module `tests/calendars/<name>_harness.py` with
`harness()`: an async context manager yielding a `Harness` over a real server on loopback (the
fake Google / Graph servers, or Radicale), holding one account with one empty calendar.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from calendars.base import Account, CalendarProvider


@dataclass
class Harness:
    provider: CalendarProvider
    account: Account
    calendar_id: str
    # Create an event directly in the server, as another client (the staff member's phone)
    # would: returns the server's event id. Keywords: `transparent` (free time), `all_day`
    # (a date: start/end ignored, the whole local day in the server's sense), `cancelled`,
    # `tentative`, `summary`.
    add_event: Callable[..., Awaitable[str]]
    # Delete an event directly in the server.
    remove_event: Callable[[str], Awaitable[None]]
    # Every event now stored in the calendar: dicts with at least "id", "summary", "start",
    # "end" (aware datetimes) and "description".
    events: Callable[[], Awaitable[list[dict[str, Any]]]]
    # Make the server misbehave on the next matching request(s): kind is "timeout" (answer
    # after the client's time-out, but still apply a write), "429" (with Retry-After: 1),
    # "500"; `times` how many requests it affects. None where the server cannot (Radicale).
    fail_next: Callable[[str, int], None] | None = None
    # Deliver a change notification for the calendar to `url` as the provider would, after an
    # event changed (None for providers without notifications).
    notify: Callable[..., Awaitable[Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
