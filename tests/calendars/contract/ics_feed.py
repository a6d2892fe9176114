"""A published ICS feed on loopback (what Google's or iCloud's "secret address" serves), with
faults on demand: `fail_next(kind, times)` answers the next fetches with "429" (Retry-After:
`retry_after`), "500", "503", "400", "404", or holds the answer `hold` seconds ("timeout").
`vevents` are the feed's VEVENT blocks; `requests` records each fetch's path and fault.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("timeout", "429", "500", "503", "400", "404")


class IcsFeed:
    def __init__(self, *, hold: float = 3.0) -> None:
        self.hold = hold
        self.retry_after = "1"
        self.vevents: dict[str, str] = {}  # UID -> VEVENT block (CRLF lines)
        self.requests: list[tuple[str, str | None]] = []  # (path, the fault it met)
        self._faults: list[str] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/calendar.ics"

    def start(self) -> IcsFeed:
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

    def body(self) -> bytes:
        with self._lock:
            blocks = list(self.vevents.values())
        lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Frontdesk contract//EN"]
        text = "\r\n".join(lines) + "\r\n" + "".join(blocks) + "END:VCALENDAR\r\n"
        return text.encode()

    def _take(self, path: str) -> str | None:
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
            self.requests.append((path, fault))
            return fault


def _handler(feed: IcsFeed) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fault = feed._take(self.path)
            if fault in ("429", "500", "503", "400", "404"):
                self.send_response(int(fault))
                if fault == "429":
                    self.send_header("Retry-After", feed.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fault == "timeout":
                feed._released.wait(feed.hold)
            data = feed.body()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/calendar; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
