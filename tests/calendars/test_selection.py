"""Which calendars count by default, and choosing them by name or id."""

from __future__ import annotations

import pytest

from booking.errors import InvalidRequest
from calendars.base import CalendarInfo
from calendars.selection import default_choice, describe, resolve


def cal(
    id: str,
    name: str,
    *,
    primary: bool = False,
    writable: bool = True,
    counts_busy: bool = True,
) -> CalendarInfo:
    return CalendarInfo(
        id=id, name=name, primary=primary, writable=writable, counts_busy=counts_busy
    )


WORK = cal("w@x", "Work", primary=True)
FAMILY = cal("fam", "Family", counts_busy=False)
HOLIDAYS = cal("hol", "Holidays in Germany", writable=False, counts_busy=False)
SIDE = cal("side", "Side gigs")


# --- default_choice ------------------------------------------------------------------------


def test_reads_own_busy_calendars_and_writes_the_primary() -> None:
    assert default_choice([FAMILY, SIDE, HOLIDAYS, WORK]) == (["side", "w@x"], "w@x")


def test_writes_the_primary_even_when_it_is_not_listed_first() -> None:
    read, write = default_choice([SIDE, WORK])
    assert read == ["side", "w@x"]
    assert write == "w@x"


def test_without_busy_marks_reads_the_primary() -> None:
    calendars = [cal("a", "A", counts_busy=False), cal("b", "B", primary=True, counts_busy=False)]
    assert default_choice(calendars) == (["b"], "b")


def test_without_busy_marks_or_primary_reads_everything() -> None:
    calendars = [cal("a", "A", counts_busy=False), cal("b", "B", counts_busy=False)]
    assert default_choice(calendars) == (["a", "b"], "a")


def test_read_only_primary_writes_the_first_writable_read_calendar() -> None:
    calendars = [
        cal("ro", "Main", primary=True, writable=False),
        cal("other", "Other", counts_busy=False),
        cal("mine", "Mine"),
    ]
    read, write = default_choice(calendars)
    assert read == ["ro", "mine"]
    assert write == "mine"  # not "other": it is not read


def test_nothing_writable_writes_nothing() -> None:
    calendars = [cal("feed", "Feed", writable=False)]
    assert default_choice(calendars) == (["feed"], None)


def test_no_calendars() -> None:
    assert default_choice([]) == ([], None)


# --- resolve ---------------------------------------------------------------------------------

ACCOUNT = [WORK, FAMILY, HOLIDAYS, SIDE]


def test_names_are_case_insensitive_and_keep_the_order_given() -> None:
    assert resolve(ACCOUNT, ["family", "WORK"]) == ["fam", "w@x"]


def test_ids_and_names_mixed_without_repeats() -> None:
    assert resolve(ACCOUNT, ["w@x", "Family", "work", " fam "]) == ["w@x", "fam"]


def test_blank_entries_are_skipped() -> None:
    assert resolve(ACCOUNT, ["Work", "", "  "]) == ["w@x"]
    assert resolve(ACCOUNT, []) == []


def test_an_id_wins_over_another_calendars_name() -> None:
    calendars = [cal("Work", "Office"), cal("x1", "Work")]
    assert resolve(calendars, ["Work"]) == ["Work"]
    assert resolve(calendars, ["work"]) == ["x1"]  # ids are exact, names are not


def test_unknown_names_list_what_the_account_has() -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve(ACCOUNT, ["Work", "Gym", "Hobby"])
    message = caught.value.message
    assert "'Gym'" in message and "'Hobby'" in message
    assert "'Work'" not in message
    for name in ("Work (primary)", "Family", "Holidays in Germany (read-only)", "Side gigs"):
        assert name in message


def test_ambiguous_names_ask_for_the_id() -> None:
    calendars = [cal("a1", "Team"), cal("a2", "team"), WORK]
    with pytest.raises(InvalidRequest) as caught:
        resolve(calendars, ["Team"])
    message = caught.value.message
    assert "a1" in message and "a2" in message and "id" in message
    assert resolve(calendars, ["a2", "Work"]) == ["a2", "w@x"]


def test_unknown_and_ambiguous_are_reported_together() -> None:
    calendars = [cal("a1", "Team"), cal("a2", "Team")]
    with pytest.raises(InvalidRequest) as caught:
        resolve(calendars, ["Team", "Nope"])
    assert "'Nope'" in caught.value.message and "'Team'" in caught.value.message


def test_describe_an_empty_account() -> None:
    assert describe([]) == "It has no calendars."
    with pytest.raises(InvalidRequest, match="no calendars"):
        resolve([], ["Work"])
