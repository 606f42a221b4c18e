#!/usr/bin/env python
"""Benchmark: the CPU one cache hit costs the app alone, without HTTP (issue 14).

Builds the miniature model once, starts the app's lifespan, sends one chat request to fill the
in-process cache, then calls the ASGI app `--requests` times with the same body (each call a
cache hit: API key check, body, pipeline, cache, response) and prints microseconds per hit.
`--profile` prints cProfile's top functions by own time. Run it on two checkouts in turn to see
what a change adds to every request:

    python bench/hitpath.py [--requests 8000] [--profile] [--work DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from soak import miniature_config

BODY = json.dumps(
    {
        "model": "granite",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 8,
    }
).encode()


async def start(app: Any) -> None:
    """Run the app's lifespan start-up (the task keeps running, as a server's would)."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    asyncio.get_running_loop().create_task(app(scope, inbox.get, outbox.put))
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started


async def one(app: Any) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
        "app": app,
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure(config: Path, requests: int, profile: bool) -> None:
    from gateway.api.app import create_app
    from gateway.config import load_settings

    app = create_app(load_settings(config), watch_policies=False)
    await start(app)
    for _ in range(20):  # the first computes and caches; the rest warm up
        assert await one(app) == 200
    profiler = cProfile.Profile() if profile else None
    begun = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    for _ in range(requests):
        await one(app)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - begun
    print(f"in-process cache hit, app alone: {seconds / requests * 1e6:.1f} us per hit")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--work", default=None, help="reuse (or create) the model folder here")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-hitpath-"))
    work.mkdir(parents=True, exist_ok=True)
    asyncio.run(measure(miniature_config(work), args.requests, args.profile))


if __name__ == "__main__":
    main()
