"""How the command line reports a failure: one line on stderr and an exit status.

    2  a malformed command: a value that can never work (bad phone, empty name, bad date,
       an invalid setting); argparse's own errors also exit 2
    1  a refused request: the slot is taken, the appointment or business is not found, the
       business file is invalid, a calendar could not be linked

The domain modules are imported only when their exception is being reported: by then the
command that raised it has imported them already, so a command's start stays fast.
"""

from __future__ import annotations

import sys

MALFORMED = 2
REFUSED = 1


class CommandError(Exception):
    """A refusal to report on stderr, exit 1."""


class UsageError(Exception):
    """A malformed value found after parsing (exit 2)."""


def report(exc: BaseException) -> tuple[int, str] | None:
    """The exit status and the line for an expected failure; None for a bug (re-raise it)."""
    if isinstance(exc, UsageError):
        return MALFORMED, f"error: {exc}"
    if isinstance(exc, CommandError):
        return REFUSED, f"error: {exc}"
    if "booking.errors" in sys.modules:
        from booking import errors

        if isinstance(exc, errors.AmbiguousBusiness):  # the domain's words, with the flag
            return REFUSED, f"error: {exc.message} (--business ID)"
        if isinstance(exc, errors.InvalidRequest):
            return MALFORMED, f"error: {exc.message}"
        if isinstance(exc, errors.BookingError):
            return REFUSED, f"error: {exc.message}"
    if "booking.business_file" in sys.modules:
        from booking.business_file import BusinessFileError

        if isinstance(exc, BusinessFileError):
            return REFUSED, f"error: {exc}"
    if "frontdesk.cli_calendars" in sys.modules:
        from frontdesk.cli_calendars import CalendarCommandError

        if isinstance(exc, CalendarCommandError):
            return REFUSED, f"error: {exc}"
    if "pydantic" in sys.modules:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
            )
            return MALFORMED, f"configuration error: {problems}"
    return None
