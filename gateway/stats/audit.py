"""The calibration audit: were the answers returned as confident in fact right?

A policy opts in with `audit: {sample, judge, max_usd_per_hour}`. A `sample` share of its
returned answers (fresh decisions; cache hits repeat one) is sent to the `judge` model of the
escalation list, through the same LiteLLM router, on a task of its own: the response never
waits for it and nothing of it changes the response. The verdicts feed the reliability diagram,
accuracy and ECE per policy (the stats, the dashboard, Prometheus).

Bounds: at most `stats.audit_concurrency` judgements run at once (a sample beyond that is
skipped, never queued); each has `stats.audit_timeout_s`; a policy's audit spends at most
`max_usd_per_hour` (judge prices from LiteLLM) and then pauses, and a judge failure stops it for
`stats.audit_pause_s`, each with one log line. The conversation and the answer go to the judge
only; the counters keep numbers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.config import StatsSettings
from gateway.escalation import Escalator
from gateway.evaluate.judge import normalize
from gateway.metrics import Metrics
from gateway.policy import PolicyStore
from gateway.stats.cells import CONFIDENCE_BINS, confidence_bin
from gateway.stats.recorder import StatsRecorder
from gateway.types import Message, SamplingParams

if TYPE_CHECKING:
    from gateway.pipeline import Completion, CompletionInput
    from gateway.policy.schema import Audit

log = logging.getLogger(__name__)

JUDGE_PROMPT = (
    "You check another assistant's answer. Read the conversation and the answer, then reply "
    "with one word: yes if the answer is correct, no if it is wrong or does not answer.\n\n"
    "Conversation:\n{conversation}\n\nAnswer:\n{answer}\n\n"
    "Is the answer correct? Reply yes or no."
)
YES = frozenset({"yes", "correct", "right", "true"})
NO = frozenset({"no", "incorrect", "wrong", "false"})
JUDGE_SAMPLING = SamplingParams(max_tokens=8, temperature=0.0)


def judge_prompt(messages: tuple[Message, ...] | list[Message], answer: str) -> str:
    conversation = "\n".join(f"{m.role}: {m.content}" for m in messages)
    return JUDGE_PROMPT.format(conversation=conversation, answer=answer)


def parse_verdict(reply: str) -> bool | None:
    """True for yes, False for no (the first such word), None when the reply has neither."""
    for word in normalize(reply).split():
        if word in YES:
            return True
        if word in NO:
            return False
    return None


class CalibrationAudit:
    """Samples returned answers of the policies that ask for it and has them judged."""

    def __init__(
        self,
        recorder: StatsRecorder,
        escalator: Escalator,
        policies: PolicyStore,
        settings: StatsSettings,
        metrics: Metrics,
        *,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._recorder = recorder
        self._escalator = escalator
        self._policies = policies
        self._settings = settings
        self._metrics = metrics
        self._rng = rng
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._spent: dict[str, deque[tuple[float, float]]] = {}
        self._over_budget: set[str] = set()
        self._stopped_until: dict[str, float] = {}
        self._judged: dict[str, list[list[float]]] = {}  # policy -> [n, correct, conf sum] by bin

    @property
    def running(self) -> int:
        return len(self._tasks)

    def offer(self, inp: CompletionInput, completion: Completion) -> None:
        """A returned answer; judged if sampled and the audit may run now. Never raises."""
        policy = self._policies.current.get(completion.policy)
        audit = policy.audit if policy is not None else None
        if audit is None or self._rng() >= audit.sample:
            return
        name = completion.policy
        key = (name, inp.tenant or "")
        if not self._may_start(name, audit):
            self._recorder.record_audit_miss(key, failed=False)
            self._metrics.audit_verdicts.labels(name, "skipped").inc()
            return
        prompt = judge_prompt(inp.request.messages, completion.text)
        task = asyncio.get_running_loop().create_task(
            self._judge(key, audit, prompt, completion.confidence)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _may_start(self, policy: str, audit: Audit) -> bool:
        now = self._clock()
        if len(self._tasks) >= self._settings.audit_concurrency:
            return False
        if self._stopped_until.get(policy, 0.0) > now:
            return False
        if audit.max_usd_per_hour is not None:
            spent = self._spent_last_hour(policy, now)
            if spent >= audit.max_usd_per_hour:
                if policy not in self._over_budget:
                    self._over_budget.add(policy)
                    log.warning(
                        "calibration audit paused: its budget for the hour is spent",
                        extra={"policy": policy, "max_usd_per_hour": audit.max_usd_per_hour},
                    )
                return False
            self._over_budget.discard(policy)
        return True

    def _spent_last_hour(self, policy: str, now: float) -> float:
        spent = self._spent.setdefault(policy, deque())
        while spent and spent[0][0] <= now - 3600:
            spent.popleft()
        return sum(cost for _, cost in spent)

    async def _judge(
        self, key: tuple[str, str], audit: Audit, prompt: str, confidence: float
    ) -> None:
        policy = key[0]
        try:
            async with asyncio.timeout(self._settings.audit_timeout_s):
                reply = await self._escalator.complete(
                    audit.judge, [Message(role="user", content=prompt)], (), JUDGE_SAMPLING
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the judge: stop this audit for a while
            reason = getattr(exc, "message", None) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no verdict within {self._settings.audit_timeout_s:g} s"
            self._recorder.record_audit_miss(key, failed=True)
            self._metrics.audit_verdicts.labels(policy, "failed").inc()
            self._stop(policy, str(reason))
            return
        cost = reply.cost or 0.0
        self._spent.setdefault(policy, deque()).append((self._clock(), cost))
        verdict = parse_verdict(reply.text)
        self._recorder.record_verdict(key, confidence, verdict, cost)
        self._count(policy, confidence, verdict, cost)

    def _stop(self, policy: str, reason: str) -> None:
        now = self._clock()
        if self._stopped_until.get(policy, 0.0) > now:
            return  # another judgement, started before the stop, failed too: one line is enough
        self._stopped_until[policy] = now + self._settings.audit_pause_s
        log.warning(
            "calibration audit stopped: the judge failed",
            extra={"policy": policy, "reason": reason, "pause_s": self._settings.audit_pause_s},
        )

    def _count(self, policy: str, confidence: float, verdict: bool | None, cost: float) -> None:
        metrics = self._metrics
        name = "unclear" if verdict is None else "correct" if verdict else "incorrect"
        metrics.audit_verdicts.labels(policy, name).inc()
        if cost:
            metrics.audit_cost.labels(policy).inc(cost)
        if verdict is None:
            return
        index = confidence_bin(confidence)
        metrics.audit_judged.labels(policy, str(index)).inc()
        if verdict:
            metrics.audit_correct.labels(policy, str(index)).inc()
        bins = self._judged.setdefault(policy, [[0.0, 0.0, 0.0] for _ in range(CONFIDENCE_BINS)])
        bins[index][0] += 1
        bins[index][1] += 1 if verdict else 0
        bins[index][2] += confidence
        judged = sum(b[0] for b in bins)
        correct = sum(b[1] for b in bins)
        ece = sum(b[0] / judged * abs(b[1] / b[0] - b[2] / b[0]) for b in bins if b[0])
        metrics.audit_accuracy.labels(policy).set(correct / judged)
        metrics.audit_ece.labels(policy).set(ece)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
