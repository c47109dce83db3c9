"""Keys and tokens are stored as SHA-256 digests. They are long random strings, so a fast digest
suffices (as GitHub and Stripe store API tokens); lookups go through a unique index on the digest."""

from __future__ import annotations

import hashlib


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
