"""Builds the recorder (and, with Redis, its shared store and flusher) in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.config import Settings
from gateway.logs import mask_also
from gateway.metrics import Metrics
from gateway.policy import PolicyStore
from gateway.stats.prices import Prices
from gateway.stats.recorder import SharedStats, StatsRecorder


async def start_stats(
    settings: Settings,
    policies: PolicyStore,
    metrics: Metrics,
    stack: contextlib.AsyncExitStack,
) -> StatsRecorder | None:
    """The recorder the pipeline counts into; None with `stats.enabled: false`."""
    mask_also(settings.auth.admin_keys)
    if not settings.stats.enabled:
        return None
    shared: SharedStats | None = None
    if settings.cache.url is not None:
        from gateway.stats.shared import RedisStats

        shared = RedisStats.from_settings(settings)
        stack.push_async_callback(shared.close)
    recorder = StatsRecorder(policies, Prices(settings.escalation.model_list), shared=shared)
    if shared is not None:
        stop = asyncio.Event()
        flusher = asyncio.create_task(recorder.run_flusher(settings.stats.flush_s, stop))
        stack.push_async_callback(_stop, flusher, stop)
    return recorder


async def _stop(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    try:
        await asyncio.wait_for(task, timeout=2.0)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
