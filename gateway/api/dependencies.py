"""The FastAPI dependencies of the routes FastAPI serves (chat completions is plain ASGI)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.admission import authenticate_and_rate_limit
from gateway.api.state import GatewayState


async def get_state(request: Request) -> GatewayState:
    # async: a sync dependency would cost a thread-pool hop on every request
    state: GatewayState = request.app.state.gateway
    return state


State = Annotated[GatewayState, Depends(get_state)]


bearer = HTTPBearer(
    auto_error=False,
    description="An API key of this gateway, when it has any (`auth.api_keys`).",
)
"""Declares the scheme in the OpenAPI document; the header is checked by admission."""


async def require_api_key(
    request: Request,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    """Admission as a FastAPI dependency (the `/v1` routes other than chat completions)."""
    await authenticate_and_rate_limit(request.app.state.gateway, request.scope)
