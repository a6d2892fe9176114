"""Graph's HTTP answers as errors (refusals, codes, time-outs, resync); the provider sends."""

from __future__ import annotations

import httpx

from calendars.base import Account

_RESYNC_CODES = {"syncstatenotfound", "resyncrequired", "syncstateinvalid"}


class _TimedOut(Exception):
    """A request got no answer in time; not sent again now (it may still land)."""


class _Unreachable(Exception):
    """A request could not be sent or its answer not read (the httpx error's name)."""


class _Resync(Exception):
    """The delta state token is no longer valid."""


def _who(account: Account) -> str:
    return f"Microsoft calendar {account.name}"


def _refusal(account: Account, status: int, code: str) -> str:
    what = {
        401: "refused the account's sign-in",
        403: "does not allow this (no permission)",
        404: "does not have that calendar or event",
        429: "is throttling requests",
    }.get(status, "answered with an error")
    return f"{_who(account)} {what}: HTTP {status}" + (f" {code}" if code else "")


def _error_code(response: httpx.Response) -> str:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    # Only a short identifier is passed on; a message could quote anything.
    text = str(code)
    return text if text.isascii() and text.replace("_", "").isalnum() and len(text) <= 64 else ""
