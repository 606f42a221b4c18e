"""The app factory: no work at import time; the lifespan builds and closes the components."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from gateway import __version__
from gateway.api.chat import ChatEndpoint, ChatFirst
from gateway.api.dashboard import router as dashboard_router
from gateway.api.errors import install_error_handlers
from gateway.api.keys import KeyRing
from gateway.api.lifecycle import drain_on_sigterm, reload_on_sighup
from gateway.api.middleware import edge
from gateway.api.openapi import openapi_document
from gateway.api.routes import router
from gateway.api.state import GatewayState, StateCollector
from gateway.api.throttle import FailedLogins
from gateway.cache import build_cache, build_single_flight
from gateway.config import Settings
from gateway.engine.base import BatchEngine
from gateway.engine.factory import start_engine
from gateway.escalation import Escalator, LiteLLMEscalator
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.policy import PolicyStore
from gateway.ratelimit import build_rate_limiter
from gateway.stats.build import start_stats
from gateway.tasks import stop_task

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    engine: BatchEngine | None = None,
    escalator: Escalator | None = None,
    watch_policies: bool = True,
) -> FastAPI:
    """Build the gateway app (the lifespan builds and closes its components). `engine`: a local
    model already loaded (`serve` loads it before binding the port; tests reuse one); otherwise
    `start_engine` loads or reaches the one the settings name. `escalator` may be passed in."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            state = await _build_state(settings, engine, escalator, stack)
            _guard(state, settings, stack)
            app.state.gateway = state
            drain_on_sigterm(app, state, settings.server.drain_s)
            if watch_policies:
                stop = asyncio.Event()
                watcher = asyncio.create_task(state.policies.watch(stop))
                stack.push_async_callback(stop_task, watcher, stop)
                reload_on_sighup(state, settings)
            log.info(
                "gateway ready",
                extra={
                    "model": state.pipeline.engine.model_id,
                    "policies": sorted(state.policies.current.policies),
                },
            )
            # The model libraries leave millions of long-lived objects; without this, each full
            # garbage collection walks them all and stalls every request for a few hundred ms.
            gc.collect()
            gc.freeze()
            yield

    body_bytes, access_log = settings.limits.max_body_bytes, settings.server.access_log
    app = GatewayAPI(
        edge(ChatEndpoint(settings.limits), max_body_bytes=body_bytes, access_log=access_log),
        title="certainty-gateway",
        version=__version__,
        description="OpenAI-compatible gateway with calibrated certainty on every answer.",
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would answer before authentication, to any Host
        **_docs(settings.server.docs),
    )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(dashboard_router)
    _document(app, settings)
    # the same edge as the chat route's
    app.add_middleware(edge, max_body_bytes=body_bytes, access_log=access_log)
    return app


def _docs(enabled: bool) -> dict[str, Any]:
    """FastAPI's defaults for /docs, /redoc and /openapi.json, or none of them."""
    return {} if enabled else {"docs_url": None, "redoc_url": None, "openapi_url": None}


class GatewayAPI(FastAPI):
    """FastAPI, with chat completions answered ahead of FastAPI's own middleware and router.

    `chat` (the chat endpoint behind its own copy of the HTTP edge) serves `/v1/chat/completions`;
    every other path goes through FastAPI's stack, where the same edge is user middleware. FastAPI's
    `__call__` still sees every request (its OpenTelemetry instrumentation, when configured).
    """

    def __init__(self, chat: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chat = chat

    def build_middleware_stack(self) -> ASGIApp:
        return ChatFirst(self.chat, super().build_middleware_stack())


def _document(app: FastAPI, settings: Settings) -> None:
    """The app's OpenAPI document says what the server does (`gateway.api.openapi`)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, settings.auth)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _guard(state: GatewayState, settings: Settings, stack: contextlib.AsyncExitStack) -> None:
    """API keys, rate limits and the state gauges, on a state `_build_state` made."""
    state.keys = KeyRing.from_settings(settings.auth)
    state.failed_logins = FailedLogins(
        settings.auth.failures_per_minute, settings.auth.failure_log_interval_s
    )
    state.rate_limiter = build_rate_limiter(settings.limits, settings.cache)
    if state.rate_limiter is not None:
        stack.push_async_callback(state.rate_limiter.close)
    state.metrics.registry.register(StateCollector(state))
    if state.keys.enabled:
        log.info("API keys required", extra={"keys": len(state.keys), "key_ids": state.keys.ids})
    else:
        log.warning("no API keys configured: /v1 is open to anyone who can reach it")


async def _build_state(
    settings: Settings,
    engine: BatchEngine | None,
    escalator: Escalator | None,
    stack: contextlib.AsyncExitStack,
) -> GatewayState:
    metrics = Metrics()
    if escalator is None:
        escalator = LiteLLMEscalator(settings.escalation)
    policies = PolicyStore.open(settings.policies_dir, escalator.targets)
    async_engine = await start_engine(settings, stack, local=engine)
    cache = build_cache(settings.cache)
    stack.push_async_callback(cache.close)
    stats = await start_stats(settings, policies, escalator, metrics, stack)
    pipeline = Pipeline(
        async_engine,
        policies,
        escalator,
        cache,
        cache_ttl_s=settings.cache.ttl_s,
        flights=build_single_flight(cache, settings.cache),
        metrics=metrics,
        stats=stats,
    )
    return GatewayState(
        settings=settings,
        pipeline=pipeline,
        policies=policies,
        cache=cache,
        metrics=metrics,
        queue_depth_source=async_engine,
        engine_check=getattr(async_engine, "check", None),  # a model server's look at itself
        stats=stats,
    )
