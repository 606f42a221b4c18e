"""Limits and overload: body size (413), context length (400), per-key rate limits (429, in process
and in Redis), a full engine queue (503), a client that disconnects while its request waits, and
the request metrics that count all of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.api.middleware import BodyLimitMiddleware
from gateway.config import CacheSettings, LimitSettings, Settings
from gateway.engine.local import DecodeRow, LocalEngine
from gateway.ratelimit import LocalRateLimiter, RateLimiter, build_rate_limiter
from gateway.types import Generation
from tests.fakes import FakeEscalator
from tests.servers import RedisServer, free_port
from tests.waiting import wait_until

KEY = "sk-test-alpha-0123456789"
OTHER_KEY = "sk-test-beta-9876543210"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = {"model": "granite", "messages": QUESTION, "max_tokens": 4, "temperature": 0}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rows_run(client: TestClient) -> int:
    return int(client.app.state.gateway.pipeline.engine.rows_run)  # type: ignore[attr-defined]


def metric(client: TestClient, name: str, **labels: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# --------------------------------------------------------------------------------- body size


def test_an_oversized_body_is_a_413_before_parsing(client: TestClient) -> None:
    assert Settings().limits.max_body_bytes == 1024 * 1024
    junk = b"{" * (1024 * 1024 + 1)  # not JSON either: the size is refused before any parsing
    response = client.post(
        "/v1/chat/completions", content=junk, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"
    assert rows_run(client) == 0


def test_a_body_streamed_without_a_length_is_counted(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(limits={"max_body_bytes": 2048})
    chunks = [b'{"model": "granite", "messages": [{"role": "user", "content": "', b"x" * 4096]
    response = client.post(
        "/v1/chat/completions", content=iter(chunks), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # small ones pass


def test_a_body_that_arrives_in_pieces_is_answered_whole(client: TestClient) -> None:
    whole = json.dumps(CHAT).encode()
    pieces = [whole[i : i + 7] for i in range(0, len(whole), 7)]
    response = client.post(
        "/v1/chat/completions", content=iter(pieces), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["certainty"]["policy"] == CHAT["model"]


def test_the_body_limit_counts_every_chunk_and_never_calls_the_app() -> None:
    called = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal called
        called = True

    chunks = [{"type": "http.request", "body": b"x" * 6, "more_body": True} for _ in range(3)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    asyncio.run(BodyLimitMiddleware(app, max_bytes=10)(scope, receive, send))
    assert not called
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]


# ---------------------------------------------------------------------------- context length


@pytest.mark.parametrize("stream", [False, True])
def test_a_conversation_longer_than_the_context_is_a_400(client: TestClient, stream: bool) -> None:
    long = [{"role": "user", "content": "the " * 5000}]  # about 5,000 tokens; the context is 4,096
    response = client.post(
        "/v1/chat/completions",
        json={"model": "granite", "messages": long, "max_tokens": 4, "stream": stream},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"


# ------------------------------------------------------------------------------- rate limits


def test_a_key_over_its_rate_gets_429_with_retry_after_and_no_model_call(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(auth={"api_keys": [KEY, OTHER_KEY]}, limits={"requests_per_minute": 2})
    assert [client.get("/v1/models", headers=bearer(KEY)).status_code for _ in range(2)] == [
        200,
        200,
    ]
    refused = client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 30  # one request per 30 s
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert rows_run(client) == 0
    assert (
        client.post("/v1/chat/completions", json=CHAT, headers=bearer(OTHER_KEY)).status_code == 200
    )
    assert client.get("/health/ready").status_code == 200  # probes are not API traffic


def test_gcra_allows_a_burst_then_one_request_per_interval() -> None:
    now = [0.0]
    limiter = LocalRateLimiter(60, burst=3, clock=lambda: now[0])
    assert [limiter.acquire_now("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire_now("k") == pytest.approx(1.0)
    assert limiter.acquire_now("other") == 0.0
    now[0] = 1.0
    assert limiter.acquire_now("k") == 0.0
    assert limiter.acquire_now("k") == pytest.approx(1.0)
    now[0] = 120.0
    assert limiter.acquire_now("k") == 0.0
    assert set(limiter._arrivals) == {"k"}  # the idle key was forgotten


def _limiter(url: str, timeout_s: float = 0.5) -> RateLimiter:
    limits = LimitSettings(requests_per_minute=60, rate_limit_burst=2)
    limiter = build_rate_limiter(limits, CacheSettings(url=url, timeout_s=timeout_s))
    assert limiter is not None
    return limiter


def test_replicas_share_each_keys_allowance_through_redis(redis_server: RedisServer) -> None:
    async def run() -> list[float]:
        first, second = _limiter(redis_server.url), _limiter(redis_server.url)
        try:
            waits = [await first.acquire("k"), await second.acquire("k"), await first.acquire("k")]
            waits.append(await second.acquire("other"))
            return waits
        finally:
            await first.close()
            await second.close()

    waits = asyncio.run(run())
    assert waits[:2] == [0.0, 0.0]
    assert 0.0 < waits[2] <= 1.0
    assert waits[3] == 0.0


def test_a_dead_redis_limits_in_process_and_shows_degraded() -> None:
    async def run() -> tuple[list[float], str]:
        limiter = _limiter(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.05)
        try:
            waits = [await limiter.acquire("k") for _ in range(3)]
            for i in range(5):  # enough failures in a row to open the circuit
                await limiter.acquire(f"key-{i}")
            return waits, limiter.status.state
        finally:
            await limiter.close()

    waits, state = asyncio.run(run())
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] > 0.0  # still limited, by this process
    assert state == "degraded"


# ------------------------------------------------------------------- overload and disconnects


class GatedEngine:
    """The miniature engine, whose worker waits for `gate` before it decodes its first rows."""

    def __init__(self, engine: LocalEngine) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def decode(self, rows: list[DecodeRow], **options: Any) -> list[Generation]:
        self.entered.set()
        self.gate.wait(timeout=30)
        return self._engine.decode(rows, **options)


@pytest.fixture
def make_gated(
    engine: LocalEngine, policies_dir: Path
) -> Iterator[Callable[[int], tuple[TestClient, GatedEngine]]]:
    """Gateways whose worker holds the first answer until `gate` is set; two rows may decode
    together, the engine queue holds `queue_size` jobs."""
    gated: list[GatedEngine] = []
    with contextlib.ExitStack() as stack:

        def build(queue_size: int) -> tuple[TestClient, GatedEngine]:
            gated_engine = GatedEngine(engine)
            gated.append(gated_engine)
            engine_settings = {"queue_size": queue_size, "max_batch_size": 2, "batch_wait_ms": 0}
            settings = Settings(policies_dir=policies_dir, engine=engine_settings)  # type: ignore[arg-type]
            app = create_app(
                settings,
                engine=gated_engine,  # type: ignore[arg-type]
                escalator=FakeEscalator(),
                watch_policies=False,
            )
            return stack.enter_context(TestClient(app)), gated_engine

        try:
            yield build
        finally:
            for gated_engine in gated:
                gated_engine.gate.set()


def test_a_full_queue_is_refused_at_once_with_retry_after(
    make_gated: Callable[[int], tuple[TestClient, GatedEngine]],
) -> None:
    client, engine = make_gated(1)
    state = client.app.state.gateway  # type: ignore[attr-defined]
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(client.post, "/v1/chat/completions", json=CHAT)
        assert engine.entered.wait(10)  # the worker holds the first request
        queued = pool.submit(client.post, "/v1/chat/completions", json={**CHAT, "seed": 1})
        wait_until(lambda: state.queue_depth() == 1)
        begun = time.perf_counter()
        refused = client.post("/v1/chat/completions", json={**CHAT, "seed": 2})
        assert time.perf_counter() - begun < 5  # at once, not after the held request
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        engine.gate.set()
        # Admitted requests finish: their scores are queued even when the queue is full.
        assert running.result().status_code == 200
        assert queued.result().status_code == 200
    assert metric(client, "gateway_requests_total", policy="granite", status="503") >= 1


@pytest.mark.parametrize(
    "cacheable",
    [
        pytest.param(False, id="cancelled"),
        # A cacheable miss is computed once for everyone who asks (single flight): shielded on
        # purpose, it finishes and is cached although the one who asked has left.
        pytest.param(True, id="shared-computation-finishes"),
    ],
)
def test_a_client_that_disconnects_cancels_its_queued_work(
    make_gated: Callable[[int], tuple[TestClient, GatedEngine]], cacheable: bool
) -> None:
    client, engine = make_gated(4)  # room for every scoring job
    state = client.app.state.gateway  # type: ignore[attr-defined]
    sent: list[dict[str, Any]] = []
    # Sampled without a seed: never cached; temperature 0: cacheable.
    leaving = {**CHAT, "temperature": 0 if cacheable else 1.0, "max_tokens": 3}
    body = json.dumps(leaving).encode()

    async def leave_once_queued() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            while state.queue_depth() < 1:  # the request waits behind the held one: leave
                await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        await asyncio.wait_for(client.app(scope, receive, send), timeout=10)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.post, "/v1/chat/completions", json=CHAT)
        assert engine.entered.wait(10)
        client.portal.call(leave_once_queued)  # type: ignore[union-attr]
        assert sent == []  # nobody to answer
        engine.gate.set()
        assert running.result().status_code == 200
    wait_until(lambda: state.queue_depth() == 0)
    assert metric(client, "gateway_requests_total", policy="granite", status="499") == 1
    if not cacheable:
        assert rows_run(client) == 2  # the first request's answer and score; nothing of the other
        return
    wait_until(lambda: state.pipeline.flights.in_flight == 0)  # computed, scored and stored
    assert rows_run(client) == 4  # both requests answered and scored
    again = client.post("/v1/chat/completions", json=leaving)
    assert again.headers["x-gateway-cache"] == "hit"


# --------------------------------------------------------------------------- request metrics


def test_chat_requests_are_counted_by_policy_and_status(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(limits={"max_body_bytes": 4096})
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert client.post("/v1/chat/completions", json=big).status_code == 413
    client.get("/v1/models")
    assert metric(client, "gateway_requests_total", policy="granite", status="200") == 1
    assert metric(client, "gateway_requests_total", policy="unknown", status="404") == 1
    assert metric(client, "gateway_requests_total", policy="none", status="413") == 1
    assert metric(client, "gateway_cache_degraded") == 0
    assert metric(client, "gateway_inflight_requests") == 0  # a scrape is not API traffic
