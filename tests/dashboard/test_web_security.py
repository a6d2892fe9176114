"""The web surface's guards: security headers on every answer, the Host header checked, and
forwarded addresses trusted only from configured proxies."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from booking.scheduler import Scheduler
from frontdesk import web_security
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.dashboard.conftest import API_KEY, log_in

AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEMPLATES = web_security.__file__.replace("frontdesk/web_security.py", "dashboard/templates")


def client(
    app: FastAPI,
    *,
    peer: str = "127.0.0.1",
    base_url: str = "http://localhost",
    raise_errors: bool = True,
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 4000), raise_app_exceptions=raise_errors)
    return httpx.AsyncClient(transport=transport, base_url=base_url)


def assert_secured(response: httpx.Response) -> None:
    policy = response.headers.get("content-security-policy", "")
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "style-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "base-uri 'none'" in policy and "form-action 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"


# ---- headers ----------------------------------------------------------------------------------


PATHS = [
    "/login",
    "/leads",
    "/static/app.css",
    "/static/htmx.min.js",
    "/static/app.js",
    "/static/missing.css",
    "/no-such-page",
    "/api/v1/availability?service=cleaning",
    "/api/v1/appointments",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
]


async def test_every_answer_carries_the_security_headers(app: FastAPI) -> None:
    async with client(app) as c:
        for path in PATHS:
            response = await c.get(path, headers=AUTH if path.startswith("/api") else {})
            assert response.status_code < 500, path
            assert_secured(response)
        assert_secured(await c.post("/api/v1/leads", headers=AUTH, content=b"{"))  # a 422


async def test_an_unhandled_error_answer_carries_them_too(app: FastAPI) -> None:
    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    async with client(app, raise_errors=False) as c:
        response = await c.get("/boom")
    assert response.status_code == 500
    assert_secured(response)


async def test_a_page_error_carries_them(owner: httpx.AsyncClient) -> None:
    response = await owner.get("/leads/lead_nope")
    assert response.status_code == 404 and "text/html" in response.headers["content-type"]
    assert_secured(response)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_the_api_docs_have_their_own_policy(app: FastAPI, path: str) -> None:
    async with client(app) as c:
        response = await c.get(path)
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    sources = dict(part.split(" ", 1) for part in policy.split("; "))
    # Scripts from the CDN the page names, and its inline script by hash only.
    assert "'unsafe-inline'" not in sources["script-src"]
    assert "frame-ancestors" in sources and sources["frame-ancestors"] == "'none'"
    for url in re.findall(r'<script src="([^"]+)"', response.text):
        assert url.startswith(web_security.DOCS_CDN + "/")
        assert web_security.DOCS_CDN in sources["script-src"]
    for script in re.findall(r"<script>(.*?)</script>", response.text, re.S):
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in sources["script-src"]
    for url in re.findall(r'<link[^>]+href="(https://[^"]+)"', response.text):
        origin = "/".join(url.split("/")[:3])
        assert origin in sources["style-src"] or origin in sources["img-src"], url
    assert response.headers["x-frame-options"] == "DENY"


def test_templates_have_no_inline_script_handler_or_style() -> None:
    from pathlib import Path

    inline = re.compile(
        r"<script(?![^>]*\bsrc=)|<style|\son[a-z]+\s*=|\sstyle\s*=|hx-on|"
        r"javascript:",
        re.I,
    )
    found = [
        f"{path.name}: {m.group(0)}"
        for path in sorted(Path(TEMPLATES).glob("*.html"))
        for m in inline.finditer(path.read_text())
    ]
    assert not found


# ---- the Host header --------------------------------------------------------------------------


@pytest.fixture
def any_host_app(scheduler: Scheduler, accounts: dict[str, str]) -> FastAPI:
    """The app answering every Host, to show no page builds a URL from the Host header."""
    settings = Settings(api_key=SecretStr(API_KEY), allowed_hosts=["*"])
    return create_app(settings, scheduler=scheduler)


FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:8000",
    "localhost.evil.example",
    "127.0.0.1.evil.example",
    "localhost@evil.example",
    "localhost:80@evil.example",
    "[::1",
    "",
    "evil.example.",
    "localhost, evil.example",
]


async def test_a_request_for_another_host_is_refused(app: FastAPI) -> None:
    async with client(app) as c:
        for path in [
            "/login",
            "/api/v1/availability?service=cleaning",
            "/static/htmx.min.js",
            "/docs",
            "/no-such-page",
        ]:
            for host in FOREIGN_HOSTS:
                response = await c.get(path, headers={"Host": host, **AUTH})
                assert response.status_code == 400, (path, host)
                assert "does not answer for that host" in response.text
                assert "evil" not in response.text
                assert_secured(response)


async def test_the_answered_hosts_are_served(app: FastAPI) -> None:
    async with client(app) as c:
        for host in [
            "test",
            "localhost",
            "localhost:8000",
            "LOCALHOST",
            "127.0.0.1:9",
            "localhost.",
        ]:
            assert (await c.get("/login", headers={"Host": host})).status_code == 200, host


def test_the_default_hosts_are_the_public_one_and_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FRONTDESK_ALLOWED_HOSTS")
    assert Settings().hosts_answered() == ["127.0.0.1", "localhost", "::1"]
    hosts = Settings(
        public_base_url="https://Desk.Example.com/", host="10.0.0.5", port=9000
    ).hosts_answered()
    assert hosts == ["desk.example.com", "localhost", "127.0.0.1", "::1", "10.0.0.5"]
    monkeypatch.setenv("FRONTDESK_ALLOWED_HOSTS", "desk.example.com, *.desk.example.com")
    assert Settings().hosts_answered() == ["desk.example.com", "*.desk.example.com"]
    monkeypatch.setenv("FRONTDESK_ALLOWED_HOSTS", '["one.example"]')
    assert Settings().hosts_answered() == ["one.example"]


async def test_allowed_hosts_given_with_a_port_are_answered(
    monkeypatch: pytest.MonkeyPatch, scheduler: Scheduler, accounts: dict[str, str]
) -> None:
    # The Host header's port is dropped before the comparison, so a listed port must be too.
    monkeypatch.setenv(
        "FRONTDESK_ALLOWED_HOSTS",
        "Desk.Example.com:8443, [::1]:8000, [fd00::5], *.Example.org:443, desk.example.com",
    )
    settings = Settings(api_key=SecretStr(API_KEY))
    assert settings.hosts_answered() == ["desk.example.com", "::1", "fd00::5", "*.example.org"]
    async with client(create_app(settings, scheduler=scheduler)) as c:
        for host in [
            "desk.example.com:8443",
            "desk.example.com",
            "[::1]:8000",
            "[fd00::5]",
            "a.example.org:443",
        ]:
            assert (await c.get("/login", headers={"Host": host})).status_code == 200, host
        for host in ["evil.example:8443", "example.org", "localhost"]:
            assert (await c.get("/login", headers={"Host": host})).status_code == 400, host


@pytest.mark.parametrize(
    "entry",
    ["desk.example.com:https", "[::1", "https://desk.example.com", ":8443", "*.", "desk example"],
)
def test_an_allowed_host_that_is_no_host_name_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    monkeypatch.setenv("FRONTDESK_ALLOWED_HOSTS", f"desk.example.com, {entry}")
    with pytest.raises(ValueError, match="is not a host name") as caught:
        Settings()
    assert entry in str(caught.value)


def test_the_middleware_compares_listed_hosts_without_their_port() -> None:
    allowed = web_security.AllowedHosts(["desk.example.com:8443", "[::1]:80", "*.a.example:1"])
    assert "desk.example.com" in allowed and "::1" in allowed and "b.a.example" in allowed
    assert "evil.example" not in allowed


@pytest.mark.parametrize(
    ("allowed", "host", "answered"),
    [
        (["*.desk.example.com"], "a.desk.example.com", True),
        (["*.desk.example.com"], "desk.example.com", False),
        (["*.desk.example.com"], "evildesk.example.com", False),
        (["::1"], "[::1]:8000", True),
        (["*"], "anything.example", True),
    ],
)
async def test_host_patterns(allowed: list[str], host: str, answered: bool) -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = web_security.WebSecurity(inner, allowed_hosts=allowed)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=guarded), base_url="http://x"
    ) as c:
        response = await c.get("/", headers={"Host": host})
    assert (response.status_code == 204) is answered and bool(seen) is answered


async def test_a_websocket_for_another_host_is_closed_unopened() -> None:
    opened: list[bool] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        opened.append(True)

    guarded = web_security.WebSecurity(inner, allowed_hosts=["desk.example.com"])
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    scope = {"type": "websocket", "path": "/voice/relay", "headers": [(b"host", b"evil.example")]}
    await guarded(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}] and not opened
    await guarded({**scope, "headers": [(b"host", b"desk.example.com")]}, receive, send)
    assert opened == [True]


OWNER_PAGES = [
    "/login",
    "/",
    "/leads",
    "/leads?outcome=spam",
    "/appointments",
    "/staff",
    "/staff/lee",
    "/staff/lee/calendars",
    "/settings",
    "/integrations",
    "/privacy",
    "/try",
    "/leads/lead_nope",
]


async def test_no_page_links_to_the_host_it_was_asked_for(any_host_app: FastAPI) -> None:
    """Before: `Host: evil.example` got `<script src="http://evil.example/static/...">`."""
    async with client(any_host_app, base_url="http://evil.example") as c:
        login = await c.get("/login")
        assert 'src="/static/htmx.min.js"' in login.text
        signed_in = await log_in(c, "owner@clinic.test")
        assert signed_in.status_code == 303 and "evil" not in signed_in.headers["location"]
        for path in OWNER_PAGES:
            response = await c.get(path)
            assert response.status_code < 500, path
            assert "evil.example" not in response.text, path
            assert "evil.example" not in response.headers.get("location", ""), path
    async with client(any_host_app, base_url="http://evil.example") as c:
        assert "evil" not in (await c.get("/leads")).headers["location"]


# ---- forwarded headers ------------------------------------------------------------------------


async def seen_by_app(*, peer: str, headers: dict[str, str], trusted: list[str]) -> tuple[str, str]:
    """The client address and scheme the app sees for a request from `peer`."""
    seen: list[tuple[str, str]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["client"][0], scope["scheme"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = web_security.WebSecurity(inner, trusted_proxies=trusted)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=guarded, client=(peer, 5000)), base_url="http://localhost"
    ) as c:
        await c.get("/", headers=headers)
    return seen[0]


FORWARDED = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize("peer", ["127.0.0.1", "203.0.113.9", "::1", "10.0.0.2"])
async def test_forwarded_headers_are_ignored_without_trusted_proxies(peer: str) -> None:
    assert await seen_by_app(peer=peer, headers=FORWARDED, trusted=[]) == (peer, "http")


async def test_forwarded_headers_are_ignored_from_a_peer_that_is_not_a_proxy() -> None:
    seen = await seen_by_app(peer="203.0.113.9", headers=FORWARDED, trusted=["10.0.0.0/8"])
    assert seen == ("203.0.113.9", "http")


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [
        ("198.51.100.7", "198.51.100.7"),
        # What the client sent itself (left) is not believed: the nearest untrusted hop is.
        ("1.2.3.4, 198.51.100.7", "198.51.100.7"),
        ("1.2.3.4, 198.51.100.7, 10.0.0.3", "198.51.100.7"),
        ("198.51.100.7:4711", "198.51.100.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("10.0.0.5, 10.0.0.3", "10.0.0.5"),  # only proxies: the farthest one
        ("1.2.3.4, not-an-address", "10.0.0.2"),  # a broken chain: the peer itself
        ("", "10.0.0.2"),
    ],
)
async def test_a_trusted_proxy_forwards_the_client(forwarded_for: str, client: str) -> None:
    seen = await seen_by_app(
        peer="10.0.0.2",
        trusted=["10.0.0.0/8"],
        headers={"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https"},
    )
    assert seen == (client, "https")


async def test_a_trusted_proxy_given_by_address_and_ipv6() -> None:
    assert await seen_by_app(peer="::1", headers=FORWARDED, trusted=["::1"]) == (
        "198.51.100.7",
        "https",
    )
    assert await seen_by_app(
        peer="192.0.2.1",
        headers={**FORWARDED, "X-Forwarded-Proto": "gopher"},
        trusted=["192.0.2.1"],
    ) == ("198.51.100.7", "http")


async def login_codes(
    app: FastAPI, *, peer: str, forwarded: list[str], email: str = "owner@clinic.test"
) -> list[int]:
    """Wrong-password attempts from `peer`, one per X-Forwarded-For value."""
    codes = []
    transport = httpx.ASGITransport(app=app, client=(peer, 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        for value in forwarded:
            c.headers["X-Forwarded-For"] = value
            codes.append((await log_in(c, email, "wrong guess")).status_code)
    return codes


async def test_the_login_limit_is_not_dodged_by_forwarded_for(app: FastAPI) -> None:
    """Before: a new X-Forwarded-For per guess (from a local peer) was a new address each."""
    from dashboard.web.login import MAX_FAILURES

    rotating = [f"198.51.100.{n}" for n in range(MAX_FAILURES + 1)]
    codes = await login_codes(app, peer="127.0.0.1", forwarded=rotating)
    assert codes == [401] * MAX_FAILURES + [429]


async def test_behind_a_trusted_proxy_each_client_has_its_own_limit(
    scheduler: Scheduler, accounts: dict[str, str]
) -> None:
    from dashboard.web.login import MAX_FAILURES

    app = create_app(
        Settings(api_key=SecretStr(API_KEY), trusted_proxies=["10.0.0.0/8"]), scheduler=scheduler
    )
    # The attacker rotates what it sends; the proxy appends the address it really came from.
    spoofed = [f"1.2.3.{n}, 198.51.100.7" for n in range(MAX_FAILURES + 1)]
    assert await login_codes(app, peer="10.0.0.2", forwarded=spoofed) == [401] * MAX_FAILURES + [
        429
    ]
    # Another client behind the same proxy is not locked out by it.
    assert await login_codes(app, peer="10.0.0.2", forwarded=["198.51.100.8"]) == [401]
    async with client(app, peer="10.0.0.2") as c:
        c.headers["X-Forwarded-For"] = "198.51.100.8"
        assert (await log_in(c, "owner@clinic.test")).status_code == 303


async def test_served_by_uvicorn_forwarded_for_is_not_believed(app: FastAPI) -> None:
    """uvicorn's own default believes X-Forwarded-For from any local peer; `frontdesk serve`
    runs it with `SERVER_OPTIONS`, which leave forwarded headers to the middleware."""
    import asyncio
    import socket

    import uvicorn

    from dashboard.web.login import MAX_FAILURES

    assert web_security.SERVER_OPTIONS["proxy_headers"] is False
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", **web_security.SERVER_OPTIONS)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
                await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        codes = []
        async with httpx.AsyncClient(base_url=url) as c:
            for n in range(MAX_FAILURES + 1):
                c.headers["X-Forwarded-For"] = f"198.51.100.{n}"
                codes.append((await log_in(c, "owner@clinic.test", "wrong guess")).status_code)
            assert "server" not in (await c.get("/healthz")).headers
        assert codes == [401] * MAX_FAILURES + [429]
    finally:
        server.should_exit = True
        await task
        sock.close()


# ---- absolute URLs come from the public base URL ----------------------------------------------


@pytest.mark.parametrize(
    ("options", "base"),
    [
        ({"public_base_url": "https://desk.example.com/"}, "https://desk.example.com"),
        (
            {"host": "192.0.2.10", "port": 8123},
            "http://192.0.2.10:8123",
        ),  # derived from the address
    ],
)
async def test_the_subscribe_address_uses_the_public_base_url(
    scheduler: Scheduler, accounts: dict[str, str], options: dict[str, Any], base: str
) -> None:
    """Before: `http://localhost:8000/...` whatever address the server had."""
    from calendars.secrets import new_key
    from frontdesk.wiring import build_calendar_service

    settings = Settings(
        api_key=SecretStr(API_KEY), secret_key=SecretStr(new_key()), allowed_hosts=["*"], **options
    )
    app = create_app(settings, scheduler=scheduler)
    app.state.calendar_service = build_calendar_service(settings, scheduler.engine)
    async with client(app, base_url="https://other.example:9999") as c:  # Secure cookies
        assert (await log_in(c, "lee@clinic.test")).status_code == 303
        page = await c.get("/staff/lee/calendars")
    [feed] = re.findall(r'<input readonly value="([^"]+)"', page.text)
    assert feed.startswith(f"{base}/calendars/feed/clinic/lee/") and feed.endswith(".ics")
    assert "other.example" not in page.text and "localhost:8000" not in page.text
    service = app.state.calendar_service
    assert service.redirect_uri("google") == f"{base}/calendars/callback/google"
    assert service.callback_url("microsoft") == f"{base}/calendars/notify/microsoft"


def test_a_derived_public_base_url_follows_the_serve_address() -> None:
    assert Settings().public_base_url == "http://127.0.0.1:8000"
    assert Settings().bound_to("0.0.0.0", 9000).public_base_url == "http://localhost:9000"
    assert Settings().bound_to("::1", 9000).public_base_url == "http://[::1]:9000"
    explicit = Settings(public_base_url="https://desk.example.com")
    assert explicit.bound_to("0.0.0.0", 9000).public_base_url == "https://desk.example.com"
    with pytest.raises(ValueError, match="http:// or https://"):
        Settings(public_base_url="desk.example.com")


@pytest.mark.parametrize(
    ("env", "argv", "base"),
    [
        ({}, ["--host", "0.0.0.0", "--port", "9001"], "http://localhost:9001"),
        (
            {"FRONTDESK_PUBLIC_BASE_URL": "https://desk.example.com"},
            ["--port", "9001"],
            "https://desk.example.com",
        ),
    ],
)
def test_serve_prints_the_public_urls_and_leaves_proxy_headers_to_us(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    argv: list[str],
    base: str,
) -> None:
    import logging

    import uvicorn

    from frontdesk import cli

    ran: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: ran.append({"app": app, **options}))
    monkeypatch.setenv("FRONTDESK_DATABASE_URL", f"sqlite:///{tmp_path / 'serve.db'}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert cli.main(["serve", *argv]) == 0
    finally:
        root.handlers[:], root.level = handlers, level
    out = capsys.readouterr().out
    assert f"Frontdesk is running on {base} " in out and f"{base}/docs" in out
    assert f"'{base}/api/v1/availability?" in out and f"{base}/login" in out
    [options] = ran
    assert options["proxy_headers"] is False and options["port"] == 9001
    assert options["app"].state.settings.public_base_url == base
