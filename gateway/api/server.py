"""The connection edge: limits on what a client may hold of the server before any request runs.

uvicorn's HTTP protocols, with five limits they do not enforce (or not in time), counted before
the parser sees a byte:

* **header bytes** (`server.max_header_bytes`): a request head (request line and headers) larger
  than this is answered 431 and the connection closed. httptools, uvicorn's default parser, has no
  limit of its own, and gathers a header in a bytes object grown piece by piece: one 150 MiB header
  stalled every client for seconds. (With `server.http: h11`, h11's own limit on an incomplete
  event is set to the same size; h11 answers 400.)
* **header timeout** (`server.header_timeout_s`): the head of each request must be complete within
  this time of the connection opening, or of its first byte on a kept-alive connection; else 408
  (or, when not a byte came, a silent close) and the connection closed. A client sending a byte a
  second holds its connection no longer.
* **body timeout** (`server.body_timeout_s`): the body must be complete within this time of its
  head (of the request starting, for one pipelined behind another); else 408 and the connection
  closed. The app reads every body whole before it answers
  (`gateway.api.middleware.BodyLimitMiddleware`), so nothing of its response has been sent then.
* **connections** (`server.max_connections`): a connection opened while this many are open is
  answered 503 with `Retry-After` and closed at once, before anything is read. uvicorn's
  `limit_concurrency` only looks when a head is complete (half-sent heads are never counted)
  and answers in plain text.
* **idle keep-alive** (`server.keep_alive_s`): uvicorn's own `timeout_keep_alive`.

Refusals use the OpenAI error envelope. After one, the server stops reading the request (it is
never parsed), says what it has to say, half-closes, and discards what the client still sends for
at most `LINGER_S`, so that the client reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.api.errors import envelope

log = logging.getLogger(__name__)

LINGER_S = 2.0
"""After a refusal: how long the rest of the client's request is read and dropped."""
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000


class ConnectionGuard:
    """The limits of one connection; its protocol calls it at each step of a request."""

    def __init__(
        self,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        *,
        count_head: bool,
    ) -> None:
        self.limits = limits
        self.loop = loop
        self.transport = transport
        self.refused = False
        self._count_head = count_head
        self._in_head = count_head  # reading a request head: its bytes count
        self._head_bytes = 0
        self._tail = b""  # the last bytes of the head so far: its end may straddle two reads
        self._waiting = False  # a head is due
        self._body_due = False  # a head is in, the rest of its request is not
        self._received = 0  # bytes since the head became due
        self._timer: asyncio.TimerHandle | None = None  # the head's deadline, then the body's
        self._linger: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- events

    def head_due(self, *, now: bool) -> None:
        """A new request head is due: at the connection's start (its time runs `now`), and
        after each response (its time runs from its first byte: until then the connection is
        idle, which is `keep_alive_s`'s business)."""
        self._cancel_timer()
        self._waiting = True
        self._body_due = False  # answered: whatever of its body still comes counts as head
        self._received = 0
        if now:
            self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)

    def head_done(self) -> None:
        self._cancel_timer()
        self._waiting = False
        self._in_head = False
        self._head_bytes = 0
        self._body_due = True

    def message_done(self) -> None:
        """The request (body included) is in: what comes next is the next request's head."""
        if self._body_due:
            self._body_due = False
            self._cancel_timer()
        self._in_head = self._count_head
        self._head_bytes = 0
        self._tail = b""

    def fed(self) -> None:
        """The parser has taken a read: a body it left incomplete gets its deadline. (Set here
        rather than at `head_done`: most requests come whole in one read, and pay for no timer.)"""
        if self._body_due and self._timer is None and not self.refused:
            self._timer = self.loop.call_later(self.limits.body_timeout_s, self._body_late)

    def received(self, data: bytes) -> bool:
        """Whether `data` goes to the parser (False once the connection is refused)."""
        if self.refused:
            return False
        if self._waiting and self._timer is None:
            self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)
        self._received += len(data)
        if self._in_head:
            before = self._head_bytes
            self._head_bytes += len(data)
            limit = self.limits.max_header_bytes
            if self._head_bytes > limit:
                allowed = self._tail + data[: max(0, limit - before)]
                if not any(end in allowed for end in _HEAD_ENDS):
                    self.refuse(
                        431,
                        f"the request head is larger than this gateway accepts ({limit} bytes)",
                        code="request_header_fields_too_large",
                    )
                    return False
            self._tail = (self._tail + data[-3:])[-3:]
        return True

    def closed(self) -> None:
        self._cancel_timer()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    # -------------------------------------------------------------- refusals

    def refuse(
        self,
        status: int,
        message: str,
        *,
        code: str,
        error_type: str = "invalid_request_error",
        retry_after: int | None = None,
    ) -> None:
        """Answer `status` in the error envelope, then close (reading and dropping the rest of
        the request for at most `LINGER_S`)."""
        if self.refused or self.transport.is_closing():
            return
        self.refused = True
        self._cancel_timer()
        body = json.dumps(envelope(message, error_type, code=code)).encode()
        lines = [
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        if retry_after is not None:
            lines.append(f"retry-after: {retry_after}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER_S, self.transport.abort)
        else:
            self.transport.close()

    def _head_late(self) -> None:
        self._timer = None
        if not self._waiting or self.transport.is_closing():
            return
        if self._received == 0:  # an idle keep-alive connection: nothing to say
            self.transport.close()
            return
        self.refuse(
            408,
            f"the request head did not arrive within {self.limits.header_timeout_s:g} s",
            code="request_timeout",
        )

    def _body_late(self) -> None:
        self._timer = None
        if not self._body_due or self.transport.is_closing():
            return
        self.refuse(
            408,
            f"the request body did not arrive within {self.limits.body_timeout_s:g} s",
            code="request_timeout",
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _over_capacity(guard: ConnectionGuard, open_connections: int) -> bool:
    """Refuses the connection when `max_connections` are open already."""
    if open_connections < guard.limits.max_connections:
        return False
    log.warning("connection refused: too many open", extra={"connections": open_connections})
    guard.refuse(
        503,
        f"the gateway has {open_connections} connections open, its limit; retry shortly",
        code="too_many_connections",
        error_type="server_error",
        retry_after=1,
    )
    return True


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under `ConnectionLimits`."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    guard: ConnectionGuard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.guard = ConnectionGuard(self.limits, self.loop, transport, count_head=True)
        if _over_capacity(self.guard, len(self.connections)):
            return  # never added to the server's connections: nothing else to undo
        super().connection_made(transport)
        self.guard.head_due(now=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed()
        if self.transport is not None:  # None: refused in `connection_made`
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.guard.received(data):
            super().data_received(data)
            if not self.pipeline:  # a queued request's body is not read until its turn
                self.guard.fed()

    def on_headers_complete(self) -> None:
        self.guard.head_done()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.guard.message_done()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:
            self.guard.head_due(now=False)  # nothing pipelined runs: the next head is due
        elif not self.pipeline:  # the last pipelined request runs: its body's time starts
            self.guard.fed()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under `ConnectionLimits` (h11 limits the head's size itself)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    guard: ConnectionGuard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.guard = ConnectionGuard(self.limits, self.loop, transport, count_head=False)
        if _over_capacity(self.guard, len(self.connections)):
            return
        super().connection_made(transport)
        self.guard.head_due(now=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed()
        if self.transport is not None:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.guard.received(data):
            super().data_received(data)
            self.guard.fed()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        if cycle is not before:  # a request head was read
            self.guard.head_done()
        if cycle is not None and not cycle.more_body:  # and its body (no-op once said)
            self.guard.message_done()
        self.guard.fed()  # also for a pipelined head, read here after the response before it

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:
            self.guard.head_due(now=False)


def protocol_class(http: str, limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """The guarded protocol for uvicorn's `http` setting ("auto" and "httptools": httptools)."""
    base: type[GuardedHttpToolsProtocol] | type[GuardedH11Protocol] = (
        GuardedH11Protocol if http == "h11" else GuardedHttpToolsProtocol
    )
    attributes: dict[str, Any] = {"limits": limits, "__module__": __name__}
    return type(base.__name__, (base,), attributes)
