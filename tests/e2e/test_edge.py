"""End to end, over raw sockets against a real `serve` process: the connection edge's limits on
header size, header time, body time and open connections (`gateway.api.server`)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.harness import Gateway, serving, tiny_model

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 12
GET_LIVE = b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n"
CHAT = json.dumps(
    {
        "model": "granite",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "temperature": 0,
    }
).encode()
POST_CHAT = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n" % len(CHAT)
)


def start(tiny_model_dir: Path, folder: Path, **server: Any) -> Iterator[Gateway]:
    policies = folder / "policies"
    policies.mkdir()
    (policies / "granite.yaml").write_text(yaml.safe_dump({"name": "granite", "return_at": 0.0}))
    config = {
        "model": tiny_model(tiny_model_dir),
        "policies_dir": str(policies),
        "server": {
            "header_timeout_s": HEADER_TIMEOUT_S,
            "body_timeout_s": BODY_TIMEOUT_S,
            "max_connections": MAX_CONNECTIONS,
            "keep_alive_s": 30,
            **server,
        },
    }
    with serving(config, folder) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from start(tiny_model_dir, tmp_path_factory.mktemp("edge"))


@pytest.fixture(scope="module", params=["httptools", "h11"])
def either_parser(
    request: pytest.FixtureRequest,
    gateway: Gateway,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """The module's gateway (httptools, what `serve` runs), then one on h11."""
    if request.param == "httptools":
        yield gateway
    else:
        yield from start(tiny_model_dir, tmp_path_factory.mktemp("edge-h11"), http="h11")


def connect(gateway: Gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_a_head_over_the_limit_is_431_and_the_connection_closed(gateway: Gateway) -> None:
    sock = connect(gateway)
    stop = threading.Event()

    def flood() -> None:  # a 64 MiB header, unless the server closes first
        try:
            sock.sendall(GET_LIVE + b"x-big: ")
            for _ in range(1024):
                if stop.is_set():
                    return
                sock.sendall(b"a" * 65536)
        except OSError:
            pass

    sender = threading.Thread(target=flood)
    sender.start()
    try:
        answer = read_all(sock)
    finally:
        stop.set()
        sender.join()
        sock.close()
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"code": "request_header_fields_too_large"' in answer
    # Meanwhile and after, everyone else is served; a head just under the limit too.
    assert httpx.get(gateway.url + "/health/live").status_code == 200
    near = httpx.get(gateway.url + "/health/live", headers={"x-pad": "a" * 60_000})
    assert near.status_code == 200


def test_a_client_sending_a_byte_at_a_time_is_closed_after_the_header_timeout(
    gateway: Gateway,
) -> None:
    sockets = [connect(gateway) for _ in range(6)]
    answers: list[bytes] = [b""] * len(sockets)

    def trickle(index: int, sock: socket.socket) -> None:
        sock.settimeout(0.25)
        for byte in GET_LIVE * 10:  # far longer than the timeout allows
            try:
                sock.send(bytes([byte]))
                answers[index] += sock.recv(4096)
                if answers[index]:
                    sock.settimeout(5)
                    answers[index] += read_all(sock)
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    threads = [threading.Thread(target=trickle, args=pair) for pair in enumerate(sockets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sock in sockets:
        sock.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]


def test_half_sent_requests_are_closed_after_the_header_timeout(gateway: Gateway) -> None:
    sockets = [connect(gateway) for _ in range(MAX_CONNECTIONS - 2)]
    for sock in sockets:
        sock.sendall(GET_LIVE)  # the head never ends
    answers = [read_all(sock) for sock in sockets]
    for sock in sockets:
        sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
    # A connection that never sends a byte is closed as well, silently.
    idle = connect(gateway)
    assert read_all(idle) == b""
    idle.close()


def test_connections_beyond_the_cap_get_503_with_retry_after(gateway: Gateway) -> None:
    time.sleep(0.5)  # the connections of earlier tests are gone
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = connect(gateway)
            sock.sendall(GET_LIVE + b"\r\n")  # answered, then kept alive
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
            held.append(sock)
        extra = connect(gateway)
        answer = read_all(extra)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1\r\n" in answer.lower()
        held.pop().close()
        time.sleep(0.2)
        assert httpx.get(gateway.url + "/health/live").status_code == 200
    finally:
        for sock in held:
            sock.close()


def response_to(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, read from a kept-alive connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_body_that_stops_coming_is_408_after_the_body_timeout(either_parser: Gateway) -> None:
    sock = connect(either_parser)
    try:
        sock.sendall(POST_CHAT + CHAT[:10])  # the head whole, the body never
        answer = read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert b'"code": "request_timeout"' in answer
    assert b"request body did not arrive within 2 s" in answer


def test_a_body_sent_a_byte_at_a_time_is_cut_off_at_the_body_timeout(gateway: Gateway) -> None:
    sock = connect(gateway)
    sock.sendall(POST_CHAT)
    sock.settimeout(0.1)
    answer = b""
    try:
        for byte in CHAT:  # ~10 s of body at this pace, against a 2 s limit
            sock.send(bytes([byte]))
            try:
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            if answer:
                break
        sock.settimeout(5)
        answer += read_all(sock)
    except OSError:
        pass
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert b"request body did not arrive" in answer


def test_a_kept_alive_connection_is_not_cut_off_after_whole_requests(
    either_parser: Gateway,
) -> None:
    sock = connect(either_parser)
    try:
        sock.sendall(POST_CHAT + CHAT[:10])  # a body in two parts, well within the limit
        time.sleep(0.3)
        sock.sendall(CHAT[10:])
        assert response_to(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(BODY_TIMEOUT_S + 0.5)  # idle past the body limit: no deadline is left running
        sock.sendall(POST_CHAT + CHAT)
        assert response_to(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        sock.close()
