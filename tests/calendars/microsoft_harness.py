"""The Microsoft provider over the fake Graph server, for the shared contract suite.

The account is linked the way a person links one: `MicrosoftOAuth.start`, the fake identity
platform's authorize page, `finish`; tokens refresh through `MicrosoftOAuth.refresh`, all
through the real `msal` library. MSAL talks to `https://login.microsoftonline.com` (the real
default authority); a `requests.Session` adapter routes that host to the fake server.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import requests
from requests.adapters import HTTPAdapter

from calendars.base import Account, Channel, TokenSet
from calendars.microsoft import MicrosoftOAuth, MicrosoftProvider
from tests.calendars.harness import Harness
from tests.fakes.graph import AUTHORITY_HOST, FakeGraph

REDIRECT_URI = "https://frontdesk.example/calendars/callback/microsoft"


class _RouteToFake(HTTPAdapter):
    """Sends requests for the Microsoft identity platform to the fake server instead."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self._base_url = base_url

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        request.url = str(request.url).replace(AUTHORITY_HOST, self._base_url, 1)
        return super().send(request, **kwargs)


def msal_http_client(graph: FakeGraph) -> requests.Session:
    session = requests.Session()
    session.mount(AUTHORITY_HOST + "/", _RouteToFake(graph.base_url))
    return session


def oauth_client(graph: FakeGraph, session: requests.Session, **kwargs: Any) -> MicrosoftOAuth:
    return MicrosoftOAuth(graph.client_id, graph.client_secret, http_client=session, **kwargs)


async def browser_visit(graph: FakeGraph, auth_url: str) -> dict[str, str]:
    """What the person's browser brings back to the callback: its query parameters."""
    local = auth_url.replace(AUTHORITY_HOST, graph.base_url, 1)
    async with httpx.AsyncClient() as client:
        answer = await client.get(local)
    if answer.status_code == 302:
        return dict(parse_qsl(urlsplit(answer.headers["location"]).query))
    assert answer.status_code == 200, answer.text
    # response_mode=form_post: the browser POSTs the form's fields to the redirect URI.
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', answer.text)
    }


async def link_account(graph: FakeGraph, oauth: MicrosoftOAuth) -> TokenSet:
    await oauth.ready()
    url, flow = oauth.start(redirect_uri=REDIRECT_URI, state="state-123")
    return await oauth.finish(flow, await browser_visit(graph, url))


@dataclass
class OAuthTokens:
    """`calendars.base.Tokens` over MicrosoftOAuth, as the service keeps them."""

    oauth: MicrosoftOAuth
    tokens: TokenSet
    refreshes: int = 0

    async def access_token(self, *, force_refresh: bool = False) -> str:
        soon = datetime.now(UTC) + timedelta(minutes=1)
        if force_refresh or self.tokens.expires_at <= soon:
            assert self.tokens.refresh_token is not None
            self.tokens = await self.oauth.refresh(self.tokens.refresh_token)
            self.refreshes += 1
        return self.tokens.access_token


@dataclass
class RecordingSleep:
    """Stands in for asyncio.sleep between retries: records the waits, yields once."""

    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)  # a real await point, no wall-clock wait


@asynccontextmanager
async def harness(**provider_kwargs: Any) -> AsyncIterator[Harness]:
    graph = FakeGraph(timeout_delay=1.0).start()
    sleep = RecordingSleep()
    kwargs: dict[str, Any] = {"timeout": 0.5, "time_limit": 5.0, "sleep": sleep}
    provider = MicrosoftProvider(graph_base_url=graph.graph_url, **{**kwargs, **provider_kwargs})
    session: requests.Session | None = None
    try:
        session = msal_http_client(graph)
        oauth = MicrosoftOAuth(graph.client_id, graph.client_secret, http_client=session)
        token_set = await link_account(graph, oauth)
        tokens = OAuthTokens(oauth, token_set)
        account = Account(
            id="acct-ms-1",
            provider="microsoft",
            settings={"account": token_set.account},
            tokens=tokens,
            name=str(token_set.account),
        )
        calendar_id = graph.add_calendar("Work")

        async def add_event(
            *,
            start: datetime | None = None,
            end: datetime | None = None,
            summary: str = "Busy",
            transparent: bool = False,
            all_day: date | None = None,
            cancelled: bool = False,
            tentative: bool = False,
            time_zone: str = "UTC",
        ) -> str:
            show_as = "free" if transparent else "tentative" if tentative else "busy"
            return graph.add_event(
                calendar_id,
                start=start,
                end=end,
                subject=summary,
                all_day=all_day,
                show_as=show_as,
                cancelled=cancelled,
                time_zone=time_zone,
            )

        async def remove_event(event_id: str) -> None:
            graph.remove_event(event_id)

        async def events() -> list[dict[str, Any]]:
            return [
                {
                    "id": e.id,
                    "summary": e.subject,
                    "start": e.start,
                    "end": e.end,
                    "description": e.body,
                    "all_day": e.is_all_day,
                }
                for e in graph.stored_events(calendar_id)
            ]

        async def notify(
            url: str,
            *,
            channel: Channel,
            event_id: str | None = None,
            change_type: str = "updated",
            token: str | None = None,
        ) -> httpx.Response:
            """POST a change notification for `channel` to `url`, as Graph would;
            `token` overrides the clientState (a forged notification)."""
            resource = f"Users/{graph.user_id}/Events/{event_id or 'AAMkUnknown'}"
            body = {
                "value": [
                    {
                        "subscriptionId": channel.id,
                        "subscriptionExpirationDateTime": channel.expires_at.isoformat(),
                        "changeType": change_type,
                        "resource": resource,
                        "resourceData": {
                            "@odata.type": "#Microsoft.Graph.Event",
                            "@odata.id": resource,
                            "id": event_id,
                        },
                        "clientState": channel.token if token is None else token,
                        "tenantId": "9188040d-6c67-4c5b-b112-36a304b66dad",
                    }
                ]
            }
            async with httpx.AsyncClient() as client:
                return await client.post(url, json=body)

        yield Harness(
            provider=provider,
            account=account,
            calendar_id=calendar_id,
            add_event=add_event,
            remove_event=remove_event,
            events=events,
            fail_next=graph.fail_next,
            notify=notify,
            extra={
                "graph": graph,
                "oauth": oauth,
                "tokens": tokens,
                "sleep": sleep,
                "token_set": token_set,
            },
        )
    finally:
        await provider.aclose()
        if session is not None:
            session.close()
        graph.stop()
