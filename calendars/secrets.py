"""Encryption at rest for calendar credentials (refresh tokens, CalDAV passwords, OAuth flows).

Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) with the key from FRONTDESK_SECRET_KEY.
The variable may hold several comma-separated keys: the first encrypts, all decrypt, so a key
can be rotated without losing linked calendars.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from booking.errors import SecretKeyMissing

__all__ = ["SecretKeyMissing", "Vault", "new_key"]


def new_key() -> str:
    return Fernet.generate_key().decode()


class Vault:
    """Encrypts and decrypts small JSON documents."""

    def __init__(self, keys: str | None) -> None:
        self._fernet: MultiFernet | None = None
        self._raw = keys or ""
        if keys:
            try:
                self._fernet = MultiFernet(
                    [Fernet(k.strip()) for k in keys.split(",") if k.strip()]
                )
            except ValueError:
                raise SecretKeyMissing(
                    "FRONTDESK_SECRET_KEY is not a valid key: make one with `frontdesk keygen`"
                ) from None

    @property
    def ready(self) -> bool:
        return self._fernet is not None

    def _f(self) -> MultiFernet:
        if self._fernet is None:
            raise SecretKeyMissing(
                "set FRONTDESK_SECRET_KEY to link calendars (make one with `frontdesk keygen`)"
            )
        return self._fernet

    def seal(self, data: dict[str, Any]) -> str:
        return self._f().encrypt(json.dumps(data, separators=(",", ":")).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        if not token:
            return {}
        try:
            result = json.loads(self._f().decrypt(token.encode()))
        except InvalidToken:
            raise SecretKeyMissing(
                "stored calendar credentials cannot be decrypted with FRONTDESK_SECRET_KEY "
                "(was the key changed without keeping the old one?)"
            ) from None
        assert isinstance(result, dict)
        return result

    def sign(self, text: str) -> str:
        """A short, URL-safe HMAC of `text` under the first key (for unguessable feed URLs)."""
        key = self._keys()[0]
        digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
        return base64.b32encode(digest[:20]).decode().lower()

    def verify(self, text: str, signature: str) -> bool:
        """True when `signature` is `sign(text)` under any configured key (rotation-safe)."""
        for key in self._keys():
            digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
            if hmac.compare_digest(base64.b32encode(digest[:20]).decode().lower(), signature):
                return True
        return False

    def _keys(self) -> list[bytes]:
        self._f()  # raises SecretKeyMissing without a key
        return [base64.urlsafe_b64decode(k.strip()) for k in self._raw.split(",") if k.strip()]
