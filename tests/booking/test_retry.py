"""booking.retry: which errors are retried, how long each wait is, and when the policy gives up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from booking.clock import FixedClock
from booking.errors import CalendarUnavailable, InvalidRequest
from booking.retry import RetryPolicy, parse_retry_after, retryable_status
from calendars.base import NeedsRelink, SyncReset

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Sleeps:
    """A fake sleep recording each wait; it moves the clock when given one (like real time)."""

    def __init__(self, clock: FixedClock | None = None) -> None:
        self.waits: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.at += timedelta(seconds=seconds)


class Flaky:
    """Fails with the given errors in turn, then answers "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def policy(sleeps: Sleeps, **kw: object) -> RetryPolicy:
    kw.setdefault("clock", FixedClock(NOW))
    kw.setdefault("jitter", False)
    return RetryPolicy(sleep=sleeps, **kw)  # type: ignore[arg-type]


# ---- parse_retry_after ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Mon, 02 Mar 2026 09:00:30 GMT", 30.0),
        ("Mon, 02 Mar 2026 08:59:00 GMT", 0.0),  # a date in the past: no wait
        ("Monday, 02-Mar-26 09:01:00 GMT", 60.0),  # RFC 850 form, still allowed by RFC 9110
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates_against_the_given_now(
    value: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_http_date_is_measured_from_now_not_the_system_clock() -> None:
    later = NOW + timedelta(seconds=20)
    assert parse_retry_after("Mon, 02 Mar 2026 09:00:30 GMT", later) == 10.0


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (403, False), (404, False), (409, False), (410, False)]
    + [(408, True), (429, True), (500, True), (502, True), (503, True), (504, True)],
)
def test_only_408_429_and_5xx_statuses_are_retryable(status: int, retryable: bool) -> None:
    assert retryable_status(status) is retryable


# ---- errors' retryable and retry_after ----------------------------------------------------------


def test_calendar_unavailable_is_retryable_unless_the_instance_says_otherwise() -> None:
    assert CalendarUnavailable("down").retryable is True
    assert CalendarUnavailable("down").retry_after is None
    assert CalendarUnavailable("refused", retryable=False).retryable is False
    assert CalendarUnavailable("slow", retry_after=3.0).retry_after == 3.0


def test_needs_relink_and_sync_reset_are_never_retryable() -> None:
    assert NeedsRelink("gone").retryable is False
    assert SyncReset("reset").retryable is False
    assert isinstance(NeedsRelink("gone"), CalendarUnavailable)


# ---- RetryPolicy.call -------------------------------------------------------------------------


async def test_a_retryable_error_is_retried_with_doubling_backoff_up_to_the_cap() -> None:
    sleeps = Sleeps()
    fn = Flaky(*[CalendarUnavailable("down") for _ in range(5)])
    answer = await policy(sleeps, attempts=6, base=0.5, cap=3.0).call(fn)
    assert answer == "ok" and fn.calls == 6
    assert sleeps.waits == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_success_at_first_try_does_not_wait() -> None:
    sleeps = Sleeps()
    fn = Flaky()
    assert await policy(sleeps).call(fn) == "ok"
    assert fn.calls == 1 and sleeps.waits == []


async def test_gives_up_after_attempts_and_reraises_the_last_error() -> None:
    sleeps = Sleeps()
    errors = [CalendarUnavailable(f"down {n}") for n in range(1, 5)]
    fn = Flaky(*errors)
    with pytest.raises(CalendarUnavailable) as caught:
        await policy(sleeps, attempts=3).call(fn)
    assert caught.value is errors[2]
    assert fn.calls == 3 and sleeps.waits == [0.5, 1.0]


async def test_one_attempt_means_no_retry() -> None:
    sleeps = Sleeps()
    fn = Flaky(CalendarUnavailable("down"))
    with pytest.raises(CalendarUnavailable):
        await policy(sleeps, attempts=1).call(fn)
    assert fn.calls == 1 and sleeps.waits == []


@pytest.mark.parametrize(
    "error",
    [
        NeedsRelink("revoked"),
        CalendarUnavailable("404 not found", retryable=False),
        InvalidRequest("bad window"),
        ValueError("a bug"),
        SyncReset("cursor expired"),
    ],
    ids=["needs-relink", "4xx", "domain-error", "plain-exception", "sync-reset"],
)
async def test_errors_that_are_not_retryable_are_raised_at_once(error: Exception) -> None:
    sleeps = Sleeps()
    fn = Flaky(error)
    with pytest.raises(type(error)) as caught:
        await policy(sleeps).call(fn)
    assert caught.value is error
    assert fn.calls == 1 and sleeps.waits == []


async def test_retry_after_is_waited_instead_of_backoff() -> None:
    sleeps = Sleeps()
    fn = Flaky(
        CalendarUnavailable("slow down", retry_after=7.0),
        CalendarUnavailable("slow down", retry_after=30.0),
        CalendarUnavailable("plain"),
    )
    assert await policy(sleeps, attempts=4, max_retry_after=30.0).call(fn) == "ok"
    assert sleeps.waits == [7.0, 30.0, 2.0]  # third wait: back-off of the third attempt


async def test_a_retry_after_above_the_policys_longest_wait_gives_up_at_once() -> None:
    # Calling again after 30 s when the server asked for 120 s would only be refused again.
    sleeps = Sleeps()
    error = CalendarUnavailable("slow down", retry_after=120.0)
    fn = Flaky(error)
    with pytest.raises(CalendarUnavailable) as caught:
        await policy(sleeps, attempts=4, max_retry_after=30.0).call(fn)
    assert caught.value is error and caught.value.retry_after == 120.0
    assert sleeps.waits == [] and fn.calls == 1


def test_wait_for_never_shortens_a_servers_retry_after() -> None:
    retry = policy(Sleeps(), max_retry_after=30.0)
    error = CalendarUnavailable("slow down", retry_after=120.0)
    assert retry.wait_for(error, 1) == 120.0
    assert retry.waits_too_long(error)
    assert not retry.waits_too_long(CalendarUnavailable("slow down", retry_after=30.0))
    assert not retry.waits_too_long(CalendarUnavailable("down"))


async def test_retry_after_from_an_http_date_uses_the_injected_clock() -> None:
    clock = FixedClock(NOW)
    sleeps = Sleeps(clock)
    retry = policy(sleeps, clock=clock)
    header = "Mon, 02 Mar 2026 09:00:12 GMT"

    async def rate_limited() -> str:
        if not sleeps.waits:
            raise CalendarUnavailable(
                "429", retry_after=parse_retry_after(header, retry.clock.now())
            )
        return "ok"

    assert await retry.call(rate_limited) == "ok"
    assert sleeps.waits == [12.0]


async def test_deadline_stops_before_a_wait_that_would_reach_it() -> None:
    sleeps = Sleeps()  # the clock does not move: only the waits taken count
    fn = Flaky(*[CalendarUnavailable("down") for _ in range(10)])
    with pytest.raises(CalendarUnavailable):
        await policy(sleeps, attempts=10, base=1.0, cap=100.0).call(fn, deadline=5.0)
    # waits 1 + 2 = 3 s taken; the next (4 s) would end at 7 s, past the 5 s deadline
    assert sleeps.waits == [1.0, 2.0] and fn.calls == 3


async def test_deadline_counts_time_the_calls_themselves_took_on_the_clock() -> None:
    clock = FixedClock(NOW)
    sleeps = Sleeps(clock)
    calls = 0

    async def slow_and_failing() -> str:
        nonlocal calls
        calls += 1
        clock.at += timedelta(seconds=2)  # each attempt takes 2 s
        raise CalendarUnavailable("down")

    with pytest.raises(CalendarUnavailable):
        await policy(sleeps, clock=clock, attempts=10, base=1.0).call(
            slow_and_failing, deadline=6.0
        )
    # t=2 fail, wait 1 (3 < 6) -> t=5 fail, next wait 2 would reach 7 >= 6: give up
    assert sleeps.waits == [1.0] and calls == 2


async def test_a_retry_after_longer_than_the_time_left_gives_up_at_once() -> None:
    sleeps = Sleeps()
    fn = Flaky(CalendarUnavailable("429", retry_after=20.0))
    with pytest.raises(CalendarUnavailable) as caught:
        await policy(sleeps).call(fn, deadline=10.0)
    assert caught.value.retry_after == 20.0  # callers can still say when to come back
    assert sleeps.waits == [] and fn.calls == 1


async def test_jitter_keeps_each_wait_between_half_and_all_of_the_backoff() -> None:
    sleeps = Sleeps()
    retry = RetryPolicy(attempts=5, base=0.5, cap=3.0, clock=FixedClock(NOW), sleep=sleeps)
    for _ in range(200):
        fn = Flaky(*[CalendarUnavailable("down") for _ in range(4)])
        assert await retry.call(fn) == "ok"
    full = [0.5, 1.0, 2.0, 3.0]
    rows = [sleeps.waits[i : i + 4] for i in range(0, len(sleeps.waits), 4)]
    assert len(rows) == 200
    for row in rows:
        assert all(f / 2 <= w <= f for w, f in zip(row, full, strict=True))
    # jitter actually varies the waits (200 identical rows would mean no jitter)
    assert len({tuple(row) for row in rows}) > 100


async def test_jitter_does_not_touch_a_servers_retry_after() -> None:
    sleeps = Sleeps()
    retry = RetryPolicy(clock=FixedClock(NOW), sleep=sleeps)
    fn = Flaky(CalendarUnavailable("429", retry_after=4.0))
    assert await retry.call(fn) == "ok"
    assert sleeps.waits == [4.0]


def test_a_policy_needs_one_attempt() -> None:
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy(attempts=0)
