"""The URLs answers give (``status_url``, ``Location``): on ``LEADRELAY_PUBLIC_BASE_URL``, never on the
request's ``Host`` header, which the client chooses (a forged one would send the caller's next request,
credential included, wherever it says)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.convertors import StringConvertor, register_url_convertor

from leadrelay.settings import get_settings


def public_url_for(request: Request, name: str, **path_params: Any) -> str:
    """The public URL of the route named ``name``."""
    path = request.app.url_path_for(name, **path_params)
    return get_settings().public_base_url.rstrip("/") + str(path)


def register_id_convertor(name: str, *fixed: str) -> None:
    """``{param:name}`` in a route's path: one path segment, but none of the ``fixed`` names of the paths beside
    it. ``/v1/leads/{lead_id}`` would otherwise shadow ``/v1/leads/merge``: a GET of it would reach the lead's
    route and answer 422 for an id that is no UUID, where the path's answer is 405 with its ``Allow``."""

    class Convertor(StringConvertor):
        regex = rf"(?!(?:{'|'.join(fixed)})(?:/|$))[^/]+"

    register_url_convertor(name, Convertor())
