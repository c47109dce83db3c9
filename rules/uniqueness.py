"""The unique-lead key (D1, D3, D9). The database holds a unique index on (account, key)."""

from __future__ import annotations


def unique_key(*, duplication: bool, owner_id: int, email_normalized: str | None, phone_e164: str | None) -> str | None:
    """D1: (email, owner) with duplication on; D3: (email, account) with it off;
    D9: (phone, owner) for a lead with no email. None: nothing to match on (never happens for intakes,
    which require an email or a phone)."""
    if email_normalized:
        return f"e:{owner_id}:{email_normalized}" if duplication else f"e:*:{email_normalized}"
    if phone_e164:
        return f"p:{owner_id}:{phone_e164}"
    return None
