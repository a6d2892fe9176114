"""Log-in, sessions, CSRF, rate limiting and roles."""

from __future__ import annotations

import httpx

from booking.scheduler import Scheduler
from tests.conftest import count_rows
from tests.dashboard.conftest import PASSWORD, csrf_of, log_in


async def test_pages_redirect_to_login_until_logged_in(anonymous: httpx.AsyncClient) -> None:
    r = await anonymous.get("/leads?outcome=booked")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fleads%3Foutcome%3Dbooked"
    r = await anonymous.get("/leads", headers={"HX-Request": "true"})
    assert r.status_code == 401 and r.headers["HX-Redirect"].startswith("/login")


async def test_login_sets_a_safe_cookie_and_logout_ends_the_session(
    anonymous: httpx.AsyncClient,
    scheduler: Scheduler,
) -> None:
    r = await log_in(anonymous, "Owner@Clinic.test ")
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("fd_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    token = anonymous.cookies["fd_session"]
    # Only a hash of the token is stored.
    assert (
        count_rows(
            scheduler.engine,
            "SELECT count(*) FROM dashboard_session WHERE token_hash = :t",
            t=token,
        )
        == 0
    )
    assert (await anonymous.get("/")).headers["location"] == "/leads"
    page = await anonymous.get("/leads")
    assert page.status_code == 200
    r = await anonymous.post("/logout", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    assert count_rows(scheduler.engine, "SELECT count(*) FROM dashboard_session") == 0
    anonymous.cookies.set("fd_session", token)  # a stolen old cookie opens nothing
    assert (await anonymous.get("/leads")).status_code == 303


async def test_wrong_password_is_refused(anonymous: httpx.AsyncClient) -> None:
    r = await log_in(anonymous, "owner@clinic.test", "wrong password!")
    assert r.status_code == 401 and "do not match" in r.text
    r = await log_in(anonymous, "nobody@clinic.test")
    assert r.status_code == 401 and "do not match" in r.text
    assert "fd_session" not in anonymous.cookies


async def test_login_is_rate_limited_per_email_and_address(
    anonymous: httpx.AsyncClient,
    client_for,  # type: ignore[no-untyped-def]
) -> None:
    for _ in range(5):
        assert (await log_in(anonymous, "owner@clinic.test", "guess-guess")).status_code == 401
    r = await log_in(anonymous, "owner@clinic.test", PASSWORD)
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    # Another account from the same address is not locked out.
    assert (await log_in(anonymous, "lee@clinic.test")).status_code == 303


async def test_forms_without_the_csrf_token_are_refused(
    anonymous: httpx.AsyncClient,
    owner: httpx.AsyncClient,
) -> None:
    r = await anonymous.post("/login", data={"email": "owner@clinic.test", "password": PASSWORD})
    assert r.status_code == 403 and "expired" in r.text
    r = await owner.post("/logout")
    assert r.status_code == 403
    r = await owner.post("/logout", data={"csrf_token": "forged"})
    assert r.status_code == 403
    r = await owner.post("/logout", headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403


async def test_the_login_redirect_stays_on_this_site(anonymous: httpx.AsyncClient) -> None:
    page = await anonymous.get("/login?next=//evil.example/")
    r = await anonymous.post(
        "/login",
        data={
            "email": "owner@clinic.test",
            "password": PASSWORD,
            "csrf_token": csrf_of(page.text),
            "next": "https://evil.example/",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/"


async def test_guessing_one_account_from_many_addresses_is_limited_too(app) -> None:  # type: ignore[no-untyped-def]
    from dashboard.web.login import MAX_ACCOUNT_FAILURES

    codes = []
    for n in range(MAX_ACCOUNT_FAILURES + 1):
        transport = httpx.ASGITransport(app=app, client=(f"203.0.113.{n}", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            codes.append((await log_in(c, "owner@clinic.test", "wrong")).status_code)
    assert codes[:MAX_ACCOUNT_FAILURES] == [401] * MAX_ACCOUNT_FAILURES
    assert codes[-1] == 429
