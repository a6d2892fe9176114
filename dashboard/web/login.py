"""Log-in and log-out pages; log-in is rate limited per email, per client address, and both."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session, col, select

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

MAX_FAILURES = 5  # per email and client address
MAX_ACCOUNT_FAILURES = 20  # per email from anywhere (guessing from many addresses)
MAX_ADDRESS_FAILURES = 50  # per client address across emails (spraying many accounts)
WINDOW = timedelta(minutes=15)
KEEP = timedelta(days=1)


def _client(request: Request) -> str:
    """The client's address: the peer's, or behind a configured proxy the one it forwarded
    (frontdesk.web_security decides; a client's own X-Forwarded-For is never believed)."""
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

    def record(s: Session) -> bool:
        """Count this attempt first, then decide: parallel guesses all see each other."""
        s.execute(sa.delete(LoginAttempt).where(col(LoginAttempt.at) < at - KEEP))
        s.add(LoginAttempt(email=email, ip=ip, at=at))
        s.flush()
        recent = col(LoginAttempt.at) > at - WINDOW

        def count(*where: sa.ColumnElement[bool]) -> int:
            return int(
                s.exec(
                    select(sa.func.count()).select_from(LoginAttempt).where(recent, *where)
                ).one()
            )

        return (
            count(col(LoginAttempt.email) == email, col(LoginAttempt.ip) == ip) > MAX_FAILURES
            or count(col(LoginAttempt.email) == email) > MAX_ACCOUNT_FAILURES
            or count(col(LoginAttempt.ip) == ip) > MAX_ADDRESS_FAILURES
        )

    def succeed(s: Session, user_id: str) -> User | None:
        s.execute(
            sa.delete(LoginAttempt).where(
                col(LoginAttempt.email) == email, col(LoginAttempt.ip) == ip
            )
        )
        user = s.get(User, user_id)
        if user is not None:
            user.last_login_at = at
            s.add(user)
        purge_expired(s, at)
        return user

    # The password check (argon2, ~0.1 s) runs outside any write transaction: on SQLite a
    # write transaction holds the one write lock every booking needs.
    limited = await db.run(request, record, write=True)
    result: User | str = "limited"
    if not limited:
        user = await db.run(request, lambda s: authenticate(s, email, password))
        found = (
            await db.run(request, lambda s: succeed(s, user.id), write=True)
            if user is not None
            else None
        )
        result = found if found is not None else "wrong"
    if result == "limited":
        return render(
            request,
            "login.html",
            status_code=429,
            next=safe_next(next),
            email=email,
            error="Too many failed attempts. Wait 15 minutes and try again.",
        )
    if isinstance(result, str):
        return render(
            request,
            "login.html",
            status_code=401,
            next=safe_next(next),
            email=email,
            error="That email and password do not match an account.",
        )
    response = RedirectResponse(safe_next(next), status_code=303)
    await start_session(request, response, result)
    return response


@router.post("/logout", dependencies=[Depends(verify_csrf)])
async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    await end_session(request, response)
    return response
