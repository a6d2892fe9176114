"""A local server speaking the Google Calendar API v3 and Google's OAuth 2.0 endpoints, so the
real `googleapiclient` client and our httpx OAuth code are what the tests exercise.

It follows the public reference (developers.google.com/calendar/api/v3/reference), not our
provider's wishes:

- Every API request needs `Authorization: Bearer <access token>`; an unknown or expired token
  answers 401 `authError`. A calendar the user cannot see answers 404 `notFound`; a write to one
  the user may only read answers 403 `requiredAccessLevel`. `primary` names the user's own one.
- `calendarList.list`, `calendars.get`.
- `freeBusy.query`: 200 with per-calendar `errors` (`notFound` for an unknown calendar,
  `tooManyCalendarsRequested` past 50 items), busy periods merged and clipped to the window,
  transparent, cancelled and declined events left out, tentative ones in, all-day dates in the
  calendar's time zone; a window over 90 days answers 400 `timeRangeTooLong`.
- Events: `insert` (a client-chosen id must be base32hex, 5-1024 characters; an id the calendar
  ever held, deleted ones included, answers 409 `duplicate`), `get` (a deleted event comes back
  with status `cancelled`), `patch`, `update` (setting status `confirmed` restores a deleted
  event), `delete` (404 for an unknown id, 410 `deleted` for one already deleted), `list`
  with `timeMin`/`timeMax` (an event's end after timeMin, its start before timeMax),
  `singleEvents` (recurring events expanded into instances `<id>_<start>`, with overrides and
  cancelled instances), `pageToken`/`maxResults` (pages capped at `max_page_size`),
  `syncToken` (changes since, deletions as `cancelled` items; `nextSyncToken` on the last page
  only; timeMin/timeMax/q/orderBy/iCalUID/updatedMin/extended properties refused with it; an
  unknown or expired token answers 410 `fullSyncRequired`).
- `events.watch` (`type` web_hook; the address must be https unless `allow_http_callbacks`),
  which sends a `sync` message at once and an `exists` message on every later change, with the
  X-Goog-Channel-ID / -Token / -Expiration, X-Goog-Resource-ID / -URI / -State and
  X-Goog-Message-Number headers; `channels.stop` (404 for an unknown channel).
- OAuth: `GET /o/oauth2/v2/auth` stands in for the consent screen (it redirects to the
  redirect URI with `code` and `state`, or `error=access_denied`); `POST /token` exchanges a code
  (checking client credentials, redirect URI and the PKCE S256 verifier) or a refresh token;
  errors are `{"error": "invalid_grant", ...}` as Google sends them.

Faults: `fail_next(kind, times)` makes the next API requests answer `429` (with Retry-After:
`retry_after`, delta-seconds or an HTTP-date, "1" unless set), `500`, `503`, `403`
(rateLimitExceeded), `403-user` (userRateLimitExceeded), `400` (badRequest), `404` (notFound),
`401` (authError whatever the token, as for a grant revoked on Google's side), or `timeout`
(the request is carried out, writes included, and the answer held back `timeout_delay`
seconds).

    fake = FakeGoogleCalendar().start()
    fake.add_user("ann@example.com", time_zone="America/New_York")
    access, refresh = fake.issue_tokens("ann@example.com")
    ... GoogleProvider(api_base_url=fake.api_base_url) ...
    fake.stop()
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import queue
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx
from dateutil.rrule import rrulestr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer

API = "/calendar/v3"
_EVENT_ID = re.compile(r"^[a-v0-9]{5,1024}$")
_MAX_FREEBUSY_CALENDARS = 50
_MAX_FREEBUSY_RANGE = timedelta(days=90)
_NOT_WITH_SYNC_TOKEN = (
    "iCalUID",
    "orderBy",
    "privateExtendedProperty",
    "q",
    "sharedExtendedProperty",
    "timeMin",
    "timeMax",
    "updatedMin",
)
_MAX_INSTANCES = 1000
_CHANNEL_TTL = timedelta(days=7)
_WRITE_ROLES = ("owner", "writer")
FAULT_KINDS = ("timeout", "429", "500", "503", "403", "403-user", "400", "404", "401")


class ApiError(Exception):
    """An error answer in Google's JSON error format."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        domain: str = "global",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.domain, self.headers = domain, headers or {}

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [{"domain": self.domain, "reason": self.reason, "message": self.message}],
            }
        }
        return JSONResponse(body, status_code=self.code, headers=self.headers)


@dataclass
class Calendar:
    id: str
    owner: str
    summary: str
    time_zone: str
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: int = 0  # bumped on every change; sync tokens remember it
    resource_id: str = field(default_factory=lambda: secrets.token_hex(12))

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


@dataclass
class Channel:
    id: str
    calendar_id: str
    address: str
    token: str | None
    resource_id: str
    expiration: datetime
    messages: int = 0


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    fault: str | None


@dataclass
class Delivery:
    channel_id: str
    state: str
    headers: dict[str, str]
    status: int | None  # None when the address could not be reached


@dataclass
class _SyncState:
    calendar_id: str
    seq: int
    single_events: bool
    window: tuple[datetime | None, datetime | None]
    generation: int


class FakeGoogleCalendar:
    def __init__(
        self,
        *,
        client_id: str = "frontdesk-test.apps.googleusercontent.com",
        client_secret: str = "fake-client-secret",
        max_page_size: int = 250,
        timeout_delay: float = 5.0,
        allow_http_callbacks: bool = False,
        access_token_lifetime: int = 3599,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.max_page_size = max_page_size
        self.timeout_delay = timeout_delay
        self.allow_http_callbacks = allow_http_callbacks
        self.access_token_lifetime = access_token_lifetime
        self.requests: list[RecordedRequest] = []
        self.deliveries: list[Delivery] = []
        self.token_requests: list[dict[str, str]] = []
        self.consent_as: str | None = None
        self._lock = threading.RLock()
        self._delivered = threading.Condition(self._lock)
        self._reset_state()
        self._outbox: queue.Queue[tuple[Channel, str, int] | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        app = Starlette(routes=self._routes())
        self._loop_server = LoopbackServer(app, name="fake Google Calendar server")
        self.port = self._loop_server.port

    # ---- lifecycle and addresses ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base_url(self) -> str:
        """What replaces https://www.googleapis.com/ (the discovery document's rootUrl)."""
        return self.base_url + "/"

    @property
    def auth_url(self) -> str:
        return self.base_url + "/o/oauth2/v2/auth"

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"

    def start(self) -> FakeGoogleCalendar:
        self._loop_server.start()
        self._sender = threading.Thread(
            target=self._send_loop, daemon=True, name="fake Google push sender"
        )
        self._sender.start()
        return self

    def stop(self) -> None:
        self._outbox.put(None)
        if self._sender is not None:
            self._sender.join(timeout=5)
        self._loop_server.stop()

    def reset(self) -> None:
        """Forget every user, calendar, token, channel, fault and recorded request."""
        with self._lock:
            self._reset_state()
            self.requests.clear()
            self.deliveries.clear()
            self.token_requests.clear()
            self.consent_as = None
            self.max_page_size = 250

    def _reset_state(self) -> None:
        self._users: dict[str, list[tuple[str, str]]] = {}  # email -> [(calendar id, role)]
        self._calendars: dict[str, Calendar] = {}
        self._access: dict[str, tuple[str, datetime, str]] = {}  # token -> (email, expiry, scope)
        self._refresh: dict[str, tuple[str, str]] = {}  # refresh token -> (email, scope)
        self._revoked: set[str] = set()
        self._codes: dict[str, dict[str, str]] = {}
        self._deny_next_consent = False
        self._channels: dict[str, Channel] = {}
        self._sync: dict[str, _SyncState] = {}
        self._generation: dict[str, int] = {}
        self._pages: dict[str, list[dict[str, Any]]] = {}
        self._page_tails: dict[str, str | None] = {}
        self._faults: list[str] = []
        self.retry_after = "1"  # what a "429" fault's Retry-After says

    # ---- the test's side: accounts, tokens, faults ------------------------------------------

    def add_user(self, email: str, *, time_zone: str = "UTC", summary: str | None = None) -> str:
        """A Google account with its primary calendar (whose id is the e-mail address)."""
        with self._lock:
            self._users.setdefault(email, [])
            self.add_calendar(email, email, summary=summary or email, time_zone=time_zone)
            return email

    def add_calendar(
        self,
        user: str,
        calendar_id: str,
        *,
        summary: str = "Calendar",
        time_zone: str = "UTC",
        access_role: str = "owner",
    ) -> Calendar:
        """A calendar in `user`'s list with the given role (another owner's when not owner)."""
        with self._lock:
            calendar = self._calendars.get(calendar_id)
            if calendar is None:
                calendar = Calendar(
                    id=calendar_id,
                    owner=user if access_role == "owner" else "",
                    summary=summary,
                    time_zone=time_zone,
                )
                self._calendars[calendar_id] = calendar
            self._users.setdefault(user, []).append((calendar_id, access_role))
            return calendar

    def issue_tokens(
        self, email: str, *, scope: str = "https://www.googleapis.com/auth/calendar"
    ) -> tuple[str, str]:
        """An access token and a refresh token for `email`, as a finished consent would give."""
        with self._lock:
            refresh = "1//" + secrets.token_urlsafe(32)
            self._refresh[refresh] = (email, scope)
            return self._new_access(email, scope), refresh

    def expire_access_tokens(self, email: str | None = None) -> None:
        with self._lock:
            for token, (who, _, scope) in list(self._access.items()):
                if email is None or who == email:
                    self._access[token] = (who, datetime.now(UTC) - timedelta(seconds=1), scope)

    def revoke(self, email: str) -> None:
        """The user removed the app's access: refresh and access tokens stop working."""
        with self._lock:
            self._revoked |= {t for t, (who, _) in self._refresh.items() if who == email}
            for token in [t for t, (who, _, _) in self._access.items() if who == email]:
                del self._access[token]

    def deny_next_consent(self) -> None:
        with self._lock:
            self._deny_next_consent = True

    def fail_next(self, kind: str, times: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        with self._lock:
            self._faults.extend([kind] * times)

    def expire_sync_tokens(self, calendar_id: str | None = None) -> None:
        """Every sync token issued so far (for one calendar) answers 410 from now on."""
        with self._lock:
            for state in self._sync.values():
                if calendar_id is None or state.calendar_id == calendar_id:
                    self._generation[state.calendar_id] = state.generation + 1

    def api_requests(
        self, path_suffix: str = "", method: str | None = None
    ) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.endswith(path_suffix) and (method is None or r.method == method)
            ]

    def channels(self) -> list[Channel]:
        with self._lock:
            return list(self._channels.values())

    def wait_for_deliveries(self, count: int, *, timeout: float = 5.0) -> list[Delivery]:
        """Block until `count` push messages were sent (answered or not); those sent so far."""
        with self._delivered:
            if not self._delivered.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise AssertionError(f"expected {count} push messages, got {len(self.deliveries)}")
            return list(self.deliveries)

    # ---- the test's side: events written as another client would -----------------------------

    def put_event(self, calendar_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Store an event as the staff member's phone would (any fields; id made if missing)."""
        with self._lock:
            calendar = self._calendars[calendar_id]
            event = self._new_event(calendar, dict(body), body.get("id") or _new_id())
            self._store(calendar, event)
            return dict(event)

    def delete_event(self, calendar_id: str, event_id: str) -> None:
        with self._lock:
            calendar = self._calendars[calendar_id]
            calendar.events[event_id]["status"] = "cancelled"
            self._touch(calendar, calendar.events[event_id])

    def cancel_instance(self, calendar_id: str, master_id: str, original_start: datetime) -> str:
        """Cancel one instance of a recurring event (an exception, as Google stores it)."""
        with self._lock:
            calendar = self._calendars[calendar_id]
            master = calendar.events[master_id]
            for instance in self._instances(calendar, master, None, None):
                if _parse_when(instance["start"], calendar.tz) == original_start:
                    instance["status"] = "cancelled"
                    self._store(calendar, instance)
                    return str(instance["id"])
        raise KeyError(f"{master_id} has no instance at {original_start}")

    def stored_events(
        self, calendar_id: str, *, include_cancelled: bool = False
    ) -> list[dict[str, Any]]:
        with self._lock:
            return [
                dict(e)
                for e in self._calendars[calendar_id].events.values()
                if include_cancelled or e.get("status") != "cancelled"
            ]

    # ---- routing -------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        api = self._api
        return [
            Route(f"{API}/users/me/calendarList", api(self._calendar_list), methods=["GET"]),
            Route(f"{API}/calendars/{{cid}}", api(self._calendar_get), methods=["GET"]),
            Route(f"{API}/freeBusy", api(self._freebusy), methods=["POST"]),
            Route(f"{API}/calendars/{{cid}}/events/watch", api(self._watch), methods=["POST"]),
            Route(f"{API}/calendars/{{cid}}/events", api(self._events_list), methods=["GET"]),
            Route(f"{API}/calendars/{{cid}}/events", api(self._events_insert), methods=["POST"]),
            Route(
                f"{API}/calendars/{{cid}}/events/{{eid}}",
                api(self._event_one),
                methods=["GET", "PATCH", "PUT", "DELETE"],
            ),
            Route(f"{API}/channels/stop", api(self._channels_stop), methods=["POST"]),
            Route("/o/oauth2/v2/auth", self._authorize, methods=["GET"]),
            Route("/token", self._token, methods=["POST"]),
        ]

    def _api(
        self, handler: Callable[[Request, str], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            with self._lock:
                fault = self._faults.pop(0) if self._faults else None
                self.requests.append(
                    RecordedRequest(
                        request.method, request.url.path, dict(request.query_params), body, fault
                    )
                )
            rejected = _fault_answer(fault, self.retry_after)
            if rejected is not None:
                return rejected.response()
            try:
                user = self._user_for(request.headers.get("authorization", ""))
                response = await handler(request, user)
            except ApiError as exc:
                response = exc.response()
            if fault == "timeout":
                await asyncio.sleep(self.timeout_delay)
            return response

        return endpoint

    def _user_for(self, header: str) -> str:
        scheme, _, token = header.partition(" ")
        with self._lock:
            known = self._access.get(token) if scheme.lower() == "bearer" else None
        if known is None or known[1] <= datetime.now(UTC):
            message = (
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential."
            )
            raise ApiError(
                401,
                "authError",
                message,
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        return known[0]

    def _calendar_for(self, user: str, calendar_id: str, *, write: bool = False) -> Calendar:
        with self._lock:
            if calendar_id == "primary":
                calendar_id = user
            role = dict(self._users.get(user, [])).get(calendar_id)
            calendar = self._calendars.get(calendar_id)
        if calendar is None or role is None:
            raise ApiError(404, "notFound", "Not Found")
        if write and role not in _WRITE_ROLES:
            raise ApiError(
                403, "requiredAccessLevel", "You need to have writer access to this calendar."
            )
        return calendar

    # ---- calendars -----------------------------------------------------------------------------

    async def _calendar_list(self, request: Request, user: str) -> Response:
        if request.query_params.get("pageToken"):
            return JSONResponse(self._next_page(request.query_params))
        with self._lock:
            entries = []
            for calendar_id, role in self._users.get(user, []):
                calendar = self._calendars[calendar_id]
                entry = {
                    "kind": "calendar#calendarListEntry",
                    "etag": '"1"',
                    "id": calendar.id,
                    "summary": calendar.summary,
                    "timeZone": calendar.time_zone,
                    "accessRole": role,
                    "selected": True,
                }
                if calendar.id == user:
                    entry["primary"] = True
                entries.append(entry)
        return JSONResponse(
            self._page(
                request,
                entries,
                {"kind": "calendar#calendarList", "etag": '"1"'},
                sync_token="list-" + _new_id(),
            )
        )

    async def _calendar_get(self, request: Request, user: str) -> Response:
        calendar = self._calendar_for(user, request.path_params["cid"])
        return JSONResponse(
            {
                "kind": "calendar#calendar",
                "etag": '"1"',
                "id": calendar.id,
                "summary": calendar.summary,
                "timeZone": calendar.time_zone,
            }
        )

    # ---- free/busy -----------------------------------------------------------------------------

    async def _freebusy(self, request: Request, user: str) -> Response:
        body = await request.json()
        start = _rfc3339(body.get("timeMin"), "timeMin")
        end = _rfc3339(body.get("timeMax"), "timeMax")
        if end <= start:
            raise ApiError(400, "timeRangeEmpty", "The specified time range is empty.")
        if end - start > _MAX_FREEBUSY_RANGE:
            raise ApiError(400, "timeRangeTooLong", "The requested time range is too long.")
        calendars: dict[str, Any] = {}
        for n, item in enumerate(body.get("items") or []):
            calendar_id = str(item.get("id"))
            if n >= _MAX_FREEBUSY_CALENDARS:
                calendars[calendar_id] = {
                    "errors": [{"domain": "usageLimits", "reason": "tooManyCalendarsRequested"}],
                    "busy": [],
                }
                continue
            try:
                calendar = self._calendar_for(user, calendar_id)
            except ApiError:
                calendars[calendar_id] = {
                    "errors": [{"domain": "global", "reason": "notFound"}],
                    "busy": [],
                }
                continue
            with self._lock:
                busy = self._busy(calendar, user, start, end)
            calendars[calendar_id] = {"busy": [{"start": _z(s), "end": _z(e)} for s, e in busy]}
        return JSONResponse(
            {
                "kind": "calendar#freeBusy",
                "timeMin": _z(start),
                "timeMax": _z(end),
                "calendars": calendars,
            }
        )

    def _busy(
        self, calendar: Calendar, user: str, start: datetime, end: datetime
    ) -> list[tuple[datetime, datetime]]:
        spans = []
        for event in self._expanded(calendar, start, end):
            if event.get("status") == "cancelled" or event.get("transparency") == "transparent":
                continue
            if _declined_by_self(event):
                continue
            s, e = _parse_when(event["start"], calendar.tz), _parse_when(event["end"], calendar.tz)
            if e > start and s < end:
                spans.append((max(s, start), min(e, end)))
        merged: list[tuple[datetime, datetime]] = []
        for s, e in sorted(spans):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        return merged

    # ---- events --------------------------------------------------------------------------------

    async def _events_insert(self, request: Request, user: str) -> Response:
        calendar = self._calendar_for(user, request.path_params["cid"], write=True)
        body = await request.json()
        _require_times(body)
        event_id = body.get("id")
        if event_id is not None and not _EVENT_ID.match(str(event_id)):
            raise ApiError(400, "invalid", "Invalid resource id value.")
        with self._lock:
            if event_id is not None and event_id in calendar.events:
                # Google keeps deleted events, so their ids stay taken too.
                raise ApiError(409, "duplicate", "The requested identifier already exists.")
            event = self._new_event(calendar, body, event_id or _new_id(), creator=user)
            self._store(calendar, event)
            return JSONResponse(self._render(calendar, event))

    async def _event_one(self, request: Request, user: str) -> Response:
        write = request.method != "GET"
        calendar = self._calendar_for(user, request.path_params["cid"], write=write)
        event_id = request.path_params["eid"]
        body = await request.json() if request.method in ("PATCH", "PUT") else None
        with self._lock:
            event = calendar.events.get(event_id) or self._instance(calendar, event_id)
            if event is None:
                raise ApiError(404, "notFound", "Not Found")
            if request.method == "GET":
                return JSONResponse(self._render(calendar, event))
            if request.method == "DELETE":
                if event.get("status") == "cancelled":
                    raise ApiError(410, "deleted", "Resource has been deleted")
                event["status"] = "cancelled"
                self._touch(calendar, event)
                return Response(status_code=204)
            assert body is not None
            if request.method == "PUT":
                _require_times(body)
                kept: dict[str, Any] = {
                    k: event[k]
                    for k in (
                        "id",
                        "created",
                        "iCalUID",
                        "creator",
                        "organizer",
                        "recurringEventId",
                        "originalStartTime",
                    )
                    if k in event
                }
                event.clear()
                event.update({"status": "confirmed", **body, **kept})
            else:
                event.update({k: v for k, v in body.items() if k not in ("id", "iCalUID")})
            _check_range(event)
            event["sequence"] = int(event.get("sequence", 0)) + 1
            self._touch(calendar, event)
            return JSONResponse(self._render(calendar, event))

    async def _events_list(self, request: Request, user: str) -> Response:
        calendar = self._calendar_for(user, request.path_params["cid"])
        query = request.query_params
        if query.get("pageToken"):
            return JSONResponse(self._next_page(query))
        single = query.get("singleEvents") == "true"
        if query.get("syncToken"):
            for name in _NOT_WITH_SYNC_TOKEN:
                if name in query:
                    raise ApiError(400, "invalid", f"{name} cannot be used with a syncToken.")
            with self._lock:
                state = self._sync.get(query["syncToken"])
                if (
                    state is None
                    or state.calendar_id != calendar.id
                    or state.generation != self._generation.get(calendar.id, 0)
                ):
                    raise ApiError(
                        410,
                        "fullSyncRequired",
                        "Sync token is no longer valid, a full sync is required.",
                        domain="calendar",
                    )
                items = self._changes(calendar, state, single)
                window = state.window
        else:
            start = _rfc3339(query["timeMin"], "timeMin") if "timeMin" in query else None
            end = _rfc3339(query["timeMax"], "timeMax") if "timeMax" in query else None
            if start and end and end <= start:
                raise ApiError(400, "timeRangeEmpty", "The specified time range is empty.")
            show_deleted = query.get("showDeleted") == "true"
            with self._lock:
                items = self._window_items(calendar, start, end, single, show_deleted)
            window = (start, end)
        with self._lock:
            sync_token = "s" + _new_id()
            self._sync[sync_token] = _SyncState(
                calendar.id, calendar.seq, single, window, self._generation.get(calendar.id, 0)
            )
            rendered = [self._render(calendar, e) for e in items]
        head = {
            "kind": "calendar#events",
            "etag": f'"{calendar.seq}"',
            "summary": calendar.summary,
            "updated": _z(datetime.now(UTC)),
            "timeZone": calendar.time_zone,
            "accessRole": dict(self._users[user]).get(calendar.id, "reader"),
            "defaultReminders": [],
        }
        return JSONResponse(self._page(request, rendered, head, sync_token=sync_token))

    def _page(
        self,
        request: Request,
        items: list[dict[str, Any]],
        head: dict[str, Any],
        *,
        sync_token: str | None,
    ) -> dict[str, Any]:
        size = min(int(request.query_params.get("maxResults", "250")), self.max_page_size)
        page = {**head, "items": items[:size]}
        if len(items) > size:
            token = "p" + _new_id()
            with self._lock:
                self._pages[token] = [head, *items[size:]]
                self._page_tails[token] = sync_token
            page["nextPageToken"] = token
        elif sync_token is not None:
            page["nextSyncToken"] = sync_token
        return page

    def _next_page(self, query: Any) -> dict[str, Any]:
        with self._lock:
            stored = self._pages.pop(query["pageToken"], None)
            sync_token = self._page_tails.pop(query["pageToken"], None)
        if stored is None:
            raise ApiError(400, "invalid", "Invalid page token value.")
        head, items = stored[0], stored[1:]
        size = min(int(query.get("maxResults", "250")), self.max_page_size)
        page = {**head, "items": items[:size]}
        if len(items) > size:
            token = "p" + _new_id()
            with self._lock:
                self._pages[token] = [head, *items[size:]]
                self._page_tails[token] = sync_token
            page["nextPageToken"] = token
        elif sync_token is not None:
            page["nextSyncToken"] = sync_token
        return page

    def _window_items(
        self,
        calendar: Calendar,
        start: datetime | None,
        end: datetime | None,
        single: bool,
        show_deleted: bool,
    ) -> list[dict[str, Any]]:
        if single:
            candidates = self._expanded(calendar, start, end, keep_cancelled=show_deleted)
        else:
            candidates = [
                e
                for e in calendar.events.values()
                if "recurringEventId" not in e and (show_deleted or e.get("status") != "cancelled")
            ]
        return [e for e in candidates if _overlaps(e, calendar.tz, start, end)]

    def _changes(self, calendar: Calendar, state: _SyncState, single: bool) -> list[dict[str, Any]]:
        changed = [e for e in calendar.events.values() if e["_seq"] > state.seq]
        if not single:
            return changed
        start, end = state.window
        items: dict[str, dict[str, Any]] = {}
        for event in changed:
            if event.get("recurrence"):
                for instance in self._instances(calendar, event, start, end):
                    if event.get("status") == "cancelled":
                        instance["status"] = "cancelled"
                    items[instance["id"]] = instance
            else:
                items[event["id"]] = event
        return list(items.values())

    # ---- recurrence ----------------------------------------------------------------------------

    def _expanded(
        self,
        calendar: Calendar,
        start: datetime | None,
        end: datetime | None,
        *,
        keep_cancelled: bool = False,
    ) -> list[dict[str, Any]]:
        out = []
        for event in calendar.events.values():
            if "recurringEventId" in event:
                continue  # overrides come in through their series
            if event.get("recurrence"):
                if event.get("status") == "cancelled" and not keep_cancelled:
                    continue
                out += [
                    i
                    for i in self._instances(calendar, event, start, end)
                    if keep_cancelled or i.get("status") != "cancelled"
                ]
            elif keep_cancelled or event.get("status") != "cancelled":
                out.append(event)
        return out

    def _instances(
        self,
        calendar: Calendar,
        master: dict[str, Any],
        start: datetime | None,
        end: datetime | None,
    ) -> list[dict[str, Any]]:
        """The series' instances overlapping [start, end), with stored overrides applied."""
        all_day = "date" in master["start"]
        tz = ZoneInfo(master["start"].get("timeZone") or calendar.time_zone)
        first = _parse_when(master["start"], tz)
        length = _parse_when(master["end"], tz) - first
        local_first = first.astimezone(tz).replace(tzinfo=None)
        rules = rrulestr(
            "\n".join(_floating(master["recurrence"], tz)),
            dtstart=local_first,
            forceset=True,
            ignoretz=True,
        )
        out = []
        for n, local in enumerate(rules):
            if n >= _MAX_INSTANCES:
                break
            # Wall-clock recurrence: 10:00 stays 10:00 across a DST change, as Google does.
            s = local.replace(tzinfo=tz)
            if end is not None and s >= end:
                break
            e = s + length
            if all_day:
                day = local.date()
                suffix = day.strftime("%Y%m%d")
                when = (
                    {"date": day.isoformat()},
                    {"date": (day + timedelta(days=length.days)).isoformat()},
                )
            else:
                suffix = s.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
                zone = master["start"].get("timeZone")
                when = (
                    {"dateTime": s.isoformat(), **({"timeZone": zone} if zone else {})},
                    {"dateTime": e.isoformat(), **({"timeZone": zone} if zone else {})},
                )
            instance_id = f"{master['id']}_{suffix}"
            override = calendar.events.get(instance_id)
            if override is not None:
                instance = dict(override)
            else:
                instance = {k: v for k, v in master.items() if k != "recurrence"}
                instance.update(
                    id=instance_id,
                    recurringEventId=master["id"],
                    originalStartTime=dict(when[0]),
                    start=when[0],
                    end=when[1],
                )
            if start is not None and not _overlaps(instance, calendar.tz, start, None):
                continue
            out.append(instance)
        return out

    def _instance(self, calendar: Calendar, instance_id: str) -> dict[str, Any] | None:
        """A recurring event's instance addressed by its id; stored as an override when found,
        since any write to it makes it an exception to the series."""
        master = calendar.events.get(instance_id.rpartition("_")[0])
        if master is None or not master.get("recurrence"):
            return None
        for instance in self._instances(calendar, master, None, None):
            if instance["id"] == instance_id:
                calendar.events[instance_id] = instance
                instance.setdefault("_seq", master.get("_seq", 0))
                return instance
        return None

    # ---- storing and rendering -------------------------------------------------------------------

    def _new_event(
        self, calendar: Calendar, body: dict[str, Any], event_id: str, *, creator: str | None = None
    ) -> dict[str, Any]:
        now = _z(datetime.now(UTC))
        who = {"email": creator or calendar.owner or calendar.id, "self": creator is not None}
        event = {
            "status": "confirmed",
            **body,
            "id": event_id,
            "kind": "calendar#event",
            "created": now,
            "iCalUID": f"{event_id}@google.com",
            "sequence": 0,
            "creator": who,
            "organizer": who,
            "eventType": "default",
        }
        _check_range(event)
        return event

    def _store(self, calendar: Calendar, event: dict[str, Any]) -> None:
        calendar.events[event["id"]] = event
        self._touch(calendar, event)

    def _touch(self, calendar: Calendar, event: dict[str, Any]) -> None:
        calendar.seq += 1
        event["_seq"] = calendar.seq
        event["updated"] = _z(datetime.now(UTC))
        event["etag"] = f'"{calendar.seq}"'
        now = datetime.now(UTC)
        for channel in self._channels.values():
            if channel.calendar_id == calendar.id and channel.expiration > now:
                self._push(channel, "exists")

    def _render(self, calendar: Calendar, event: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in event.items() if not k.startswith("_")}
        if out.get("status") == "cancelled" and "recurringEventId" not in out:
            # Deleted events come back stripped to their identity, as in Google's answers.
            return {k: out[k] for k in ("kind", "etag", "id", "status", "updated") if k in out}
        for side in ("start", "end", "originalStartTime"):
            when = out.get(side)
            if isinstance(when, dict) and "dateTime" in when:
                tz = ZoneInfo(when.get("timeZone") or calendar.time_zone)
                out[side] = {**when, "dateTime": _parse_when(when, tz).astimezone(tz).isoformat()}
        out["htmlLink"] = f"https://www.google.com/calendar/event?eid={out['id']}"
        return out

    def _new_access(self, email: str, scope: str) -> str:
        token = "ya29." + secrets.token_urlsafe(32)
        expiry = datetime.now(UTC) + timedelta(seconds=self.access_token_lifetime)
        self._access[token] = (email, expiry, scope)
        return token

    # ---- push notifications ------------------------------------------------------------------

    async def _watch(self, request: Request, user: str) -> Response:
        calendar = self._calendar_for(user, request.path_params["cid"])
        body = await request.json()
        channel_id, address = str(body.get("id") or ""), str(body.get("address") or "")
        if not channel_id or len(channel_id) > 64:
            raise ApiError(400, "required", "Channel id is required (at most 64 characters).")
        if body.get("type") not in ("web_hook", "webhook"):
            raise ApiError(400, "invalid", "Unknown channel type.")
        scheme = urlsplit(address).scheme
        if scheme != "https" and not (scheme == "http" and self.allow_http_callbacks):
            raise ApiError(
                400,
                "push.webhookUrlNotHttps",
                f"WebHook callback must be HTTPS: {address}",
                domain="push",
            )
        now = datetime.now(UTC)
        expiration = now + _CHANNEL_TTL
        if body.get("expiration"):
            asked = datetime.fromtimestamp(int(body["expiration"]) / 1000, UTC)
            expiration = min(expiration, asked)
        with self._lock:
            if channel_id in self._channels:
                raise ApiError(400, "channelIdNotUnique", "Channel id not unique.", domain="push")
            channel = Channel(
                channel_id,
                calendar.id,
                address,
                body.get("token"),
                calendar.resource_id,
                expiration,
            )
            self._channels[channel_id] = channel
            self._push(channel, "sync")
        answer = {
            "kind": "api#channel",
            "id": channel_id,
            "resourceId": channel.resource_id,
            "resourceUri": self._resource_uri(calendar),
            "expiration": str(int(expiration.timestamp() * 1000)),
        }
        if channel.token is not None:
            answer["token"] = channel.token
        return JSONResponse(answer)

    async def _channels_stop(self, request: Request, user: str) -> Response:
        body = await request.json()
        with self._lock:
            channel = self._channels.get(str(body.get("id")))
            if channel is None or channel.resource_id != body.get("resourceId"):
                raise ApiError(404, "notFound", f"Channel '{body.get('id')}' not found.")
            del self._channels[channel.id]
        return Response(status_code=204)

    def _resource_uri(self, calendar: Calendar) -> str:
        return f"{self.base_url}{API}/calendars/{calendar.id}/events?alt=json"

    def push_headers(self, channel: Channel, state: str, number: int) -> dict[str, str]:
        headers = {
            "X-Goog-Channel-ID": channel.id,
            "X-Goog-Channel-Expiration": format_datetime(channel.expiration, usegmt=True),
            "X-Goog-Resource-ID": channel.resource_id,
            "X-Goog-Resource-URI": self._resource_uri(self._calendars[channel.calendar_id]),
            "X-Goog-Resource-State": state,
            "X-Goog-Message-Number": str(number),
        }
        if channel.token is not None:
            headers["X-Goog-Channel-Token"] = channel.token
        return headers

    def _push(self, channel: Channel, state: str) -> None:
        channel.messages += 1
        self._outbox.put((channel, state, channel.messages))

    def _send_loop(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while (job := self._outbox.get()) is not None:
                channel, state, number = job
                with self._lock:
                    headers = self.push_headers(channel, state, number)
                try:
                    status: int | None = client.post(channel.address, headers=headers).status_code
                except httpx.HTTPError:
                    status = None
                with self._delivered:
                    self.deliveries.append(Delivery(channel.id, state, headers, status))
                    self._delivered.notify_all()

    # ---- OAuth ---------------------------------------------------------------------------------

    async def _authorize(self, request: Request) -> Response:
        """The consent screen, answered at once: redirect back with a code (or a refusal)."""
        q = request.query_params
        if q.get("client_id") != self.client_id:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if q.get("response_type") != "code" or not q.get("redirect_uri") or not q.get("scope"):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if q.get("code_challenge") and q.get("code_challenge_method") != "S256":
            return JSONResponse(
                {"error": "invalid_request", "error_description": "code_challenge_method"},
                status_code=400,
            )
        state = {"state": q["state"]} if "state" in q else {}
        with self._lock:
            if self._deny_next_consent:
                self._deny_next_consent = False
                return RedirectResponse(
                    f"{q['redirect_uri']}?{urlencode({'error': 'access_denied', **state})}", 302
                )
            user = q.get("login_hint") or self.consent_as or next(iter(self._users))
            code = "4/" + secrets.token_urlsafe(24)
            self._codes[code] = {
                "user": user,
                "redirect_uri": q["redirect_uri"],
                "scope": q["scope"],
                "challenge": q.get("code_challenge", ""),
                "offline": str(q.get("access_type") == "offline"),
            }
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, **state})}", 302)

    async def _token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        with self._lock:
            self.token_requests.append(form)
            fault = (
                self._faults.pop(0) if self._faults and self._faults[0] in ("500", "503") else None
            )
        if fault is not None:
            return JSONResponse({"error": "internal_failure"}, status_code=int(fault))
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return _oauth_error(401, "invalid_client", "Unauthorized")
        grant = form.get("grant_type")
        if grant == "authorization_code":
            return self._exchange_code(form)
        if grant == "refresh_token":
            return self._refresh_grant(form)
        return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type: " + str(grant))

    def _exchange_code(self, form: dict[str, str]) -> Response:
        with self._lock:
            code = self._codes.pop(form.get("code", ""), None)  # a code works once
            if code is None:
                return _oauth_error(400, "invalid_grant", "Malformed auth code.")
            if form.get("redirect_uri") != code["redirect_uri"]:
                return _oauth_error(400, "redirect_uri_mismatch", "Bad Request")
            if code["challenge"]:
                verifier = form.get("code_verifier", "")
                if _s256(verifier) != code["challenge"]:
                    return _oauth_error(400, "invalid_grant", "Invalid code verifier.")
            answer = {
                "access_token": self._new_access(code["user"], code["scope"]),
                "expires_in": self.access_token_lifetime,
                "scope": code["scope"],
                "token_type": "Bearer",
            }
            if code["offline"] == "True":
                refresh = "1//" + secrets.token_urlsafe(32)
                self._refresh[refresh] = (code["user"], code["scope"])
                answer["refresh_token"] = refresh
        return JSONResponse(answer)

    def _refresh_grant(self, form: dict[str, str]) -> Response:
        token = form.get("refresh_token", "")
        with self._lock:
            known = self._refresh.get(token)
            if known is None or token in self._revoked:
                return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
            email, scope = known
            access = self._new_access(email, scope)
        return JSONResponse(
            {
                "access_token": access,
                "expires_in": self.access_token_lifetime,
                "scope": scope,
                "token_type": "Bearer",
            }
        )


# ---- wire-format helpers ------------------------------------------------------------------------


def _fault_answer(fault: str | None, retry_after: str = "1") -> ApiError | None:
    if fault == "429":
        return ApiError(
            429,
            "rateLimitExceeded",
            "Rate Limit Exceeded",
            domain="usageLimits",
            headers={"Retry-After": retry_after},
        )
    if fault == "400":
        return ApiError(400, "badRequest", "Bad Request")
    if fault == "404":
        return ApiError(404, "notFound", "Not Found")
    if fault == "401":
        return ApiError(
            401,
            "authError",
            "Request had invalid authentication credentials.",
            headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
        )
    if fault == "403":
        return ApiError(403, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits")
    if fault == "403-user":
        return ApiError(
            403, "userRateLimitExceeded", "User Rate Limit Exceeded", domain="usageLimits"
        )
    if fault == "500":
        return ApiError(500, "backendError", "Backend Error")
    if fault == "503":
        return ApiError(503, "backendError", "The service is currently unavailable.")
    return None


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _new_id() -> str:
    return base64.b32hexencode(secrets.token_bytes(16)).decode().lower().rstrip("=")


def _rfc3339(value: Any, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ApiError(400, "badRequest", f"Bad Request: {name} must be RFC3339 with an offset.")
    return parsed.astimezone(UTC)


def _z(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_when(when: dict[str, Any], tz: ZoneInfo) -> datetime:
    if "date" in when:
        day = date.fromisoformat(when["date"])
        return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    parsed = datetime.fromisoformat(when["dateTime"])
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(when.get("timeZone") or tz.key))
    return parsed.astimezone(UTC)


def _overlaps(
    event: dict[str, Any], tz: ZoneInfo, start: datetime | None, end: datetime | None
) -> bool:
    # timeMin bounds an event's end (exclusive), timeMax its start (exclusive).
    if "start" not in event:
        return True
    s, e = _parse_when(event["start"], tz), _parse_when(event["end"], tz)
    return (start is None or e > start) and (end is None or s < end)


def _require_times(body: dict[str, Any]) -> None:
    for side in ("start", "end"):
        when = body.get(side)
        if not isinstance(when, dict) or not ("date" in when or "dateTime" in when):
            raise ApiError(400, "required", f"Missing {side} time.")
        if "dateTime" in when:
            try:
                parsed = datetime.fromisoformat(when["dateTime"])
            except ValueError:
                raise ApiError(400, "invalid", f"Invalid {side} time.") from None
            if parsed.tzinfo is None and not when.get("timeZone"):
                raise ApiError(400, "timeZoneRequired", "Missing time zone definition.")


def _check_range(event: dict[str, Any]) -> None:
    if "start" in event and "end" in event:
        tz = ZoneInfo("UTC")
        if _parse_when(event["end"], tz) < _parse_when(event["start"], tz):
            raise ApiError(400, "timeRangeEmpty", "The specified time range is empty.")


def _floating(lines: list[str], tz: ZoneInfo) -> list[str]:
    """Recurrence lines with EXDATE/RDATE times given in a TZID (as Google takes them) turned
    into wall times of the series' zone, the form the expansion above compares with."""
    out = []
    for line in lines:
        head, _, values = line.partition(":")
        name, *params = head.split(";")
        zone = next((p[5:] for p in params if p.upper().startswith("TZID=")), None)
        if name.upper() in ("EXDATE", "RDATE") and zone and "T" in values:
            there = ZoneInfo(zone)
            local = [
                datetime.strptime(v, "%Y%m%dT%H%M%S").replace(tzinfo=there).astimezone(tz)
                for v in values.split(",")
            ]
            line = f"{name}:" + ",".join(f"{v:%Y%m%dT%H%M%S}" for v in local)
        out.append(line)
    return out


def _declined_by_self(event: dict[str, Any]) -> bool:
    return any(
        a.get("self") and a.get("responseStatus") == "declined"
        for a in event.get("attendees") or []
    )
