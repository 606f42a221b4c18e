"""The app factory: no work at import time; the lifespan builds and closes the components."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from gateway import __version__
from gateway.api.errors import install_error_handlers
from gateway.api.routes import router
from gateway.api.state import GatewayState
from gateway.cache import build_cache, build_single_flight
from gateway.config import Settings
from gateway.engine.local import LocalEngine
from gateway.engine.worker import EngineWorker
from gateway.escalation import Escalator, LiteLLMEscalator
from gateway.metrics import Metrics
from gateway.pipeline import AsyncEngine, Pipeline
from gateway.policy import PolicyStore

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    engine: LocalEngine | None = None,
    escalator: Escalator | None = None,
    watch_policies: bool = True,
) -> FastAPI:
    """Build the gateway app. `engine` / `escalator` may be passed in (tests reuse one model)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            state = await _build_state(settings, engine, escalator, stack)
            app.state.gateway = state
            if watch_policies:
                stop = asyncio.Event()
                watcher = asyncio.create_task(state.policies.watch(stop))
                stack.push_async_callback(_stop_task, watcher, stop)
                _reload_on_sighup(state.policies)
            log.info(
                "gateway ready",
                extra={
                    "model": state.pipeline.engine.model_id,
                    "policies": sorted(state.policies.current.policies),
                },
            )
            yield

    app = FastAPI(
        title="certainty-gateway",
        version=__version__,
        description="OpenAI-compatible gateway with calibrated certainty on every answer.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(router)
    return app


async def _build_state(
    settings: Settings,
    engine: LocalEngine | None,
    escalator: Escalator | None,
    stack: contextlib.AsyncExitStack,
) -> GatewayState:
    metrics = Metrics()
    if escalator is None:
        escalator = LiteLLMEscalator(settings.escalation)
    policies = PolicyStore.open(settings.policies_dir, escalator.targets)
    async_engine: AsyncEngine
    depth_source: Any = None
    if settings.engine.kind == "vllm":  # the model runs in vLLM: only its tokenizer is loaded
        from gateway.engine.remote import RemoteEngine

        remote = await RemoteEngine.open(settings.engine, settings.model)
        stack.push_async_callback(remote.close)
        async_engine = remote
        depth_source = remote
    else:
        if engine is None:
            from gateway.engine.factory import engine_from_settings

            engine = await asyncio.to_thread(engine_from_settings, settings.model)
        worker = EngineWorker(
            engine,
            max_batch_size=settings.engine.max_batch_size,
            batch_wait_ms=settings.engine.batch_wait_ms,
            queue_size=settings.engine.queue_size,
        )
        worker.start()
        stack.push_async_callback(worker.stop)
        async_engine = worker
        depth_source = worker
    cache = build_cache(settings.cache)
    stack.push_async_callback(cache.close)
    pipeline = Pipeline(
        async_engine,
        policies,
        escalator,
        cache,
        cache_ttl_s=settings.cache.ttl_s,
        flights=build_single_flight(cache, settings.cache),
        metrics=metrics,
    )
    return GatewayState(
        settings=settings,
        pipeline=pipeline,
        policies=policies,
        cache=cache,
        metrics=metrics,
        queue_depth_source=depth_source,
    )


async def _stop_task(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    try:
        await asyncio.wait_for(task, timeout=2.0)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()


def _reload_on_sighup(policies: PolicyStore) -> None:
    # Fails off the main thread (TestClient runs the app in a thread) or without SIGHUP.
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, policies.reload)
