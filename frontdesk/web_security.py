"""The web surface's outermost layer: security headers on every response.

`SecureFastAPI` wraps its whole middleware stack, Starlette's `ServerErrorMiddleware` included,
in `WebSecurity`, so pages, the JSON API, static files and the 404/500 answers all carry the
same headers. The policy allows scripts and styles from this server only: no inline script, no
inline event handler, no `style=` attribute (the dashboard's behaviour is in static/app.js).

The API docs (/docs, /redoc) load Swagger UI and ReDoc from a CDN; they are served here with
their own, wider policy (`docs_policy`), which the middleware leaves in place.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "object-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
])
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
_CSP = b"content-security-policy"
_SET = {_CSP, *(name for name, _ in HEADERS)}

DOCS_CDN = "https://cdn.jsdelivr.net"
DOCS_ICON = "https://fastapi.tiangolo.com"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def with_headers(message: Message) -> Message:
    """`http.response.start` with the security headers added; a policy the app set is kept
    (only the docs pages set one), every other header of ours replaces the app's."""
    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _SET - {_CSP}]
    if not any(k.lower() == _CSP for k, _ in headers):
        headers.append((_CSP, CSP.encode()))
    headers.extend(HEADERS)
    return {**message, "headers": headers}


class WebSecurity:
    """Pure ASGI middleware: adds the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = with_headers(message)
            await send(message)

        await self.app(scope, receive, send_secured)


class SecureFastAPI(FastAPI):
    """FastAPI with `WebSecurity` outside everything, so even a 500 answer carries the headers."""

    def build_middleware_stack(self) -> ASGIApp:
        return WebSecurity(super().build_middleware_stack())


# ---- the API docs -----------------------------------------------------------------------------


def _script_hashes(page: str) -> list[str]:
    return [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
            for s in _INLINE_SCRIPT.findall(page)]


def docs_policy(page: str) -> str:
    """The policy of a docs page: its CDN's scripts and styles, its own inline script by hash.

    Swagger UI and ReDoc set styles at run time (ReDoc through <style> elements), so styles may
    be inline there; ReDoc also runs a web worker from a blob: URL."""
    return "; ".join([
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
    ])


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
    redoc = get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc",
                           with_google_fonts=False)
    app.add_api_route(docs_url, _docs_page(swagger), include_in_schema=False, methods=["GET"])
    app.add_api_route(redoc_url, _docs_page(redoc), include_in_schema=False, methods=["GET"])
