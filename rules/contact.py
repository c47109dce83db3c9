"""Contact details as D9 compares them: trimmed lower-case email, E.164 phone."""

from __future__ import annotations

import phonenumbers


class InvalidPhone(ValueError):
    pass


def normalize_email(email: str) -> str:
    """D9: emails compare case-insensitively after trimming."""
    return email.strip().lower()


def normalize_phone(raw: str, default_region: str = "US") -> str:
    """D9: E.164, and a *possible* number (fictional 555 numbers pass; assigned-ness is not checked)."""
    try:
        parsed = phonenumbers.parse(raw.strip(), default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"not a phone number: {exc}") from exc
    # IS_POSSIBLE_LOCAL_ONLY (a 7-digit number without its area code) has no E.164 form.
    if phonenumbers.is_possible_number_with_reason(parsed) != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise InvalidPhone("not a possible phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask_email(email: str) -> str:
    """``ann@example.com`` -> ``a***@e***.com``: enough to tell lines apart, not enough to contact."""
    local, _, domain = email.partition("@")
    host, _, tld = domain.rpartition(".")
    return f"{local[:1]}***@{host[:1]}***.{tld}" if host else f"{local[:1]}***"


def mask_phone(phone: str) -> str:
    digits = [c for c in phone if c.isdigit()]
    return "***" + "".join(digits[-2:]) if len(digits) > 4 else "***"
