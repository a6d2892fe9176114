"""Who is asking: the session cookie, the logged-in `WebUser`, roles, and CSRF checks.

Sessions are server-side: the cookie holds a random token, the database its SHA-256. Each session
has its own CSRF token, which every form sends back as `csrf_token` (htmx sends it as the
`X-CSRF-Token` header, set once in base.html). Before log-in, the log-in form is protected the
double-submit way: a random token in a cookie that the form must repeat.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import Depends, Request, Response
from pydantic import BaseModel, ValidationError
from sqlmodel import Session, col
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from dashboard.models import Role, User, WebSession
from dashboard.web import db

SESSION_COOKIE = "fd_session"
PRE_CSRF_COOKIE = "fd_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_DAYS = 14


@dataclass(frozen=True)
class WebUser:
    id: str
    business_id: str
    email: str
    role: str  # "owner" | "staff"
    staff_id: str | None

    @property
    def is_owner(self) -> bool:
        return self.role == Role.OWNER

    def may_see_staff(self, staff_id: str) -> bool:
        return self.is_owner or self.staff_id == staff_id

    @classmethod
    def of(cls, row: User) -> WebUser:
        return cls(
            id=row.id,
            business_id=row.business_id,
            email=row.email,
            role=row.role,
            staff_id=row.staff_id,
        )


class LoginRequired(Exception):
    """A page was asked for without a session; answered with a redirect to /login."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class PageError(HTTPException):
    """An HTTP error answered with an HTML page (404, 403, 429) instead of the API's JSON."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def secure_cookies(request: Request) -> bool:
    return str(request.app.state.settings.public_base_url).startswith("https://")


def set_cookie(
    request: Request, response: Response, name: str, value: str, *, max_age: int | None = None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
        path="/",
    )


# ---- sessions ---------------------------------------------------------------------------------


async def optional_user(request: Request) -> WebUser | None:
    """The logged-in user, or None; loaded once per request."""
    if hasattr(request.state, "web_user"):
        return request.state.web_user  # type: ignore[no-any-return]
    token = request.cookies.get(SESSION_COOKIE)
    user: WebUser | None = None
    if token:
        at = db.now(request)

        def load(s: Session) -> tuple[WebUser, str] | None:
            row = s.get(WebSession, token_hash(token))
            if row is None or row.expires_at <= at:
                return None
            account = s.get(User, row.user_id)
            return (WebUser.of(account), row.csrf) if account else None

        found = await db.run(request, load)
        if found is not None:
            user, request.state.csrf = found
    request.state.web_user = user
    return user


async def current_user(request: Request) -> WebUser:
    """The logged-in user; pages without a session redirect to /login."""
    user = await optional_user(request)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    return user


async def require_owner(user: Annotated[WebUser, Depends(current_user)]) -> WebUser:
    if not user.is_owner:
        raise PageError(403, "Only the business owner can open this page.")
    return user


async def start_session(request: Request, response: Response, user: User) -> None:
    token = secrets.token_urlsafe(32)
    at = db.now(request)
    row = WebSession(
        token_hash=token_hash(token),
        user_id=user.id,
        csrf=secrets.token_urlsafe(32),
        created_at=at,
        expires_at=at + timedelta(days=SESSION_DAYS),
    )

    def write(s: Session) -> None:
        s.add(row)

    await db.run(request, write, write=True)
    set_cookie(request, response, SESSION_COOKIE, token, max_age=SESSION_DAYS * 86400)


async def end_session(request: Request, response: Response) -> None:
    token = request.cookies.get(SESSION_COOKIE)
    if token:

        def write(s: Session) -> None:
            row = s.get(WebSession, token_hash(token))
            if row is not None:
                s.delete(row)

        await db.run(request, write, write=True)
    response.delete_cookie(SESSION_COOKIE, path="/")


def purge_expired(s: Session, at: datetime) -> None:
    s.execute(sa.delete(WebSession).where(col(WebSession.expires_at) <= at))


# ---- CSRF -------------------------------------------------------------------------------------


def csrf_token(request: Request) -> str:
    """The token forms on this page must send back (the session's, or the pre-log-in cookie's)."""
    session_token: str | None = getattr(request.state, "csrf", None)
    if session_token:
        return session_token
    pre: str | None = getattr(request.state, "pre_csrf", None) or request.cookies.get(
        PRE_CSRF_COOKIE
    )
    if not pre:
        pre = secrets.token_urlsafe(32)
        request.state.pre_csrf_new = pre  # render() sets the cookie
    request.state.pre_csrf = pre
    return pre


class CsrfField(BaseModel):
    """The CSRF token a form post carries; anything but one text field is no token (403)."""

    token: str | None = None

    @classmethod
    def read(cls, form: FormData) -> CsrfField:
        values = form.getlist(CSRF_FIELD)
        try:
            return cls.model_validate({"token": values[0] if len(values) == 1 else None})
        except ValidationError:  # an uploaded file in its place
            return cls()


async def verify_csrf(request: Request) -> None:
    """Refuse a state-changing request whose CSRF token is missing or wrong (403)."""
    sent = request.headers.get(CSRF_HEADER)
    form: FormData | None = None
    if not sent:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            sent = CsrfField.read(form).token
    user = await optional_user(request)
    expected = request.state.csrf if user else request.cookies.get(PRE_CSRF_COOKIE)
    if not sent or not expected or not secrets.compare_digest(sent.encode(), expected.encode()):
        if form is not None:
            await form.close()  # uploaded files' temporary files, which no route will read now
        raise PageError(
            403,
            "This form has expired or did not come from this site. "
            "Go back, reload the page and try again.",
        )


def login_url(next_url: str) -> str:
    return f"/login?next={quote(next_url, safe='')}"


def safe_next(next_url: str | None) -> str:
    """Only a path on this site: an open redirect after log-in would help phishing."""
    if next_url and next_url.startswith("/") and not next_url.startswith(("//", "/\\")):
        return next_url
    return "/"


CurrentUser = Annotated[WebUser, Depends(current_user)]
OwnerUser = Annotated[WebUser, Depends(require_owner)]
