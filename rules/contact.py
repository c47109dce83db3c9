"""Contact details as D9 compares them: trimmed lower-case email, E.164 phone."""

from __future__ import annotations

import phonenumbers

_PUNCTUATION = str.maketrans("", "", " -().\t/")


class InvalidPhone(ValueError):
    pass


def normalize_email(email: str) -> str:
    """D9: emails compare case-insensitively after trimming."""
    return email.strip().lower()


def normalize_phone(raw: str, default_region: str = "US") -> str:
    """D9: E.164, and a *possible* number (fictional 555 numbers pass; assigned-ness is not checked)."""
    if default_region == "US":
        fast = _nanp(raw)
        if fast is not None:
            return fast
    try:
        parsed = phonenumbers.parse(raw.strip(), default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"not a phone number: {exc}") from exc
    # IS_POSSIBLE_LOCAL_ONLY (a 7-digit number without its area code) has no E.164 form.
    if phonenumbers.is_possible_number_with_reason(parsed) != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise InvalidPhone("not a possible phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _nanp(raw: str) -> str | None:
    """The plain North American forms (``(555) 123-4567``, ``+1 555.123.4567``, ``15551234567``) without
    the phonenumbers parser, which costs ~20 us a number and dominates a large import. Anything else
    is None and goes to the parser; tests check both give the same answer on this path."""
    text = raw.strip()
    plus = text.startswith("+")
    digits = (text[1:] if plus else text).translate(_PUNCTUATION)
    if not (digits.isascii() and digits.isdigit()):
        return None
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    elif plus or len(digits) != 10:
        return None
    if digits[0] in "01" or digits[3] in "01":
        return None
    return "+1" + digits


def mask_email(email: str) -> str:
    """``ann@example.com`` -> ``a***@e***.com``: enough to tell lines apart, not enough to contact."""
    local, _, domain = email.partition("@")
    host, _, tld = domain.rpartition(".")
    return f"{local[:1]}***@{host[:1]}***.{tld}" if host else f"{local[:1]}***"


def mask_phone(phone: str) -> str:
    digits = [c for c in phone if c.isdigit()]
    return "***" + "".join(digits[-2:]) if len(digits) > 4 else "***"
