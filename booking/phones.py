"""Phone numbers, the way the field does them: libphonenumber (`phonenumbers`) reads what people
type or say, checks it is a real number (not only its shape), and it is stored in E.164.

- A national number ("202 555 0123", "(202) 555-0123") is read in the business's country: the
  country of the business's own first number, else the US (`region_for`).
- A number is valid only if libphonenumber knows it can exist (`is_valid_number`): right
  length and a range in use for its country, so "+1 555 123 4567" is refused.
- Caller ID that is withheld, anonymous, restricted or not a phone at all is a known case, not
  an error (`caller_number` answers None): Twilio's `From` is then a word ("anonymous",
  "Restricted", "unknown", ...), a Twilio Client or SIP address ("client:alice",
  "sip:a@example.com"), or a keypad spelling of a word: +266696687 ANONYMOUS, +7378742833
  RESTRICTED, +86282452253 UNAVAILABLE, +2562533 BLOCKED, +8656696 UNKNOWN.
- Read back digit by digit, in the groups a person would say them ("2 0 2, 5 5 5, 0 1 2 3").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat

from booking import errors

DEFAULT_REGION = "US"
MAX_INPUT = 64  # the longest way of writing a number, with spaces, dashes and an extension

WITHHELD_WORDS = frozenset(
    {"anonymous", "restricted", "unknown", "unavailable", "blocked", "private", "withheld"}
)
# Keypad spellings carriers put in place of a withheld number (with or without the +, and
# with a North American 1 before them).
WITHHELD_DIGITS = frozenset({"266696687", "7378742833", "86282452253", "2562533", "8656696"})
_NOT_A_PHONE = ("client:", "sip:")

_SPOKEN_DIGITS = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_WORD = re.compile(r"[a-z]+", re.IGNORECASE)


def region_for(own_numbers: Sequence[str]) -> str:
    """The country national numbers are read in: that of the business's first own number
    that names one, else the US."""
    for raw in own_numbers:
        try:
            region = phonenumbers.region_code_for_number(phonenumbers.parse(raw, None))
        except NumberParseException:
            continue
        if region and region != "001":  # 001: a non-geographic number names no country
            return str(region)
    return DEFAULT_REGION


def _parse(text: str, region: str) -> PhoneNumber:
    """`text` as a valid number, read in `region` unless it has a country code."""
    raw = (text or "").strip()
    if not raw:
        raise errors.InvalidRequest("the phone number is empty")
    if len(raw) > MAX_INPUT:
        raise errors.InvalidRequest("that is too long to be a phone number")
    try:
        number = phonenumbers.parse(_digits_from_words(raw), region)
    except NumberParseException:
        raise errors.InvalidRequest(f"{raw!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise errors.InvalidRequest(
            f"{raw!r} is not a valid phone number: give the full number with its area code, "
            f"or with its country code (+1 202 555 0123)"
        )
    return number


def to_e164(text: str, region: str = DEFAULT_REGION) -> str:
    """The number in `text` in E.164 (+12025550123); `InvalidRequest` if it is not a real one.

    National numbers are read in `region` (ISO 3166 code, e.g. "US", "GB"); an extension is
    dropped, as E.164 has none."""
    return str(phonenumbers.format_number(_parse(text, region), PhoneNumberFormat.E164))


def is_e164(text: str) -> bool:
    """Whether `text` is already a valid number written in E.164."""
    try:
        return to_e164(text) == text
    except errors.InvalidRequest:
        return False


def is_withheld(raw: str | None) -> bool:
    """Whether a caller ID means "no number": empty, withheld, or not a telephone."""
    value = (raw or "").strip().lower()
    if not value or value in WITHHELD_WORDS or value.startswith(_NOT_A_PHONE):
        return True
    digits = value.removeprefix("+")
    return digits in WITHHELD_DIGITS or (digits.startswith("1") and digits[1:] in WITHHELD_DIGITS)


def caller_number(raw: str | None, region: str = DEFAULT_REGION) -> str | None:
    """The caller's number in E.164, or None when there is none to call back (withheld,
    anonymous, a SIP or Client caller, or a caller ID that is not a real number)."""
    if is_withheld(raw):
        return None
    try:
        return to_e164(raw or "", region)
    except errors.InvalidRequest:
        return None


def spoken(e164: str, region: str = DEFAULT_REGION) -> str:
    """The number as it is read back to a caller, digit by digit in its groups: "2 0 2, 5 5 5,
    0 1 2 3" at home, "plus 4 4, 2 0, 7 9 4 6, 0 0 1 8" for a number of another country."""
    number = _parse(e164, region)
    home = number.country_code == phonenumbers.country_code_for_region(region)
    style = PhoneNumberFormat.NATIONAL if home else PhoneNumberFormat.INTERNATIONAL
    groups = re.findall(r"\d+", phonenumbers.format_number(number, style))
    said = ", ".join(" ".join(group) for group in groups)
    return said if home else f"plus {said}"


def _digits_from_words(text: str) -> str:
    """'two oh two, five five five ...' as digits; anything else is left as it is, but for the
    commas people (and `spoken`) put between groups, which libphonenumber reads as the end."""
    digits = _WORD.sub(lambda m: _SPOKEN_DIGITS.get(m.group().lower(), m.group()), text)
    return digits.replace(",", " ")


def zones_of(e164: str) -> tuple[str, ...]:
    """The IANA time zones a number's area code suggests (empty when it does not say)."""
    from phonenumbers import timezone

    try:
        zones = timezone.time_zones_for_number(phonenumbers.parse(e164))
    except NumberParseException:
        return ()
    return tuple(z for z in zones if z != "Etc/Unknown")
