"""Access tokens for one OAuth-linked account, refreshed silently and stored encrypted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from calendars.base import NeedsRelink, OAuthClient, SaveTokens, TokenSet

# Refresh a little before expiry, so a token never dies between our check and the request.
EARLY = timedelta(seconds=120)


class OAuthTokens:
    """`calendars.base.Tokens` over an OAuth client and the stored token set.

    Refreshes when the access token is (nearly) expired or a request was refused with it;
    calls `save` with every new token set (the refresh token may rotate). Concurrent callers
    share one refresh.
    """

    def __init__(
        self,
        client: OAuthClient,
        tokens: TokenSet,
        save: SaveTokens,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._tokens = tokens
        self._save = save
        self._now = now
        self._lock = asyncio.Lock()

    async def access_token(self, *, force_refresh: bool = False) -> str:
        stale = self._tokens.access_token
        async with self._lock:
            current = self._tokens
            fresh = current.expires_at - EARLY > self._now()
            # Someone else refreshed while we waited: use theirs.
            if current.access_token != stale or (fresh and not force_refresh):
                return current.access_token
            if not current.refresh_token:
                raise NeedsRelink(f"the {self._client.name} link has no refresh token")
            new = await self._client.refresh(current.refresh_token)
            if new.refresh_token is None:  # Google keeps the old refresh token valid
                new = TokenSet(
                    access_token=new.access_token,
                    expires_at=new.expires_at,
                    refresh_token=current.refresh_token,
                    account=new.account or current.account,
                    scope=new.scope,
                )
            self._tokens = new
            await self._save(new)
            return new.access_token
