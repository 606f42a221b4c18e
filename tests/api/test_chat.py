"""The chat completions API in process: each action, escalation errors, streams, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api.chat import RecentBodies
from gateway.api.schemas import ChatCompletionBody
from gateway.types import ChatRequest, Message
from tests.fakes import FakeEscalator

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def ask(client: TestClient, model: str, **extra: Any) -> Any:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": QUESTION, "max_tokens": 16, **extra},
    )


def sse_events(text: str) -> list[Any]:
    events = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_return_answers_with_the_certainty_object_and_headers(client: TestClient) -> None:
    response = ask(client, "granite")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "granite"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    certainty = body["certainty"]
    assert certainty["action"] == "return"
    assert certainty["policy"] == "granite"
    assert certainty["cached"] is False
    assert 0 <= certainty["score"] <= 9
    assert sum(certainty["distribution"]) == pytest.approx(1.0)
    assert certainty["served_by"].endswith("base")  # the miniature's base model folder
    assert body["usage"]["completion_tokens"] == certainty["local_usage"]["completion_tokens"]
    assert response.headers["x-gateway-action"] == "return"
    assert response.headers["x-gateway-policy"] == "granite"
    assert response.headers["x-gateway-cache"] == "miss"
    assert response.headers["x-certainty-score"] == str(certainty["score"])
    assert float(response.headers["x-certainty-confidence"]) == pytest.approx(
        certainty["expected_confidence"], abs=1e-4
    )


def test_withhold_returns_the_refusal_never_the_local_text(client: TestClient) -> None:
    local = ask(client, "granite", temperature=0).json()["choices"][0]["message"]["content"]
    response = ask(client, "refuse", temperature=0)
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Not sure enough."
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["certainty"]["action"] == "withhold"
    assert body["certainty"]["served_by"] == "gateway"
    assert local not in response.text or not local
    assert response.headers["x-gateway-action"] == "withhold"


def test_escalate_replaces_the_answer_and_reports_both_usages(
    client: TestClient, escalator: FakeEscalator
) -> None:
    body = ask(client, "ask-large").json()
    assert escalator.calls == 1
    assert body["choices"][0]["message"]["content"] == "The large model's answer."
    certainty = body["certainty"]
    assert certainty["action"] == "escalate"
    assert certainty["served_by"] == "large-model-v1"
    assert certainty["escalation_cost"] == pytest.approx(0.0042)
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    assert certainty["local_usage"]["prompt_tokens"] > 0


def test_escalation_error_can_return_the_local_answer(
    client: TestClient, escalator: FakeEscalator
) -> None:
    escalator.fail = True
    local = ask(client, "granite", temperature=0).json()["choices"][0]["message"]["content"]
    body = ask(client, "ask-large", temperature=0).json()
    assert body["choices"][0]["message"]["content"] == local
    assert body["certainty"]["action"] == "return"
    assert "failed" in body["certainty"]["escalation_error"]


def test_escalation_error_can_withhold(client: TestClient, escalator: FakeEscalator) -> None:
    escalator.fail = True
    body = ask(client, "ask-large-or-withhold").json()
    assert body["choices"][0]["message"]["content"] == "Not sure."
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["certainty"]["action"] == "withhold"


def test_escalation_error_can_be_an_error(client: TestClient, escalator: FakeEscalator) -> None:
    escalator.fail = True
    response = ask(client, "ask-large-or-fail")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "escalation_failed"


def test_stream_sends_chunks_then_done_with_certainty_on_the_last_chunk(
    client: TestClient,
) -> None:
    response = ask(client, "granite", stream=True, temperature=0)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["certainty"]["action"] == "return"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    whole = ask(client, "granite", temperature=0).json()["choices"][0]["message"]["content"]
    assert streamed == whole


def test_guarded_stream_never_sends_the_withheld_text(client: TestClient) -> None:
    local = ask(client, "granite", temperature=0).json()["choices"][0]["message"]["content"]
    response = ask(client, "refuse", stream=True, temperature=0)
    events = sse_events(response.text)
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]
    )
    assert text == "Not sure enough."
    if local:
        assert local not in response.text
    assert response.headers["x-gateway-action"] == "withhold"
    assert "x-certainty-score" in response.headers
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter"


def test_escalated_stream_passes_the_upstream_chunks(client: TestClient) -> None:
    response = ask(client, "ask-large", stream=True)
    events = sse_events(response.text)[:-1]
    pieces = [e["choices"][0]["delta"].get("content") for e in events[1:-1]]
    assert pieces == ["The ", "large ", "model's ", "answer. "]
    assert events[-1]["certainty"]["served_by"] == "large-model-v1"
    assert response.headers["x-gateway-action"] == "escalate"


def test_stream_include_usage_adds_a_usage_chunk(client: TestClient) -> None:
    response = ask(client, "granite", stream=True, stream_options={"include_usage": True})
    events = sse_events(response.text)
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["total_tokens"] > 0
    assert usage_chunk["certainty"]["policy"] == "granite"


def test_documents_sent_as_extra_body_change_the_answer_prompt(client: TestClient) -> None:
    plain = ask(client, "granite", temperature=0).json()["certainty"]["local_usage"]
    with_docs = ask(
        client, "granite", temperature=0, documents=[{"text": "Paris is in France."}]
    ).json()["certainty"]["local_usage"]
    assert with_docs["prompt_tokens"] > plain["prompt_tokens"]


def test_text_parts_are_accepted_as_content(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "granite",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        },
    )
    assert response.status_code == 200


def test_unknown_fields_are_ignored(client: TestClient) -> None:
    assert ask(client, "granite", frequency_penalty=0.5, metadata={"a": "b"}).status_code == 200


def test_models_lists_one_entry_per_policy(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert {m["id"] for m in body["data"]} == {
        "granite",
        "ask-large",
        "ask-large-or-withhold",
        "ask-large-or-fail",
        "refuse",
    }


def test_health_endpoints(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["cache"]["state"] == "ok"


def test_metrics_count_actions(client: TestClient) -> None:
    ask(client, "refuse")
    text = client.get("/metrics").text
    assert 'gateway_actions_total{action="withhold",policy="refuse"} 1.0' in text


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({"model": "granite"}, 400, "messages"),
        ({"model": "granite", "messages": []}, 400, "messages"),
        ({"messages": QUESTION}, 400, "model"),
        ({"model": "granite", "messages": QUESTION, "tools": [{"type": "function"}]}, 400, "tools"),
        ({"model": "granite", "messages": QUESTION, "n": 2}, 400, "n"),
        ({"model": "granite", "messages": QUESTION, "api_base": "http://evil"}, 400, "api_base"),
        ({"model": "granite", "messages": QUESTION, "base_url": "http://evil"}, 400, "base_url"),
        ({"model": "granite", "messages": QUESTION, "api_key": "sk-x"}, 400, "api_key"),
        ({"model": "granite", "messages": QUESTION, "temperature": 5}, 400, "temperature"),
        ({"model": "granite", "messages": QUESTION, "max_tokens": 10**6}, 400, "max_tokens"),
        ({"model": "granite", "messages": QUESTION, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "granite", "messages": [{"role": "tool", "content": "x"}]}, 400, None),
        (
            {
                "model": "granite",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ],
            },
            400,
            "messages[0].content[0].type",
        ),
        ({"model": "no-such-policy", "messages": QUESTION}, 404, "model"),
    ],
)
def test_bad_input_gets_a_4xx_in_the_openai_envelope(
    client: TestClient, payload: dict[str, Any], status: int, param: str | None
) -> None:
    response = client.post("/v1/chat/completions", json=payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_is_a_404_envelope(client: TestClient) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert "error" in response.json()


def test_another_method_on_the_chat_path_is_a_405_naming_post(client: TestClient) -> None:
    response = client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"", b"null"])
def test_a_body_that_is_not_a_json_object_is_a_400(client: TestClient, raw: bytes) -> None:
    response = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_the_openapi_document_describes_the_chat_route(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/chat/completions"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ChatCompletionBody"}
    assert {"model", "messages"} <= set(
        document["components"]["schemas"]["ChatCompletionBody"]["required"]
    )
    assert "security" not in operation  # this gateway has no API keys: none is asked for


def test_policy_max_tokens_caps_the_request(make_client: Any, policies_dir: Path) -> None:
    (policies_dir / "short.yaml").write_text("name: short\nmax_tokens: 2\n")
    client = make_client()
    body = ask(client, "short", max_tokens=50).json()
    assert body["usage"]["completion_tokens"] <= 2


def test_reload_with_a_bad_file_keeps_serving_the_last_good_policies(
    client: TestClient, policies_dir: Path
) -> None:
    (policies_dir / "refuse.yaml").write_text("name: refuse\nreturn_at: nonsense\n")
    state = client.app.state.gateway  # type: ignore[attr-defined]
    assert state.policies.reload() is False
    assert ask(client, "refuse").json()["certainty"]["action"] == "withhold"
    ready = client.get("/health/ready").json()
    assert "refuse.yaml" in ready["policies"]["last_reload_error"]
    (policies_dir / "refuse.yaml").write_text("name: refuse\nreturn_at: 0.0\n")
    assert state.policies.reload() is True
    assert ask(client, "refuse").json()["certainty"]["action"] == "return"


def test_recent_bodies_are_bounded_in_number_and_size() -> None:
    recent = RecentBodies(size=2, max_bytes=200)
    bodies = [
        json.dumps({"model": "granite", "messages": [{"role": "user", "content": f"q{i}"}]})
        for i in range(3)
    ]
    parsed = [
        (
            ChatCompletionBody.model_validate_json(body),
            ChatRequest(messages=(Message(role="user", content=f"q{i}"),)),
        )
        for i, body in enumerate(bodies)
    ]
    recent.put(None, bodies[0].encode(), parsed[0])
    recent.put(None, bodies[1].encode(), parsed[1])
    assert recent.get(None, bodies[0].encode()) is parsed[0]  # now the most recently used
    recent.put(None, bodies[2].encode(), parsed[2])
    assert len(recent) == 2
    assert recent.get(None, bodies[1].encode()) is None  # the least recently used went
    assert recent.get(None, bodies[0].encode()) is parsed[0]
    long = json.dumps({"model": "granite", "messages": [{"role": "user", "content": "x" * 300}]})
    recent.put(None, long.encode(), parsed[0])
    assert recent.get(None, long.encode()) is None
    assert len(recent) == 2
