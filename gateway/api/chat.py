"""`POST /v1/chat/completions`: the route that carries the traffic, as a plain ASGI endpoint.

A cache hit costs less than FastAPI's own middleware, routing and dependency solving would (see
`bench/cache.py`), so this path never enters them: `ChatFirst` sends it to `ChatEndpoint`,
behind the gateway's HTTP edge (`gateway.api.middleware`), and everything else to FastAPI. The
endpoint does what FastAPI would have done for it, with the same functions: the API key and rate
limit (`admit`), the body's validation against `ChatCompletionBody` with the same 400 envelope,
the error envelopes. The route is described in the OpenAPI document by `documented_route`, which
is never served.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import pydantic
from fastapi import Depends
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.admission import authenticate_and_rate_limit, authorize_policy
from gateway.api.dependencies import require_api_key
from gateway.api.errors import (
    error_responses,
    failed_response,
    http_error_response,
    request_error_statuses,
    validation_error_response,
)
from gateway.api.schemas import ChatCompletionBody
from gateway.api.state import GatewayState
from gateway.api.wire import Answers, ChunkWriter, decision_headers
from gateway.config import LimitSettings
from gateway.errors import GatewayError, InvalidRequest
from gateway.pipeline import Completion, CompletionInput, Decided, Final, StreamEvent, TextDelta
from gateway.types import ChatRequest

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
RECENT_BODIES = 256
RECENT_BODY_BYTES = 16 * 1024
"""At most this many request bodies, each at most this long, are remembered parsed (4 MiB of
bodies at most, and what they parsed to)."""


class ChatFirst:
    """Sends every request for `CHAT_PATH` to `chat`, every other one to `app`."""

    def __init__(self, chat: ASGIApp, app: ASGIApp) -> None:
        self.chat = chat
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT_PATH:
            await self.chat(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class ChatEndpoint:
    """Serves `CHAT_PATH`: POST answers, any other method is a 405.

    `limits` are the app's. Recent valid bodies are remembered with what they parsed to
    (`RecentBodies`), so a client that repeats a request (what every cache hit is) skips the
    validation, and the answers of recent cached decisions are kept serialized (`Answers`). Nothing
    else is remembered: the API key, the rate limit, the key's permission for the policy and the
    decision are checked or looked up on every request.
    """

    def __init__(self, limits: LimitSettings) -> None:
        self.limits = limits
        self.recent = RecentBodies()
        self.answers = Answers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            wrong = HTTPException(405, headers={"Allow": "POST"})
            await http_error_response(wrong)(scope, receive, send)
            return
        raw = await _read_body(receive)
        if raw is None:
            return  # the client left before its body was in: nobody to answer
        state: GatewayState = scope["app"].state.gateway
        try:
            response = await self.complete(state, scope, raw)
        except GatewayError as exc:
            response = failed_response(exc)
        await response(scope, receive, send)

    async def complete(self, state: GatewayState, scope: Scope, raw: bytes) -> ASGIApp:
        """Answer a chat conversation; `model` names the policy."""
        context = await authenticate_and_rate_limit(state, scope)
        tenant = context.tenant
        parsed = self.recent.get(tenant, raw)
        if parsed is None:
            try:
                body = ChatCompletionBody.model_validate_json(raw)
            except pydantic.ValidationError as exc:
                return validation_error_response(exc.errors(include_url=False))
            context.policy = body.model  # for the request metrics, once the body is valid
            authorize_policy(context, body.model)
            chat = self._convert(body)
            self.recent.put(tenant, raw, (body, chat))
        else:
            body, chat = parsed
            context.policy = body.model
            authorize_policy(context, body.model)
        inp = CompletionInput(policy=body.model, request=chat, tenant=tenant)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream(state, inp, include_usage)
        started = time.perf_counter()
        completion = await state.pipeline.complete(inp)
        state.metrics.stage_latency_of("total").observe(time.perf_counter() - started)
        _log_content(state, inp, completion)
        return JSONReply(*self.answers.answer(completion))

    def _convert(self, body: ChatCompletionBody) -> ChatRequest:
        limits = self.limits
        if len(body.messages) > limits.max_messages:
            raise InvalidRequest(
                f"{len(body.messages)} messages; this gateway accepts at most "
                f"{limits.max_messages}",
                param="messages",
            )
        return body.to_request(
            default_max_tokens=limits.default_max_tokens,
            max_tokens_cap=limits.max_tokens_cap,
            limits=limits,
        )


Parsed = tuple[ChatCompletionBody, ChatRequest]


class RecentBodies:
    """The last `size` request bodies of at most `max_bytes` that were valid, with what they
    parsed to (read only once parsed), least recently used forgotten first.

    Remembered per API key id (`tenant`): a body another key sent is, to this key, a body never
    seen, parsed at the same cost; so the time of an answer never tells one tenant what another
    sent."""

    def __init__(self, size: int = RECENT_BODIES, max_bytes: int = RECENT_BODY_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._parsed: OrderedDict[tuple[str | None, bytes], Parsed] = OrderedDict()

    def __len__(self) -> int:
        return len(self._parsed)

    def get(self, tenant: str | None, raw: bytes) -> Parsed | None:
        parsed = self._parsed.get((tenant, raw))
        if parsed is not None:
            self._parsed.move_to_end((tenant, raw))
        return parsed

    def put(self, tenant: str | None, raw: bytes, parsed: Parsed) -> None:
        if len(raw) <= self.max_bytes:
            self._parsed[(tenant, raw)] = parsed
            if len(self._parsed) > self.size:
                self._parsed.popitem(last=False)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class JSONReply:
    """A whole JSON response whose headers are bytes already: all a chat answer needs."""

    __slots__ = ("body", "headers")

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        self.headers = [
            *headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


async def _stream(
    state: GatewayState, inp: CompletionInput, include_usage: bool
) -> StreamingResponse:
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


def documented_route(*, keys: bool) -> APIRoute:
    """`ChatEndpoint` as FastAPI would declare it, for the OpenAPI document only (never served):
    the body model it validates with, the description of `ChatEndpoint.complete`, every error
    status `gateway.errors` defines, and the bearer scheme when the gateway has `keys`."""

    async def chat_completions(body: ChatCompletionBody) -> dict[str, Any]:
        raise NotImplementedError  # never served: `ChatEndpoint` answers this path

    chat_completions.__doc__ = f"{ChatEndpoint.complete.__doc__}\n\n{_RESPONSE}"
    streamed = {"text/event-stream": {"schema": {"type": "string"}}}
    return APIRoute(
        CHAT_PATH,
        chat_completions,
        methods=["POST"],
        name="chat_completions",
        response_model=None,
        responses={
            200: {"description": "The answer, or its stream", "content": streamed},
            **error_responses(*request_error_statuses()),
        },
        dependencies=[Depends(require_api_key)] if keys else [],  # the bearer scheme
    )


_RESPONSE = """The response is OpenAI's `chat.completion` (or, with `stream: true`, its server-sent
`chat.completion.chunk` events) with one more object, `certainty`: the score, the confidence, the
policy's action and whether the decision came from the cache."""
