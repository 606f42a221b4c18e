"""HTTP routes: translate requests into pipeline calls and completions into responses."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.api.schemas import ChatCompletionBody
from gateway.api.state import GatewayState
from gateway.api.wire import (
    ChunkWriter,
    completion_body,
    completion_headers,
    completion_id,
    decision_headers,
)
from gateway.errors import GatewayError
from gateway.pipeline import CompletionInput, Decided, Final, StreamEvent, TextDelta

log = logging.getLogger(__name__)
router = APIRouter()


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


State = Annotated[GatewayState, Depends(get_state)]


def tenant_of(request: Request) -> str | None:
    tenant: str | None = getattr(request.state, "tenant", None)
    return tenant


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionBody, request: Request, state: State) -> Response:
    """Answer a chat conversation; `model` names the policy."""
    limits = state.settings.limits
    if len(body.messages) > limits.max_messages:
        from gateway.errors import InvalidRequest

        raise InvalidRequest(
            f"{len(body.messages)} messages; this gateway accepts at most {limits.max_messages}",
            param="messages",
        )
    chat = body.to_request(
        default_max_tokens=limits.default_max_tokens, max_tokens_cap=limits.max_tokens_cap
    )
    state.authorize_policy(request, body.model)
    inp = CompletionInput(policy=body.model, request=chat, tenant=tenant_of(request))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _stream(state, inp, include_usage)
    started = time.perf_counter()
    completion = await state.pipeline.complete(inp)
    state.metrics.stage_latency.labels("total").observe(time.perf_counter() - started)
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


async def _chain(
    first: list[StreamEvent], rest: AsyncIterator[StreamEvent]
) -> AsyncIterator[StreamEvent]:
    for event in first:
        yield event
    async for event in rest:
        yield event


@router.get("/v1/models")
async def list_models(state: State) -> dict[str, Any]:
    """One entry per policy."""
    created = int(state.started_at)
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
