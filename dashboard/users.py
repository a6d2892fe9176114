"""Dashboard accounts: create them (the `frontdesk users add` command), check passwords.

Passwords are hashed with argon2id (argon2-cffi's defaults); a hash made with weaker parameters
is upgraded on the next successful log-in.
"""

from __future__ import annotations

import getpass
import re
import sys
from datetime import datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from booking import errors
from booking.db import session_scope
from booking.models import Business, Staff
from dashboard.models import Role, User, audit

MIN_PASSWORD = 10
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_hasher = PasswordHasher()
# Verifying against this when the email is unknown keeps the answer time the same either way.
_DUMMY_HASH = _hasher.hash("not a real password")


class AccountExists(errors.BookingError):
    """An account already has this email: a well-formed request that conflicts with what is
    stored (the command line exits 1), not a malformed one (`errors.InvalidRequest`)."""

    code = "account_exists"


def normalise_email(email: str) -> str:
    return (email or "").strip().lower()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise errors.InvalidRequest(f"the password must have at least {MIN_PASSWORD} characters")


def add_user(
    engine: Engine,
    *,
    business_id: str,
    email: str,
    password: str,
    role: str,
    staff_id: str | None = None,
    now: datetime,
) -> User:
    """Create an account; staff accounts are tied to one staff member of the same business."""
    email = normalise_email(email)
    if not EMAIL.match(email):
        raise errors.InvalidRequest(f"{email!r} is not an email address")
    if role not in {r.value for r in Role}:
        raise errors.InvalidRequest("the role must be owner or staff")
    if role == Role.STAFF and not staff_id:
        raise errors.InvalidRequest("a staff account needs --staff STAFF_ID")
    if role == Role.OWNER and staff_id:
        raise errors.InvalidRequest("an owner account is not tied to one staff member")
    check_password(password)
    password_hash = hash_password(password)

    with session_scope(engine, write=True) as s:
        if s.get(Business, business_id) is None:
            raise errors.NotFound(f"no business {business_id!r}")
        if staff_id and s.get(Staff, (business_id, staff_id)) is None:
            raise errors.NotFound(f"no staff member {staff_id!r} at {business_id}")
        if s.exec(select(User).where(User.email == email)).first() is not None:
            raise AccountExists(f"there is already an account for {email}")
        user = User(
            business_id=business_id,
            email=email,
            password_hash=password_hash,
            role=role,
            staff_id=staff_id,
            created_at=now,
        )
        s.add(user)
        s.flush()
        audit(
            s,
            business_id=business_id,
            actor="cli",
            action="user.add",
            subject=user.id,
            details={"email": email, "role": role, "staff_id": staff_id},
            at=now,
        )
        return user


def authenticate(s: Session, email: str, password: str) -> User | None:
    """The account these credentials open, or None; timing does not reveal unknown emails."""
    user = s.exec(select(User).where(User.email == normalise_email(email))).first()
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        s.add(user)
    return user


# ---- the `frontdesk users` command ------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """`frontdesk users add`: the password is asked for, or read from stdin, never an argument."""
    u = sub.add_parser("users", help="dashboard accounts")
    us = u.add_subparsers(dest="users_command", required=True)
    s = us.add_parser("add", help="create a dashboard account (owner or staff)")
    s.add_argument("--business", help="business id; optional while there is one")
    s.add_argument("--email", required=True)
    s.add_argument("--role", required=True, choices=[r.value for r in Role])
    s.add_argument("--staff", help="the staff member a staff account belongs to")
    s.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin instead of asking",
    )


def read_password(*, from_stdin: bool) -> str:
    """The new account's password, from stdin or asked twice on the terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    check_password(first)
    if getpass.getpass("Password again: ") != first:
        raise errors.InvalidRequest("the two passwords differ")
    return first
