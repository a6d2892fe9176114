"""A connection's account as its provider uses it (credentials opened, OAuth tokens that save
themselves when refreshed), and the connection's status (ok, error, needs re-linking)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlmodel import Session

from booking import errors
from calendars.base import Account, TokenSet
from calendars.models import CalendarConnection
from calendars.runtime import CalendarRuntime
from calendars.tokens import OAuthTokens

log = logging.getLogger(__name__)

OAUTH_PROVIDERS = ("google", "microsoft")


def token_secret(tokens: TokenSet) -> dict[str, Any]:
    """What is sealed into a connection's `secret` for an OAuth account."""
    return {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_at": tokens.expires_at.isoformat(),
        "account": tokens.account,
    }


class Accounts:
    """Opens connections' credentials into `Account`s (kept while the secret is unchanged)."""

    def __init__(self, runtime: CalendarRuntime) -> None:
        self.runtime = runtime
        self._cache: dict[str, tuple[str, Account]] = {}  # id -> (sealed secret, account)

    async def account(self, conn: CalendarConnection) -> Account:
        cached = self._cache.get(conn.id)
        if cached is not None and cached[0] == conn.secret:
            return cached[1]
        try:
            secret = self.runtime.vault.open(conn.secret)
        except errors.SecretKeyMissing as exc:
            raise errors.CalendarUnavailable(f"{conn.name}: {exc}") from None
        tokens = None
        if conn.provider in OAUTH_PROVIDERS:
            client = self.runtime.oauth.get(conn.provider)
            if client is None:
                raise errors.CalendarUnavailable(
                    f"{conn.provider} is not configured (FRONTDESK_{conn.provider.upper()}_*)"
                )
            stored = TokenSet(
                access_token=secret.get("access_token", ""),
                refresh_token=secret.get("refresh_token"),
                expires_at=datetime.fromisoformat(
                    secret.get("expires_at", "1970-01-01T00:00:00+00:00")
                ),
                account=secret.get("account"),
            )

            async def save(new: TokenSet, conn_id: str = conn.id) -> None:
                await self.save_tokens(conn_id, new)

            tokens = OAuthTokens(client, stored, save)  # token expiry is real time
        account = Account(
            id=conn.id,
            provider=conn.provider,
            settings=dict(conn.settings),
            secret={k: v for k, v in secret.items() if k == "password"},
            tokens=tokens,
            name=conn.name,
        )
        self._cache[conn.id] = (conn.secret, account)
        return account

    def forget(self, connection_id: str) -> None:
        """Drop the opened account (its credentials changed or are gone)."""
        self._cache.pop(connection_id, None)

    async def save_tokens(self, connection_id: str, new: TokenSet) -> None:
        sealed = self.runtime.vault.seal(token_secret(new))

        def write(s: Session) -> None:
            row = s.get(CalendarConnection, connection_id)
            if row is not None and row.status != "disconnected":
                row.secret, row.updated_at = sealed, self.runtime.now()
                s.add(row)

        await self.runtime.db(write, write=True)
        cached = self._cache.get(connection_id)
        if cached is not None:
            self._cache[connection_id] = (sealed, cached[1])

    async def mark(self, connection_id: str, status: str, error: str | None) -> None:
        """Set a connection's status ("ok", "error", "needs_relink") and last error."""

        def write(s: Session) -> None:
            row = s.get(CalendarConnection, connection_id)
            if row is not None and row.status != "disconnected":
                row.status, row.last_error, row.updated_at = status, error, self.runtime.now()
                s.add(row)

        await self.runtime.db(write, write=True)
        if status == "needs_relink":
            log.warning("calendar connection %s needs re-linking: %s", connection_id, error)
