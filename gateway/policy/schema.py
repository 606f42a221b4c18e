"""A policy: which calibrated confidence returns, escalates or withholds the local answer."""

from __future__ import annotations

import enum
import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.certainty import Certainty, ScoreResult

DEFAULT_WITHHOLD_MESSAGE = "I'm not confident enough to answer that reliably."


class Action(enum.StrEnum):
    RETURN = "return"
    ESCALATE = "escalate"
    WITHHOLD = "withhold"


class Audit(BaseModel):
    """The calibration audit: a `sample` of the returned answers is sent, after the response,
    to `judge` (a model_name of the escalation list), at most `max_usd_per_hour` a policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample: float = Field(gt=0.0, le=1.0)
    judge: str = Field(min_length=1)
    max_usd_per_hour: float | None = Field(default=None, ge=0.0)


class Policy(BaseModel):
    """One policy file. `name` is the model alias clients request.

    Bands on confidence c (expected or arg-max, as `confidence` says):
    c >= return_at -> return; escalate_at <= c < return_at -> escalate; below -> withhold.
    Without `escalate_at` nothing is escalated.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    description: str = ""
    confidence: Literal["expected", "score"] = "expected"
    return_at: float = Field(default=0.0, ge=0.0, le=1.0)
    escalate_at: float | None = Field(default=None, ge=0.0, le=1.0)
    escalate_to: str | None = None
    on_escalation_error: Literal["return_local", "withhold", "error"] = "withhold"
    withhold_message: str = Field(default=DEFAULT_WITHHOLD_MESSAGE, min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    cache: bool = True
    cache_sampled: bool = False
    audit: Audit | None = None

    @model_validator(mode="after")
    def _bands_are_consistent(self) -> Policy:
        if self.escalate_at is not None:
            if self.escalate_at > self.return_at:
                raise ValueError(
                    f"escalate_at ({self.escalate_at}) must not be above return_at "
                    f"({self.return_at})"
                )
            if self.escalate_at < self.return_at and not self.escalate_to:
                raise ValueError("escalate_to is required when escalate_at is set")
        return self

    @property
    def always_returns(self) -> bool:
        """True when every confidence returns the local answer (it may stream as it comes)."""
        return self.return_at <= 0.0

    @property
    def escalates(self) -> bool:
        return self.escalate_at is not None and self.escalate_at < self.return_at

    def content_hash(self) -> str:
        """Changes whenever anything that shapes a decision changes (cache keys include it)."""
        # The audit watches decisions and shapes none: changing it keeps the cached ones.
        canonical = json.dumps(self.model_dump(mode="json", exclude={"audit"}), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def bands(self) -> list[tuple[Action, float, float]]:
        """(action, low, high) for each non-empty band, highest first; high is exclusive."""
        bands: list[tuple[Action, float, float]] = [(Action.RETURN, self.return_at, 1.0)]
        low = self.return_at
        if self.escalates:
            assert self.escalate_at is not None
            bands.append((Action.ESCALATE, self.escalate_at, self.return_at))
            low = self.escalate_at
        if low > 0.0:
            bands.append((Action.WITHHOLD, 0.0, low))
        return bands


def policy_confidence(policy: Policy, result: ScoreResult) -> float:
    """The number the policy compares with its thresholds; an unscored reply counts as 0.0."""
    if not isinstance(result, Certainty):
        return 0.0
    return result.expected_confidence if policy.confidence == "expected" else result.confidence


def decide(policy: Policy, result: ScoreResult) -> Action:
    """Map a certainty to the policy's action. Pure; the only place thresholds are compared."""
    confidence = policy_confidence(policy, result)
    if confidence >= policy.return_at:
        return Action.RETURN
    if policy.escalate_at is not None and confidence >= policy.escalate_at:
        return Action.ESCALATE
    return Action.WITHHOLD
