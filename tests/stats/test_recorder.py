"""The stats recorder: cells by policy, tenant and minute; windows; prices; the flat form."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.certainty import Certainty
from gateway.pipeline import Completion, CompletionInput, Usage
from gateway.policy import Action, PolicyStore
from gateway.stats.cells import Cell, flatten, latency_bin, latency_bin_seconds, unflatten
from gateway.stats.prices import Prices
from gateway.stats.recorder import StatsRecorder
from gateway.stats.summary import summarize
from gateway.types import ChatRequest, Message

MODEL_LIST = [
    {"model_name": "large", "litellm_params": {"model": "openai/gpt-4o", "api_key": "x"}},
    {
        "model_name": "private",
        "litellm_params": {"model": "openai/mine", "input_cost_per_token": 1e-6},
        "model_info": {"output_cost_per_token": 9.0},
    },
    {"model_name": "unpriced", "litellm_params": {"model": "openai/no-such-model-anywhere"}},
]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000 * 60.0

    def __call__(self) -> float:
        return self.now


GUARD = CompletionInput(
    policy="guard", request=ChatRequest(messages=(Message(role="user", content="Hi"),))
)
"""A request to `guard` without an API key."""


def completion(
    policy: str,
    action: Action,
    confidence: float,
    *,
    cached: bool = False,
    cost: float | None = None,
) -> Completion:
    certainty = Certainty(
        score=int(confidence * 10),
        confidence=confidence,
        expected_confidence=confidence,
        distribution=None,
        mode="logits",
    )
    return Completion(
        text="SECRET ANSWER TEXT",
        finish_reason="stop",
        action=action,
        policy=policy,
        served_by="m",
        certainty=certainty,
        confidence=confidence,
        usage=Usage(10, 5),
        local_usage=Usage(100, 20),
        escalation_cost=cost,
        cached=cached,
    )


@pytest.fixture
def store(tmp_path: Path) -> PolicyStore:
    (tmp_path / "cascade.yaml").write_text(
        "name: cascade\nreturn_at: 0.7\nescalate_at: 0.3\nescalate_to: large\n"
    )
    (tmp_path / "guard.yaml").write_text("name: guard\nreturn_at: 0.5\n")
    return PolicyStore.open(tmp_path, {"large"})


def test_recorder_counts_actions_confidences_hits_and_stages_per_policy_and_tenant(
    store: PolicyStore,
) -> None:
    clock = Clock()
    recorder = StatsRecorder(store, Prices(MODEL_LIST), clock=clock)
    request = ChatRequest(messages=(Message(role="user", content="SECRET PROMPT"),))
    acme = CompletionInput(policy="cascade", request=request, tenant="acme")
    recorder.record(
        completion("cascade", Action.RETURN, 0.85), {"generate": 0.1, "score": 0.02}, acme
    )
    recorder.record(completion("cascade", Action.RETURN, 0.85, cached=True), None, acme)
    recorder.record(
        completion("cascade", Action.ESCALATE, 0.45, cost=0.01),
        {"generate": 0.1, "escalate": 1.0},
        acme,
    )
    anonymous = CompletionInput(policy="guard", request=request, tenant=None)
    recorder.record(completion("guard", Action.WITHHOLD, 0.15), {"generate": 0.2}, anonymous)

    cells = recorder.local("5m")
    cascade = cells[("cascade", "acme")]
    assert cascade.requests == 3
    assert cascade.actions == [2, 0, 1]
    assert cascade.confidence[8] == 2
    assert cascade.confidence[4] == 1
    assert cascade.hits == 1
    assert sum(cascade.latency["generate"]) == 2
    assert cascade.spend_usd == pytest.approx(0.01)
    # every request's local tokens at gpt-4o's LiteLLM price: 100 in, 20 out
    assert cascade.baseline_usd == pytest.approx(3 * (100 * 2.5e-6 + 20 * 1e-5))
    assert cells[("guard", "")].actions == [0, 1, 0]
    assert cells[("guard", "")].priced == 0  # guard escalates nowhere: no saving to estimate

    doc = summarize(
        recorder.view_local("5m"), store.current.policies, window="5m", tenant="acme", started_at=0
    )
    assert "SECRET" not in repr(doc)
    by_name = {p["policy"]: p for p in doc["policies"]}
    assert doc["tenants"] == ["acme"]
    assert by_name["cascade"]["requests"] == 3
    assert by_name["guard"]["requests"] == 0  # another tenant's traffic
    assert by_name["cascade"]["cache"]["hit_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert by_name["cascade"]["thresholds"] == {"return_at": 0.7, "escalate_at": 0.3}
    money = by_name["cascade"]["escalation"]
    assert money["saving_usd"] == pytest.approx(money["baseline_usd"] - 0.01)


def test_windows_drop_old_minutes_but_since_start_keeps_them(store: PolicyStore) -> None:
    clock = Clock()
    recorder = StatsRecorder(store, Prices(MODEL_LIST), clock=clock)
    recorder.record(completion("guard", Action.RETURN, 0.9), None, GUARD)
    clock.now += 10 * 60
    recorder.record(completion("guard", Action.RETURN, 0.9), None, GUARD)
    clock.now += 2 * 3600  # the first two minutes are folded into the archive now
    recorder.record(completion("guard", Action.WITHHOLD, 0.1), None, GUARD)
    assert recorder.local("5m")[("guard", "")].requests == 1
    assert recorder.local("1h")[("guard", "")].requests == 1
    assert recorder.local("all")[("guard", "")].requests == 3


def test_prices_come_from_the_model_list_then_litellm_and_unknown_is_none() -> None:
    prices = Prices(MODEL_LIST)
    gpt = prices.of("large")
    assert gpt is not None
    assert (gpt.input_usd, gpt.output_usd) == (2.5e-6, 1e-5)
    private = prices.of("private")
    assert private is not None
    assert (private.input_usd, private.output_usd) == (1e-6, 0.0)  # litellm_params first
    assert prices.of("unpriced") is None
    assert prices.of("not-configured") is None


def test_cells_survive_the_flat_form_that_redis_holds() -> None:
    cell = Cell()
    cell.requests = 4
    cell.actions = [1, 2, 1]
    cell.confidence[3] = 4
    cell.add_latency("score", 0.0123)
    cell.spend_usd = 0.5
    cell.judged[7] = 2
    cell.correct[7] = 1
    cell.judged_confidence[7] = 1.5
    out: dict[tuple[str, str], Cell] = {}
    unflatten(dict(flatten({("p", "t"): cell})), out)
    assert out[("p", "t")].fields() == cell.fields()


def test_latency_bins_read_back_within_a_quarter() -> None:
    for seconds in (0.0007, 0.01, 0.3, 2.0, 45.0):
        assert latency_bin_seconds(latency_bin(seconds)) == pytest.approx(seconds, rel=0.25)
