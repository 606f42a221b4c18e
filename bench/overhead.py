"""Gateway overhead per request: everything but the model (routing, validation, policy, cache
key, serialization), p50 / p99 at 1 and 16 concurrent clients.

The app is the real one (`create_app`, routes, pipeline, policies, in-process cache) with an
engine that answers instantly, so what is timed is the gateway's own work. Each request is timed
inside the ASGI server boundary (from the app receiving the request to its last body byte), so
the load generator's own cost is not counted; at 16 concurrent clients the time also includes
waiting for the event loop, which is what a client would see.

    python bench/overhead.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from gateway.api.app import create_app
from gateway.api.state import GatewayState
from gateway.cache import build_cache
from gateway.certainty import ScoreResult, ScoringMode, certainty_from_distribution
from gateway.config import Settings
from gateway.engine.base import ChatRequest, Document, Generation, Message, SamplingParams
from gateway.escalation import EscalationDelta, EscalationReply
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.policy import PolicyStore

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


class NoEscalation:
    @property
    def targets(self) -> set[str]:
        return set()

    async def complete(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> EscalationReply:
        raise NotImplementedError

    async def stream(self, *args: Any) -> Any:  # pragma: no cover - never escalates
        yield EscalationDelta(text="")


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
        InstantEngine(), store, NoEscalation(), cache, cache_ttl_s=60, metrics=metrics
    )
    app.state.gateway = GatewayState(
        settings=settings, pipeline=pipeline, policies=store, cache=cache, metrics=metrics
    )
    yield


async def _run(policies: Path, concurrency: int, requests: int, policy: str) -> list[float]:
    app = create_app(Settings(policies_dir=policies), watch_policies=False)
    app.router.lifespan_context = lambda app: _instant_state(app, policies)
    timed = Timed(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=timed)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            payload = {
                "model": policy,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 64,
            }
            for _ in range(50):  # warm-up
                await client.post("/v1/chat/completions", json=payload)
            timed.samples.clear()
            remaining = requests

            async def client_loop() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    response = await client.post("/v1/chat/completions", json=payload)
                    assert response.status_code == 200, response.text

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
            for concurrency in (1, 16):
                samples = asyncio.run(_run(policies, concurrency, args.requests, policy))
                rows.append(
                    (
                        policy,
                        concurrency,
                        len(samples),
                        statistics.median(samples) * 1000,
                        _percentile(samples, 0.99) * 1000,
                    )
                )
    print("gateway overhead per request (engine answers instantly; time inside the ASGI app)")
    print(f"{'policy':8} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}  target")
    for policy, concurrency, count, p50, p99 in rows:
        verdict = "PASS" if p50 <= TARGET_P50_MS else "FAIL"
        note = f"p50 <= {TARGET_P50_MS:g} ms: {verdict}" if concurrency == 1 else "(queueing)"
        print(f"{policy:8} {concurrency:>7} {count:>8} {p50:>8.3f} {p99:>8.3f}  {note}")


if __name__ == "__main__":
    main()
