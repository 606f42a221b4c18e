"""Builds the recorder (and, with Redis, its shared store and flusher) in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gateway.config import Settings
from gateway.escalation import Escalator
from gateway.logs import mask_also
from gateway.metrics import Metrics
from gateway.policy import PolicyStore
from gateway.stats.audit import CalibrationAudit
from gateway.stats.prices import Prices
from gateway.stats.recorder import SharedStats, StatsRecorder
from gateway.tasks import stop_task


async def start_stats(
    settings: Settings,
    policies: PolicyStore,
    escalator: Escalator,
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
    metrics.registry.register(BaselineCollector(recorder))
    audit = CalibrationAudit(recorder, escalator, policies, settings.stats, metrics)
    recorder.auditor = audit
    stack.push_async_callback(audit.close)
    if shared is not None:
        stop = asyncio.Event()
        flusher = asyncio.create_task(recorder.run_flusher(settings.stats.flush_s, stop))
        stack.push_async_callback(stop_task, flusher, stop)
    return recorder


class BaselineCollector(Collector):
    """What every request would have cost at its policy's escalation model, by policy (this
    process, since start; read at scrape time, so the request path pays nothing for it).
    The estimated saving is this minus `gateway_escalation_cost_usd`."""

    def __init__(self, recorder: StatsRecorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gateway_escalation_baseline_usd",
            "Every request's local token counts priced at its policy's escalation model.",
            labels=["policy"],
        )
        per_policy: dict[str, float] = {}
        for (policy, _), cell in self._recorder.local("all").items():
            if cell.priced:
                per_policy[policy] = per_policy.get(policy, 0.0) + cell.baseline_usd
        for policy, usd in sorted(per_policy.items()):
            family.add_metric([policy], usd)
        yield family
