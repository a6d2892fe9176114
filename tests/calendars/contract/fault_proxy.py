"""A loopback HTTP proxy in front of a real CalDAV server (Radicale), failing requests on demand.

Every request is forwarded unchanged unless a fault is queued with `fail_next(kind, times)`:

- "429" answers at once with `Retry-After: <retry_after>` (delta-seconds or an HTTP-date),
  "500", "503", "400", "404" answer at once with that status; nothing reaches the server;
- "timeout" forwards the request (a write lands) and holds the answer back `hold` seconds,
  past the client's time limit;
- "drop" forwards the request (a write lands) and closes the connection without answering.

Faults hit the requests that carry credentials: the CalDAV library's unauthenticated first try
on a connection (answered 401) is the login, not the work. `requests` records
`(method, path, authorized, fault)` of every request seen.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = ("timeout", "drop", "429", "500", "503", "400", "404")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorized: bool
    fault: str | None


class FaultProxy:
    def __init__(self, upstream_port: int, *, hold: float = 4.0) -> None:
        self.upstream_port = upstream_port
        self.hold = hold
        self.retry_after = "1"
        self.requests: list[Seen] = []
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
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail_next(self, kind: str, times: int = 1) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {KINDS}")
        with self._lock:
            self._faults += [kind] * times

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, method: str, path: str, authorized: bool) -> str | None:
        with self._lock:
            fault = self._faults.pop(0) if self._faults and authorized else None
            self.requests.append(Seen(method, path, authorized, fault))
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
        disable_nagle_algorithm = True

        def _any(self) -> None:
            body = self._body()
            fault = proxy._take(self.command, self.path, "Authorization" in self.headers)
            if fault in ("429", "500", "503", "400", "404"):
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
            while self.rfile.readline().strip():
                pass
            return body

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any
        do_OPTIONS = do_PROPFIND = do_PROPPATCH = do_REPORT = do_MKCOL = do_MKCALENDAR = _any

        def log_message(self, format: str, *args: object) -> None:
            pass

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (BrokenPipeError, ConnectionResetError, OSError):
                self.close_connection = True

    return Handler
