"""The routes FastAPI serves: models, health, metrics (chat completions: `gateway.api.chat`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from gateway.api.admission import allowed_policies, authenticate
from gateway.api.dependencies import State, require_api_key
from gateway.api.errors import error_responses
from gateway.api.state import GatewayState
from gateway.errors import AuthenticationFailed, ModelNotFound, RateLimited

router = APIRouter()
"""Every route here; the `/v1` ones (`api`, included at the end) behind the key and rate limit."""


api = APIRouter(dependencies=[Depends(require_api_key)], responses=error_responses(401, 403, 429))
"""The `/v1` routes FastAPI serves; chat completions is `gateway.api.chat`'s."""


@api.get("/v1/models")
async def list_models(request: Request, state: State) -> dict[str, Any]:
    """One entry per policy (the ones the caller's API key may use)."""
    allowed = allowed_policies(request.scope)
    return {
        "object": "list",
        "data": [
            _model(state, name)
            for name in sorted(state.policies.current.policies)
            if allowed is None or name in allowed
        ],
    }


@api.get("/v1/models/{model_id}", responses=error_responses(404))
async def retrieve_model(model_id: str, request: Request, state: State) -> dict[str, Any]:
    """One policy (the SDK's `models.retrieve`); 404 for one the caller cannot see."""
    allowed = allowed_policies(request.scope)
    if model_id not in state.policies.current.policies or (
        allowed is not None and model_id not in allowed
    ):
        raise ModelNotFound(
            f"the model {model_id!r} does not exist; GET /v1/models lists the models (policies)",
            param="model",
        )
    return _model(state, model_id)


def _model(state: GatewayState, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(state.started_at),
        "owned_by": "certainty-gateway",
        "description": state.policies.current.policies[name].description,
    }


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/health/ready",
    response_model=None,
    responses={503: {"description": "Not ready: the same report says why"}},
)
async def ready(request: Request, state: State) -> JSONResponse:
    """Ready once the model is loaded (or, with vLLM, served) and the policies are valid;
    reports the model, policies and cache to callers with an API key (when keys are on)."""
    report = await state.readiness()
    status = 200 if report["status"] == "ready" else 503
    if not _may_see_details(state, request):
        report = {"status": report["status"]}
    return JSONResponse(report, status_code=status)


def _may_see_details(state: State, request: Request) -> bool:
    """Without keys configured: anyone. Else only a caller presenting a valid key (a wrong one
    counts as a failed authentication, as on `/v1`)."""
    if not state.keys.enabled:
        return True
    presented = request.headers.getlist("authorization")
    if not presented:
        return False
    try:
        authenticate(state, request.scope, presented)
    except (AuthenticationFailed, RateLimited):
        return False
    return True


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> Response:
    """Prometheus metrics."""
    state.metrics.queue_depth.set(state.queue_depth())
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


router.include_router(api)
