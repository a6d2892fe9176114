"""CalDAV clients: the account's link, the kept `DAVClient`s, error translation, Retry-After."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

from caldav.davclient import DAVClient
from caldav.lib import error as caldav_error
from caldav.lib.http_sync import HTTPBasicAuth
from caldav.lib.http_sync import requests as http_library

from booking.clock import Clock
from booking.errors import CalendarUnavailable
from booking.retry import parse_retry_after, retryable_status
from calendars.base import Account, NeedsRelink
from calendars.ics import redact

_T = TypeVar("_T")
# Idle clients kept: a few per account (the live re-check reads an account's calendars at once),
# for a bounded number of accounts, and not for long: servers drop idle connections after a
# while (Apache after 5 s, nginx after 75 s), and a client kept past that only costs a reconnect.
_IDLE_PER_ACCOUNT = 4
_IDLE_ACCOUNTS = 256
_IDLE_SECONDS = 60.0


@dataclass(frozen=True)
class _Link:
    url: str  # without userinfo
    username: str
    password: str

    @property
    def name(self) -> str:
        return f"CalDAV calendar {redact(self.url)}"


def _parse_account(account: Account) -> _Link:
    url = account.settings.get("url")
    username = account.settings.get("username")
    password = account.secret.get("password")
    if not isinstance(url, str) or not url:
        raise CalendarUnavailable(f"CalDAV account {account.name} has no URL")
    if not isinstance(username, str) or not isinstance(password, str):
        raise CalendarUnavailable(f"CalDAV calendar {redact(url)} has no username and password")
    return _Link(url=_clean_url(url), username=username, password=password)


def _clean_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CalendarUnavailable(f"CalDAV calendar {redact(url)} is not an http(s) URL")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    # Credentials travel only in the username and password fields, never in the URL.
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def _calendar_url(link: _Link, calendar_id: str) -> str:
    return _clean_url(urljoin(link.url, calendar_id))


# ---- the blocking side, run in worker threads ---------------------------------------------

_Key = tuple[str, str, str]


def _key(link: _Link) -> _Key:
    # The password is part of the key (a changed one must not reuse the old login), hashed so
    # the pool's keys are no second copy of it.
    return link.url, link.username, hashlib.sha256(link.password.encode()).hexdigest()


class _Clients:
    """Authenticated `DAVClient`s kept between operations, a few per account.

    A client is lent to one operation at a time and given back only when the operation went
    well; a failed one is closed, so a broken connection is never lent again. Lending rather
    than one client per worker thread or one per account behind a lock, because: the library
    does not promise that a client (its niquests session, its digest state) is thread-safe;
    the live re-check reads an account's calendars at the same moment, which a lock would
    queue; and clients per thread would multiply the connections by the executor's size (up to
    32 per account) and leave them out of reach of `close`.

    The library sends nothing with its first request and answers the server's 401 by building
    the login the server asked for. Accounts whose server asked for Basic are remembered, and
    new clients for them send it up front (`auth_type="basic"`); a server that then wants
    something else gets one more try with a client that negotiates again.
    """

    def __init__(self, *, timeout: float, clock: Clock) -> None:
        self._timeout = max(1, round(timeout))
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: OrderedDict[_Key, list[tuple[float, DAVClient]]] = OrderedDict()
        self._basic: set[_Key] = set()
        self._closed = False

    def run(self, link: _Link, fn: Callable[..., _T], *args: Any, account_step: bool) -> _T:
        """`fn(client, link, *args)` with a kept or new client, the library's errors turned
        into ours. `account_step`: the operation reaches the account itself (its principal and
        calendar home: check, list), where a 403 refuses the whole account."""
        key = _key(link)
        _last_answer.retry_after = None
        with _translated(link, self._clock, account_step=account_step):
            client, reused = self._lend(key, link)
            try:
                result = _using(client, link, fn, args)
            except Exception as exc:
                if not (reused or client.auth_type == "basic") or not self._retry_helps(key, exc):
                    raise
                client = self._open(key, link)
                result = _using(client, link, fn, args)
            self._give_back(key, client)
            return result

    def close(self) -> None:
        """Close every idle client; clients lent out are closed when they come back."""
        with self._lock:
            self._closed = True
            idle = [client for kept in self._idle.values() for _, client in kept]
            self._idle.clear()
        for client in idle:
            client.close()

    def _lend(self, key: _Key, link: _Link) -> tuple[DAVClient, bool]:
        """A kept client (True) or a new one (False)."""
        stale: list[DAVClient] = []
        client = None
        with self._lock:
            kept = self._idle.get(key) or []
            if kept:
                since, client = kept.pop()
                if time.monotonic() - since > _IDLE_SECONDS:
                    # The newest is too old, so are the others.
                    stale = [client] + [c for _, c in kept]
                    kept.clear()
                    client = None
            if not kept:
                self._idle.pop(key, None)
        for old in stale:
            old.close()
        if client is not None:
            return client, True
        return self._open(key, link), False

    def _open(self, key: _Key, link: _Link) -> DAVClient:
        client = DAVClient(
            url=link.url,
            username=link.username,
            password=link.password,
            auth_type="basic" if key in self._basic else None,
            timeout=self._timeout,
            enable_rfc6764=False,
        )
        client.session.hooks["response"].append(_record_answer)
        return client

    def _give_back(self, key: _Key, client: DAVClient) -> None:
        evicted: list[DAVClient] = []
        with self._lock:
            if isinstance(client.auth, HTTPBasicAuth):
                if len(self._basic) > 10_000:
                    self._basic.clear()
                self._basic.add(key)
            kept = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if self._closed or len(kept) >= _IDLE_PER_ACCOUNT:
                evicted.append(client)
            else:
                kept.append((time.monotonic(), client))
            while len(self._idle) > _IDLE_ACCOUNTS:
                _, dropped = self._idle.popitem(last=False)
                evicted += [c for _, c in dropped]
            if not kept:
                self._idle.pop(key, None)
        for old in evicted:
            old.close()

    def _retry_helps(self, key: _Key, exc: Exception) -> bool:
        """Whether a failure of a kept client, or of Basic sent up front, may be the client's
        and not the server's: a kept connection the server had closed (a fresh client never
        meets that), or a 401 to Basic from a server that has changed its login scheme. Every
        operation is safe to repeat (a write by UID with If-None-Match, a delete that counts
        404 as done)."""
        if isinstance(exc, caldav_error.AuthorizationError):
            if getattr(exc, "status", None) != 401:
                return False
            with self._lock:
                self._basic.discard(key)
            return True
        dropped = isinstance(exc, http_library.exceptions.ConnectionError)
        return dropped and not isinstance(exc, http_library.exceptions.Timeout)


def _using(client: DAVClient, link: _Link, fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
    """`fn(client, link, *args)`, closing the client when it fails."""
    try:
        return fn(client, link, *args)
    except BaseException:
        client.close()
        raise


class _LastAnswer(threading.local):
    """The `Retry-After` of the last answer this worker thread received (an operation runs in
    one thread), for the error that answer becomes: the library's errors do not keep it."""

    retry_after: str | None = None


_last_answer = _LastAnswer()


def _record_answer(response: Any, **kwargs: Any) -> None:
    """A niquests response hook: remember the answer's `Retry-After`."""
    value = response.headers.get("Retry-After")
    _last_answer.retry_after = value if isinstance(value, str) else None


class _Refused(Exception):
    """An answer that refused a request with `status` (raised by the operations in worker
    threads): `_translated` turns it into `CalendarUnavailable` carrying that answer's
    `Retry-After`, which only an answer can ask for."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@contextmanager
def _translated(link: _Link, clock: Clock, *, account_step: bool) -> Iterator[None]:
    """The library's errors turned into ours, named by host only: a refused password (401)
    needs re-linking, and so does a refused access (403) to the account itself
    (`account_step`: its principal, its calendar home); a 403 to one calendar or event (a
    missing privilege there, a precondition such as a UID conflict) is final for that request
    only. A 5xx, 429 or 408 may be retried, after the answer's `Retry-After`; any other refusal
    (404, 400, ...) is final; a connection that failed or timed out may be retried (with no
    `Retry-After`: no answer asked for one)."""
    try:
        yield
    except _Refused as exc:
        retryable = retryable_status(exc.status)
        raise CalendarUnavailable(
            exc.message,
            retryable=retryable,
            retry_after=_retry_after(clock) if retryable else None,
        ) from None
    except caldav_error.AuthorizationError as exc:
        if getattr(exc, "status", None) == 403:
            if account_step:
                raise NeedsRelink(
                    f"{link.name} refused access to the account: link it again with an "
                    "account that may use it"
                ) from None
            raise CalendarUnavailable(
                f"CalDAV calendar {_refused_where(link, exc)} refused access ({_status(exc)})",
                retryable=False,
            ) from None
        raise NeedsRelink(
            f"CalDAV server {redact(link.url)} refused the username or password"
        ) from None
    except caldav_error.NotFoundError:
        raise CalendarUnavailable(
            f"{link.name} was not found on the server", retryable=False
        ) from None
    except caldav_error.DAVError as exc:
        status = exc.status
        retryable = status is None or retryable_status(status)
        raise CalendarUnavailable(
            f"{link.name} answered with an error ({_status(exc)})",
            retryable=retryable,
            retry_after=_retry_after(clock) if retryable and status is not None else None,
        ) from None
    except OSError as exc:
        # niquests' connection and timeout errors are OSErrors; their text holds the URL.
        raise CalendarUnavailable(
            f"CalDAV server {redact(link.url)} cannot be reached ({type(exc).__name__})"
        ) from None


def _refused_where(link: _Link, exc: caldav_error.DAVError) -> str:
    """The refused resource by its last path segment and host (no userinfo, no query), else
    the account's host."""
    url = getattr(exc, "url", None)
    try:
        clean = _clean_url(str(url)) if url else link.url
    except CalendarUnavailable:
        clean = link.url
    segment = urlsplit(clean).path.rstrip("/").rsplit("/", 1)[-1]
    return f"{segment!r} at {redact(clean)}" if segment else redact(clean)


def _retry_after(clock: Clock) -> float | None:
    return parse_retry_after(_last_answer.retry_after, clock.now())


def _status(exc: caldav_error.DAVError) -> str:
    reason = str(getattr(exc, "reason", "") or "")
    return reason.split(" at ", 1)[0][:80] or type(exc).__name__
