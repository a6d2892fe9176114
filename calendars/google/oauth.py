"""`GoogleOAuth`: Google's OAuth 2.0 authorization-code flow with `state` and PKCE, over httpx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urljoin

import httpx

from booking.errors import CalendarUnavailable, InvalidRequest
from calendars.base import NeedsRelink, TokenSet

DEFAULT_SCOPES = (
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/calendar.events",
)


class GoogleOAuth:
    """Google's OAuth 2.0 authorization-code flow for a web server app, with PKCE (S256).

    `start` asks for offline access with `prompt=consent`, so Google returns a refresh token
    even when the person linked before. `transport` is for tests (an httpx transport)."""

    name = "google"

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth",
        token_url: str = "https://oauth2.googleapis.com/token",
        api_base_url: str = "https://www.googleapis.com/",
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._auth_url = auth_url
        self._token_url = token_url
        base = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        self._primary_url = urljoin(base, "calendar/v3/calendars/primary")
        self._scopes = scopes
        self._transport = transport
        self._timeout = timeout
        self._now = now

    def start(
        self, *, redirect_uri: str, state: str, login_hint: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-]: RFC 7636 allows
        params = {
            "client_id": self._client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": " ".join(self._scopes),
            "access_type": "offline",
            "prompt": "consent",
            "include_granted_scopes": "true",
            "state": state,
            "code_challenge": _s256(verifier),
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        flow = {"state": state, "code_verifier": verifier, "redirect_uri": redirect_uri}
        return f"{self._auth_url}?{urlencode(params)}", flow

    async def finish(self, flow: dict[str, Any], params: dict[str, str]) -> TokenSet:
        state = params.get("state") or ""
        if not hmac.compare_digest(state.encode(), str(flow.get("state") or "").encode()):
            raise InvalidRequest("the Google sign-in answer does not belong to this link attempt")
        if params.get("error"):
            error = "".join(c for c in params["error"] if c.isalnum() or c == "_")[:40]
            raise InvalidRequest(f"Google sign-in was not completed ({error})")
        code = params.get("code")
        if not code:
            raise InvalidRequest("the Google sign-in answer has no authorization code")
        answer = await self._post_token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": str(flow["redirect_uri"]),
                "code_verifier": str(flow["code_verifier"]),
            },
            refused=InvalidRequest,
        )
        tokens = self._token_set(answer, refresh_token=None)
        account = await self._account_email(tokens.access_token)
        return TokenSet(
            tokens.access_token, tokens.expires_at, tokens.refresh_token, account, tokens.scope
        )

    async def refresh(self, refresh_token: str) -> TokenSet:
        answer = await self._post_token(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}, refused=NeedsRelink
        )
        # Google usually keeps the refresh token; a new one replaces it when sent.
        return self._token_set(answer, refresh_token=refresh_token)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self._transport, timeout=self._timeout)

    async def _post_token(
        self, form: dict[str, str], *, refused: type[InvalidRequest] | type[NeedsRelink]
    ) -> dict[str, Any]:
        form = {**form, "client_id": self._client_id, "client_secret": self._client_secret}
        try:
            async with self._client() as client:
                response = await client.post(
                    self._token_url, data=form, headers={"Accept": "application/json"}
                )
        except httpx.HTTPError as exc:
            raise CalendarUnavailable(
                f"Google's token endpoint cannot be reached ({type(exc).__name__})"
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status_code >= 500:
            raise CalendarUnavailable(
                f"Google's token endpoint failed (HTTP {response.status_code})"
            )
        if response.status_code != 200:
            error = "".join(c for c in str(answer.get("error") or "") if c.isalnum() or c == "_")
            if error == "invalid_grant":
                raise refused("Google refused the grant (invalid_grant): link the account again")
            said = f"HTTP {response.status_code} {error[:40]}".strip()
            raise CalendarUnavailable(f"Google's token endpoint refused the request ({said})")
        if not isinstance(answer.get("access_token"), str):
            raise CalendarUnavailable("Google's token endpoint answered without an access token")
        return answer

    def _token_set(self, answer: dict[str, Any], *, refresh_token: str | None) -> TokenSet:
        expires_in = int(answer.get("expires_in") or 3600)
        return TokenSet(
            access_token=answer["access_token"],
            expires_at=self._now().astimezone(UTC) + timedelta(seconds=expires_in),
            refresh_token=answer.get("refresh_token") or refresh_token,
            scope=answer.get("scope"),
        )

    async def _account_email(self, access_token: str) -> str | None:
        """The account's e-mail address: its primary calendar's id. Best effort only."""
        try:
            async with self._client() as client:
                response = await client.get(
                    self._primary_url, headers={"Authorization": f"Bearer {access_token}"}
                )
            if response.status_code != 200:
                return None
            found = response.json().get("id")
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return found if isinstance(found, str) and "@" in found else None


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
