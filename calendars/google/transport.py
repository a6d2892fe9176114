"""Sending requests to Google: the service object, kept connections, errors from answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httplib2
from googleapiclient import discovery
from googleapiclient.errors import HttpError

from booking.errors import CalendarUnavailable
from booking.retry import retryable_status

_RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
# Idle `httplib2.Http`s kept (each holds a connection to Google), and how long: Google's front
# ends close idle connections after some minutes; one kept longer only costs a reconnect.
_IDLE_HTTPS = 8
_IDLE_SECONDS = 60.0


class GoogleApiError(CalendarUnavailable):
    """Google answered with an error status; `reason` is the first `errors[].reason`."""

    def __init__(
        self, message: str, *, status: int, reason: str, retry_after: float | None = None
    ) -> None:
        retryable = retryable_status(status) or (status == 403 and reason in _RATE_LIMIT_REASONS)
        super().__init__(message, retryable=retryable, retry_after=retry_after)
        self.status = status
        self.reason = reason


_services: dict[str, Any] = {}
_services_lock = threading.Lock()


def _service(endpoint: str) -> Any:
    """The calendar v3 service for `endpoint`; building it parses the discovery document, which
    takes a while, so it happens once per process and endpoint (in a worker thread)."""
    with _services_lock:
        service = _services.get(endpoint)
        if service is None:
            # `http` given, so the library looks for no default credentials: we add the bearer
            # token to each request ourselves. `api_endpoint` replaces rootUrl + servicePath.
            service = discovery.build(
                "calendar",
                "v3",
                http=httplib2.Http(),
                static_discovery=True,
                cache_discovery=False,
                client_options={"api_endpoint": endpoint},
            )
            _services[endpoint] = service
        return service


class _Https:
    """`httplib2.Http` objects kept between requests, each lent to one request at a time.

    httplib2 says: one `Http` per thread. Lending rather than one per worker thread keeps their
    number at the most requests ever in flight at once (not the executor's size) and keeps them
    all within reach of `close`. An `Http` comes back after an answer, 4xx ones included; one
    whose request failed otherwise is closed, so a broken connection is not lent again, and so
    is one answered 429 or 5xx: Google balances load by connection, and the retry is better off
    on a new one than stuck to a front end that is failing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[tuple[float, httplib2.Http]] = []
        self._closed = False

    def execute(self, endpoint: str, make: Callable[[Any], Any], token: str, timeout: float) -> Any:
        """Build one request and send it (blocking)."""
        request = make(_service(endpoint))
        request.headers["authorization"] = f"Bearer {token}"
        client, kept = self._lend()
        try:
            return self._send(request, client, timeout)
        except ConnectionError:
            if not kept:
                raise
        # A kept connection that Google closed while it was idle, found out while sending
        # (httplib2 itself sends again when it shows as an empty answer): once more on a new
        # connection, as a new `Http` would have used in the first place.
        return self._send(request, httplib2.Http(), timeout)

    def close(self) -> None:
        """Close every idle `Http`; those lent out are closed when they come back."""
        with self._lock:
            self._closed = True
            idle = [client for _, client in self._idle]
            self._idle.clear()
        for client in idle:
            client.close()

    def _send(self, request: Any, client: httplib2.Http, timeout: float) -> Any:
        _set_timeout(client, max(timeout, 0.05))
        try:
            answer = request.execute(http=client)
        except HttpError as exc:
            if exc.status_code == 429 or exc.status_code >= 500:
                client.close()
            else:
                self._give_back(client)  # an answer, read to the end: the connection is fine
            raise
        except BaseException:
            client.close()
            raise
        self._give_back(client)
        return answer

    def _lend(self) -> tuple[httplib2.Http, bool]:
        """A kept `Http` (True) or a new one (False)."""
        stale: list[httplib2.Http] = []
        with self._lock:
            since, client = self._idle.pop() if self._idle else (0.0, None)
            if client is not None and time.monotonic() - since > _IDLE_SECONDS:
                # The newest is too old, so are the others.
                stale = [client, *(c for _, c in self._idle)]
                self._idle.clear()
                client = None
        for old in stale:
            old.close()
        if client is None:
            return httplib2.Http(), False
        return client, True

    def _give_back(self, client: httplib2.Http) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < _IDLE_HTTPS:
                self._idle.append((time.monotonic(), client))
                return
        client.close()


def _set_timeout(client: httplib2.Http, seconds: float) -> None:
    """The time limit of the next request. httplib2 gives `timeout` to the connections it
    opens; connections it already holds keep the one they were opened with, so they get theirs
    here."""
    client.timeout = seconds
    for connection in client.connections.values():
        connection.timeout = seconds
        if connection.sock is not None:
            connection.sock.settimeout(seconds)


# ---- the provider -------------------------------------------------------------------------------
class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    inner = group.exceptions[0]
    return _first(inner) if isinstance(inner, BaseExceptionGroup) else inner


def _reason(exc: HttpError) -> str:
    details = exc.error_details
    if isinstance(details, list) and details and isinstance(details[0], dict):
        return str(details[0].get("reason") or "")
    return ""


def _api_error(
    where: str, action: str, status: int, reason: str, *, retry_after: float | None = None
) -> GoogleApiError:
    said = f"{status} {reason}".strip()
    if status == 404:
        text = f"{where} does not know that calendar or event ({said})"
    elif status == 403:
        text = f"{where} refused the {action}: no permission ({said})"
    elif status == 429 or status >= 500 or reason in _RATE_LIMIT_REASONS:
        text = f"{where} kept failing the {action} ({said})"
    else:
        text = f"{where} refused the {action} ({said})"
    return GoogleApiError(text, status=status, reason=reason, retry_after=retry_after)
