"""End to end: a real `certainty-gateway serve` process, the official OpenAI SDK, and LiteLLM
escalating over real HTTP to a local upstream that answers, hangs or fails."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.e2e.harness import Gateway, serving, tiny_model
from tests.e2e.upstream import ANSWER, Upstream

ESCALATION_TIMEOUT_S = 4.0  # LiteLLM waits about a second before retrying a 500
QUESTION = [{"role": "user", "content": "What is the capital of Australia?"}]
POLICIES = {
    "granite": {"return_at": 0.0},
    "refuse": {"return_at": 1.0, "withhold_message": "Not sure enough."},
    "cascade": {"return_at": 1.0, "escalate_at": 0.0, "escalate_to": "large"},
    "slowcase": {
        "return_at": 1.0,
        "escalate_at": 0.0,
        "escalate_to": "slow",
        "on_escalation_error": "return_local",
    },
    "brokencase": {
        "return_at": 1.0,
        "escalate_at": 0.0,
        "escalate_to": "broken",
        "on_escalation_error": "withhold",
    },
    "dyingcase": {
        "return_at": 1.0,
        "escalate_at": 0.0,
        "escalate_to": "dying",
        "on_escalation_error": "return_local",
    },
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(
    tiny_model_dir: Path, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("e2e")
    policies = folder / "policies"
    policies.mkdir()
    for name, body in POLICIES.items():
        (policies / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **body}))

    def target(name: str, model: str) -> dict[str, Any]:
        params = {"model": f"openai/{model}", "api_base": upstream.base_url, "api_key": "test"}
        return {"model_name": name, "litellm_params": params}

    config = {
        "model": tiny_model(tiny_model_dir),
        "policies_dir": str(policies),
        "escalation": {
            "timeout_s": ESCALATION_TIMEOUT_S,
            "num_retries": 1,
            "model_list": [
                target("large", "ok"),
                target("slow", "hang"),
                target("broken", "broken"),
                target("dying", "dies"),
            ],
        },
    }
    with serving(config, folder) as server:
        yield server


def test_sdk_gets_a_returned_answer_with_its_certainty(gateway: Gateway) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="granite",
        messages=QUESTION,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    completion = raw.parse()
    assert completion.model == "granite"
    assert completion.choices[0].finish_reason in ("stop", "length")
    certainty = (completion.model_extra or {})["certainty"]
    assert certainty["action"] == "return"
    assert 0 <= certainty["score"] <= 9
    assert raw.headers["x-gateway-action"] == "return"
    assert raw.headers["x-certainty-score"] == str(certainty["score"])
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0


def test_sdk_streams_chunks_with_certainty_on_the_last(gateway: Gateway) -> None:
    client = gateway.client()
    stream = client.chat.completions.create(
        model="granite",
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(
        model="granite",
        messages=QUESTION,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert (chunks[-1].model_extra or {})["certainty"]["policy"] == "granite"


def test_withheld_answer_is_not_retried_by_the_sdk(gateway: Gateway) -> None:
    before = gateway.metric("gateway_actions_total", policy="refuse", action="withhold")
    completion = gateway.client(max_retries=3).chat.completions.create(
        model="refuse",
        messages=QUESTION,
        max_tokens=8,  # type: ignore[arg-type]
    )
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == "Not sure enough."
    after = gateway.metric("gateway_actions_total", policy="refuse", action="withhold")
    assert after - before == 1


def test_escalation_goes_through_litellm_to_the_larger_model(
    gateway: Gateway, upstream: Upstream
) -> None:
    before = upstream.seen["ok"]
    completion = gateway.client().chat.completions.create(
        model="cascade",
        messages=QUESTION,
        max_tokens=8,  # type: ignore[arg-type]
    )
    assert completion.choices[0].message.content == ANSWER
    certainty = (completion.model_extra or {})["certainty"]
    assert certainty["action"] == "escalate"
    assert certainty["served_by"] == "ok-large"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7
    assert upstream.seen["ok"] == before + 1


def test_escalated_stream_passes_upstream_chunks(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(
        model="cascade",
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=8,
        stream=True,
    )
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == ANSWER
    assert len(pieces) > 3  # passed through chunk by chunk, not as one block


def test_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(
    gateway: Gateway,
) -> None:
    before = gateway.metric("gateway_escalations_total", policy="dyingcase", outcome="error")
    stream = gateway.client(max_retries=0).chat.completions.create(
        model="dyingcase",
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=8,
        stream=True,
    )
    pieces: list[str] = []

    def read() -> None:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError) as ended:
        read()
    # The SDK raised the gateway's error event, not a broken connection.
    assert not isinstance(ended.value, openai.APIConnectionError)
    assert "'dying' failed mid-answer" in ended.value.message
    assert "".join(pieces) == "Canberra is"  # what the upstream sent before it died
    after = gateway.metric("gateway_escalations_total", policy="dyingcase", outcome="error")
    assert after - before == 1


def test_hanging_upstream_falls_back_within_timeout_plus_one_second(gateway: Gateway) -> None:
    client = gateway.client(max_retries=0)
    begun = time.perf_counter()
    client.chat.completions.create(
        model="granite",
        messages=QUESTION,
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    local_only = time.perf_counter() - begun
    begun = time.perf_counter()
    completion = client.chat.completions.create(
        model="slowcase",
        messages=QUESTION,
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    elapsed = time.perf_counter() - begun
    certainty = (completion.model_extra or {})["certainty"]
    assert certainty["action"] == "return"  # on_escalation_error: return_local
    assert "timed out" in certainty["escalation_error"]
    assert elapsed - local_only <= ESCALATION_TIMEOUT_S + 1.0


def test_failing_upstream_is_retried_then_withheld(gateway: Gateway, upstream: Upstream) -> None:
    before = upstream.seen["broken"]
    completion = gateway.client().chat.completions.create(
        model="brokencase",
        messages=QUESTION,
        max_tokens=8,  # type: ignore[arg-type]
    )
    assert completion.choices[0].finish_reason == "content_filter"
    certainty = (completion.model_extra or {})["certainty"]
    assert certainty["action"] == "withhold"
    assert "failed" in certainty["escalation_error"]
    assert upstream.seen["broken"] - before == 2  # one retry of a 500


def test_models_are_listed_through_the_sdk(gateway: Gateway) -> None:
    ids = {model.id for model in gateway.client().models.list()}
    assert ids == set(POLICIES)


def test_errors_are_raised_as_the_sdks_typed_exceptions(gateway: Gateway) -> None:
    client = gateway.client(max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=QUESTION)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="granite",
            messages=QUESTION,  # type: ignore[arg-type]
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert bad.value.param == "tools"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="granite",
            messages=QUESTION,  # type: ignore[arg-type]
            extra_body={"api_base": "http://elsewhere.example"},
        )
