"""One retry policy for every call to a remote service (calendars, SMS), built on tenacity.

`RetryPolicy.call(fn)` runs `fn` and tries again only when the error it raised says a retry may
help: its `retryable` attribute is True (`booking.errors.BookingError` and its subclasses carry
one; any other exception is not retried). The wait before the next attempt is the error's
`retry_after` (seconds, as the server asked with a `Retry-After` header) when set, else
exponential back-off (`base`, doubling, capped by `cap`) with jitter, so many callers refused
together do not come back together. It never calls a server again before the time it asked for:
a `retry_after` above `max_retry_after`, or one that would reach the caller's `deadline`, ends the
retries at once. It gives up after `attempts` attempts, or as soon as the next wait would reach
the `deadline`, and re-raises the last error unchanged (its `retry_after` still tells the caller
when to come back).

Time comes from the injected `booking.clock.Clock` and waiting from the injected `sleep`, so
tests run without waiting: the time spent is the larger of the clock's elapsed time and the
sum of the waits taken (a test clock that does not move while a fake sleep "waits" still has
the waits counted; a real clock, which does move, is not counted twice).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from booking.clock import Clock, SystemClock

T = TypeVar("T")

# HTTP statuses a retry may help with; any other 4xx is the request's own fault.
_RETRYABLE_4XX = frozenset({408, 429})


def retryable_status(status: int) -> bool:
    """Whether an HTTP error status may succeed when sent again: 408, 429 and every 5xx."""
    return status in _RETRYABLE_4XX or status >= 500


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date.

        None when the header is absent or garbage.
    An HTTP-date in the past means no wait (0.0). `now` is the aware instant to measure from."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        # RFC 9110 delta-seconds is 1*DIGIT; servers also send "1.5". Negative, inf, nan: garbage.
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _retry_after(exc: BaseException | None) -> float | None:
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, bool) or not isinstance(retry_after, int | float):
        return None
    return float(retry_after) if math.isfinite(retry_after) and retry_after >= 0 else None


def _retryable(exc: BaseException) -> bool:
    return getattr(exc, "retryable", False) is True


class RetryPolicy:
    """How often and how long to try a remote call again (see the module docstring)."""

    def __init__(
        self,
        *,
        attempts: int = 4,
        base: float = 0.5,
        cap: float = 8.0,
        max_retry_after: float = 30.0,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: bool = True,
    ) -> None:
        if attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")
        if base < 0 or cap < 0 or max_retry_after < 0:
            raise ValueError("waits cannot be negative")
        self.attempts = attempts
        self.base = base
        self.cap = cap
        self.max_retry_after = max_retry_after
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.jitter = jitter
        self._sleep = sleep

    def wait_for(self, exc: BaseException | None, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based) that raised `exc`.

        A server's `retry_after` is returned as asked, never shortened: `call` gives up instead of
        waiting longer than `max_retry_after` (see `waits_too_long`)."""
        retry_after = _retry_after(exc)
        if retry_after is not None:
            return retry_after
        wait = min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))
        # Jitter keeps between half and all of the back-off: never zero, never above the cap.
        return wait * random.uniform(0.5, 1.0) if self.jitter else wait

    def waits_too_long(self, exc: BaseException | None) -> bool:
        """Whether `exc` asks for a wait (`retry_after`) longer than this policy waits."""
        retry_after = _retry_after(exc)
        return retry_after is not None and retry_after > self.max_retry_after

    async def call(self, fn: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
        """Run fn; retry ONLY when the raised exception's `retryable` attribute is True, waiting the
        exception's `retry_after` (seconds) when set, else exponential backoff with jitter; give
        up after `attempts`, when `retry_after` exceeds max_retry_after, or when the next wait
        would pass `deadline` seconds (measured with the injected clock plus the waits taken).

        Re-raises the last error."""
        started = self.clock.now()

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            return self.wait_for(exc, state.attempt_number)

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.attempts:
                return True
            exc = state.outcome.exception() if state.outcome is not None else None
            if self.waits_too_long(exc):
                return True  # retrying sooner than the server asked would only be refused again
            if deadline is None:
                return False
            elapsed = max((self.clock.now() - started).total_seconds(), state.idle_for)
            return elapsed + state.upcoming_sleep >= deadline

        retrying = AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=wait,
            stop=stop,
            sleep=self._sleep,
            reraise=True,
        )
        return await retrying(fn)
