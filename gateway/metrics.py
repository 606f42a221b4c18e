"""Prometheus metrics, on a registry of their own (one per app, so tests can build many apps)."""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONFIDENCE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Chat requests by policy and HTTP status.",
            ["policy", "status"],
            registry=r,
        )
        self.actions = Counter(
            "gateway_actions", "Decisions by policy and action.", ["policy", "action"], registry=r
        )
        self.certainty = Histogram(
            "gateway_certainty",
            "The confidence each policy compared with its thresholds.",
            ["policy"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.escalations = Counter(
            "gateway_escalations",
            "Escalations by policy and outcome.",
            ["policy", "outcome"],
            registry=r,
        )
        self.escalation_cost = Counter(
            "gateway_escalation_cost_usd",
            "What escalations cost, where LiteLLM knows the price.",
            ["policy"],
            registry=r,
        )
        self.cache_events = Counter(
            "gateway_cache", "Decision cache look-ups: hit, miss, error.", ["event"], registry=r
        )
        self.cache_hit = self.cache_events.labels("hit")
        self.cache_miss = self.cache_events.labels("miss")
        self.cache_error = self.cache_events.labels("error")
        self.queue_depth = Gauge(
            "gateway_engine_queue_depth", "Jobs waiting for the local model.", registry=r
        )
        self.stage_latency = Histogram(
            "gateway_stage_seconds",
            "Latency per stage: generate, score, escalate, total.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audit_verdicts = Counter(
            "gateway_audit_verdicts",
            "Calibration audit: sampled answers by policy and verdict (correct, incorrect, "
            "unclear, failed, skipped).",
            ["policy", "verdict"],
            registry=r,
        )
        self.audit_judged = Counter(
            "gateway_audit_judged",
            "Calibration audit: answers judged yes or no, by policy and confidence bin (tenths).",
            ["policy", "bin"],
            registry=r,
        )
        self.audit_correct = Counter(
            "gateway_audit_correct",
            "Calibration audit: answers judged right, by policy and confidence bin (tenths).",
            ["policy", "bin"],
            registry=r,
        )
        self.audit_cost = Counter(
            "gateway_audit_cost_usd", "What the audit's judge cost.", ["policy"], registry=r
        )
        self.audit_accuracy = Gauge(
            "gateway_audit_accuracy",
            "Share of audited answers judged right (this process, since start).",
            ["policy"],
            registry=r,
        )
        self.audit_ece = Gauge(
            "gateway_audit_ece",
            "Expected calibration error of the audited answers (this process, since start).",
            ["policy"],
            registry=r,
        )

        # `labels()` takes a lock and builds a key on every call; these remember each child (the
        # label values are bounded: policies, statuses, actions, stages).
        self.requests_of = functools.cache(self.requests.labels)
        self.actions_of = functools.cache(self.actions.labels)
        self.certainty_of = functools.cache(self.certainty.labels)
        self.stage_latency_of = functools.cache(self.stage_latency.labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)
