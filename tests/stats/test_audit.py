"""The calibration audit: sampling, verdicts, concurrency, budget and judge failures."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.config import StatsSettings
from gateway.errors import EscalationFailed
from gateway.escalation import EscalationDelta, EscalationReply
from gateway.metrics import Metrics
from gateway.pipeline import CompletionInput
from gateway.policy import Action, PolicyStore
from gateway.stats.audit import CalibrationAudit, parse_verdict
from gateway.stats.prices import Prices
from gateway.stats.recorder import StatsRecorder
from gateway.stats.summary import summarize
from gateway.types import ChatRequest, Document, Message, SamplingParams
from tests.stats.test_recorder import completion

QUESTION = "Which river flows through the audit test?"


class Judge:
    """Says `verdict`, hangs (`hang`) or fails (`fail`); costs `cost` a call."""

    def __init__(self, verdict: str = "Yes.", cost: float | None = 0.001) -> None:
        self.verdict = verdict
        self.cost = cost
        self.hang = False
        self.fail = False
        self.prompts: list[str] = []

    @property
    def targets(self) -> set[str]:
        return {"judge"}

    async def complete(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> EscalationReply:
        self.prompts.append(messages[-1].content)
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail:
            raise EscalationFailed("escalation to 'judge' failed: APIError")
        return EscalationReply(self.verdict, "stop", "judge-v1", 50, 1, self.cost)

    def stream(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> AsyncIterator[EscalationDelta]:
        raise NotImplementedError


def build(
    tmp_path: Path, judge: Judge, audit: str, *, concurrency: int = 1000, seed: int = 7
) -> tuple[StatsRecorder, CalibrationAudit, Metrics, PolicyStore]:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "guard.yaml").write_text(f"name: guard\nreturn_at: 0.5\naudit: {audit}\n")
    store = PolicyStore.open(folder, {"judge"})
    recorder = StatsRecorder(store, Prices([]))
    metrics = Metrics()
    settings = StatsSettings(audit_concurrency=concurrency, audit_timeout_s=0.5)
    auditor = CalibrationAudit(
        recorder, judge, store, settings, metrics, rng=random.Random(seed).random
    )
    recorder.auditor = auditor
    return recorder, auditor, metrics, store


ASKED = CompletionInput(
    policy="guard",
    request=ChatRequest(messages=(Message(role="user", content=QUESTION),)),
    tenant="acme",
)


def returned(recorder: StatsRecorder, confidence: float = 0.85) -> None:
    recorder.record(completion("guard", Action.RETURN, confidence), {"generate": 0.01}, ASKED)


async def settle(auditor: CalibrationAudit) -> None:
    while auditor.running:
        await asyncio.sleep(0.001)


def test_the_sampling_rate_is_honoured_within_binomial_bounds(tmp_path: Path) -> None:
    judge = Judge()
    recorder, auditor, _, _ = build(tmp_path, judge, "{sample: 0.2, judge: judge}")

    async def scenario() -> None:
        for _ in range(1000):
            returned(recorder)
        await settle(auditor)

    asyncio.run(scenario())
    sigma = math.sqrt(1000 * 0.2 * 0.8)
    assert abs(len(judge.prompts) - 200) <= 4 * sigma
    cell = recorder.local("5m")[("guard", "acme")]
    assert cell.sampled == len(judge.prompts)
    assert sum(cell.judged) == len(judge.prompts)


def test_only_returned_fresh_answers_are_audited(tmp_path: Path) -> None:
    judge = Judge()
    recorder, auditor, _, _ = build(tmp_path, judge, "{sample: 1.0, judge: judge}")

    async def scenario() -> None:
        recorder.record(completion("guard", Action.WITHHOLD, 0.2), {"generate": 0.01}, ASKED)
        recorder.record(completion("guard", Action.RETURN, 0.9, cached=True), None, ASKED)
        returned(recorder)
        await settle(auditor)

    asyncio.run(scenario())
    assert len(judge.prompts) == 1
    assert QUESTION in judge.prompts[0]
    assert "SECRET ANSWER TEXT" in judge.prompts[0]  # the answer goes to the judge, only there


def test_verdicts_feed_accuracy_ece_and_prometheus(tmp_path: Path) -> None:
    judge = Judge("no, that is wrong")
    recorder, auditor, metrics, store = build(tmp_path, judge, "{sample: 1.0, judge: judge}")

    async def scenario() -> None:
        for _ in range(4):
            returned(recorder, confidence=0.85)
        await settle(auditor)
        judge.verdict = "Yes"
        for _ in range(4):
            returned(recorder, confidence=0.85)
        await settle(auditor)

    asyncio.run(scenario())
    doc = summarize(
        recorder.view_local("5m"), store.current.policies, window="5m", tenant=None, started_at=0
    )
    calibration = doc["policies"][0]["calibration"]
    assert calibration["judged"] == 8
    assert calibration["accuracy"] == 0.5
    assert calibration["ece"] == pytest.approx(0.35)  # |0.5 - 0.85|
    assert calibration["bins"][8]["judged"] == 8
    assert QUESTION not in repr(doc)
    assert metrics.audit_ece.labels("guard")._value.get() == pytest.approx(0.35)
    text = metrics.render().decode()
    assert 'gateway_audit_verdicts_total{policy="guard",verdict="incorrect"} 4.0' in text
    assert 'gateway_audit_correct_total{bin="8",policy="guard"} 4.0' in text


def test_the_audit_stops_at_its_hourly_budget_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    judge = Judge(cost=0.004)
    audit = "{sample: 1.0, judge: judge, max_usd_per_hour: 0.01}"
    recorder, auditor, _, _ = build(tmp_path, judge, audit)

    async def scenario() -> None:
        for _ in range(10):
            returned(recorder)
            await settle(auditor)

    with caplog.at_level(logging.WARNING, logger="gateway.stats.audit"):
        asyncio.run(scenario())
    assert len(judge.prompts) == 3  # 0.012 spent after the third: over 0.01
    cell = recorder.local("5m")[("guard", "acme")]
    assert cell.skipped == 7
    assert cell.audit_usd == pytest.approx(0.012)
    paused = [r for r in caplog.records if "budget" in r.getMessage()]
    assert len(paused) == 1


def test_a_failing_judge_stops_the_audit_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    judge = Judge()
    judge.fail = True
    recorder, auditor, _, _ = build(tmp_path, judge, "{sample: 1.0, judge: judge}")

    async def scenario() -> None:
        for _ in range(3):
            returned(recorder)  # all three start before the first fails
        await settle(auditor)
        for _ in range(5):
            returned(recorder)
        await settle(auditor)

    with caplog.at_level(logging.WARNING, logger="gateway.stats.audit"):
        asyncio.run(scenario())
    assert len(judge.prompts) == 3
    cell = recorder.local("5m")[("guard", "acme")]
    assert (cell.failed, cell.skipped) == (3, 5)
    stopped = [r for r in caplog.records if "judge failed" in r.getMessage()]
    assert len(stopped) == 1
    assert QUESTION not in caplog.text


def test_a_hanging_judge_holds_no_request_and_is_bounded(tmp_path: Path) -> None:
    judge = Judge()
    judge.hang = True
    recorder, auditor, _, _ = build(tmp_path, judge, "{sample: 1.0, judge: judge}", concurrency=2)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        begun = loop.time()
        for _ in range(5):
            returned(recorder)  # returns at once: the judgement runs on its own task
        assert loop.time() - begun < 0.5
        assert auditor.running == 2  # the concurrency limit; the other three are skipped
        await settle(auditor)  # each times out after audit_timeout_s

    asyncio.run(scenario())
    cell = recorder.local("5m")[("guard", "acme")]
    assert (cell.skipped, cell.failed) == (3, 2)


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [("Yes.", True), ("no", False), ("The answer is correct", True), ("paris", None), ("", None)],
)
def test_the_judges_reply_is_read_as_yes_no_or_unclear(reply: str, verdict: bool | None) -> None:
    assert parse_verdict(reply) is verdict
