"""What wraps every request: the envelope (request id, body size limit, model version header,
one log line) and the handler that turns an unexpected error into a plain 500."""

from __future__ import annotations

import time
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse

from ml_platform.serving.logs import log
from ml_platform.serving.model_holder import ModelHolder, ServedModel

MAX_BODY_BYTES = 64 * 1024


class Envelope:
    """Pure ASGI middleware (cheaper than ``@app.middleware``): a request id, the body size
    limit, the model version header on every response, and one JSON log line per request."""

    def __init__(self, app, holder: ModelHolder):
        self.app, self.holder = app, holder

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), [0]
        served = self.holder.current
        send = _with_envelope_headers(send, request_id, served, status)
        await self._within_body_limit(scope, receive, send, headers.get(b"content-length"))
        _log_request(scope, request_id, status[0], started, served)

    async def _within_body_limit(self, scope, receive, send, length: bytes | None) -> None:
        """The app's answer, or a 413 for a body over the limit."""
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await _too_large(scope, receive, send)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # Chunked: no length announced. Read up to the limit, then replay what was read.
            body = await _read_up_to_limit(receive)
            if len(body) > MAX_BODY_BYTES:
                return await _too_large(scope, receive, send)
            receive = _replaying(body, receive)
        await self.app(scope, receive, send)


def _with_envelope_headers(send, request_id: str, served: ServedModel | None, status: list[int]):
    """``send`` adding the request id and model version headers; the status lands in ``status``."""

    async def send_with_headers(message):
        if message["type"] == "http.response.start":
            status[0] = message["status"]
            extra = [(b"x-request-id", request_id.encode())]
            if served is not None:
                extra.append((b"x-model-version", served.version.encode()))
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_headers


async def _too_large(scope, receive, send) -> None:
    too_large = JSONResponse(
        {"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413
    )
    await too_large(scope, receive, send)


async def _read_up_to_limit(receive) -> bytes:
    """The body as it arrives, until its end, a disconnect or one chunk past the limit."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_BODY_BYTES:
            break
    return body


def _replaying(body: bytes, receive):
    """``receive`` that first hands out the body already read, in one message."""
    replayed = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return replayed.pop() if replayed else await receive()

    return replay


def _log_request(scope, request_id: str, status: int, started: float, served) -> None:
    log.info(
        "request",
        extra={
            "fields": {
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 2),
                "model_version": served.version if served else None,
            }
        },
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A 500 with the request id; never a stack trace in a response."""
    # The log has the type and the request id, to find the request again.
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.error(
        "unhandled error",
        extra={"fields": {"request_id": request_id, "error": type(exc).__name__}},
    )
    return JSONResponse({"detail": "internal error", "request_id": request_id}, 500)
