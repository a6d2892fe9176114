"""Domain errors, in the business's words. The edges (HTTP, voice, CLI) translate them.

BookingError                      base; `retryable` says whether trying again may help
├── NotFound                      no such business/service/staff/appointment/hold
│   └── AmbiguousBusiness         no business id given and there is not exactly one
├── InvalidRequest                arguments that can never work (bad window, bad phone)
├── SlotUnavailable               the time is not bookable (any reason below)
│   ├── SlotTaken                 another booking or hold has it (retryable: pick another)
│   ├── OutsideHours              not a slot of this staff member's hours for this service
│   ├── TooSoon                   inside the minimum notice
│   └── TooFarAhead               past the booking horizon
├── HoldExpired                   the hold ran out or was replaced
├── NotYourAppointment            the appointment belongs to another caller
├── AppointmentNotActive          cancelled or already moved
├── CalendarUnavailable           a linked calendar could not be read (retryable unless the
│                                 instance says otherwise: a 4xx refusal, a revoked grant)
├── Busy                          the database stayed locked too long (retryable)
└── NotConfigured                 a feature this server has no settings for (an OAuth app)
    └── SecretKeyMissing          no FRONTDESK_SECRET_KEY (or a wrong one): stored calendar
                                  credentials cannot be sealed or opened
"""

from __future__ import annotations


class BookingError(Exception):
    """Base of every domain error; `code` is stable for APIs, `retryable` guides retry policy."""

    code = "booking_error"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(BookingError):
    code = "not_found"


class AmbiguousBusiness(NotFound):
    code = "business_required"


class InvalidRequest(BookingError):
    code = "invalid_request"


class SlotUnavailable(BookingError):
    code = "slot_unavailable"


class SlotTaken(SlotUnavailable):
    code = "slot_taken"
    retryable = True


class OutsideHours(SlotUnavailable):
    code = "outside_hours"


class TooSoon(SlotUnavailable):
    code = "too_soon"


class TooFarAhead(SlotUnavailable):
    code = "too_far_ahead"


class HoldExpired(BookingError):
    code = "hold_expired"


class NotYourAppointment(BookingError):
    code = "not_your_appointment"


class AppointmentNotActive(BookingError):
    code = "appointment_not_active"


class CalendarUnavailable(BookingError):
    """A linked calendar could not be reached or refused the request.

    `retryable` is per instance: None takes the class default (True: timeouts, 5xx, 429); a
    provider passes False for a refusal that will not change (a 4xx other than 408/429).
    `retry_after` is the wait in seconds the server asked for (a `Retry-After` header), if any;
    `booking.retry.RetryPolicy` reads both.
    """

    code = "calendar_unavailable"
    retryable = True

    def __init__(
        self, message: str, *, retryable: bool | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = type(self).retryable if retryable is None else retryable
        self.retry_after = retry_after


class Busy(BookingError):
    code = "busy"
    retryable = True


class NotConfigured(BookingError):
    """A feature this server is not set up for (a setting is missing): trying again does not
    help until the server's operator sets it."""

    code = "not_configured"


class SecretKeyMissing(NotConfigured):
    """No FRONTDESK_SECRET_KEY, one that is not a Fernet key, or one that cannot open what was
    stored: a setting of this server, so trying again does not help."""

    code = "secret_key_missing"
