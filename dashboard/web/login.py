"""Log-in and log-out pages; log-in is rate limited per email and client address."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session, select

from dashboard.models import LoginAttempt, User
from dashboard.users import authenticate, normalise_email
from dashboard.web import db
from dashboard.web.auth import (
    end_session,
    optional_user,
    purge_expired,
    safe_next,
    start_session,
    verify_csrf,
)
from dashboard.web.render import render

router = APIRouter(include_in_schema=False)

MAX_FAILURES = 5
WINDOW = timedelta(minutes=15)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    if await optional_user(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", next=safe_next(next), email="", error=None)


@router.post("/login", dependencies=[Depends(verify_csrf)])
async def login(
    request: Request,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    email = normalise_email(email)
    ip = _client(request)
    at = db.now(request)

    def attempt(s: Session) -> User | str:
        failures = s.exec(select(sa.func.count()).select_from(LoginAttempt).where(
            LoginAttempt.email == email, LoginAttempt.ip == ip,
            LoginAttempt.at > at - WINDOW)).one()
        if failures >= MAX_FAILURES:
            return "limited"
        user = authenticate(s, email, password)
        if user is None:
            s.add(LoginAttempt(email=email, ip=ip, at=at))
            return "wrong"
        s.execute(sa.delete(LoginAttempt).where(LoginAttempt.email == email,
                                                LoginAttempt.ip == ip))
        user.last_login_at = at
        s.add(user)
        purge_expired(s, at)
        return user

    result = await db.run(request, attempt, write=True)
    if result == "limited":
        return render(request, "login.html", status_code=429, next=safe_next(next), email=email,
                      error="Too many failed attempts. Wait 15 minutes and try again.")
    if isinstance(result, str):
        return render(request, "login.html", status_code=401, next=safe_next(next), email=email,
                      error="That email and password do not match an account.")
    response = RedirectResponse(safe_next(next), status_code=303)
    await start_session(request, response, result)
    return response


@router.post("/logout", dependencies=[Depends(verify_csrf)])
async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    await end_session(request, response)
    return response
