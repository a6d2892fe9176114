"""The web surface's guards: security headers on every answer, the Host header checked, and
forwarded addresses trusted only from configured proxies."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest
from fastapi import FastAPI

from frontdesk import web_security
from tests.dashboard.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEMPLATES = web_security.__file__.replace("frontdesk/web_security.py", "dashboard/templates")


def client(app: FastAPI, *, peer: str = "127.0.0.1", base_url: str = "http://localhost",
           raise_errors: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 4000),
                                    raise_app_exceptions=raise_errors)
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


@pytest.mark.parametrize("path", ["/login", "/leads", "/static/app.css", "/static/htmx.min.js",
                                  "/static/app.js", "/static/missing.css", "/no-such-page",
                                  "/api/v1/availability?service=cleaning", "/healthz",
                                  "/openapi.json"])
async def test_every_answer_carries_the_security_headers(app: FastAPI, path: str) -> None:
    async with client(app) as c:
        response = await c.get(path, headers=AUTH if path.startswith("/api") else {})
    assert response.status_code < 500
    assert_secured(response)


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

    inline = re.compile(r"<script(?![^>]*\bsrc=)|<style|\son[a-z]+\s*=|\sstyle\s*=|hx-on|"
                        r"javascript:", re.I)
    found = [f"{path.name}: {m.group(0)}" for path in sorted(Path(TEMPLATES).glob("*.html"))
             for m in inline.finditer(path.read_text())]
    assert not found
