"""Cells to the JSON of `/v1/gateway/stats`: shares, histogram, quantiles, money, calibration."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from gateway.policy import Policy
from gateway.stats.cells import (
    ACTIONS,
    CONFIDENCE_BINS,
    STAGES,
    Cell,
    latency_bin_seconds,
)
from gateway.stats.recorder import WINDOW_MINUTES, View, Window

EDGES = [round(i / CONFIDENCE_BINS, 1) for i in range(CONFIDENCE_BINS + 1)]


def summarize(
    view: View,
    policies: Mapping[str, Policy],
    *,
    window: Window,
    tenant: str | None,
    started_at: float,
) -> dict[str, Any]:
    """The stats document for `window`, for one tenant (None: every tenant)."""
    per_policy: dict[str, Cell] = {}
    tenants: set[str] = set()
    for (policy, key_tenant), cell in view.cells.items():
        if key_tenant:
            tenants.add(key_tenant)
        if tenant is not None and key_tenant != tenant:
            continue
        per_policy.setdefault(policy, Cell()).merge(cell)
    names = sorted(set(per_policy) | set(policies))
    minutes = WINDOW_MINUTES[window]
    return {
        "object": "gateway.stats",
        "window": window,
        "window_s": None if minutes is None else minutes * 60,
        "generated_at": round(time.time(), 3),
        "started_at": round(started_at, 3),
        "aggregated": view.aggregated,
        "scope": "all replicas" if view.aggregated else "this replica only",
        "scope_reason": view.reason,
        "tenant": tenant,
        "tenants": sorted(tenants),
        "policies": [
            _policy(name, per_policy.get(name) or Cell(), policies.get(name)) for name in names
        ],
    }


def _policy(name: str, cell: Cell, policy: Policy | None) -> dict[str, Any]:
    requests = cell.requests
    return {
        "policy": name,
        "thresholds": _thresholds(policy),
        "requests": requests,
        "actions": dict(zip(ACTIONS, cell.actions, strict=True)),
        "shares": {a: _ratio(n, requests) for a, n in zip(ACTIONS, cell.actions, strict=True)},
        "confidence_histogram": {"edges": EDGES, "counts": list(cell.confidence)},
        "cache": {"hits": cell.hits, "hit_rate": _ratio(cell.hits, requests)},
        "latency_ms": {s: _quantiles(cell.latency[s]) for s in STAGES if s in cell.latency},
        "escalation": _money(cell, policy),
        "calibration": _calibration(cell, policy),
    }


def _thresholds(policy: Policy | None) -> dict[str, float | None]:
    if policy is None:
        return {"return_at": None, "escalate_at": None}
    return {
        "return_at": policy.return_at,
        "escalate_at": policy.escalate_at if policy.escalates else None,
    }


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _quantiles(bins: list[int]) -> dict[str, float | int | None]:
    count = sum(bins)
    return {
        "count": count,
        "p50": _quantile(bins, count, 0.50),
        "p95": _quantile(bins, count, 0.95),
    }


def _quantile(bins: list[int], count: int, q: float) -> float | None:
    if count == 0:
        return None
    rank = q * count
    seen = 0
    for index, n in enumerate(bins):
        seen += n
        if seen >= rank:
            return round(latency_bin_seconds(index) * 1000, 3)
    return round(latency_bin_seconds(len(bins) - 1) * 1000, 3)


def _money(cell: Cell, policy: Policy | None) -> dict[str, Any]:
    priced = cell.priced > 0
    return {
        "spend_usd": round(cell.spend_usd, 6),
        "baseline_usd": round(cell.baseline_usd, 6) if priced else None,
        "saving_usd": round(cell.baseline_usd - cell.spend_usd, 6) if priced else None,
        "priced_at": policy.escalate_to if policy is not None and priced else None,
    }


def _calibration(cell: Cell, policy: Policy | None) -> dict[str, Any]:
    judged = sum(cell.judged)
    correct = sum(cell.correct)
    bins = []
    ece = 0.0
    for index in range(CONFIDENCE_BINS):
        n = cell.judged[index]
        mean = cell.judged_confidence[index] / n if n else None
        accuracy = cell.correct[index] / n if n else None
        if n and mean is not None and accuracy is not None:
            ece += n / judged * abs(accuracy - mean)
        bins.append(
            {
                "low": EDGES[index],
                "high": EDGES[index + 1],
                "judged": n,
                "correct": cell.correct[index],
                "mean_confidence": None if mean is None else round(mean, 4),
                "accuracy": None if accuracy is None else round(accuracy, 4),
            }
        )
    audit = policy.audit if policy is not None else None
    return {
        "audit": None if audit is None else audit.model_dump(mode="json"),
        "sampled": cell.sampled,
        "judged": judged,
        "correct": correct,
        "unclear": cell.unclear,
        "failed": cell.failed,
        "skipped": cell.skipped,
        "accuracy": _ratio(correct, judged),
        "ece": round(ece, 4) if judged else None,
        "audit_usd": round(cell.audit_usd, 6),
        "bins": bins,
    }
