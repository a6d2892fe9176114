"""`MicrosoftOAuth`: the authorization-code flow with PKCE against Microsoft (MSAL)."""

from __future__ import annotations

import asyncio
import time as time_module
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msal

from booking.errors import CalendarUnavailable, InvalidRequest
from calendars.base import NeedsRelink, TokenSet

AUTHORITY = "https://login.microsoftonline.com/common"
SCOPES = ("Calendars.ReadWrite", "User.Read")  # MSAL adds openid, profile, offline_access


class MicrosoftOAuth:
    """The authorization-code flow with PKCE against the Microsoft identity platform (MSAL).

    MSAL's `ConfidentialClientApplication` reads the authority's OpenID configuration when it
    is built, and it blocks: it is built on first use (or by `await ready()`), and token calls
    run in worker threads under `timeout`. `http_client` is what MSAL sends requests with (a
    `requests.Session`; tests route it to a local server). `response_mode` is how the code comes
    back: `form_post` (MSAL's recommendation: a POSTed form, so the code stays out of URLs and
    logs) or `query`.
    """

    name = "microsoft"

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        authority: str = AUTHORITY,
        scopes: tuple[str, ...] = SCOPES,
        http_client: Any = None,
        response_mode: str = "form_post",
        timeout: float = 10.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client_id = client_id
        self._response_mode = response_mode
        self._client_secret = client_secret
        self._authority = authority
        self._scopes = list(scopes)
        self._http_client = http_client
        self._timeout = timeout
        self._now = now
        self._app: Any = None

    async def ready(self) -> None:
        """Build the MSAL application (one OpenID configuration fetch) off the event loop."""
        await self._run("set-up", self._build)

    def start(
        self, *, redirect_uri: str, state: str, login_hint: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        flow = self._build().initiate_auth_code_flow(
            self._scopes,
            redirect_uri=redirect_uri,
            state=state,
            login_hint=login_hint,
            prompt="select_account",
            response_mode=self._response_mode,
        )
        return str(flow["auth_uri"]), dict(flow)

    async def finish(self, flow: dict[str, Any], params: dict[str, str]) -> TokenSet:
        if params.get("error"):
            raise InvalidRequest(f"Microsoft sign-in did not complete: {_oauth_code(params)}")
        if not params.get("state") or params.get("state") != flow.get("state"):
            raise InvalidRequest("the Microsoft sign-in answer does not belong to this sign-in")
        app = await self._run("sign-in", self._build)

        def exchange() -> dict[str, Any]:
            try:
                answer: dict[str, Any] = app.acquire_token_by_auth_code_flow(
                    dict(flow), dict(params), scopes=self._scopes
                )
                return answer
            except ValueError:
                # MSAL's own state and nonce checks; its message quotes the values.
                raise InvalidRequest(
                    "the Microsoft sign-in answer does not belong to this sign-in"
                ) from None

        result = await self._run("sign-in", exchange)
        if "error" in result:
            if result["error"] in ("invalid_grant", "invalid_request", "access_denied"):
                raise InvalidRequest(f"Microsoft refused the sign-in: {_oauth_code(result)}")
            raise CalendarUnavailable(f"Microsoft sign-in failed: {_oauth_code(result)}")
        return self._token_set(result)

    async def refresh(self, refresh_token: str) -> TokenSet:
        app = await self._run("token refresh", self._build)
        result = await self._run(
            "token refresh",
            lambda: app.acquire_token_by_refresh_token(refresh_token, scopes=self._scopes),
        )
        if "error" in result:
            if result["error"] in ("invalid_grant", "interaction_required"):
                raise NeedsRelink(
                    f"Microsoft no longer accepts this account's sign-in ({result['error']}); "
                    "link it again"
                )
            raise CalendarUnavailable(f"Microsoft token refresh failed: {_oauth_code(result)}")
        return self._token_set(result, fallback_refresh=refresh_token)

    def _build(self) -> Any:
        if self._app is None:
            self._app = msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=self._client_secret,
                authority=self._authority,
                http_client=self._http_client,
                timeout=self._timeout,
            )
        return self._app

    async def _run(self, action: str, fn: Callable[[], Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await asyncio.to_thread(_guarded, action, fn)
        except TimeoutError:
            raise CalendarUnavailable(
                f"Microsoft sign-in service did not answer the {action} in time"
            ) from None

    def _token_set(
        self, result: dict[str, Any], *, fallback_refresh: str | None = None
    ) -> TokenSet:
        claims = result.get("id_token_claims") or {}
        scope = result.get("scope")
        return TokenSet(
            access_token=str(result["access_token"]),
            expires_at=self._now().astimezone(UTC)
            + timedelta(seconds=int(result.get("expires_in") or 3600)),
            refresh_token=result.get("refresh_token") or fallback_refresh,
            account=claims.get("preferred_username") or claims.get("email"),
            scope=" ".join(scope) if isinstance(scope, list) else scope,
        )


def _guarded(action: str, fn: Callable[[], Any]) -> Any:
    """Run an MSAL call; network failures become CalendarUnavailable without their URLs."""
    started = time_module.monotonic()
    try:
        return fn()
    except (InvalidRequest, CalendarUnavailable):
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        # requests' errors are OSErrors; MSAL raises ValueError/RuntimeError on discovery.
        raise CalendarUnavailable(
            f"Microsoft sign-in service failed during the {action} ({type(exc).__name__}, "
            f"after {time_module.monotonic() - started:.1f} s)"
        ) from None


def _oauth_code(result: dict[str, Any]) -> str:
    code = str(result.get("error") or "unknown")
    description = str(result.get("error_description") or "")
    aadsts = description.split(":", 1)[0] if description.startswith("AADSTS") else ""
    safe = code if code.replace("_", "").isalnum() else "error"
    return f"{safe} {aadsts}".strip()
