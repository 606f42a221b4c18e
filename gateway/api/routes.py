"""HTTP routes: translate requests into pipeline calls and completions into responses."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.api.auth import require_api_key
from gateway.api.schemas import ChatCompletionBody
from gateway.api.state import GatewayState
from gateway.api.wire import (
    ChunkWriter,
    completion_body,
    completion_headers,
    completion_id,
    decision_headers,
)
from gateway.errors import GatewayError, InvalidRequest, RateLimited
from gateway.pipeline import Completion, CompletionInput, Decided, Final, StreamEvent, TextDelta

log = logging.getLogger(__name__)
router = APIRouter()
"""Every route; the `/v1` ones (`api`, included at the end) behind the API key and rate limit."""


async def get_state(request: Request) -> GatewayState:
    # async: a sync dependency would cost a thread-pool hop on every request
    state: GatewayState = request.app.state.gateway
    return state


State = Annotated[GatewayState, Depends(get_state)]


def tenant_of(request: Request) -> str | None:
    tenant: str | None = getattr(request.state, "tenant", None)
    return tenant


async def limit_rate(request: Request, state: State) -> None:
    """429 with Retry-After once the caller's key has used its `limits.requests_per_minute`."""
    limiter = state.rate_limiter
    if limiter is None:
        return
    wait = await limiter.acquire(tenant_of(request) or "anonymous")
    if wait > 0:
        raise RateLimited(
            f"rate limit reached: {state.settings.limits.requests_per_minute} requests per minute "
            f"for this API key; retry in {wait:.1f} s",
            retry_after=math.ceil(wait),
        )


api = APIRouter(dependencies=[Depends(require_api_key), Depends(limit_rate)])


@api.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionBody, request: Request, state: State) -> Response:
    """Answer a chat conversation; `model` names the policy."""
    request.state.policy = body.model  # for the request metrics, once the body is valid
    state.authorize_policy(request, body.model)
    limits = state.settings.limits
    if len(body.messages) > limits.max_messages:
        raise InvalidRequest(
            f"{len(body.messages)} messages; this gateway accepts at most {limits.max_messages}",
            param="messages",
        )
    chat = body.to_request(
        default_max_tokens=limits.default_max_tokens, max_tokens_cap=limits.max_tokens_cap
    )
    inp = CompletionInput(policy=body.model, request=chat, tenant=tenant_of(request))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _stream(state, inp, include_usage)
    started = time.perf_counter()
    completion = await state.pipeline.complete(inp)
    state.metrics.stage_latency.labels("total").observe(time.perf_counter() - started)
    _log_content(state, inp, completion)
    body_json = completion_body(completion, request_id=completion_id(), created=int(time.time()))
    return JSONResponse(body_json, headers=completion_headers(completion))


async def _stream(state: GatewayState, inp: CompletionInput, include_usage: bool) -> Response:
    events = state.pipeline.stream(inp)
    # Pull the first event before answering, so errors before any text are plain HTTP errors
    # and the headers carry the decision whenever it is known before the text.
    first = await anext(events)
    writer = ChunkWriter(inp.policy, include_usage=include_usage)
    decision = first if isinstance(first, Decided) else None
    headers = decision_headers(inp.policy, decision, cached=False if decision is None else None)
    if decision is None:
        headers["x-gateway-action"] = "return"
    started = time.perf_counter()

    async def body() -> AsyncIterator[bytes]:
        yield writer.role()
        pending: list[StreamEvent] = [] if decision is not None else [first]
        try:
            async for event in _chain(pending, events):
                if isinstance(event, TextDelta) and event.text:
                    yield writer.text(event.text)
                elif isinstance(event, Final):
                    for line in writer.finish(event.completion):
                        yield line
                    state.metrics.stage_latency.labels("total").observe(
                        time.perf_counter() - started
                    )
                    _log_content(state, inp, event.completion)
        except GatewayError as exc:
            log.warning("stream ended by an error", extra={"error": exc.message})
            yield writer.error(exc.message, exc.error_type, exc.code)
            yield b"data: [DONE]\n\n"
        finally:
            await events.aclose()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _log_content(state: GatewayState, inp: CompletionInput, completion: Completion) -> None:
    """The conversation and the answer, only when the operator set `log_content: true`."""
    if state.settings.log_content:
        log.info(
            "chat content",
            extra={
                "policy": inp.policy,
                "messages": inp.request.message_dicts(),
                "answer": completion.text,
                "action": completion.action.value,
            },
        )


async def _chain(
    first: list[StreamEvent], rest: AsyncIterator[StreamEvent]
) -> AsyncIterator[StreamEvent]:
    for event in first:
        yield event
    async for event in rest:
        yield event


@api.get("/v1/models")
async def list_models(request: Request, state: State) -> dict[str, Any]:
    """One entry per policy (the ones the caller's API key may use)."""
    created = int(state.started_at)
    allowed: frozenset[str] | None = getattr(request.state, "allowed_policies", None)
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "certainty-gateway",
                "description": policy.description,
            }
            for name, policy in sorted(state.policies.current.policies.items())
            if allowed is None or name in allowed
        ],
    }


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/health/ready", response_model=None)
async def ready(state: State) -> JSONResponse:
    """Ready once the model is loaded and the policies are valid; reports the cache."""
    report = state.readiness()
    return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)


@router.get("/metrics")
async def metrics(state: State) -> Response:
    """Prometheus metrics."""
    state.metrics.queue_depth.set(state.queue_depth())
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


router.include_router(api)
