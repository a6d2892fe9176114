"""HTTP endpoints of calendar linking and change notifications.

Linking (a person in a browser, signed in to the dashboard, or a script with the API key):
- `GET /calendars/connect/{google|microsoft}?staff=ID` sends the browser to the provider's
  consent page (OAuth 2.0 authorization code with `state` and PKCE);
- `GET /calendars/callback/{provider}` is where the provider sends it back: the code is
  exchanged, the tokens stored encrypted, the busy cache filled, notifications subscribed;
- `POST /calendars/connect/caldav` (staff, url, username, password) and
  `POST /calendars/connect/ics` (staff, source) link those kinds, checked on save;
- `POST /calendars/{id}/disconnect` unlinks.

Who may link is decided by the application (`app.state.calendar_guard`, see `CalendarGuard`):
this package knows nothing of dashboard log-ins. It is asked first: a visitor who is not signed in
is sent to log in (a script without the key gets a 401) before any form is judged, and a form's
uploaded files are closed once it is read. Each form post is read into a model (`CaldavForm`,
`IcsForm`, `DisconnectForm`, `CallbackForm`): a field that is missing, too long or not text is a
422 naming it. A linking request refused for a domain reason raises `LinkFailed`, which the
application answers with the status its one table of domain errors gives (`frontdesk.app`), as
JSON for scripts or a short page for people (`failed`). While linking, a calendar server that is
down or slow stays a retryable 503; a refused password or address is a 422.

Notifications (the providers calling us):
- `POST /calendars/notify/google`: a watch channel's push (X-Goog-* headers, each checked for
  shape: a missing or odd one is a 400); the channel token is checked, the change recorded, the
  cache refreshed in the background.
- `POST /calendars/notify/microsoft`: Graph's validation handshake (`validationToken`, echoed
  as text/plain), change notifications (each `clientState` checked) and lifecycle events
  (`reauthorizationRequired`, `missed`, `subscriptionRemoved`). The body is capped (256 KB,
  100 items: Graph sends small batches) and validated as a model (400 otherwise); all its
  subscriptions are read at once, and the batch is answered 202 before the changes are
  recorded, as Graph asks (a 2xx within 3 seconds, or it retries and then throttles).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData

from booking import errors
from calendars.base import NeedsRelink
from calendars.google import PushHeaders
from calendars.microsoft import MAX_NOTIFICATION_BODY, GraphNotifications
from calendars.models import CalendarConnection
from calendars.service import OAUTH_PROVIDERS, CalendarService, Notice

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class CalendarGuard:
    """How the application authorises linking.

    `authorize(request, staff_id)` returns the business id the request may link calendars of
    that staff member for, or raises an HTTPException (401/403, or a redirect to log in).
    `verify_form(request)` rejects a form post without a valid CSRF token."""

    authorize: Callable[[Request, str], Awaitable[str]]
    verify_form: Callable[[Request], Awaitable[None]]


def _service(request: Request) -> CalendarService:
    service: CalendarService | None = getattr(request.app.state, "calendar_service", None)
    if service is None:
        raise HTTPException(503, "calendar linking is not available on this server")
    return service


def _guard(request: Request) -> CalendarGuard:
    guard: CalendarGuard | None = getattr(request.app.state, "calendar_guard", None)
    if guard is None:
        raise HTTPException(403, "calendar linking is disabled")
    return guard


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def wants_api_answer(request: Request) -> bool:
    """A script's request (it sent a key or asks for JSON): answered as JSON, never a page."""
    headers = request.headers
    return _wants_json(request) or "authorization" in headers or "x-api-key" in headers


def _back(
    request: Request, connection: CalendarConnection | None, target: str | None, message: str
) -> Response:
    if _wants_json(request) or target is None:
        if _wants_json(request):
            body: dict[str, Any] = {"message": message}
            if connection is not None:
                body["connection"] = describe(connection)
            return JSONResponse(body)
        return HTMLResponse(
            f"<!doctype html><title>Calendar linked</title><p>{html.escape(message)}</p>"
        )
    return RedirectResponse(target, status_code=303)


def _staff_page(staff_id: str) -> str:
    return f"/staff/{quote(staff_id)}/calendars"


class LinkFailed(Exception):
    """A linking request refused for a domain reason (`error`), said as `message`.

    Raised by the routes; the application answers it with the status of `error` in its table of
    domain errors, through `failed`."""

    def __init__(self, error: errors.BookingError, message: str | None = None) -> None:
        self.message = message or error.message
        super().__init__(self.message)
        self.error = error


def failed(request: Request, exc: LinkFailed, status: int) -> Response:
    """The answer to a refused link: JSON for scripts, a short page for people."""
    log.info("calendar linking refused (%s): %s", status, exc.message)
    if wants_api_answer(request):
        return JSONResponse(
            {
                "error": "calendar_link_failed",
                "code": exc.error.code,
                "message": exc.message,
                "retryable": exc.error.retryable,
            },
            status_code=status,
        )
    back = html.escape(request.headers.get("referer") or "/")
    return HTMLResponse(
        f"<!doctype html><meta charset=utf-8><title>Calendar not linked</title>"
        f"<link rel=stylesheet href=/static/app.css><main class=card>"
        f"<h1>The calendar was not linked</h1><p>{html.escape(exc.message)}</p>"
        f'<p><a href="{back}">Go back</a></p></main>',
        status_code=status,
    )


def _return_to(value: str | None) -> str | None:
    # Only a path on this site: anything else would be an open redirect.
    if value and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return None


def describe(conn: CalendarConnection) -> dict[str, Any]:
    """A connection as shown to people: never its credentials."""
    return {
        "id": conn.id,
        "provider": conn.provider,
        "name": conn.name,
        "staff": conn.staff_id,
        "status": conn.status,
        "last_error": conn.last_error,
        "read_calendars": conn.read_calendars,
        "write_calendar": conn.write_calendar,
        "synced_at": max((v.get("synced_at", "") for v in conn.sync.values()), default=None),
    }


MAX_FIELD = 4096  # a URL, a password, an OAuth code: all far shorter


class LinkForm(BaseModel):
    """Fields every linking form may carry; unknown ones (the CSRF token) are ignored."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    return_to: str | None = Field(default=None, max_length=MAX_FIELD)


class CaldavForm(LinkForm):
    staff: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=MAX_FIELD)
    username: str = Field(min_length=1, max_length=MAX_FIELD)
    # A password is kept as typed: spaces may be part of it.
    password: str = Field(min_length=1, max_length=MAX_FIELD)
    name: str | None = Field(default=None, max_length=200)


class IcsForm(LinkForm):
    staff: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=MAX_FIELD)
    name: str | None = Field(default=None, max_length=200)


class DisconnectForm(LinkForm):
    pass


class CallbackForm(BaseModel):
    """What a provider posts back to the OAuth callback (Microsoft's form post): text fields."""

    model_config = ConfigDict(extra="allow")

    code: str | None = Field(default=None, max_length=MAX_FIELD)
    state: str | None = Field(default=None, max_length=MAX_FIELD)

    def params(self) -> dict[str, str]:
        fields = {**self.model_dump(exclude_none=True), **(self.model_extra or {})}
        return {k: v for k, v in fields.items() if isinstance(v, str)}


F = TypeVar("F", bound=BaseModel)


def parse_form(model: type[F], form: FormData) -> F:
    """`form` as `model`. A field sent as a file or more than once, missing or too long is a
    `LinkFailed` (InvalidRequest: 422) naming the fields, never their values."""
    values: dict[str, Any] = {}
    for key in form:
        items = form.getlist(key)
        value = items[0] if len(items) == 1 else items
        field = model.model_fields.get(key)
        if value == "" and field is not None and not field.is_required():
            continue  # a blank optional field is one not given
        values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise LinkFailed(errors.InvalidRequest(f"the form is not right: {problems}")) from None


async def _form(request: Request, model: type[F]) -> F:
    # The models hold text only, so the form (and any uploaded file's temporary file) is
    # closed as soon as it is read, whether it was valid or not.
    async with request.form() as form:
        return parse_form(model, form)


def _text(form: FormData, key: str) -> str:
    """A field's first value as sent, for authorising before the form is validated."""
    value = form.get(key)
    return value if isinstance(value, str) else ""


@router.get("/calendars/connect/{provider}")
async def connect(
    provider: str, request: Request, staff: str, return_to: str | None = None
) -> Response:
    if provider not in OAUTH_PROVIDERS:
        raise HTTPException(
            404,
            f"no OAuth linking for {provider!r}; CalDAV and ICS are "
            "linked with a form post to /calendars/connect/{kind}",
        )
    business_id = await _guard(request).authorize(request, staff)
    target = _return_to(return_to) or (
        None if request.headers.get("authorization") else _staff_page(staff)
    )
    try:
        url = await _service(request).start_oauth(
            provider, business_id=business_id, staff_id=staff, return_to=target
        )
    except errors.BookingError as exc:
        raise LinkFailed(exc) from exc
    return RedirectResponse(url, status_code=303)


@router.api_route("/calendars/callback/{provider}", methods=["GET", "POST"])
async def callback(provider: str, request: Request) -> Response:
    # Google answers with a redirect (query string); Microsoft, as MSAL recommends, with a
    # form post. Either way `state` ties it to a flow this server started.
    if provider not in OAUTH_PROVIDERS:
        raise HTTPException(404, "unknown provider")
    params = dict(request.query_params)
    if request.method == "POST":
        params.update((await _form(request, CallbackForm)).params())
    try:
        conn, target = await _service(request).finish_oauth(provider, params)
    except errors.CalendarUnavailable as exc:
        raise LinkFailed(exc, f"{provider.title()} could not complete the link: {exc}") from exc
    except errors.BookingError as exc:
        raise LinkFailed(exc) from exc
    return _back(request, conn, target, f"Linked {conn.name}.")


@router.post("/calendars/connect/{kind}")
async def connect_form(kind: str, request: Request) -> Response:
    if kind not in ("caldav", "ics"):
        raise HTTPException(404, f"link {kind} calendars with GET /calendars/connect/{kind}")
    guard = _guard(request)
    await guard.verify_form(request)
    model: type[CaldavForm | IcsForm] = CaldavForm if kind == "caldav" else IcsForm
    async with request.form() as raw:
        # Who may link comes first: a caller who is not signed in is sent to log in (a script
        # without the API key gets a 401) before the form is judged.
        business_id = await guard.authorize(request, _text(raw, "staff"))
        form = parse_form(model, raw)
    service = _service(request)
    target = _return_to(form.return_to) or (
        None if request.headers.get("authorization") else _staff_page(form.staff)
    )
    try:
        if isinstance(form, CaldavForm):
            conn = await service.link_caldav(
                business_id=business_id,
                staff_id=form.staff,
                url=form.url,
                username=form.username,
                password=form.password,
                name=form.name or None,
            )
        else:
            conn = await service.link_ics(
                business_id=business_id,
                staff_id=form.staff,
                source=form.source,
                name=form.name or None,
            )
    except NeedsRelink as exc:
        # A refused username or password: this request cannot work as given (422).
        raise LinkFailed(
            errors.InvalidRequest(str(exc)),
            f"that calendar refused the username or password: {exc}",
        ) from exc
    except errors.CalendarUnavailable as exc:
        if exc.retryable:
            # The server is down, slow or throttling: the same request may work later, so it
            # is answered as the one table says (503, retryable).
            raise LinkFailed(
                exc, f"could not read that calendar now; try again later: {exc}"
            ) from exc
        # A refusal that will not change (a wrong address, not a calendar): 422.
        raise LinkFailed(
            errors.InvalidRequest(str(exc)), f"could not read that calendar: {exc}"
        ) from exc
    except errors.BookingError as exc:  # e.g. no FRONTDESK_SECRET_KEY on this server
        raise LinkFailed(exc) from exc
    return _back(request, conn, target, f"Linked {conn.name}.")


@router.post("/calendars/{connection_id}/disconnect")
async def disconnect(connection_id: str, request: Request) -> Response:
    guard = _guard(request)
    await guard.verify_form(request)
    service = _service(request)
    conn = await service.find(connection_id)
    if conn is None:
        raise HTTPException(404, f"no calendar connection {connection_id}")
    business_id = await guard.authorize(request, conn.staff_id)
    form = (  # read once the caller may unlink it
        await _form(request, DisconnectForm)
        if "form" in request.headers.get("content-type", "")
        else DisconnectForm()
    )
    try:
        await service.disconnect(connection_id, business_id=business_id)
    except errors.BookingError as exc:
        raise LinkFailed(exc) from exc
    target = _return_to(form.return_to) or (
        None if request.headers.get("authorization") else _staff_page(conn.staff_id)
    )
    return _back(request, None, target, f"Unlinked {conn.name}.")


@router.get("/calendars/feed/{business_id}/{staff_id}/{token}.ics")
async def feed(business_id: str, staff_id: str, token: str, request: Request) -> Response:
    """A staff member's bookings as an ICS feed: the local calendar, for any calendar app.

    The path's token is an HMAC under FRONTDESK_SECRET_KEY, so the URL is the credential. A
    wrong token is a NotFound, a server without a secret key SecretKeyMissing: the application's
    table of domain errors answers them (404, 503)."""
    body = await _service(request).feed(business_id, staff_id, token)
    return Response(
        body,
        media_type="text/calendar; charset=utf-8",
        headers={"Cache-Control": "private, max-age=300"},
    )


# ---- notifications ------------------------------------------------------------------------


@router.post("/calendars/notify/google")
async def notify_google(request: Request) -> Response:
    try:
        push = PushHeaders.parse(request.headers)
    except ValidationError:
        return PlainTextResponse("not a Google Calendar notification", status_code=400)
    if push.resource_state == "sync":  # the channel's first message: nothing changed yet
        return Response(status_code=200)
    result = await _service(request).notified(push.channel_id, push.token)
    return _answer(result, "google", push.channel_id)


@router.post("/calendars/notify/microsoft", max_body_size=MAX_NOTIFICATION_BODY)
async def notify_microsoft(request: Request, background: BackgroundTasks) -> Response:
    """Graph's validation handshake, or a batch of notifications: checked against their
    channels in one read, answered 202 at once, recorded after the answer is sent."""
    token = request.query_params.get("validationToken")
    if token is not None:
        # Graph's handshake: echo the token, decoded, as plain text within 10 seconds.
        return PlainTextResponse(token, status_code=200)
    body = await request.body()  # 413 past MAX_NOTIFICATION_BODY (the route's cap)
    try:
        batch = GraphNotifications.model_validate_json(body)
    except ValidationError:
        return PlainTextResponse("not a Graph change notification", status_code=400)
    service = _service(request)
    notices = await service.check_notices(
        [
            Notice(n.subscription_id, n.client_state, resync=n.lifecycle_event == "missed")
            for n in batch.value
        ]
    )
    if notices and all(n.verdict == "forged" for n in notices):
        return _answer("forged", "microsoft", notices[0].channel_id)
    renew = sorted(
        {
            n.channel_id
            for n, item in zip(notices, batch.value, strict=True)
            if n.verdict == "ok" and item.lifecycle_event in RENEW_EVENTS
        }
    )
    background.add_task(_record_graph_changes, service, notices, renew)
    return Response(status_code=202)


RENEW_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved"})


async def _record_graph_changes(
    service: CalendarService, notices: list[Notice], renew: list[str]
) -> None:
    try:
        await service.changed(notices)
    except Exception:  # the answer is sent; the scheduled sync catches up
        log.exception("recording %d Graph notification(s) failed", len(notices))
    for channel_id in renew:
        service.renew_soon(channel_id)


def _answer(result: str, provider: str, channel: str) -> Response:
    if result == "forged":
        log.warning("rejected a %s notification with a wrong token (channel %s)", provider, channel)
        return PlainTextResponse("wrong channel token", status_code=403)
    if result == "unknown":
        log.info("%s notification for unknown channel %s ignored", provider, channel)
        return PlainTextResponse("unknown channel", status_code=404)
    return Response(status_code=200)
