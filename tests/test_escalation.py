"""The LiteLLM escalator's failures, as the client reads them in `escalation_error`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.config import EscalationSettings, Settings
from gateway.engine.local import LocalEngine
from gateway.errors import EscalationFailed
from gateway.escalation import LiteLLMEscalator
from gateway.types import Message, SamplingParams

QUESTION = [Message("user", "What is the capital of Australia?")]


def escalator(**params: Any) -> LiteLLMEscalator:
    deployment = {"model_name": "large", "litellm_params": params}
    return LiteLLMEscalator(EscalationSettings(model_list=[deployment], timeout_s=5))


def failure(escalator: LiteLLMEscalator, *, stream: bool) -> str:
    async def call() -> None:
        if stream:
            async for _ in escalator.stream("large", QUESTION, [], SamplingParams()):
                pass
        else:
            await escalator.complete("large", QUESTION, [], SamplingParams())

    with pytest.raises(EscalationFailed) as failed:
        asyncio.run(call())
    return failed.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_escalation_without_the_providers_key_says_which_key_to_set(
    monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    message = failure(escalator(model="openai/gpt-4o-mini"), stream=stream)
    assert message == "no API key for provider openai (set OPENAI_API_KEY)"


def test_a_key_read_from_an_unset_variable_names_that_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ESCALATION_TEST_KEY", raising=False)
    large = escalator(model="anthropic/claude-3-5-haiku", api_key="os.environ/ESCALATION_TEST_KEY")
    message = failure(large, stream=False)
    assert message == "no API key for provider anthropic (set ESCALATION_TEST_KEY)"


def test_a_failure_with_a_key_set_names_the_target_and_the_error_type() -> None:
    # A key is given and nothing listens on port 9: the failure is the connection, not the key.
    large = escalator(model="openai/large", api_base="http://127.0.0.1:9/v1", api_key="sk-test")
    message = failure(large, stream=False)
    assert message.startswith("escalation to 'large' failed: ")
    assert "API key" not in message


def test_the_client_reads_the_missing_key_in_escalation_error(
    monkeypatch: pytest.MonkeyPatch, engine: LocalEngine, tmp_path: Path
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "cascade.yaml").write_text(
        "name: cascade\nreturn_at: 1.0\nescalate_at: 0.0\nescalate_to: large\n"
        "on_escalation_error: return_local\n"
    )
    deployment = {"model_name": "large", "litellm_params": {"model": "openai/gpt-4o-mini"}}
    settings = Settings(policies_dir=tmp_path, escalation={"model_list": [deployment]})
    app = create_app(settings, engine=engine, watch_policies=False)
    with TestClient(app) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "cascade", "messages": [{"role": "user", "content": "Hi"}]},
        )
    certainty = response.json()["certainty"]
    assert certainty["action"] == "return"
    assert certainty["escalation_error"] == "no API key for provider openai (set OPENAI_API_KEY)"
