"""Phone numbers through libphonenumber: national input read in the business's country, real
validity (not only the shape), E.164 stored, digit groups read back, withheld caller IDs known."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import phonenumbers
import pytest

from booking import errors, phones
from booking.business_file import BusinessFile, BusinessFileError, load_business_file
from booking.scheduler import Scheduler, check_phone

MONDAY_9 = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "typed",
    [
        "202 555 0123",
        "(202) 555-0123",
        "202-555-0123",
        "1 202 555 0123",
        "+1 (202) 555-0123",
        "+12025550123",
        "two oh two five five five oh one two three",
        "2 0 2, 5 5 5, 0 1 2 3",
    ],
)
def test_us_numbers_typed_or_said_any_way_are_e164(typed: str) -> None:
    assert phones.to_e164(typed) == "+12025550123"
    assert check_phone(typed) == "+12025550123"


@pytest.mark.parametrize(
    "typed",
    [
        "+1 555 123 4567",
        "555 123 4567",
        "(555) 123-4567",
        "12",
        "+1202555012",
        "+999 1234 5678",
        "not a number",
        "",
        "   ",
        "1" * 80,
        "+12025550123" + "9" * 60,
    ],
)
def test_numbers_that_cannot_exist_are_refused_clearly(typed: str) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        phones.to_e164(typed)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 200


def test_the_old_regex_accepted_numbers_that_do_not_exist() -> None:
    # The shape of E.164 (+, 8 to 15 digits) is not a number: 555 is no US area code in use.
    assert not phonenumbers.is_valid_number(phonenumbers.parse("+15551234567"))
    with pytest.raises(errors.InvalidRequest, match="not a valid phone number"):
        check_phone("+15551234567")


def test_national_numbers_are_read_in_the_given_country() -> None:
    assert phones.to_e164("020 7946 0018", "GB") == "+442079460018"
    assert phones.to_e164("+1 202 555 0123", "GB") == "+12025550123"
    with pytest.raises(errors.InvalidRequest):
        phones.to_e164("020 7946 0018", "US")


def test_the_region_comes_from_the_business_numbers_else_the_us() -> None:
    assert phones.region_for(["+442079460000"]) == "GB"
    assert phones.region_for(["+12025550100", "+442079460000"]) == "US"
    assert phones.region_for(["+33142685300"]) == "FR"
    assert phones.region_for([]) == "US"
    assert phones.region_for(["garbage"]) == "US"


def test_numbers_are_spoken_digit_by_digit_in_their_groups() -> None:
    assert phones.spoken("+12025550123") == "2 0 2, 5 5 5, 0 1 2 3"
    assert phones.spoken("+442079460018", "GB") == "0 2 0, 7 9 4 6, 0 0 1 8"
    assert phones.spoken("+442079460018") == "plus 4 4, 2 0, 7 9 4 6, 0 0 1 8"
    # What is read back parses back to the same number.
    assert phones.to_e164(phones.spoken("+12025550123")) == "+12025550123"


@pytest.mark.parametrize(
    "caller_id",
    [
        None,
        "",
        "anonymous",
        "Anonymous",
        "ANONYMOUS",
        "restricted",
        "Restricted",
        "unknown",
        "unavailable",
        "blocked",
        "private",
        "withheld",
        "client:alice",
        "client:Anonymous",
        "sip:alice@example.com",
        "+266696687",
        "266696687",
        "+1266696687",
        "+7378742833",
        "+86282452253",
        "+2562533",
        "+8656696",
        "+15551234567",  # not a real number either: no number to call back
    ],
)
def test_withheld_and_non_phone_caller_ids_are_no_number(caller_id: str | None) -> None:
    assert phones.caller_number(caller_id) is None


def test_a_real_caller_id_is_kept() -> None:
    assert phones.caller_number("+12025554321") == "+12025554321"
    assert phones.caller_number("+442079460018", "US") == "+442079460018"
    assert not phones.is_withheld("+12025554321")


async def test_a_booking_stores_a_typed_national_number_in_e164(scheduler: Scheduler) -> None:
    row = await scheduler.book(
        business_id="clinic",
        name="Ann Smith",
        phone="(202) 555-0123",
        service_id="cleaning",
        staff_id="lee",
        start=MONDAY_9,
    )
    contact = await scheduler.contact(row.contact_id)
    assert contact is not None and contact.phone == "+12025550123"
    with pytest.raises(errors.InvalidRequest, match="not a valid phone number"):
        await scheduler.book(
            business_id="clinic",
            name="Bo",
            phone="555 123 4567",
            service_id="cleaning",
            staff_id="rivera",
            start=MONDAY_9,
        )


def test_the_business_file_stores_numbers_in_e164_and_refuses_fake_ones(
    tmp_path: Path,
) -> None:
    def write(numbers: str) -> BusinessFile:
        path = tmp_path / "b.yaml"
        path.write_text(
            f"business:\n  id: b\n  name: B\n  timezone: America/New_York\n"
            f"  phone_numbers: [{numbers}]\nservices: []\nstaff: []\n"
        )
        return load_business_file(path)

    assert write('"+1 (202) 555-0100"').business.phone_numbers == ["+12025550100"]
    with pytest.raises(BusinessFileError, match="not a valid phone number"):
        write('"+15551234567"')
