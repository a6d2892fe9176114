"""A local server speaking Microsoft Graph v1.0 (calendar, subscriptions) and the Microsoft
identity platform's v2.0 endpoints, so the real `httpx` calls and the real `msal` library are
what the tests exercise.

It follows the public reference, not our client's wishes:

- `GET /v1.0/me`, `GET /v1.0/me/calendars`;
- `GET /v1.0/me/calendars/{id}/calendarView?startDateTime&endDateTime`: single instances,
  occurrences and exceptions of recurring series overlapping the window, server-driven paging
  with `@odata.nextLink` (10 a page unless `$top` says otherwise), `Prefer: outlook.timezone`
  (UTC when absent). All-day events come back midnight to midnight whatever zone is asked for
  ("by design", as Microsoft answers), and match the window by the instant they are stored at:
  midnight in the zone they were created in;
- `GET .../calendarView/delta`: a round of pages ending in `@odata.deltaLink`; later rounds
  carry only what changed, deletions and events that left the window as
  `{"id", "@removed": {"reason": "deleted"}}`; occurrences of a series carry only `id`, `type`,
  `seriesMasterId`, `start` and `end` (as Graph sends them, whatever the reference implies);
  an expired state token answers `410 Gone` with code `SyncStateNotFound`;
- `POST /v1.0/me/calendars/{id}/events` with `transactionId`: a second create with the same
  transactionId creates nothing and answers with the event the first one made;
  `GET/PATCH/DELETE /v1.0/me/events/{id}` (404 `ErrorItemNotFound` when gone);
- `POST /v1.0/subscriptions` validates `notificationUrl` (and `lifecycleNotificationUrl`) with
  the handshake: a POST carrying `?validationToken=...` that must be answered within 10 s with
  200, `text/plain` and the token itself, else 400; event subscriptions last at most 4,230
  minutes; `clientState` at most 128 characters. `PATCH` renews, `DELETE` ends. Each change to
  a subscribed calendar is POSTed to its `notificationUrl` as a changeNotificationCollection;
  `send_lifecycle` sends a lifecycle notification (`reauthorizationRequired`, `missed`,
  `subscriptionRemoved`) on demand;
- `/{tenant}/v2.0/.well-known/openid-configuration`, `/{tenant}/oauth2/v2.0/authorize` (it
  signs the fake user in at once and sends `code` and `state` back: a redirect, or with
  `response_mode=form_post` a self-submitting form) and
  `/{tenant}/oauth2/v2.0/token` (authorization_code with the PKCE `code_verifier` checked
  against the S256 challenge, refresh_token; `invalid_grant` for a used code or a revoked
  refresh token; `invalid_client` for a wrong secret). The id_token is an unsigned JWT: MSAL
  decodes its claims without checking a signature;
- Graph requests need a live bearer token (401 `InvalidAuthenticationToken` otherwise); errors
  are `{"error": {"code", "message"}}`.

One deliberate relaxation: Graph requires https notification URLs; `allow_http_callbacks`
(on by default here) lets the tests receive on plain http loopback.

Faults: `fail_next(kind, times)` makes the next Graph requests answer 429 (with
`Retry-After: <retry_after>`, delta-seconds or an HTTP-date, "1" unless set), 500, 503, 400
(`BadRequest`), 404 (`ErrorItemNotFound`), 401 (`InvalidAuthenticationToken` whatever the
token), or apply the request and then answer only after `timeout_delay` seconds ("timeout"),
past the client's time-out. `remove_occurrence` deletes one occurrence of a series, as a person
deleting it in Outlook does (Graph leaves it out of every view from then on).

    graph = FakeGraph().start()
    ... MicrosoftProvider(graph_base_url=graph.graph_url) ...
    graph.stop()
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer

AUTHORITY_HOST = "https://login.microsoftonline.com"
TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"  # the personal-accounts tenant
EVENT_SUBSCRIPTION_MAX = timedelta(minutes=4230)
VALIDATION_LIMIT = 10.0
_WINDOWS_ZONES = {
    "Eastern Standard Time": "America/New_York",
    "Central Standard Time": "America/Chicago",
    "Pacific Standard Time": "America/Los_Angeles",
    "GMT Standard Time": "Europe/London",
    "W. Europe Standard Time": "Europe/Berlin",
}
_PAGE = 10  # Graph's default page size for calendarView
_SERIES_LIMIT = 400  # occurrences expanded per series, enough for any test


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class StoredEvent:
    id: str
    calendar_id: str
    subject: str
    body: str
    start: datetime  # aware; for all-day events local midnight in `time_zone`
    end: datetime
    time_zone: str  # the zone it was created in (originalStartTimeZone)
    is_all_day: bool = False
    show_as: str = "busy"
    is_cancelled: bool = False
    response: str = "organizer"
    transaction_id: str | None = None
    location: str = ""
    recurrence: dict[str, Any] | None = None
    removed_occurrences: tuple[str, ...] = ()  # occurrence ids deleted from the series
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    modified: datetime = field(default_factory=lambda: datetime.now(UTC))
    version: int = 1


@dataclass
class Instance:
    """One row of a calendar view: a single event, or one occurrence of a series."""

    id: str
    event: StoredEvent
    start: datetime
    end: datetime
    kind: str  # singleInstance, occurrence

    @property
    def change_key(self) -> str:
        return f"{self.event.id}.{self.event.version}.{self.start.isoformat()}"


@dataclass
class Subscription:
    id: str
    resource: str
    calendar_id: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires_at: datetime


@dataclass
class Delivery:
    """One POST the fake made to a notification URL, and how it was answered."""

    url: str
    body: dict[str, Any]
    status: int | None


class FakeGraph:
    def __init__(
        self,
        *,
        client_id: str = "11111111-2222-3333-4444-555555555555",
        client_secret: str = "fake-client-secret-value",
        user_mail: str = "lee@outlook.com",
        timeout_delay: float = 1.5,
        allow_http_callbacks: bool = True,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.user_id = str(uuid.uuid4())
        self.user_mail = user_mail
        # The sign-in name (userPrincipalName, the token's preferred_username); by default the
        # mailbox address, as for most accounts. A work account's is often another address.
        self.sign_in_name = user_mail
        self.timeout_delay = timeout_delay
        self.allow_http_callbacks = allow_http_callbacks
        self.page_size_cap: int | None = None
        self.requests: list[tuple[str, str]] = []  # (method, path) of Graph API requests
        self.deliveries: list[Delivery] = []
        self.calendars: dict[str, dict[str, Any]] = {}
        self.events: dict[str, StoredEvent] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self._lock = threading.RLock()
        self._delivered = threading.Condition(self._lock)
        self._faults: list[str] = []
        self.retry_after = "1"  # what a "429" fault's Retry-After says
        self._access: dict[str, datetime] = {}
        self._refresh: set[str] = set()
        self._codes: dict[str, dict[str, str]] = {}
        self._delta_states: dict[str, dict[str, Any]] = {}
        self._pages: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.add_calendar("Calendar", primary=True)
        routes = [
            Route("/_fake/ping", self._ping),
            Route("/v1.0/me", self._me),
            Route("/v1.0/me/calendars", self._list_calendars),
            Route("/v1.0/me/calendars/{cid}/calendarView", self._calendar_view),
            Route("/v1.0/me/calendars/{cid}/calendarView/delta", self._delta),
            Route("/v1.0/me/calendars/{cid}/events", self._create_event, methods=["POST"]),
            Route("/v1.0/me/events/{eid}", self._event, methods=["GET", "PATCH", "DELETE"]),
            Route("/v1.0/subscriptions", self._create_subscription, methods=["POST"]),
            Route(
                "/v1.0/subscriptions/{sid}", self._subscription, methods=["GET", "PATCH", "DELETE"]
            ),
            Route("/{tenant}/v2.0/.well-known/openid-configuration", self._openid),
            Route("/{tenant}/oauth2/v2.0/authorize", self._authorize),
            Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
        ]
        self._server = LoopbackServer(Starlette(routes=routes), name="fake Microsoft Graph")
        self.port = self._server.port

    # ---- running ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def graph_url(self) -> str:
        return f"{self.base_url}/v1.0"

    def start(self) -> FakeGraph:
        self._server.start()
        httpx.get(f"{self.base_url}/_fake/ping", timeout=5).raise_for_status()
        return self

    def stop(self) -> None:
        self._server.stop()

    # ---- test controls ------------------------------------------------------------------------

    @property
    def primary_calendar_id(self) -> str:
        return next(cid for cid, cal in self.calendars.items() if cal["isDefaultCalendar"])

    def add_calendar(
        self,
        name: str,
        *,
        primary: bool = False,
        can_edit: bool = True,
        owner: tuple[str, str] | None = None,
    ) -> str:
        """A calendar of the user; `owner` (name, address) is who created or shared it (the
        user when None), as Graph's calendar `owner` property says."""
        cid = "AAMkCal" + uuid.uuid4().hex
        with self._lock:
            self.calendars[cid] = {
                "id": cid,
                "name": name,
                "isDefaultCalendar": primary,
                "canEdit": can_edit,
                "owner": owner,
            }
        return cid

    def fail_next(self, kind: str, times: int = 1) -> None:
        if kind not in ("timeout", "429", "500", "503", "400", "404", "401"):
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            self._faults.extend([kind] * times)

    def issue_tokens(self) -> dict[str, Any]:
        """Tokens for the fake user without the browser dance (harness set-up)."""
        with self._lock:
            return self._new_tokens(nonce=None)

    def expire_access_tokens(self) -> None:
        with self._lock:
            self._access.clear()

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self._refresh.clear()

    def expire_delta_tokens(self) -> None:
        with self._lock:
            self._delta_states.clear()

    def add_event(
        self,
        calendar_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        subject: str = "Busy",
        body: str = "",
        all_day: date | None = None,
        all_day_end: date | None = None,
        time_zone: str = "UTC",
        show_as: str = "busy",
        cancelled: bool = False,
        response: str = "organizer",
        recurrence: dict[str, Any] | None = None,
    ) -> str:
        """Store an event as another client (Outlook on the staff member's phone) would."""
        zone = _zone(time_zone)
        if all_day is not None:
            last = all_day_end or all_day + timedelta(days=1)
            start = datetime.combine(all_day, time(), zone)
            end = datetime.combine(last, time(), zone)
        if start is None or end is None:
            raise ValueError("start and end, or all_day, are needed")
        event = StoredEvent(
            id="AAMkEv" + uuid.uuid4().hex,
            calendar_id=calendar_id,
            subject=subject,
            body=body,
            start=start,
            end=end,
            time_zone=time_zone,
            is_all_day=all_day is not None,
            show_as=show_as,
            is_cancelled=cancelled,
            response=response,
            recurrence=recurrence,
        )
        with self._lock:
            self.events[event.id] = event
        self._changed(event, "created")
        return event.id

    def update_event(self, event_id: str, **changes: Any) -> None:
        with self._lock:
            event = self.events[event_id]
            self.events[event_id] = replace(
                event, **changes, version=event.version + 1, modified=datetime.now(UTC)
            )
        self._changed(self.events[event_id], "updated")

    def remove_event(self, event_id: str) -> None:
        with self._lock:
            event = self.events.pop(event_id, None)
        if event is not None:
            self._changed(event, "deleted")

    def remove_occurrence(self, event_id: str, day: date) -> None:
        """Delete the occurrence of series `event_id` that starts on `day` (series' zone)."""
        with self._lock:
            event = self.events[event_id]
            gone = f"{event_id}_OCC_{day:%Y%m%d}"
            self.events[event_id] = replace(
                event,
                removed_occurrences=(*event.removed_occurrences, gone),
                version=event.version + 1,
                modified=datetime.now(UTC),
            )
        self._changed(self.events[event_id], "updated")

    def stored_events(self, calendar_id: str) -> list[StoredEvent]:
        with self._lock:
            return [e for e in self.events.values() if e.calendar_id == calendar_id]

    def wait_for_deliveries(self, count: int, *, timeout: float = 5.0) -> list[Delivery]:
        with self._delivered:
            if not self._delivered.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise AssertionError(f"expected {count} deliveries, got {len(self.deliveries)}")
            return list(self.deliveries)

    def notification(
        self,
        subscription_id: str,
        *,
        event_id: str,
        change_type: str = "updated",
        client_state: str | None = None,
    ) -> dict[str, Any]:
        """A changeNotificationCollection as Graph POSTs it for one changed event."""
        with self._lock:
            sub = self.subscriptions[subscription_id]
        state = sub.client_state if client_state is None else client_state
        resource = f"Users/{self.user_id}/Events/{event_id}"
        return {
            "value": [
                {
                    "id": uuid.uuid4().hex,
                    "subscriptionId": sub.id,
                    "subscriptionExpirationDateTime": _graph_instant(sub.expires_at),
                    "changeType": change_type,
                    "resource": resource,
                    "resourceData": {
                        "@odata.type": "#Microsoft.Graph.Event",
                        "@odata.id": resource,
                        "@odata.etag": f'W/"{uuid.uuid4().hex}"',
                        "id": event_id,
                    },
                    "clientState": state,
                    "tenantId": TENANT_ID,
                }
            ]
        }

    def send_lifecycle(self, subscription_id: str, lifecycle_event: str) -> None:
        """Send `reauthorizationRequired`, `missed` or `subscriptionRemoved` now."""
        with self._lock:
            sub = self.subscriptions[subscription_id]
        body = {
            "value": [
                {
                    "subscriptionId": sub.id,
                    "subscriptionExpirationDateTime": _graph_instant(sub.expires_at),
                    "tenantId": TENANT_ID,
                    "clientState": sub.client_state,
                    "lifecycleEvent": lifecycle_event,
                }
            ]
        }
        self._post_soon(sub.lifecycle_url or sub.notification_url, body)

    # ---- notifications ------------------------------------------------------------------------

    def _changed(self, event: StoredEvent, change_type: str) -> None:
        with self._lock:
            now = datetime.now(UTC)
            subs = [
                s
                for s in self.subscriptions.values()
                if s.calendar_id == event.calendar_id
                and s.expires_at > now
                and change_type in s.change_type.split(",")
            ]
        for sub in subs:
            self._post_soon(
                sub.notification_url,
                self.notification(sub.id, event_id=event.id, change_type=change_type),
            )

    def _post_soon(self, url: str, body: dict[str, Any]) -> None:
        """Deliver in the server's loop, as Graph does: after the change, not inside it."""
        if self._loop is None:
            raise RuntimeError("the fake Graph server is not started")
        asyncio.run_coroutine_threadsafe(self._deliver(url, body), self._loop)

    async def _deliver(self, url: str, body: dict[str, Any]) -> None:
        status: int | None
        try:
            async with httpx.AsyncClient(timeout=3.0) as client:  # Graph waits 3 s
                status = (await client.post(url, json=body)).status_code
        except httpx.HTTPError:
            status = None
        with self._delivered:
            self.deliveries.append(Delivery(url=url, body=body, status=status))
            self._delivered.notify_all()

    # ---- plumbing -----------------------------------------------------------------------------

    async def _ping(self, request: Request) -> Response:
        self._loop = asyncio.get_running_loop()
        return Response("pong")

    async def _graph(self, request: Request, handler: Any) -> Response:
        """Bearer check, fault injection and error translation around one Graph handler."""
        with self._lock:
            self.requests.append((request.method, request.url.path))
            fault = self._faults.pop(0) if self._faults else None
        if fault == "429":
            return _error(
                429, "TooManyRequests", "Please retry after", {"Retry-After": self.retry_after}
            )
        if fault == "400":
            return _error(400, "BadRequest", "The request is malformed or incorrect.")
        if fault == "404":
            return _error(404, "ErrorItemNotFound", "The specified object was not found.")
        if fault in ("500", "503"):
            code = "generalException" if fault == "500" else "serviceNotAvailable"
            return _error(int(fault), code, "The service is unavailable.")
        if fault == "401" or not self._bearer_ok(request):
            return _error(
                401,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
                {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'},
            )
        try:
            response: Response = await handler(request)
        except GraphError as exc:
            response = _error(exc.status, exc.code, exc.message)
        if fault == "timeout":
            # The write above is done; the answer comes too late for the client.
            await asyncio.sleep(self.timeout_delay)
        return response

    def _bearer_ok(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return False
        with self._lock:
            expires = self._access.get(header[7:])
        return expires is not None and expires > datetime.now(UTC)

    def _new_tokens(self, *, nonce: str | None) -> dict[str, Any]:
        access = "eyJ0eXAi." + secrets.token_urlsafe(24)
        refresh = "M.R3_" + secrets.token_urlsafe(24)
        self._access[access] = datetime.now(UTC) + timedelta(hours=1)
        self._refresh.add(refresh)
        now = int(datetime.now(UTC).timestamp())
        claims = {
            "aud": self.client_id,
            "iss": f"https://login.microsoftonline.com/{TENANT_ID}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "sub": "fake-sub",
            "oid": self.user_id,
            "tid": TENANT_ID,
            "preferred_username": self.sign_in_name,
            "name": "Dr. Lee",
            "ver": "2.0",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        client_info = {"uid": self.user_id, "utid": TENANT_ID}
        return {
            "token_type": "Bearer",
            "scope": "https://graph.microsoft.com/Calendars.ReadWrite "
            "https://graph.microsoft.com/User.Read",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": access,
            "refresh_token": refresh,
            "id_token": _unsigned_jwt(claims),
            "client_info": _b64(json.dumps(client_info).encode()),
        }

    def _page(
        self, request: Request, rows: list[dict[str, Any]], *, size: int, final: dict[str, Any]
    ) -> JSONResponse:
        """The first page of `rows`; later pages through an opaque `$skiptoken`."""
        if self.page_size_cap is not None:
            size = min(size, self.page_size_cap)
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._pages[token] = {
                "rows": rows,
                "size": size,
                "final": final,
                "path": request.url.path,
            }
        return self._next_page(request, token, 0)

    def _next_page(self, request: Request, token: str, offset: int) -> JSONResponse:
        with self._lock:
            state = self._pages.get(token)
        if state is None or state["path"] != request.url.path:
            raise GraphError(400, "ErrorInvalidParameter", "The skip token is not valid.")
        rows, size = state["rows"], state["size"]
        body: dict[str, Any] = {
            "@odata.context": f"{self.graph_url}/$metadata#Collection(event)",
            "value": rows[offset : offset + size],
        }
        if offset + size < len(rows):
            query = urlencode({"$skiptoken": f"{token}.{offset + size}"})
            body["@odata.nextLink"] = f"{self.base_url}{request.url.path}?{query}"
        else:
            body.update(state["final"])
        return JSONResponse(body)

    # ---- Graph: user and calendars ------------------------------------------------------------

    async def _me(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            return JSONResponse(
                {
                    "@odata.context": f"{self.graph_url}/$metadata#users/$entity",
                    "id": self.user_id,
                    "displayName": "Dr. Lee",
                    "mail": self.user_mail,
                    "userPrincipalName": self.sign_in_name,
                }
            )

        return await self._graph(request, handle)

    async def _list_calendars(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            with self._lock:
                rows = [
                    {
                        "id": c["id"],
                        "name": c["name"],
                        "color": "auto",
                        "hexColor": "",
                        "isDefaultCalendar": c["isDefaultCalendar"],
                        "changeKey": uuid.uuid4().hex,
                        "canShare": c["canEdit"],
                        "canViewPrivateItems": True,
                        "canEdit": c["canEdit"],
                        "allowedOnlineMeetingProviders": [],
                        "isRemovable": not c["isDefaultCalendar"],
                        "isTallyingResponses": True,
                        "owner": (
                            {"name": c["owner"][0], "address": c["owner"][1]}
                            if c.get("owner")
                            else {"name": "Dr. Lee", "address": self.user_mail}
                        ),
                    }
                    for c in self.calendars.values()
                ]
            return JSONResponse(
                {
                    "@odata.context": (
                        f"{self.graph_url}/$metadata#users('{self.user_id}')/calendars"
                    ),
                    "value": rows,
                }
            )

        return await self._graph(request, handle)

    def _calendar(self, cid: str) -> dict[str, Any]:
        with self._lock:
            calendar = self.calendars.get(cid)
        if calendar is None:
            raise GraphError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        return calendar

    # ---- Graph: calendar view and delta -------------------------------------------------------

    async def _calendar_view(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            cid = request.path_params["cid"]
            self._calendar(cid)
            skip = request.query_params.get("$skiptoken")
            if skip:
                token, _, offset = skip.rpartition(".")
                return self._next_page(request, token, int(offset))
            start, end = _window(request)
            zone_name, zone = _preferred_zone(request)
            rows = [
                self._instance_json(i, zone_name, zone) for i in self._instances(cid, start, end)
            ]
            size = int(request.query_params.get("$top") or _PAGE)
            return self._page(request, rows, size=size, final={})

        return await self._graph(request, handle)

    async def _delta(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            cid = request.path_params["cid"]
            self._calendar(cid)
            query = request.query_params
            if query.get("$skiptoken"):
                token, _, offset = query["$skiptoken"].rpartition(".")
                return self._next_page(request, token, int(offset))
            zone_name, zone = _preferred_zone(request)
            if query.get("$deltatoken"):
                with self._lock:
                    state = self._delta_states.get(query["$deltatoken"])
                if state is None or state["cid"] != cid:
                    raise GraphError(
                        410, "SyncStateNotFound", "The sync state generation is not found."
                    )
                start, end, before = state["start"], state["end"], state["seen"]
            else:
                start, end = _window(request)
                before = {}
            instances = self._instances(cid, start, end)
            now_seen = {i.id: i.change_key for i in instances}
            rows = [
                self._delta_json(i, zone_name, zone)
                for i in instances
                if before.get(i.id) != i.change_key
            ]
            rows += [
                {"id": gone, "@removed": {"reason": "deleted"}}
                for gone in before
                if gone not in now_seen
            ]
            token = secrets.token_urlsafe(16)
            with self._lock:
                self._delta_states[token] = {
                    "cid": cid,
                    "start": start,
                    "end": end,
                    "seen": now_seen,
                }
            link = f"{self.base_url}{request.url.path}?{urlencode({'$deltatoken': token})}"
            size = _max_page_size(request) or _PAGE
            return self._page(request, rows, size=size, final={"@odata.deltaLink": link})

        return await self._graph(request, handle)

    def _instances(self, cid: str, start: datetime, end: datetime) -> list[Instance]:
        with self._lock:
            events = [e for e in self.events.values() if e.calendar_id == cid]
        found = [i for e in events for i in _expand(e) if i.start < end and i.end > start]
        return sorted(found, key=lambda i: (i.start, i.id))

    def _find_instance(self, eid: str) -> Instance:
        with self._lock:
            event = self.events.get(eid)
            master = self.events.get(eid.split("_OCC_")[0])
        if event is not None:
            return Instance(
                event.id,
                event,
                event.start,
                event.end,
                "seriesMaster" if event.recurrence else "singleInstance",
            )
        if master is not None:
            for instance in _expand(master):
                if instance.id == eid:
                    return instance
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )

    def _instance_json(self, i: Instance, zone_name: str, zone: tzinfo) -> dict[str, Any]:
        e = i.event
        return {
            "@odata.etag": f'W/"{i.change_key}"',
            "id": i.id,
            "createdDateTime": _graph_instant(e.created),
            "lastModifiedDateTime": _graph_instant(e.modified),
            "changeKey": i.change_key,
            "categories": [],
            "transactionId": e.transaction_id,
            "originalStartTimeZone": e.time_zone,
            "originalEndTimeZone": e.time_zone,
            "iCalUId": "040000008200E00074C5B7101A82E008" + e.id[-16:],
            "reminderMinutesBeforeStart": 15,
            "isReminderOn": True,
            "subject": e.subject,
            "bodyPreview": e.body[:255],
            "importance": "normal",
            "sensitivity": "normal",
            "isAllDay": e.is_all_day,
            "isCancelled": e.is_cancelled,
            "isOrganizer": e.response == "organizer",
            "responseRequested": True,
            "seriesMasterId": e.id if i.kind == "occurrence" else None,
            "showAs": e.show_as,
            "type": i.kind,
            "webLink": f"https://outlook.live.com/owa/?itemid={i.id}",
            "responseStatus": {"response": e.response, "time": "0001-01-01T00:00:00Z"},
            "body": {"contentType": "text", "content": e.body},
            "start": _date_time(i.start, e, zone_name, zone),
            "end": _date_time(i.end, e, zone_name, zone),
            "location": {"displayName": e.location},
            "recurrence": e.recurrence if i.kind == "seriesMaster" else None,
            "attendees": [],
            "organizer": {"emailAddress": {"name": "Dr. Lee", "address": self.user_mail}},
        }

    def _delta_json(self, i: Instance, zone_name: str, zone: tzinfo) -> dict[str, Any]:
        if i.kind != "occurrence":
            return self._instance_json(i, zone_name, zone)
        # What Graph really sends for an occurrence in a calendarView delta.
        return {
            "@odata.type": "#microsoft.graph.event",
            "@odata.etag": f'W/"{i.change_key}"',
            "seriesMasterId": i.event.id,
            "type": "occurrence",
            "start": _date_time(i.start, i.event, zone_name, zone),
            "end": _date_time(i.end, i.event, zone_name, zone),
            "id": i.id,
        }

    # ---- Graph: events ------------------------------------------------------------------------

    async def _create_event(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            cid = request.path_params["cid"]
            calendar = self._calendar(cid)
            if not calendar["canEdit"]:
                raise GraphError(403, "ErrorAccessDenied", "Access is denied.")
            data = await _json(request)
            tx = data.get("transactionId")
            with self._lock:
                if tx:
                    for existing in self.events.values():
                        if existing.transaction_id == tx:
                            # The redundant POST is discarded: the first one's event answers.
                            return self._event_response(existing, request, 201)
                event = _event_from_json(data, cid)
                self.events[event.id] = event
            self._changed(event, "created")
            return self._event_response(event, request, 201)

        return await self._graph(request, handle)

    def _event_response(self, event: StoredEvent, request: Request, status: int) -> Response:
        zone_name, zone = _preferred_zone(request)
        kind = "seriesMaster" if event.recurrence else "singleInstance"
        instance = Instance(event.id, event, event.start, event.end, kind)
        return JSONResponse(self._instance_json(instance, zone_name, zone), status_code=status)

    async def _event(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            eid = request.path_params["eid"]
            if request.method == "GET":
                zone_name, zone = _preferred_zone(request)
                return JSONResponse(self._instance_json(self._find_instance(eid), zone_name, zone))
            with self._lock:
                event = self.events.get(eid)
            if event is None:
                raise GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            if request.method == "DELETE":
                self.remove_event(eid)
                return Response(status_code=204)
            data = await _json(request)
            if "transactionId" in data and data["transactionId"] != event.transaction_id:
                raise GraphError(400, "ErrorInvalidRequest", "transactionId cannot be changed.")
            updated = _event_from_json({**_event_fields(event), **data}, event.calendar_id)
            with self._lock:
                self.events[eid] = replace(
                    updated,
                    id=eid,
                    transaction_id=event.transaction_id,
                    created=event.created,
                    version=event.version + 1,
                    response=event.response,
                    is_cancelled=event.is_cancelled,
                )
            self._changed(self.events[eid], "updated")
            return self._event_response(self.events[eid], request, 200)

        return await self._graph(request, handle)

    # ---- Graph: subscriptions -----------------------------------------------------------------

    async def _create_subscription(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            data = await _json(request)
            for name in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
                if not data.get(name):
                    raise GraphError(400, "InvalidRequest", f"'{name}' is required.")
            cid = _calendar_of_resource(str(data["resource"]))
            self._calendar(cid)
            expires = _parse_instant(str(data["expirationDateTime"]))
            self._check_expiry(expires)
            state = data.get("clientState")
            if state is not None and len(str(state)) > 128:
                raise GraphError(400, "InvalidRequest", "clientState is longer than 128.")
            for kind in str(data["changeType"]).split(","):
                if kind not in ("created", "updated", "deleted"):
                    raise GraphError(400, "InvalidRequest", f"changeType '{kind}' not supported")
            urls = [str(data["notificationUrl"])]
            if data.get("lifecycleNotificationUrl"):
                urls.append(str(data["lifecycleNotificationUrl"]))
            for url in urls:
                await self._validate_endpoint(url)
            sub = Subscription(
                id=str(uuid.uuid4()),
                resource=str(data["resource"]),
                calendar_id=cid,
                change_type=str(data["changeType"]),
                notification_url=urls[0],
                lifecycle_url=data.get("lifecycleNotificationUrl"),
                client_state=state,
                expires_at=expires,
            )
            with self._lock:
                self.subscriptions[sub.id] = sub
            return JSONResponse(self._subscription_json(sub), status_code=201)

        return await self._graph(request, handle)

    async def _validate_endpoint(self, url: str) -> None:
        scheme = urlsplit(url).scheme
        if scheme != "https" and not (scheme == "http" and self.allow_http_callbacks):
            raise GraphError(400, "InvalidRequest", "The notification URL must be https.")
        token = "Validation: Testing client application reachability for subscription " + str(
            uuid.uuid4()
        )
        failed = GraphError(
            400,
            "ValidationError",
            "Subscription validation request failed. Notification endpoint must respond with "
            "200 OK to validation request.",
        )
        try:
            async with httpx.AsyncClient(timeout=VALIDATION_LIMIT) as client:
                answer = await client.post(
                    url,
                    params={"validationToken": token},
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                )
        except httpx.HTTPError:
            raise failed from None
        plain = answer.headers.get("content-type", "").startswith("text/plain")
        if answer.status_code != 200 or not plain or answer.text != token:
            raise failed

    def _check_expiry(self, expires: datetime) -> None:
        now = datetime.now(UTC)
        if expires <= now:
            raise GraphError(
                400, "InvalidRequest", "Subscription expiration can only be in the future."
            )
        if expires > now + EVENT_SUBSCRIPTION_MAX:
            raise GraphError(
                400,
                "InvalidRequest",
                "Subscription expiration exceeds the maximum of 4230 minutes.",
            )

    def _subscription_json(self, sub: Subscription) -> dict[str, Any]:
        return {
            "@odata.context": f"{self.graph_url}/$metadata#subscriptions/$entity",
            "id": sub.id,
            "resource": sub.resource,
            "applicationId": self.client_id,
            "changeType": sub.change_type,
            "clientState": sub.client_state,
            "notificationUrl": sub.notification_url,
            "lifecycleNotificationUrl": sub.lifecycle_url,
            "expirationDateTime": _graph_instant(sub.expires_at),
            "creatorId": self.user_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "notificationContentType": None,
        }

    async def _subscription(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            sid = request.path_params["sid"]
            with self._lock:
                sub = self.subscriptions.get(sid)
            if sub is None:
                raise GraphError(
                    404, "ResourceNotFound", f"The object was not found: subscription {sid}"
                )
            if request.method == "DELETE":
                with self._lock:
                    self.subscriptions.pop(sid, None)
                return Response(status_code=204)
            if request.method == "PATCH":
                data = await _json(request)
                expires = _parse_instant(str(data.get("expirationDateTime") or ""))
                self._check_expiry(expires)
                with self._lock:
                    sub = self.subscriptions[sid] = replace(sub, expires_at=expires)
            return JSONResponse(self._subscription_json(sub))

        return await self._graph(request, handle)

    # ---- identity platform --------------------------------------------------------------------

    async def _openid(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        base = f"{AUTHORITY_HOST}/{tenant}"
        return JSONResponse(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{AUTHORITY_HOST}/{{tenantid}}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub",
                    "iss",
                    "aud",
                    "exp",
                    "iat",
                    "nonce",
                    "preferred_username",
                    "name",
                    "tid",
                    "ver",
                    "oid",
                ],
                "kerberos_endpoint": f"{base}/kerberos",
                "tenant_region_scope": None,
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
                "rbac_url": "https://pas.windows.net",
            }
        )

    async def _authorize(self, request: Request) -> Response:
        """The browser's visit: the fake user signs in and consents at once."""
        q = request.query_params
        redirect = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect:
            return JSONResponse({"error": "unauthorized_client"}, status_code=400)
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return RedirectResponse(
                _with_query(redirect, error="invalid_request", state=q.get("state", "")),
                status_code=302,
            )
        code = "M.C5_" + secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = {
                "redirect_uri": redirect,
                "challenge": q.get("code_challenge", ""),
                "nonce": q.get("nonce", ""),
                "client_id": self.client_id,
            }
        answer = {"code": code, "state": q.get("state", "")}
        if q.get("response_mode") == "form_post":
            fields = "".join(
                f'<input type="hidden" name="{k}" value="{html.escape(v)}"/>'
                for k, v in answer.items()
            )
            return HTMLResponse(
                f'<html><body onload="document.forms[0].submit()">'
                f'<form method="POST" action="{html.escape(redirect)}">'
                f"{fields}</form></body></html>"
            )
        return RedirectResponse(_with_query(redirect, **answer), status_code=302)

    async def _token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return _oauth_error(
                401, "invalid_client", "AADSTS7000215: Invalid client secret provided.", 7000215
            )
        grant = form.get("grant_type")
        with self._lock:
            if grant == "authorization_code":
                code = self._codes.pop(form.get("code", ""), None)
                if code is None or code["redirect_uri"] != form.get("redirect_uri"):
                    return _oauth_error(
                        400,
                        "invalid_grant",
                        "AADSTS70000: The provided value for the 'code' parameter is not valid.",
                        70000,
                    )
                verifier = form.get("code_verifier", "")
                if _b64(hashlib.sha256(verifier.encode()).digest()) != code["challenge"]:
                    return _oauth_error(
                        400,
                        "invalid_grant",
                        "AADSTS501481: The Code_Verifier "
                        "does not match the code_challenge supplied in the "
                        "authorization request.",
                        501481,
                    )
                return JSONResponse(self._new_tokens(nonce=code["nonce"] or None))
            if grant == "refresh_token":
                if form.get("refresh_token") not in self._refresh:
                    return _oauth_error(
                        400,
                        "invalid_grant",
                        "AADSTS70008: The provided "
                        "authorization code or refresh token has expired due "
                        "to inactivity.",
                        70008,
                    )
                return JSONResponse(self._new_tokens(nonce=None))
        return _oauth_error(
            400,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
            70003,
        )


# ---- wire helpers -------------------------------------------------------------------------------


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    inner = {
        "date": _graph_instant(datetime.now(UTC)),
        "request-id": str(uuid.uuid4()),
        "client-request-id": str(uuid.uuid4()),
    }
    return JSONResponse(
        {"error": {"code": code, "message": message, "innerError": inner}},
        status_code=status,
        headers=headers,
    )


def _oauth_error(status: int, error: str, description: str, code: int) -> JSONResponse:
    return JSONResponse(
        {
            "error": error,
            "error_description": description,
            "error_codes": [code],
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        },
        status_code=status,
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unsigned_jwt(claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "none"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _with_query(url: str, **params: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


async def _json(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        raise GraphError(400, "BadRequest", "Unable to read JSON request payload.") from None
    if not isinstance(data, dict):
        raise GraphError(400, "BadRequest", "Unable to read JSON request payload.")
    return data


def _zone(name: str) -> tzinfo:
    if name in ("UTC", "Etc/GMT", "tzone://Microsoft/Utc"):
        return UTC
    try:
        return ZoneInfo(_WINDOWS_ZONES.get(name, name))
    except (KeyError, ValueError):
        raise GraphError(
            400,
            "TimeZoneNotSupportedException",
            f"A valid TimeZone value must be specified: {name}",
        ) from None


def _preferred_zone(request: Request) -> tuple[str, tzinfo]:
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key.strip().lower() == "outlook.timezone":
                name = value.strip().strip('"')
                return name, _zone(name)
    return "UTC", UTC


def _max_page_size(request: Request) -> int | None:
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key.strip().lower() == "odata.maxpagesize":
                return int(value)
    return None


def _parse_local(value: str) -> datetime:
    """A Graph dateTime string ("2026-12-01T09:00:00.0000000"), offsets allowed."""
    head, dot, rest = value.partition(".")
    suffix = ""
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        suffix = rest[digits:]
    try:
        return datetime.fromisoformat(head + suffix.replace("Z", "+00:00"))
    except ValueError:
        raise GraphError(400, "ErrorInvalidParameter", f"Invalid date time: {value}") from None


def _parse_instant(value: str) -> datetime:
    parsed = _parse_local(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _window(request: Request) -> tuple[datetime, datetime]:
    q = {k.lower(): v for k, v in request.query_params.items()}
    if not q.get("startdatetime") or not q.get("enddatetime"):
        raise GraphError(
            400,
            "ErrorInvalidParameter",
            "This request requires a time window specified by the query string "
            "parameters StartDateTime and EndDateTime.",
        )
    return _parse_instant(q["startdatetime"]), _parse_instant(q["enddatetime"])


def _graph_instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _date_time(
    moment: datetime, event: StoredEvent, zone_name: str, zone: tzinfo
) -> dict[str, str]:
    if event.is_all_day:
        # Midnight to midnight whatever zone was asked for.
        local = moment.astimezone(_zone(event.time_zone)).replace(tzinfo=None)
    else:
        local = moment.astimezone(zone).replace(tzinfo=None)
    return {"dateTime": local.strftime("%Y-%m-%dT%H:%M:%S.%f0"), "timeZone": zone_name}


def _expand(event: StoredEvent) -> Iterator[Instance]:
    """The instances of an event: itself, or the occurrences of a daily/weekly series."""
    if not event.recurrence:
        yield Instance(event.id, event, event.start, event.end, "singleInstance")
        return
    pattern, rng = event.recurrence["pattern"], event.recurrence["range"]
    step = timedelta(
        days=int(pattern.get("interval", 1)) * (7 if pattern["type"] == "weekly" else 1)
    )
    count = int(rng.get("numberOfOccurrences") or _SERIES_LIMIT)
    zone = _zone(event.time_zone)
    local_start, length = event.start.astimezone(zone), event.end - event.start
    for n in range(min(count, _SERIES_LIMIT)):
        # Occurrences keep their wall time in the series' zone, across DST.
        start = datetime.combine(local_start.date() + step * n, local_start.timetz())
        if f"{event.id}_OCC_{start:%Y%m%d}" in event.removed_occurrences:
            continue
        yield Instance(
            f"{event.id}_OCC_{start:%Y%m%d}",
            event,
            start.astimezone(UTC),
            (start + length).astimezone(UTC),
            "occurrence",
        )


def _event_fields(event: StoredEvent) -> dict[str, Any]:
    zone = _zone(event.time_zone)

    def local(moment: datetime) -> str:
        return moment.astimezone(zone).replace(tzinfo=None).isoformat()

    return {
        "subject": event.subject,
        "body": {"contentType": "text", "content": event.body},
        "start": {"dateTime": local(event.start), "timeZone": event.time_zone},
        "end": {"dateTime": local(event.end), "timeZone": event.time_zone},
        "isAllDay": event.is_all_day,
        "showAs": event.show_as,
        "location": {"displayName": event.location},
        "recurrence": event.recurrence,
    }


def _event_from_json(data: dict[str, Any], cid: str) -> StoredEvent:
    start_raw, end_raw = data.get("start"), data.get("end")
    if not isinstance(start_raw, dict) or not isinstance(end_raw, dict):
        raise GraphError(400, "ErrorInvalidRequest", "Start and End are required.")
    zone_name = str(start_raw.get("timeZone") or "UTC")
    start = _at(start_raw)
    end = _at(end_raw)
    all_day = bool(data.get("isAllDay"))
    if all_day and (
        start.astimezone(_zone(zone_name)).time() != time()
        or end.astimezone(_zone(zone_name)).time() != time()
    ):
        raise GraphError(
            400, "ErrorInvalidRequest", "An all-day event must start and end at midnight."
        )
    if end < start:
        raise GraphError(400, "ErrorInvalidRequest", "The end of an event is before its start.")
    body = data.get("body") or {}
    return StoredEvent(
        id="AAMkEv" + uuid.uuid4().hex,
        calendar_id=cid,
        subject=str(data.get("subject") or ""),
        body=str(body.get("content") or ""),
        start=start,
        end=end,
        time_zone=zone_name,
        is_all_day=all_day,
        show_as=str(data.get("showAs") or "busy"),
        transaction_id=data.get("transactionId"),
        location=str((data.get("location") or {}).get("displayName") or ""),
        recurrence=data.get("recurrence"),
    )


def _at(value: dict[str, Any]) -> datetime:
    local = _parse_local(str(value.get("dateTime") or ""))
    if local.tzinfo is not None:
        return local.astimezone(UTC)
    return local.replace(tzinfo=_zone(str(value.get("timeZone") or "UTC"))).astimezone(UTC)


def _calendar_of_resource(resource: str) -> str:
    parts = [p for p in resource.strip("/").split("/") if p]
    if (
        len(parts) == 4
        and parts[0].lower() == "me"
        and parts[1].lower() == "calendars"
        and parts[3].lower() == "events"
    ):
        return parts[2]
    raise GraphError(400, "InvalidRequest", f"Resource '{resource}' is not supported here.")
