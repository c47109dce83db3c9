"""The canonical lead event: every source (site, provider, text, import) is mapped into this one shape."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LeadSignup:
    source_kind: str  # site | squeeze_page | landing_page | provider | sms | import
    page_url: str | None = None
    host: str | None = None
    email: str | None = None  # as given (trimmed)
    email_normalized: str | None = None
    phone: str | None = None  # E.164
    first_name: str | None = None
    last_name: str | None = None
    lead_type: str | None = None
    price_min: int | None = None
    price_max: int | None = None
    zip: str | None = None
    message: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    existing_lead_id: str | None = None
    source_detail: str | None = None  # where a source with no page came from ("zillow lead 123")
    occurred_at: dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tags"] = list(self.tags)
        data["occurred_at"] = self.occurred_at.isoformat() if self.occurred_at else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LeadSignup:
        values = dict(data)
        values["tags"] = tuple(values.get("tags") or ())
        occurred = values.get("occurred_at")
        values["occurred_at"] = dt.datetime.fromisoformat(occurred) if occurred else None
        known = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def price(self) -> int | None:
        """The one price routing conditions compare: the top of the range when given."""
        return self.price_max if self.price_max is not None else self.price_min
