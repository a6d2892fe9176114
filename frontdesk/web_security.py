"""The web surface's outermost layer: security headers on every response, the Host header
checked against the hosts this server answers for, and forwarded headers believed only from
the configured proxies.

`SecureFastAPI` wraps its whole middleware stack, Starlette's `ServerErrorMiddleware` included,
in `WebSecurity`, so pages, the JSON API, static files and the 404/500 answers all carry the
same headers. The policy allows scripts and styles from this server only: no inline script, no
inline event handler, no `style=` attribute (the dashboard's behaviour is in static/app.js).

Pages link to this server by relative paths only; absolute URLs (calendar feeds, OAuth redirects,
notification addresses) come from `FRONTDESK_PUBLIC_BASE_URL`. A request whose Host header names
another host (`FRONTDESK_ALLOWED_HOSTS`) is answered 400 before it reaches the app, so nothing
the app builds from `request.url` can point elsewhere.

`X-Forwarded-For` and `X-Forwarded-Proto` are used only when the direct peer is one of
`FRONTDESK_TRUSTED_PROXIES`; the client is then the right-most address in X-Forwarded-For that
is not a trusted proxy (what the nearest proxy saw: the addresses left of it are whatever the
client chose to send). uvicorn's own handling of them is off (`SERVER_OPTIONS`): it believes any
local peer, so per-address limits such as the log-in one could be dodged by a header.

The API docs (/docs, /redoc) load Swagger UI and ReDoc from a CDN; they are served here with
their own, wider policy (`docs_policy`), which the middleware leaves in place.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frontdesk.settings import HOST_NAME, host_entry

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
# How `frontdesk serve` runs uvicorn: forwarded headers are this module's business alone.
SERVER_OPTIONS: dict[str, Any] = {"proxy_headers": False, "server_header": False}

_CSP = b"content-security-policy"
_SET = {_CSP, *(name for name, _ in HEADERS)}

DOCS_CDN = "https://cdn.jsdelivr.net"
DOCS_ICON = "https://fastapi.tiangolo.com"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)

log = logging.getLogger(__name__)


def with_headers(message: Message) -> Message:
    """`http.response.start` with the security headers added; a policy the app set is kept
    (only the docs pages set one), every other header of ours replaces the app's."""
    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _SET - {_CSP}]
    if not any(k.lower() == _CSP for k, _ in headers):
        headers.append((_CSP, CSP.encode()))
    headers.extend(HEADERS)
    return {**message, "headers": headers}


def host_name(header: str) -> str | None:
    """The host of a Host header value (`Example.com:8000` -> `example.com`, `[::1]:80` ->
    `::1`); None when it is not a host name or address with an optional port."""
    value = header.strip().lower()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
    else:
        host, _, port = value.partition(":")
        if port and not port.isdigit():
            return None
        host = host.rstrip(".")
    return host if host and HOST_NAME.fullmatch(host) else None


class AllowedHosts:
    """Host names answered: exact names, `*.example.com` for its subdomains, or `*` for any."""

    def __init__(self, hosts: Iterable[str]) -> None:
        names = {host_entry(h) for h in hosts if h.strip()}
        self.any = "*" in names
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        self.names = frozenset(n for n in names if not n.startswith("*"))

    def __contains__(self, host: str) -> bool:
        return self.any or host in self.names or host.endswith(self.suffixes)


Network = IPv4Network | IPv6Network


def _address(text: str) -> IPv4Address | IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ip_address(text)
    except ValueError:
        return None


class TrustedProxies:
    def __init__(self, networks: Iterable[Network | str]) -> None:
        self.networks: list[Network] = [
            n if isinstance(n, IPv4Network | IPv6Network) else _network(n) for n in networks
        ]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: IPv4Address | IPv6Address | None) -> bool:
        if address is None:
            return False
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client(self, peer: str, forwarded_for: Sequence[str]) -> str:
        """The client address of a request from `peer` with these X-Forwarded-For values."""
        if _address(peer) not in self:
            return peer
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        client = peer
        for hop in reversed([h for h in hops if h]):
            address = _address(hop)
            if address is None:
                break  # not an address: the chain can no longer be believed
            client = str(address)
            if address not in self:
                break
        return client


def _network(text: str) -> Network:
    return ip_network(text.strip(), strict=False)


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]


class WebSecurity:
    """Pure ASGI middleware: refuses requests for other hosts (400), takes the client address
    and scheme from a trusted proxy's forwarded headers, adds the security headers to every
    HTTP response."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str] = ("*",),
        trusted_proxies: Iterable[Network | str] = (),
    ) -> None:
        self.app = app
        self.allowed = AllowedHosts(allowed_hosts)
        self.proxies = TrustedProxies(trusted_proxies)

    def _forwarded(self, scope: Scope) -> Scope:
        """`scope` with the client and scheme a trusted proxy forwarded (else unchanged)."""
        peer = scope.get("client")
        if not self.proxies or not peer or _address(str(peer[0])) not in self.proxies:
            return scope
        scope = dict(scope)
        client = self.proxies.client(str(peer[0]), _headers(scope, b"x-forwarded-for"))
        if client != peer[0]:
            scope["client"] = (client, 0)
        protos = [
            p.strip().lower()
            for v in _headers(scope, b"x-forwarded-proto")
            for p in v.split(",")
            if p.strip()
        ]
        if protos and protos[-1] in ("http", "https"):
            secure = protos[-1] == "https"
            if scope["type"] == "websocket":
                scope["scheme"] = "wss" if secure else "ws"
            else:
                scope["scheme"] = "https" if secure else "http"
        return scope

    def _host_allowed(self, scope: Scope) -> bool:
        values = [v for k, v in scope.get("headers", ()) if k.lower() == b"host"]
        if not values:
            return True  # HTTP/1.0 without Host: URLs come from the bound address
        if len(values) > 1:
            return False
        host = host_name(values[0].decode("latin-1"))
        return host is not None and host in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self._host_allowed(scope):
            await self._refuse_host(scope, send)
            return
        scope = self._forwarded(scope)
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = with_headers(message)
            await send(message)

        await self.app(scope, receive, send_secured)

    async def _refuse_host(self, scope: Scope, send: Send) -> None:
        host = next((v for k, v in scope.get("headers", ()) if k.lower() == b"host"), b"")
        log.warning(
            "refused a request for host %r: not in FRONTDESK_ALLOWED_HOSTS",
            host.decode("latin-1")[:100],
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"Bad Request: this server does not answer for that host name.\n"
        await send(
            with_headers(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
        )
        await send({"type": "http.response.body", "body": body})


class SecureFastAPI(FastAPI):
    """FastAPI with `WebSecurity` outside everything, so even a 500 answer carries the headers.

    `allowed_hosts`: the Host names answered (`Settings.hosts_answered()`); `*` for any.
    `trusted_proxies`: the proxies whose forwarded headers are believed (default: none)."""

    def __init__(
        self,
        *,
        allowed_hosts: Iterable[str] = ("*",),
        trusted_proxies: Iterable[Network | str] = (),
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.allowed_hosts = list(allowed_hosts)
        self.trusted_proxies = list(trusted_proxies)

    def build_middleware_stack(self) -> ASGIApp:
        return WebSecurity(
            super().build_middleware_stack(),
            allowed_hosts=self.allowed_hosts,
            trusted_proxies=self.trusted_proxies,
        )


# ---- the API docs -----------------------------------------------------------------------------


def _script_hashes(page: str) -> list[str]:
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in _INLINE_SCRIPT.findall(page)
    ]


def docs_policy(page: str) -> str:
    """The policy of a docs page: its CDN's scripts and styles, its own inline script by hash.

    Swagger UI and ReDoc set styles at run time (ReDoc through <style> elements), so styles may
    be inline there; ReDoc also runs a web worker from a blob: URL."""
    return "; ".join(
        [
            "default-src 'self'",
            " ".join(["script-src 'self'", DOCS_CDN, *_script_hashes(page)]),
            f"style-src 'self' 'unsafe-inline' {DOCS_CDN}",
            f"img-src 'self' data: {DOCS_ICON} {DOCS_CDN}",
            "font-src 'self' data:",
            "worker-src 'self' blob:",
            "connect-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )


def _docs_page(page: HTMLResponse) -> Any:
    """A route answering with `page` under its own policy."""
    body = bytes(page.body).decode()
    headers = {"Content-Security-Policy": docs_policy(body)}

    async def route() -> HTMLResponse:
        return HTMLResponse(body, headers=headers)

    return route


def add_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Swagger UI and ReDoc as FastAPI serves them, each with its policy (create the app with
    `docs_url=None, redoc_url=None`)."""
    openapi_url = app.openapi_url or "/openapi.json"
    swagger = get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} - Swagger UI")
    redoc = get_redoc_html(
        openapi_url=openapi_url, title=f"{app.title} - ReDoc", with_google_fonts=False
    )
    app.add_api_route(docs_url, _docs_page(swagger), include_in_schema=False, methods=["GET"])
    app.add_api_route(redoc_url, _docs_page(redoc), include_in_schema=False, methods=["GET"])
