"""The URLs answers give (``status_url``, ``Location``): on ``LEADRELAY_PUBLIC_BASE_URL``, never on the
request's ``Host`` header, which the client chooses (a forged one would send the caller's next request,
credential included, wherever it says)."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from leadrelay.settings import get_settings


def public_url_for(request: Request, name: str, **path_params: Any) -> str:
    """The public URL of the route named ``name``."""
    path = request.app.url_path_for(name, **path_params)
    return get_settings().public_base_url.rstrip("/") + str(path)
