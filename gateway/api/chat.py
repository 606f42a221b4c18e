"""`POST /v1/chat/completions`: the route that carries the traffic, as a plain ASGI endpoint.

FastAPI's per-request routing and dependency solving cost more than answering a cache hit (see
`bench/cache.py`), so this one route does not go through them: `ChatRoute`, the innermost
middleware, answers it and hands every other request on to FastAPI. It does what FastAPI would
have done for it, with the same functions: the API key and rate limit (`admit`), the body's
validation against `ChatCompletionBody` with the same 400 envelope, the error handlers. The route
is described in the OpenAPI document by `DOCUMENTED_ROUTE`, which is never served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pydantic
from fastapi import Depends
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.auth import admit, require_api_key
from gateway.api.errors import failed_response, http_error_response, validation_error_response
from gateway.api.schemas import ChatCompletionBody
from gateway.api.state import GatewayState
from gateway.api.wire import (
    ChunkWriter,
    JSONBody,
    completion_body,
    completion_headers,
    completion_id,
    decision_headers,
)
from gateway.errors import GatewayError, InvalidRequest
from gateway.pipeline import Completion, CompletionInput, Decided, Final, StreamEvent, TextDelta

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"


class ChatRoute:
    """Serves `POST /v1/chat/completions`; passes everything else to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CHAT_PATH:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            wrong = HTTPException(405, headers={"Allow": "POST"})
            await http_error_response(wrong)(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await chat_completions(request)
        except GatewayError as exc:
            response = failed_response(exc)
        await response(scope, receive, send)


async def chat_completions(request: Request) -> Response:
    """Answer a chat conversation; `model` names the policy."""
    state: GatewayState = request.app.state.gateway
    await admit(state, request)
    try:
        body = ChatCompletionBody.model_validate_json(await request.body())
    except pydantic.ValidationError as exc:
        return validation_error_response(exc.errors(include_url=False))
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
    tenant: str | None = getattr(request.state, "tenant", None)
    inp = CompletionInput(policy=body.model, request=chat, tenant=tenant)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _stream(state, inp, include_usage)
    started = time.perf_counter()
    completion = await state.pipeline.complete(inp)
    state.metrics.stage_latency_of("total").observe(time.perf_counter() - started)
    _log_content(state, inp, completion)
    body_json = completion_body(completion, request_id=completion_id(), created=int(time.time()))
    return JSONBody(body_json, headers=completion_headers(completion))


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
                    state.metrics.stage_latency_of("total").observe(time.perf_counter() - started)
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


async def _documented(body: ChatCompletionBody) -> dict[str, Any]:
    """Answer a chat conversation; `model` names the policy.

    The response is OpenAI's `chat.completion` (or, with `stream: true`, its server-sent
    `chat.completion.chunk` events) with one more object, `certainty`: the score, the
    confidence, the policy's action and whether the decision came from the cache.
    """
    raise NotImplementedError  # never served: `ChatRoute` answers this path


DOCUMENTED_ROUTE = APIRoute(
    CHAT_PATH,
    _documented,
    methods=["POST"],
    name="chat_completions",
    response_model=None,
    dependencies=[Depends(require_api_key)],  # documents the bearer scheme
)
"""The route as FastAPI would declare it, for the OpenAPI document only (see `create_app`)."""
