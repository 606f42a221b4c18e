"""The HTTP edge, as plain ASGI middleware (streams pass through untouched), outermost first.

`RequestContextMiddleware`
    The request id: a sane incoming `x-request-id`, else a new one; it is on every log line of
    the request and on every response as `x-request-id`. One access log line per request (no
    headers, no body; at debug level with `server.access_log: false`), the `gateway_requests`
    count of chat requests by policy and status, the in-flight count that draining waits for,
    and `connection: close` while draining. An exception no handler took becomes the 500
    envelope of `gateway.api.errors` here, so it carries the id.
`BodyLimitMiddleware`
    Reads the whole body before the app sees it, at most `limits.max_body_bytes`: a larger
    `Content-Length`, or more bytes streamed than allowed, is a 413 before any parsing.
`CancelOnDisconnectMiddleware`
    A client that goes away cancels its request: its queued engine work is dropped and a running
    generation stops at its next step. A single-flight cache computation is shielded on purpose
    (other callers may be waiting for the same result): it finishes and is cached, only the
    departed caller stops waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import logs
from gateway.api.admission import request_context
from gateway.api.chat import CHAT_PATH
from gateway.api.errors import error_response
from gateway.errors import ClientError, InvalidRequest, PayloadTooLarge

if TYPE_CHECKING:
    from gateway.api.state import GatewayState

log = logging.getLogger("gateway.access")

_OPS_PREFIXES = ("/health/", "/metrics")  # probes and scrapes: not API traffic
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
CLIENT_CLOSED = 499  # the client went away before the response (nginx's convention)
WATCH_AFTER_S = 0.05
"""How long a request runs before `CancelOnDisconnectMiddleware` watches for its client leaving."""


def _gateway_state(scope: Scope) -> GatewayState | None:
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "gateway", None)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def edge(app: ASGIApp, *, max_body_bytes: int, access_log: bool = True) -> ASGIApp:
    """`app` behind the three layers this module describes, outermost first (also a middleware
    factory for `add_middleware`)."""
    inner = BodyLimitMiddleware(CancelOnDisconnectMiddleware(app), max_bytes=max_body_bytes)
    return RequestContextMiddleware(inner, access_log=access_log)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_level = logging.INFO if access_log else logging.DEBUG

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        rid = (
            incoming.decode()
            if incoming is not None and _REQUEST_ID.fullmatch(incoming)
            else f"{random.getrandbits(128):032x}"  # as unique as a uuid4, without a syscall
        )
        token = logs.request_id.set(rid)
        state = _gateway_state(scope)
        api = not scope["path"].startswith(_OPS_PREFIXES)
        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
                if state is not None and state.draining:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        if api and state is not None:
            state.inflight += 1
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if status:  # the response has begun: nothing more can be said to this client
                raise
            handler = getattr(scope.get("app"), "exception_handlers", {}).get(Exception)
            if handler is None:
                raise
            response = await handler(_request(scope, receive), exc)
            await response(scope, receive, send_with_id)
        finally:
            if api and state is not None:
                state.inflight -= 1
            self._record(scope, state, status or CLIENT_CLOSED, time.perf_counter() - started)
            logs.request_id.reset(token)

    def _record(
        self, scope: Scope, state: GatewayState | None, status: int, seconds: float
    ) -> None:
        context = request_context(scope)
        policy: str | None = None
        if scope["path"] == CHAT_PATH and scope["method"] == "POST":
            policy = context.policy
            if policy is not None and state is not None:
                policy = policy if policy in state.policies.current.policies else "unknown"
            policy = policy or "none"
            if state is not None:
                state.metrics.requests_of(policy, str(status)).inc()
        # Probes, scrapes and refused authentications (logged in summary by the throttle).
        quiet = scope["path"].startswith(_OPS_PREFIXES) or context.quiet_log
        level = logging.DEBUG if quiet else self.access_level
        if not log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
        }
        if context.tenant is not None:
            fields["key_id"] = context.tenant
        if policy is not None:
            fields["policy"] = policy
        log.log(level, "request", extra=fields)


def _request(scope: Scope, receive: Receive) -> Any:
    from starlette.requests import Request

    return Request(scope, receive)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await self._refuse(scope, receive, send, InvalidRequest("bad Content-Length"))
                return
            if int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send, self._too_large())
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before the body was complete: nobody to answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole = b"".join(chunks)
        body: Message | None = {"type": "http.request", "body": whole, "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is larger than this gateway accepts ({self.max_bytes} bytes)"
        )

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: ClientError) -> None:
        response = error_response(exc)
        # The rest of the body is never read: the connection cannot carry another request.
        response.headers["connection"] = "close"
        await response(scope, receive, send)


class CancelOnDisconnectMiddleware:
    """Runs the request in the server's own task; a watcher started `watch_after_s` after the body
    is in cancels that task when the client goes away. Requests answered sooner (cache hits,
    errors) never pay for a watcher; a client that leaves earlier is noticed at that moment."""

    def __init__(self, app: ASGIApp, *, watch_after_s: float = WATCH_AFTER_S) -> None:
        self.app = app
        self.watch_after_s = watch_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        body_read = False
        responded = False
        cancelled = False
        disconnected = asyncio.Event()
        watcher: asyncio.Task[None] | None = None
        timer: asyncio.TimerHandle | None = None

        async def watch() -> None:
            # The only reader of `receive` once the body is in: it can only say "disconnect".
            nonlocal cancelled
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
            if not responded:
                cancelled = True
                task.cancel()

        def start_watching() -> None:
            nonlocal watcher
            if not responded:
                watcher = loop.create_task(watch())

        async def app_receive() -> Message:
            nonlocal body_read, timer
            if body_read:
                if watcher is None and timer is not None:  # asked before the timer: watch now
                    timer.cancel()
                    start_watching()
                await disconnected.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif not message.get("more_body", False):
                body_read = True
                timer = loop.call_later(self.watch_after_s, start_watching)
            return message

        async def app_send(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                responded = True
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except asyncio.CancelledError:
            # Ours alone (no one else asked this task to stop): the client left; swallow it.
            if not cancelled or task.cancelling() > 1:
                raise
            log.info("client disconnected; request cancelled", extra={"path": scope["path"]})
        finally:
            if cancelled:
                task.uncancel()  # our request is settled, whether or not the app let it through
            if timer is not None:
                timer.cancel()
            if watcher is not None:
                watcher.cancel()
