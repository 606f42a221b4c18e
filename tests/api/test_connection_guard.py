"""The connection edge's body deadline where requests share a connection: pipelined behind a slow
one, and after an answer given before the body was read. A real uvicorn server with the
gateway's guarded protocols (`gateway.api.server`) around a small app, over raw sockets."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from gateway.api.server import ConnectionLimits, protocol_class
from tests.servers import free_port

LIMITS = ConnectionLimits(header_timeout_s=1.0, body_timeout_s=1.0)
SLOW_S = 2.5  # longer than the body deadline


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body (but on /early, which answers first); /slow then takes `SLOW_S`."""
    if scope["type"] != "http":
        return
    if scope["path"] != "/early":
        more = True
        while more:
            more = (await receive()).get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW_S)
    body = b"ok " + scope["path"].encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module", params=["httptools", "h11"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    chosen = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=chosen,
        http=protocol_class(request.param, LIMITS),
        timeout_keep_alive=30,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield chosen
    server.should_exit = True
    thread.join(10)


def post(path: str, length: int) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: test\r\ncontent-length: %d\r\n\r\n" % (path.encode(), length)


def until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sends within `seconds`, and whether it closed the connection by then."""
    sock.settimeout(0.2)
    received = b""
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def statuses(received: bytes) -> list[bytes]:
    """The status codes of the responses in `received`, in order."""
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", received)


def test_a_request_pipelined_behind_a_slow_one_is_not_cut_off(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/slow", 2) + b"ab")
        time.sleep(0.3)
        sock.sendall(post("/fast", 10) + b"12345")  # its body in two reads, while /slow runs
        time.sleep(0.05)
        sock.sendall(b"67890")
        received, _ = until_closed(sock, SLOW_S + 2)
    assert statuses(received) == [b"200", b"200"]
    assert b"ok /slow" in received
    assert b"ok /fast" in received
    assert received.index(b"ok /slow") < received.index(b"ok /fast")


def test_a_pipelined_request_whose_body_stops_gets_408_once_it_runs(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/slow", 2) + b"ab")
        time.sleep(0.3)
        sock.sendall(post("/fast", 10) + b"12345")  # the rest never comes
        received, closed = until_closed(sock, SLOW_S + LIMITS.body_timeout_s + 3)
    assert statuses(received) == [b"200", b"408"]
    assert b"request body did not arrive within 1 s" in received
    assert closed


def test_an_answer_before_the_body_leaves_the_rest_to_the_head_deadline(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/early", 10) + b"12345")  # answered without reading its body
        received, closed = until_closed(sock, 0.5)
        assert statuses(received) == [b"200"]
        assert not closed
        sock.sendall(b"67890")  # the rest comes, and then nothing: the connection is not held
        received, closed = until_closed(sock, LIMITS.header_timeout_s + 3)
    assert closed
