"""The API key that ``/predict`` asks for when ``ML_PLATFORM_API_KEY`` is set."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Header, HTTPException, Request


def authorised(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Refuse a request whose ``X-API-Key`` is not the configured key (none configured: any)."""
    api_key: str | None = request.app.state.api_key
    given = (x_api_key or "").encode("latin-1", "replace")  # headers arrive as latin-1
    if api_key and not (x_api_key and hmac.compare_digest(given, api_key.encode())):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")
