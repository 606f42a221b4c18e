"""The wire contract a client relies on: `models.retrieve`, strict types, a code on every error,
and a confidence header that shows why a threshold decided."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
KEY = "sk-test-models-0123456789"


def ask(client: TestClient, **body: Any) -> Any:
    payload = {"model": "granite", "messages": QUESTION, "max_tokens": 4, **body}
    return client.post("/v1/chat/completions", json=payload)


def test_the_sdk_retrieves_one_model(client: TestClient) -> None:
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    model = sdk.models.retrieve("granite")
    assert model.id == "granite"
    assert model.object == "model"
    assert model.owned_by == "certainty-gateway"


def test_an_unknown_model_is_a_404_in_the_openai_envelope(client: TestClient) -> None:
    response = client.get("/v1/models/no-such-policy")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "no-such-policy" in error["message"]


def test_a_key_cannot_retrieve_a_model_it_may_not_use(
    make_client: Callable[..., TestClient], tmp_path: Any
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY} support granite\n")
    client = make_client(auth={"api_keys_file": keys})
    headers = {"Authorization": f"Bearer {KEY}"}
    assert client.get("/v1/models/granite", headers=headers).status_code == 200
    hidden = client.get("/v1/models/refuse", headers=headers)
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "model_not_found"
    assert client.get("/v1/models/granite").status_code == 401


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stream", "yes"),
        ("stream", 1),
        ("logprobs", "false"),
        ("max_tokens", "4"),
        ("max_tokens", 4.5),
        ("max_tokens", True),
        ("temperature", "0"),
        ("temperature", False),
        ("seed", "7"),
        ("n", 1.0),
        ("stream_options", {"include_usage": "yes"}),
    ],
)
def test_booleans_and_numbers_are_strict(client: TestClient, field: str, value: Any) -> None:
    response = ask(client, **{field: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"].startswith(field)
    assert error["code"] == "invalid_value"


def test_an_integer_is_a_number_where_a_float_is_asked(client: TestClient) -> None:
    assert ask(client, temperature=0, top_p=1).status_code == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"max_tokens": 10**6}, "max_tokens_exceeded"),
        ({"messages": [{"role": "user", "content": None}]}, "missing_required_parameter"),
        ({"messages": [*QUESTION, {"role": "assistant", "content": "Paris"}]}, "invalid_value"),
        ({"api_base": "http://elsewhere"}, "parameter_not_allowed"),
        ({"messages": QUESTION * 5}, "invalid_value"),
    ],
    ids=["max_tokens", "null-content", "trailing-assistant", "api_base", "too-many-messages"],
)
def test_every_error_has_a_code(
    make_client: Callable[..., TestClient], body: dict[str, Any], code: str
) -> None:
    client = make_client(limits={"max_messages": 4})
    response = ask(client, **body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_an_unknown_path_and_a_wrong_method_have_codes(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert client.delete("/v1/models").json()["error"]["code"] == "method_not_allowed"


def test_the_confidence_header_is_the_compared_number_to_the_last_digit(
    client: TestClient,
) -> None:
    response = ask(client, temperature=0)
    certainty = response.json()["certainty"]
    # `granite` compares the expected confidence; the header reads back as exactly that float.
    assert float(response.headers["x-certainty-confidence"]) == certainty["expected_confidence"]


def test_a_live_granite_stream_has_its_score_in_the_last_chunk_not_in_headers(
    client: TestClient,
) -> None:
    response = ask(client, stream=True, seed=11, temperature=0.7)  # sampled: not from the cache
    assert response.status_code == 200
    assert not any(name.startswith("x-certainty-") for name in response.headers)
    assert response.headers["x-gateway-action"] == "return"
    assert response.headers["x-gateway-cache"] == "miss"
    chunks = [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    assert "certainty" not in chunks[0]
    assert chunks[-1]["certainty"]["policy"] == "granite"
    assert 0 <= chunks[-1]["certainty"]["score"] <= 9
