"""The CalDAV provider's `Harness`: a real Radicale behind a small fault-injecting proxy.

The provider talks to Radicale through `FaultProxy`, a loopback HTTP proxy that forwards every
request unchanged unless told to misbehave (`fail_next`): "timeout" forwards the request (so a
write does land) and holds the answer past the provider's time limit, "drop" forwards it and
closes the connection without answering, "429" (with `Retry-After: <retry_after>`, seconds or an
HTTP-date), "500", "503", "400" and "404" answer at once without forwarding. The staff member's
own calendar app (`add_event`, `events`, ...) talks to Radicale directly, so faults only ever
hit the provider.
"""

from __future__ import annotations

import asyncio
import http.client
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from caldav.calendarobjectresource import CalendarObjectResource
from caldav.collection import Calendar as DavCalendar
from caldav.collection import Principal
from caldav.davclient import DAVClient

from calendars.base import Account
from calendars.caldav import CaldavProvider
from tests.calendars.harness import Harness
from tests.calendars.radicale_server import PASSWORD, USERNAME, RadicaleServer, start_radicale

# Each operation's time limit in the harness: short enough for fault tests, long enough for
# Radicale on a busy 2-core machine.
TIMEOUT = 2.0
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
FAULTS = ("timeout", "drop", "429", "500", "503", "400", "404")
_ANSWERED = ("429", "500", "503", "400", "404")  # answered by the proxy, never forwarded


@dataclass(frozen=True)
class Seen:
    """One request the proxy saw: whether it carried credentials, and the fault it met."""

    method: str
    path: str
    authorized: bool
    fault: str | None


class FaultProxy:
    """Forwards HTTP to `upstream_port`, failing the next requests on demand.

    A fault affects the next requests that carry credentials: the library's unauthenticated
    first try on each connection (answered 401) is part of the login, not the work."""

    def __init__(self, upstream_port: int, *, hold: float = 3 * TIMEOUT) -> None:
        self.upstream_port = upstream_port
        self.hold = hold  # how long a "timeout" answer is held back, at most
        self.retry_after = "1"  # the Retry-After a "429" answers with
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen
        self.seen: list[Seen] = []  # the same, with credentials and faults
        self._faults: list[str] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()  # let held answers go
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail_next(self, kind: str, times: int = 1) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULTS}")
        with self._lock:
            self._faults += [kind] * times

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, method: str, path: str, authorized: bool) -> str | None:
        with self._lock:
            fault = self._faults.pop(0) if self._faults and authorized else None
            self.requests.append((method, path))
            self.seen.append(Seen(method, path, authorized, fault))
            return fault

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            conn.close()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Answer at once on a kept-alive connection (Nagle would hold it ~40 ms).
        disable_nagle_algorithm = True

        def _any(self) -> None:
            body = self._body()
            # The library's first request of a connection goes without credentials and gets 401;
            # faults hit the requests that do the work, those that carry credentials.
            fault = proxy._take(self.command, self.path, "Authorization" in self.headers)
            if fault in _ANSWERED:
                self.send_response(int(fault))
                if fault == "429":
                    self.send_header("Retry-After", proxy.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            status, reason, answer_headers, answer = proxy._forward(
                self.command, self.path, headers, body
            )
            if fault == "drop":
                # Applied on the server; the client sees the connection go away.
                self.close_connection = True
                self.connection.close()
                return
            if fault == "timeout":
                # The server did the work; the answer arrives after the client gave up.
                proxy._released.wait(proxy.hold)
            self.send_response(status, reason)
            for name, value in answer_headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer)

        def _body(self) -> bytes:
            if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""
            body = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, up to the blank line
                pass
            return body

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any
        do_OPTIONS = do_PROPFIND = do_PROPPATCH = do_REPORT = do_MKCOL = do_MKCALENDAR = _any

        def log_message(self, format: str, *args: object) -> None:
            pass

        def handle_one_request(self) -> None:
            # A client that timed out has closed its end; writing the held answer then fails.
            try:
                super().handle_one_request()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


def vevent(uid: str, *props: str) -> str:
    """A one-event iCalendar document, as another client would write it."""
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//Frontdesk tests//EN",
        "BEGIN:VEVENT",
        f"UID:{uid}",
        "DTSTAMP:20261101T000000Z",
        *props,
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return "\r\n".join(lines) + "\r\n"


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


class _StaffCalendarApp:
    """The staff member's own calendar client, talking to Radicale without the proxy."""

    def __init__(self, server: RadicaleServer) -> None:
        self._client = DAVClient(
            url=server.principal_url, username=USERNAME, password=PASSWORD, enable_rfc6764=False
        )
        # caldav's DAVClient.principal has no annotations.
        principal: Principal = self._client.principal()  # type: ignore[no-untyped-call]
        made = principal.make_calendar(name="Work", cal_id=f"work-{uuid.uuid4().hex[:8]}")
        # The synchronous client answers the library's objects themselves, never coroutines.
        assert isinstance(made, DavCalendar)
        self.calendar = made

    def close(self) -> None:
        self._client.close()

    def add(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        summary: str = "Busy",
        transparent: bool = False,
        all_day: date | None = None,
        cancelled: bool = False,
        tentative: bool = False,
    ) -> str:
        uid = f"{uuid.uuid4().hex}@staff-phone"
        if all_day is not None:
            nxt = all_day + timedelta(days=1)
            props = [f"DTSTART;VALUE=DATE:{all_day:%Y%m%d}", f"DTEND;VALUE=DATE:{nxt:%Y%m%d}"]
        else:
            if start is None or end is None:
                raise ValueError("a timed event needs start and end")
            props = [f"DTSTART:{_stamp(start)}", f"DTEND:{_stamp(end)}"]
        props.append(f"SUMMARY:{summary}")
        if transparent:
            props.append("TRANSP:TRANSPARENT")
        if cancelled:
            props.append("STATUS:CANCELLED")
        if tentative:
            props.append("STATUS:TENTATIVE")
        self.calendar.add_event(vevent(uid, *props))
        return uid

    def remove(self, uid: str) -> None:
        event = self.calendar.event_by_uid(uid)
        assert isinstance(event, CalendarObjectResource)
        event.delete()

    def events(self) -> list[dict[str, Any]]:
        found = []
        events = self.calendar.get_events()
        assert isinstance(events, list)
        for obj in events:
            event = obj.icalendar_component
            found.append(
                {
                    "id": str(event["UID"]),
                    "summary": str(event.get("SUMMARY", "")),
                    "description": str(event.get("DESCRIPTION", "")),
                    # Timed events come back aware; an all-day one as its date.
                    "start": event["DTSTART"].dt,
                    "end": event["DTEND"].dt,
                    "href": str(obj.url),
                }
            )
        return found


@asynccontextmanager
async def harness(radicale: RadicaleServer | None = None) -> AsyncIterator[Harness]:
    """A `Harness` over Radicale (`radicale`, or one started for this harness alone) with one
    new empty calendar, reached by the provider through a `FaultProxy`."""
    with tempfile.TemporaryDirectory(prefix="radicale-") as folder:
        own = radicale is None
        server = radicale if radicale is not None else await _started(Path(folder))
        proxy = FaultProxy(server.port)
        proxy.start()
        app: _StaffCalendarApp | None = None
        try:
            app = await asyncio.to_thread(_StaffCalendarApp, server)
            yield _build(server, proxy, app)
        finally:
            if app is not None:
                app.close()
            proxy.stop()
            if own:
                await asyncio.to_thread(server.stop)


async def _started(folder: Path) -> RadicaleServer:
    return await asyncio.to_thread(start_radicale, folder)


def _build(server: RadicaleServer, proxy: FaultProxy, app: _StaffCalendarApp) -> Harness:
    assert app.calendar.url is not None
    calendar_path = str(app.calendar.url.path)
    account = Account(
        id="caldav-test",
        provider="caldav",
        settings={"url": f"{proxy.base_url}/{USERNAME}/", "username": USERNAME},
        secret={"password": PASSWORD},
        name="Dr. Lee's calendar",
    )

    async def add_event(
        start: datetime | None = None, end: datetime | None = None, **options: Any
    ) -> str:
        return await asyncio.to_thread(app.add, start, end, **options)

    async def remove_event(event_id: str) -> None:
        await asyncio.to_thread(app.remove, event_id)

    async def events() -> list[dict[str, Any]]:
        return await asyncio.to_thread(app.events)

    return Harness(
        provider=CaldavProvider(timeout=TIMEOUT),
        account=account,
        calendar_id=proxy.base_url + calendar_path,
        add_event=add_event,
        remove_event=remove_event,
        events=events,
        fail_next=proxy.fail_next,
        extra={"radicale": server, "proxy": proxy, "calendar": app.calendar},
    )
