"""Our own OpenAPI document, fuzzed by schemathesis against the app on the miniature model: no
input, valid or not, gets a 5xx; every response has a documented status, content type and
schema; and every error is in the OpenAI envelope. Then what the document itself says.

Fixed (derandomized) examples, negative cases on, a bounded number per operation. A failure
prints the request that caused it; fix the cause where it belongs, never here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.engine.local import LocalEngine
from tests.fakes import POLICIES, FakeEscalator

KEY = "sk-test-schemathesis-0123456789"
MAX_EXAMPLES = 50


def _settings(**settings: Any) -> Settings:
    return Settings(
        auth={"api_keys": [KEY]},  # type: ignore[arg-type]
        # Short answers keep the accepted requests fast; longer ones are refused with a 400.
        limits={"max_tokens_cap": 8, "default_max_tokens": 4},  # type: ignore[arg-type]
        **settings,
    )


def _document(settings: Settings | None = None) -> dict[str, Any]:
    """The document the app serves at /openapi.json, from an app that is built but never started
    (no model needed)."""
    return create_app(settings or _settings()).openapi()


# The loader from a fixture (`schemathesis.pytest.from_fixture`) does not run under pytest 9.2
# (it sets `Node._nodeid`); the document is loaded here and the app comes from a fixture.
schema = schemathesis.openapi.from_dict(_document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES
)


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    """Most generated chat bodies name no policy and are refused early: a third is sent with a
    real policy, and a third with a real policy, a plain conversation and a short answer too, so
    that the rest of the body reaches the pipeline and the model."""
    operation = getattr(context, "operation", None)
    if getattr(operation, "path", None) != "/v1/chat/completions" or not isinstance(body, dict):
        return st.just(body)
    policies = st.sampled_from(sorted(POLICIES))
    conversation = [{"role": "user", "content": "What is the capital of France?"}]

    def plausible(name: str) -> dict[str, Any]:
        # The other fields (sampling, stop, documents, stream, ...) stay as generated.
        sent = {**body, "model": name, "messages": conversation, "max_tokens": 4}
        sent.pop("max_completion_tokens", None)
        return sent

    return st.one_of(
        st.just(body),
        policies.map(lambda name: {**body, "model": name}),
        policies.map(plausible),
    )


@pytest.fixture
def gateway_app(engine: LocalEngine, policies_dir: Path, escalator: FakeEscalator) -> Iterator[Any]:
    config = _settings(policies_dir=policies_dir)
    yield create_app(config, engine=engine, escalator=escalator, watch_policies=False)
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # schemathesis started the app's lifespan on the first request


@schemathesis.check
def openai_error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx body is `{"error": {"message", "type", "param", "code"}}`."""
    if response.status_code < 400:
        return None
    error = response.json().get("error")
    assert isinstance(error, dict), f"not the OpenAI envelope: {response.text[:200]}"
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return True


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_gets_a_server_error_or_an_undocumented_answer(
    case: Any, gateway_app: Any
) -> None:
    case.call_and_validate(
        app=gateway_app,
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            openai_error_envelope,
        ],
    )


FOUND = {
    # Out of int64: the sampler's generator refused it, and failed the whole engine batch.
    "seed beyond int64": (b'{"seed": 1180591620717411303424}', 400),
    "seed below int64": (b'{"seed": -9223372036854775809}', 400),
    # logits / 1e-300 overflowed to inf, then NaN probabilities: now decoded greedily.
    "vanishing temperature": (b'{"temperature": 1e-300}', 200),
    "subnormal temperature": (b'{"temperature": 5e-324, "stream": true}', 200),
    # JSON may escape a lone surrogate; no tokenizer can encode it.
    "lone surrogate": (b'{"messages": [{"role": "user", "content": "\\ud800 hi"}]}', 400),
    "lone surrogate in a document": (b'{"documents": [{"text": "\\udfff"}]}', 400),
}


@pytest.mark.parametrize(("extra", "status"), FOUND.values(), ids=FOUND.keys())
def test_inputs_that_once_caused_a_server_error(client: Any, extra: bytes, status: int) -> None:
    body = {"model": "granite", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    raw = json.dumps(body).encode()[:-1] + b", " + extra[1:-1] + b"}"
    response = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text


# ------------------------------------------------------------------ what the document says


def test_the_served_document_is_the_one_fuzzed(client: Any) -> None:
    served = client.get("/openapi.json").json()
    assert set(served["paths"]) == set(_document()["paths"])


def test_bearer_auth_is_declared_only_when_keys_are_configured() -> None:
    keyless = _document(Settings())
    assert "securitySchemes" not in keyless.get("components", {})
    assert all(
        "security" not in operation
        for operations in keyless["paths"].values()
        for operation in operations.values()
    )
    keyed = _document()
    assert keyed["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert keyed["paths"]["/v1/chat/completions"]["post"]["security"] == [{"HTTPBearer": []}]


def test_the_chat_route_documents_its_errors_in_the_openai_envelope() -> None:
    document = _document()
    responses = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    for status in ("400", "401", "403", "404", "413", "429"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, status
    assert "422" not in responses  # a body that fails validation is a 400
    envelope = document["components"]["schemas"]["ErrorDetail"]
    assert set(envelope["required"]) == {"message", "type", "param", "code"}
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}


def test_metrics_are_documented_as_text_and_roles_as_an_enum() -> None:
    document = _document()
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain"}
    role = document["components"]["schemas"]["WireMessage"]["properties"]["role"]
    assert role["enum"] == ["system", "user", "assistant"]


def test_another_role_is_still_a_400_that_names_it(client: Any) -> None:
    body = {"model": "granite", "messages": [{"role": "tool", "content": "x"}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].role"
