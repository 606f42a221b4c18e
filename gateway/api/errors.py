"""Every error leaves the gateway in the OpenAI envelope: this is the one place that maps them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import (
    AuthenticationFailed,
    ClientError,
    GatewayError,
    Overloaded,
    RateLimited,
    ServiceError,
)

log = logging.getLogger(__name__)


def envelope(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    """The body of every error response, as OpenAI's."""

    error: ErrorDetail


def request_error_statuses() -> list[int]:
    """Every status a request can end with, but 200: those of the errors in `gateway.errors`."""
    statuses: set[int] = set()
    pending: list[type[GatewayError]] = [ClientError, ServiceError]
    while pending:
        kind = pending.pop()
        statuses.add(kind.status_code)
        pending.extend(kind.__subclasses__())
    return sorted(statuses)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of these error statuses, each with the envelope."""
    return {s: {"model": ErrorEnvelope, "description": HTTPStatus(s).phrase} for s in statuses}


def error_response(exc: GatewayError) -> JSONResponse:
    headers = {}
    if isinstance(exc, RateLimited | Overloaded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif isinstance(exc, AuthenticationFailed):
        headers["WWW-Authenticate"] = "Bearer"  # RFC 9110: a 401 names the scheme it wants
    return JSONResponse(
        envelope(exc.message, exc.error_type, param=exc.param, code=exc.code),
        status_code=exc.status_code,
        headers=headers,
    )


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [p for p in loc if p not in ("body",)]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return failed_response(exc)


def failed_response(exc: GatewayError) -> JSONResponse:
    """`error_response` for a request the gateway failed, logged when the fault is ours (5xx)."""
    if exc.status_code >= 500:
        log.warning("request failed", extra={"status": exc.status_code, "error": exc.message})
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc.errors())


def validation_error_response(errors: Sequence[Any]) -> JSONResponse:
    """The 400 for a body that fails its schema: the first error, its parameter named."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _location(tuple(first.get("loc", ()))) or None
    if first.get("type") == "json_invalid":
        message = "the request body is not valid JSON"
        param = None
    elif first.get("type") == "missing" and param:
        message = f"{param} is required"
    else:
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return JSONResponse(
        envelope(message, "invalid_request_error", param=param, code="invalid_value"),
        status_code=400,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return http_error_response(exc)


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    """The envelope for Starlette's own errors (an unknown path, a wrong method)."""
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "invalid_request" if exc.status_code < 500 else "server_error"
    )
    return JSONResponse(
        envelope(str(exc.detail), kind, code=code),
        status_code=exc.status_code,
        headers=dict(exc.headers or {}),
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return JSONResponse(
        envelope("the gateway failed to handle this request", "server_error", code="internal"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
