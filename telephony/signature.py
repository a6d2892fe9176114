"""Checking that a request really comes from Twilio (`X-Twilio-Signature`).

Twilio signs the URL it called plus, for form POSTs, the sorted form parameters. We rebuild that
URL from `public_base_url` in settings, never from `request.url`: behind a proxy or a TLS
terminator the app sees `http://10.0.0.5:8000/...` while Twilio signed `https://desk.example/...`.

ConversationRelay signs the websocket handshake the same way, over the `wss://` URL we gave it in
the TwiML and no parameters; the check runs before `websocket.accept()`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

log = logging.getLogger(__name__)
HEADER = "X-Twilio-Signature"


class SignatureInvalid(Exception):
    """The request's signature is missing or wrong; answer 403 and touch nothing."""


class TwilioSignature:
    """Validates webhook and websocket requests against the public base URL."""

    def __init__(self, *, auth_token: str | None, public_base_url: str) -> None:
        self._validator = RequestValidator(auth_token) if auth_token else None
        self.base = public_base_url.rstrip("/")

    def url(self, path: str, query: str = "") -> str:
        """The public https URL of `path` (with its query string), as Twilio calls it."""
        return f"{self.base}{path}" + (f"?{query}" if query else "")

    def ws_url(self, path: str, query: str = "") -> str:
        """The public websocket URL of `path`: `wss://` behind https, `ws://` behind http."""
        parts = urlsplit(self.url(path, query))
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, *parts[1:]))

    def check_form(
        self, *, path: str, query: str, form: Mapping[str, str], signature: str | None
    ) -> None:
        self._check(self.url(path, query), form, signature)

    def check_websocket(self, *, path: str, query: str, signature: str | None) -> None:
        self._check(self.ws_url(path, query), {}, signature)

    def _check(self, url: str, params: Mapping[str, str], signature: str | None) -> None:
        if self._validator is None:
            # Without the auth token nothing can be verified, so nothing is let in.
            log.error("FRONTDESK_TWILIO_AUTH_TOKEN is not set; refusing Twilio request to %s", url)
            raise SignatureInvalid("no auth token configured")
        if not signature:
            log.warning("Twilio request without %s to %s", HEADER, url)
            raise SignatureInvalid("missing signature")
        if not self._validator.validate(url, dict(params), signature):
            log.warning("Twilio request with a bad signature to %s", url)
            raise SignatureInvalid("bad signature")
