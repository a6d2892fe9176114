"""The Google provider over the fake Google Calendar server, for the shared contract suite.

`harness()` starts a fake server, links one account (`staff@example.com`, whose primary calendar
is in America/New_York) with real OAuth tokens from the fake's token endpoint, and yields a
`Harness` over that calendar. `extra` holds `fake`, `oauth`, `tokens` (a small `Tokens`),
`token_set` (the same grant as a `TokenSet`, for a service that keeps tokens itself) and `email`.
`google_setup(fake)` does the same over an already running fake (the provider tests share one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from calendars.base import Account, Channel, TokenSet
from calendars.google import GoogleOAuth, GoogleProvider
from tests.calendars.harness import Harness
from tests.fakes.google_calendar import FakeGoogleCalendar

EMAIL = "staff@example.com"
ZONE = "America/New_York"


class RefreshingTokens:
    """`calendars.base.Tokens` over `GoogleOAuth.refresh`: what the service's token store does,
    without the database. `refreshes` counts the refreshes."""

    def __init__(self, oauth: GoogleOAuth, *, refresh_token: str, access_token: str | None) -> None:
        self._oauth = oauth
        self._refresh_token = refresh_token
        self._access = access_token
        self.refreshes = 0

    async def access_token(self, *, force_refresh: bool = False) -> str:
        if force_refresh or self._access is None:
            tokens = await self._oauth.refresh(self._refresh_token)
            self._access = tokens.access_token
            self._refresh_token = tokens.refresh_token or self._refresh_token
            self.refreshes += 1
        return self._access

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every token value, for checks that none leaks into a message."""
        return tuple(t for t in (self._access, self._refresh_token) if t)


def google_setup(
    fake: FakeGoogleCalendar,
    *,
    timeout: float = 2.0,
    retries: int = 3,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> Harness:
    """One linked account with one empty calendar (its primary) on a running fake."""
    fake.add_user(EMAIL, time_zone=ZONE, summary="Staff")
    access, refresh = fake.issue_tokens(EMAIL)
    oauth = GoogleOAuth(
        fake.client_id,
        fake.client_secret,
        auth_url=fake.auth_url,
        token_url=fake.token_url,
        api_base_url=fake.api_base_url,
    )
    tokens = RefreshingTokens(oauth, refresh_token=refresh, access_token=access)
    account = Account(
        id="google-test", provider="google", settings={"account": EMAIL}, tokens=tokens, name=EMAIL
    )
    provider = GoogleProvider(
        api_base_url=fake.api_base_url, timeout=timeout, retries=retries, sleep=sleep
    )
    # A timed-out request is answered well after the provider has given up.
    fake.timeout_delay = timeout + 1.0
    fake.allow_http_callbacks = True
    tz = ZoneInfo(ZONE)

    async def add_event(
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        transparent: bool = False,
        all_day: date | None = None,
        cancelled: bool = False,
        tentative: bool = False,
        summary: str = "Busy",
        description: str = "",
    ) -> str:
        if all_day is not None:
            when = (
                {"date": all_day.isoformat()},
                {"date": (all_day + timedelta(days=1)).isoformat()},
            )
        else:
            if start is None or end is None:
                raise ValueError("add_event needs start and end, or all_day")
            when = (
                {"dateTime": start.isoformat(), "timeZone": ZONE},
                {"dateTime": end.isoformat(), "timeZone": ZONE},
            )
        body: dict[str, Any] = {
            "summary": summary,
            "description": description,
            "start": when[0],
            "end": when[1],
        }
        if transparent:
            body["transparency"] = "transparent"
        if tentative:
            body["status"] = "tentative"
        if cancelled:
            body["status"] = "cancelled"
        return str(fake.put_event(EMAIL, body)["id"])

    async def remove_event(event_id: str) -> None:
        fake.delete_event(EMAIL, event_id)

    async def events() -> list[dict[str, Any]]:
        out = []
        for event in fake.stored_events(EMAIL):
            out.append(
                {
                    "id": event["id"],
                    "summary": event.get("summary", ""),
                    "description": event.get("description", ""),
                    "start": _when(event["start"], tz),
                    "end": _when(event["end"], tz),
                }
            )
        return out

    def fail_next(kind: str, times: int = 1) -> None:
        fake.fail_next(kind, times)

    async def notify(
        url: str, channel: Channel | None = None, *, state: str = "exists"
    ) -> httpx.Response:
        """POST a push message to `url` as Google does: for `channel`, or else the newest
        channel the fake holds for that address."""
        if channel is None:
            held = [c for c in fake.channels() if c.address == url]
            if not held:
                raise LookupError(f"no channel sends to {url}")
            target = held[-1]
            target.messages += 1
            headers = fake.push_headers(target, state, target.messages)
        else:
            headers = {
                "X-Goog-Channel-ID": channel.id,
                "X-Goog-Resource-State": state,
                "X-Goog-Resource-ID": channel.resource_id or "",
                "X-Goog-Message-Number": "2",
                "X-Goog-Channel-Token": channel.token,
                "X-Goog-Channel-Expiration": channel.expires_at.astimezone(UTC).strftime(
                    "%a, %d %b %Y %H:%M:%S GMT"
                ),
            }
        async with httpx.AsyncClient(timeout=5.0) as client:
            return await client.post(url, headers=headers)

    return Harness(
        provider=provider,
        account=account,
        calendar_id=EMAIL,
        add_event=add_event,
        remove_event=remove_event,
        events=events,
        fail_next=fail_next,
        notify=notify,
        extra={
            "fake": fake,
            "oauth": oauth,
            "tokens": tokens,
            "email": EMAIL,
            "token_set": TokenSet(
                access_token=access,
                refresh_token=refresh,
                account=EMAIL,
                expires_at=datetime.now(UTC) + timedelta(seconds=fake.access_token_lifetime),
                scope="https://www.googleapis.com/auth/calendar",
            ),
        },
    )


@asynccontextmanager
async def harness(*, provider_timeout: float = 2.0) -> AsyncIterator[Harness]:
    fake = FakeGoogleCalendar(allow_http_callbacks=True)
    await asyncio.to_thread(fake.start)
    try:
        yield google_setup(fake, timeout=provider_timeout)
    finally:
        await asyncio.to_thread(fake.stop)


def _when(value: dict[str, Any], tz: ZoneInfo) -> datetime:
    if "date" in value:
        day = date.fromisoformat(value["date"])
        return datetime(day.year, day.month, day.day, tzinfo=tz)
    parsed = datetime.fromisoformat(value["dateTime"])
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(value.get("timeZone") or tz.key))
    return parsed
