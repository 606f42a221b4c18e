"""Gateway overhead per request: everything but the model, p50 / p99 at 1 and 16 concurrent
clients, on two paths per policy:

- miss: every request asks something new (a unique message), so each one is validated, keyed,
  looked up in vain, answered and scored by the engine, decided by the policy, stored in the
  cache and serialized;
- hit: every request is the same, so after the first it is answered from the in-process cache.

The app is the real one (`create_app`, routes, pipeline, policies, in-process cache) with an
engine that answers and scores instantly, so what is timed is the gateway's own work. Each request
is timed inside the ASGI server boundary (from the app receiving the request to its last body
byte), so the load generator's own cost is not counted; at 16 concurrent clients the time also
includes waiting for the event loop, which is what a client would see.

    python bench/overhead.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx

from gateway.api.app import create_app
from gateway.api.state import GatewayState
from gateway.cache import build_cache
from gateway.certainty import ScoreResult, ScoringMode, certainty_from_distribution
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.policy import PolicyStore
from gateway.types import ChatRequest, Document, Generation, Message

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fake escalator
from tests.fakes import FakeEscalator

TARGET_P50_MS = 1.0
ANSWER = "Paris is the capital of France. " * 8
DISTRIBUTION = [0.01, 0.01, 0.02, 0.02, 0.04, 0.1, 0.2, 0.3, 0.2, 0.1]


class InstantEngine:
    """Answers and scores at once: the bench times the gateway, not the model."""

    model_id = "instant@bench"
    served_name = "instant"
    scoring_mode: ScoringMode = "logits"

    async def generate(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> Generation:
        if on_text is not None:
            on_text(ANSWER)
        return Generation(ANSWER, "stop", prompt_tokens=40, completion_tokens=64)

    async def score(
        self,
        messages: Sequence[Message],
        answer: str,
        documents: Sequence[Document] = (),
        mode: ScoringMode | None = None,
    ) -> ScoreResult:
        return certainty_from_distribution(DISTRIBUTION)


class Timed:
    """ASGI wrapper that records each HTTP request's time inside the app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.samples: list[float] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        begun = time.perf_counter()

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.samples.append(time.perf_counter() - begun)

        await self.app(scope, receive, timed_send)


@contextlib.asynccontextmanager
async def _instant_state(app: Any, policies: Path) -> AsyncIterator[None]:
    """The real state and pipeline, around the instant engine instead of a loaded model."""
    settings = Settings(policies_dir=policies)
    store = PolicyStore.open(policies, set())
    cache = build_cache(settings.cache)
    metrics = Metrics()
    pipeline = Pipeline(
        InstantEngine(), store, FakeEscalator(targets=()), cache, cache_ttl_s=60, metrics=metrics
    )
    app.state.gateway = GatewayState(
        settings=settings, pipeline=pipeline, policies=store, cache=cache, metrics=metrics
    )
    yield


PathKind = Literal["miss", "hit"]


async def _run(
    policies: Path, concurrency: int, requests: int, policy: str, path: PathKind
) -> list[float]:
    app = create_app(Settings(policies_dir=policies), watch_policies=False)
    app.router.lifespan_context = lambda app: _instant_state(app, policies)
    timed = Timed(app)
    numbers = itertools.count()

    def payload() -> dict[str, Any]:
        question = "What is the capital of France?"
        if path == "miss":  # a new question each time: nothing is cached or remembered
            question += f" (#{next(numbers)})"
        return {
            "model": policy,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 64,
            "temperature": 0,  # deterministic, so cached (a sampled request never is)
        }

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=timed)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for _ in range(50):  # warm-up
                await client.post("/v1/chat/completions", json=payload())
            timed.samples.clear()
            remaining = requests

            async def client_loop() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    response = await client.post("/v1/chat/completions", json=payload())
                    assert response.status_code == 200, response.text
                    cache = response.headers["x-gateway-cache"]
                    assert cache == path, f"expected a {path}, got a {cache}"

            await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return list(timed.samples)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        policies = Path(tmp)
        (policies / "granite.yaml").write_text("name: granite\nreturn_at: 0.0\n")
        (policies / "guard.yaml").write_text("name: guard\nreturn_at: 0.75\n")
        rows = []
        for policy in ("granite", "guard"):
            paths: tuple[PathKind, ...] = ("miss", "hit")
            for path in paths:
                for concurrency in (1, 16):
                    samples = asyncio.run(_run(policies, concurrency, args.requests, policy, path))
                    rows.append(
                        (
                            policy,
                            path,
                            concurrency,
                            len(samples),
                            statistics.median(samples) * 1000,
                            _percentile(samples, 0.99) * 1000,
                        )
                    )
    print("gateway overhead per request (engine answers instantly; time inside the ASGI app)")
    print("miss: a new question each request (engine, policy, cache store); hit: the same one")
    header = f"{'policy':8} {'path':4} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}"
    print(header + "  target")
    for policy, path, concurrency, count, p50, p99 in rows:
        verdict = "PASS" if p50 <= TARGET_P50_MS else "FAIL"
        note = f"p50 <= {TARGET_P50_MS:g} ms: {verdict}" if concurrency == 1 else "(queueing)"
        print(f"{policy:8} {path:4} {concurrency:>7} {count:>8} {p50:>8.3f} {p99:>8.3f}  {note}")


if __name__ == "__main__":
    main()
