"""The API key that ``/predict`` asks for when ``ML_PLATFORM_API_KEY`` is set."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

#: Declared as an OpenAPI security scheme, so ``/docs`` shows it and its "Authorize" button sends
#: it; ``auto_error=False`` because without a configured key any request passes.
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    scheme_name="APIKey",
    description="The key in ML_PLATFORM_API_KEY; required by /predict when it is set.",
    auto_error=False,
)


def authorised(
    request: Request, x_api_key: Annotated[str | None, Security(API_KEY_HEADER)]
) -> None:
    """Refuse a request whose ``X-API-Key`` is not the configured key (none configured: any)."""
    api_key: str | None = request.app.state.api_key
    given = (x_api_key or "").encode("latin-1", "replace")  # headers arrive as latin-1
    if api_key and not (x_api_key and hmac.compare_digest(given, api_key.encode())):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")
