"""A loopback CalDAV server laid out like iCloud, for the provider's discovery tests.

Two listeners share one store, as iCloud's front door and the account's own host do:
`front` (127.0.0.1) is `https://caldav.icloud.com/`, `home` (127.0.0.2) is
`https://p07-caldav.icloud.com/`. What they answer follows the RFCs with iCloud's layout:

- `/.well-known/caldav` -> 301 to `/`, without asking for a login (RFC 6764 section 5);
- everything else wants HTTP Basic (401 with `WWW-Authenticate` otherwise);
- PROPFIND `/` on the front: `current-user-principal` is `/123456/principal/` (RFC 5397);
- PROPFIND the principal (on either host): resourcetype principal, `calendar-home-set` an
  absolute URL on the home host (RFC 4791 section 6.2.1), `/123456/calendars/`, and
  `schedule-inbox-URL` (RFC 6638 section 2.2.1), the inbox in that home;
- PROPFIND the home, Depth 1: the home and its collections, each with resourcetype,
  displayname, supported-calendar-component-set and current-user-privilege-set (RFC 3744
  section 5.4): "Work" and "Family" (VEVENT, read and write), "Reminders" (VTODO only),
  "US Holidays" (a subscription: read only, `schedule-calendar-transp` transparent, RFC 6638
  section 9.1) and a scheduling inbox whose `schedule-default-calendar-URL` (RFC 6638 section
  9.2) is Family (`default_calendar`; None leaves it out);
- PROPFIND a calendar: resourcetype, displayname, getctag, sync-token;
- REPORT calendar-query on a calendar: every event, as calendar-data with an ETag (the
  provider cuts to its window; a real server filters by the query's time-range first);
- PUT `<calendar>/<name>.ics` (412 to `If-None-Match: *` when it exists), DELETE (404 when
  gone), GET.

Requested properties the resource lacks come back in a 404 propstat, as servers answer.
`principal_on_home_host=False` leaves the principal to the front only (the home host then
names a principal it does not serve). `dav_root` moves the front's DAV service off `/`
(Nextcloud's `/remote.php/dav/`, Baikal's `/dav.php/`): `/` is then the web site's HTML page
and `/.well-known/caldav` redirects there.
`forbidden = True` answers every request with the right password 403 Forbidden, as a server
does for an account that was disabled or lost its access.
`refused_props` holds `(namespace, name)` pairs answered in a 403 propstat wherever they are
asked for, as servers answer a property the account may not read (RFC 4918 section 9.1).
`family_shared_by` makes "Family" another principal's calendar shared with this account, as
iCloud shares a family calendar: its `DAV:owner` (RFC 3744 section 5.1) is that principal and
its resourcetype carries CalendarServer's `shared` (caldav-sharing); every other calendar's
`DAV:owner` is the account's principal.
`requests` records `(host, method, path)` of every request.
"""

from __future__ import annotations

import base64
import threading
import xml.etree.ElementTree as ET
from collections.abc import Collection
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

USERNAME = "lee@icloud.example"
PASSWORD = "abcd-efgh-ijkl-mnop"
PRINCIPAL = "/123456/principal/"
HOME = "/123456/calendars/"

_DAV = "DAV:"
_CAL = "urn:ietf:params:xml:ns:caldav"
_CS = "http://calendarserver.org/ns/"
_NAMESPACES = {_DAV: "D", _CAL: "C", _CS: "CS"}


@dataclass
class _Collection:
    name: str
    components: tuple[str, ...] = ("VEVENT",)
    kind: str = "calendar"  # or "schedule-inbox"
    writable: bool = True
    transparent: bool = False
    events: dict[str, str] = field(default_factory=dict)  # file name -> iCalendar text
    version: int = 1


class IcloudLikeCaldav:
    """Start with `start()`, stop with `stop()`; `front_url` is what a user types."""

    def __init__(
        self,
        *,
        dav_root: str = "/",
        principal_on_home_host: bool = True,
        default_calendar: str | None = "family",
        family_shared_by: str | None = None,
    ) -> None:
        self.dav_root = dav_root
        self.family_shared_by = family_shared_by
        self.default_calendar = default_calendar
        self.forbidden = False
        self.refused_props: set[tuple[str, str]] = set()
        self.principal_on_home_host = principal_on_home_host
        self.requests: list[tuple[str, str, str]] = []
        self.collections: dict[str, _Collection] = {
            HOME + "work/": _Collection("Work"),
            HOME + "family/": _Collection("Family"),
            HOME + "tasks/": _Collection("Reminders", components=("VTODO",)),
            HOME + "holidays/": _Collection("US Holidays", writable=False, transparent=True),
            HOME + "inbox/": _Collection("Inbox", components=(), kind="schedule-inbox"),
        }
        self._lock = threading.Lock()
        self._front = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, front=True))
        self._home = ThreadingHTTPServer(("127.0.0.2", 0), _handler(self, front=False))
        self._threads = [
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            for server in (self._front, self._home)
        ]
        for server in (self._front, self._home):
            server.daemon_threads = True

    @property
    def front_url(self) -> str:
        return f"http://127.0.0.1:{self._front.server_port}/"

    @property
    def home_url(self) -> str:
        return f"http://127.0.0.2:{self._home.server_port}{HOME}"

    def calendar_url(self, name: str) -> str:
        return f"{self.home_url}{name}/"

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for server in (self._front, self._home):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def add_event(self, calendar: str, uid: str, ics: str) -> None:
        with self._lock:
            collection = self.collections[HOME + calendar + "/"]
            collection.events[f"{uid}.ics"] = ics
            collection.version += 1

    def events(self, calendar: str) -> dict[str, str]:
        with self._lock:
            return dict(self.collections[HOME + calendar + "/"].events)

    def event_at(self, path: str) -> str | None:
        folder, _, name = path.rpartition("/")
        with self._lock:
            collection = self.collections.get(folder + "/")
            return collection.events.get(name) if collection else None

    # ---- answers ----------------------------------------------------------------------------

    def _properties(self, path: str, front: bool) -> dict[tuple[str, str], str] | None:
        """The properties of the resource at `path`, as XML fragments; None: no resource."""
        if front and path == self.dav_root:
            return {
                (_DAV, "resourcetype"): "<D:collection/>",
                (_DAV, "current-user-principal"): f"<D:href>{PRINCIPAL}</D:href>",
            }
        if path == PRINCIPAL and (front or self.principal_on_home_host):
            return {
                (_DAV, "resourcetype"): "<D:principal/>",
                (_DAV, "displayname"): "Dr. Lee",
                (_DAV, "current-user-principal"): f"<D:href>{PRINCIPAL}</D:href>",
                (_CAL, "calendar-home-set"): f"<D:href>{escape(self.home_url)}</D:href>",
                (_CAL, "schedule-inbox-URL"): f"<D:href>{HOME}inbox/</D:href>",
            }
        if front:
            return None
        if path == HOME:
            return {
                (_DAV, "resourcetype"): "<D:collection/>",
                (_DAV, "current-user-principal"): f"<D:href>{PRINCIPAL}</D:href>",
            }
        collection = self.collections.get(path)
        if collection is None:
            return None
        components = "".join(f'<C:comp name="{c}"/>' for c in collection.components)
        shared = self.family_shared_by is not None and path == HOME + "family/"
        owner = self.family_shared_by if shared else PRINCIPAL
        props = {
            (_DAV, "resourcetype"): f"<D:collection/><C:{collection.kind}/>"
            + ("<CS:shared/>" if shared else ""),
            (_DAV, "owner"): f"<D:href>{escape(owner or PRINCIPAL)}</D:href>",
            (_DAV, "displayname"): escape(collection.name),
            (_CAL, "supported-calendar-component-set"): components,
            (_CS, "getctag"): f"ctag-{collection.version}",
            (_DAV, "sync-token"): f"https://example.invalid/sync/{collection.version}",
        }
        privileges = ["read"] + (["write", "write-content", "bind"] if collection.writable else [])
        props[(_DAV, "current-user-privilege-set")] = "".join(
            f"<D:privilege><D:{name}/></D:privilege>" for name in privileges
        )
        if collection.kind == "calendar":
            transp = "transparent" if collection.transparent else "opaque"
            props[(_CAL, "schedule-calendar-transp")] = f"<C:{transp}/>"
        elif self.default_calendar is not None:
            default = escape(self.calendar_url(self.default_calendar))
            props[(_CAL, "schedule-default-calendar-URL")] = f"<D:href>{default}</D:href>"
        if not components:
            del props[(_CAL, "supported-calendar-component-set")]
        return props

    def propfind(self, path: str, depth: str, body: bytes, front: bool) -> tuple[int, str]:
        wanted = _requested(body)
        with self._lock:
            own = self._properties(path, front)
            if own is None:
                return 404, ""
            answers = [_response(path, own, wanted, self.refused_props)]
            if depth == "1" and not front and path == HOME:
                for child in self.collections:
                    props = self._properties(child, front=False)
                    if props is not None:
                        answers.append(_response(child, props, wanted, self.refused_props))
            if depth == "1" and path in self.collections:
                for name in self.collections[path].events:
                    answers.append(_response(path + name, {(_DAV, "getetag"): '"1"'}, wanted))
        return 207, _multistatus(answers)

    def report(self, path: str, front: bool) -> tuple[int, str]:
        with self._lock:
            collection = None if front else self.collections.get(path)
            if collection is None:
                return 404, ""
            answers = [
                f"<D:response><D:href>{escape(quote(path + name))}</D:href><D:propstat><D:prop>"
                f'<D:getetag>"{collection.version}"</D:getetag>'
                f"<C:calendar-data>{escape(ics)}</C:calendar-data>"
                "</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
                for name, ics in collection.events.items()
            ]
        return 207, _multistatus(answers)

    def put(self, path: str, body: bytes, headers: Any, front: bool) -> int:
        folder, _, name = path.rpartition("/")
        with self._lock:
            collection = None if front else self.collections.get(folder + "/")
            if collection is None or not collection.writable or collection.kind != "calendar":
                return 403
            if not name.endswith(".ics"):
                return 403
            exists = name in collection.events
            if exists and headers.get("If-None-Match") == "*":
                return 412
            collection.events[name] = body.decode()
            collection.version += 1
            return 204 if exists else 201

    def delete(self, path: str, front: bool) -> int:
        folder, _, name = path.rpartition("/")
        with self._lock:
            collection = None if front else self.collections.get(folder + "/")
            if collection is None or name not in collection.events:
                return 404
            del collection.events[name]
            collection.version += 1
            return 204


def _requested(body: bytes) -> list[tuple[str, str]] | None:
    """The property names a PROPFIND asks for; None for allprop (or no body)."""
    if not body.strip():
        return None
    root = ET.fromstring(body)
    prop = root.find(f"{{{_DAV}}}prop")
    if prop is None:
        return None
    names = []
    for child in prop:
        namespace, _, local = child.tag[1:].partition("}")
        names.append((namespace, local))
    return names


def _tag(name: tuple[str, str]) -> str:
    namespace, local = name
    prefix = _NAMESPACES.get(namespace)
    return f"{prefix}:{local}" if prefix else f'X:{local} xmlns:X="{escape(namespace)}"'


def _close(name: tuple[str, str]) -> str:
    namespace, local = name
    prefix = _NAMESPACES.get(namespace)
    return f"{prefix}:{local}" if prefix else f"X:{local}"


def _response(
    href: str,
    props: dict[tuple[str, str], str],
    wanted: list[tuple[str, str]] | None,
    refused: Collection[tuple[str, str]] = (),
) -> str:
    names = list(props) if wanted is None else wanted
    allowed = [n for n in names if n not in refused]
    found = "".join(f"<{_tag(n)}>{props[n]}</{_close(n)}>" for n in allowed if n in props)
    missing = "".join(f"<{_tag(n)}/>" for n in allowed if n not in props)
    stats = f"<D:propstat><D:prop>{found}</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
    forbidden = "".join(f"<{_tag(n)}/>" for n in names if n in refused)
    if forbidden:
        stats += (
            f"<D:propstat><D:prop>{forbidden}</D:prop>"
            "<D:status>HTTP/1.1 403 Forbidden</D:status></D:propstat>"
        )
    if missing:
        stats += (
            f"<D:propstat><D:prop>{missing}</D:prop>"
            "<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>"
        )
    return f"<D:response><D:href>{escape(quote(href))}</D:href>{stats}</D:response>"


def _multistatus(answers: list[str]) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<D:multistatus xmlns:D="{_DAV}" xmlns:C="{_CAL}" xmlns:CS="{_CS}">'
        + "".join(answers)
        + "</D:multistatus>"
    )


def _handler(server: IcloudLikeCaldav, *, front: bool) -> type[BaseHTTPRequestHandler]:
    expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = unquote(self.path.split("?", 1)[0])
            host = "front" if front else "home"
            with server._lock:
                server.requests.append((host, self.command, path))
            if front and path.rstrip("/") == "/.well-known/caldav":
                self._send(301, "", {"Location": server.dav_root})
                return
            if front and path == "/" and server.dav_root != "/":
                page = "<!doctype html><title>Cloud</title><p>Log in</p>"
                self._send(200, page, {"Content-Type": "text/html; charset=utf-8"})
                return
            if self.headers.get("Authorization") != expected:
                self._send(401, "", {"WWW-Authenticate": 'Basic realm="Apple CalDAV"'})
                return
            if server.forbidden:
                self._send(403, "", {})
                return
            if self.command == "PROPFIND":
                status, text = server.propfind(path, self.headers.get("Depth", "0"), body, front)
            elif self.command == "REPORT":
                status, text = server.report(path, front)
            elif self.command == "PUT":
                status, text = server.put(path, body, self.headers, front), ""
            elif self.command == "DELETE":
                status, text = server.delete(path, front), ""
            elif self.command == "GET":
                ics = None if front else server.event_at(path)
                status, text = (200, ics) if ics is not None else (404, "")
            else:
                status, text = 405, ""
            kind = "text/calendar" if self.command == "GET" else 'application/xml; charset="utf-8"'
            self._send(status, text, {"Content-Type": kind} if text else {})

        def _send(self, status: int, text: str, headers: dict[str, str]) -> None:
            data = text.encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_DELETE = do_PROPFIND = do_REPORT = do_OPTIONS = _any

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class NotCaldav:
    """A web server that is no CalDAV server: every address answers a small HTML page, and
    `/.well-known/caldav` is 404."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _plain_handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _plain_handler() -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            missing = self.path.startswith("/.well-known/")
            data = b"" if missing else b"<!doctype html><title>Welcome</title><p>Our shop</p>"
            self.send_response(404 if missing else 200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PROPFIND = do_REPORT = do_OPTIONS = _any

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
