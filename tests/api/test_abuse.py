"""What an attacker with network access tries, in process: oversized documents and stop strings,
key guessing, redirects to any host, what readiness tells strangers, the API docs, and whether a
body another tenant sent recently shows."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api.chat import RecentBodies
from gateway.api.schemas import ChatCompletionBody
from gateway.api.throttle import FailedLogins
from gateway.types import ChatRequest, Message

KEY = "sk-test-alpha-0123456789"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def chat(client: TestClient, key: str | None = None, **fields: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "granite", "messages": QUESTION, "max_tokens": 2, "temperature": 0, **fields}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def error(response: Any) -> dict[str, Any]:
    payload: dict[str, Any] = response.json()["error"]
    return payload


# --------------------------------------------------------------------- documents and stop


@pytest.mark.parametrize(
    "documents",
    [
        pytest.param([{}] * 3, id="too-many"),
        pytest.param([{"text": "x" * 200}], id="too-large"),
    ],
)
def test_documents_beyond_the_limits_are_a_400_on_documents(
    make_client: Callable[..., TestClient], documents: list[dict[str, Any]]
) -> None:
    client = make_client(limits={"max_documents": 2, "max_document_bytes": 100})
    response = chat(client, documents=documents)
    assert response.status_code == 400
    assert error(response)["param"] == "documents"
    assert chat(client, documents=[{"text": "Paris."}] * 2).status_code == 200


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param("", id="empty-string"),
        pytest.param([""], id="empty-in-list"),
        pytest.param(["a", "b", "c", "d", "e"], id="five"),
        pytest.param("x" * 17, id="too-long"),
        pytest.param(["ok", "x" * 17], id="too-long-in-list"),
    ],
)
def test_stop_sequences_are_at_most_four_nonempty_short_strings(
    make_client: Callable[..., TestClient], stop: Any
) -> None:
    client = make_client(limits={"max_stop_chars": 16})
    response = chat(client, stop=stop)
    assert response.status_code == 400
    assert error(response)["param"] == "stop"
    assert chat(client, stop=["a", "b", "c", "x" * 16]).status_code == 200


# ------------------------------------------------------------------- failed authentication


def test_failed_authentications_are_throttled_per_address(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(auth={"api_keys": [KEY], "failures_per_minute": 3})
    for _ in range(3):
        assert chat(client, "sk-wrong").status_code == 401
    refused = chat(client, KEY)  # even the right key: guessing must not pay off
    assert refused.status_code == 429
    assert error(refused)["code"] == "too_many_failed_authentications"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 429


def test_the_throttle_forgets_after_a_minute() -> None:
    now = [0.0]
    logins = FailedLogins(2, 60.0, clock=lambda: now[0])
    logins.failed("10.0.0.1", "invalid API key")
    logins.failed("10.0.0.1", "invalid API key")
    assert logins.wait("10.0.0.1") == pytest.approx(60.0)
    assert logins.wait("10.0.0.2") == 0.0  # another address is not affected
    now[0] = 61.0
    assert logins.wait("10.0.0.1") == 0.0


def test_401s_are_logged_once_per_address_and_interval_with_a_count(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(auth={"api_keys": [KEY], "failures_per_minute": 100})
    with caplog.at_level(logging.INFO):
        for _ in range(20):
            assert chat(client, "sk-wrong").status_code == 401
    summaries = [r for r in caplog.records if r.getMessage() == "authentication failed"]
    assert len(summaries) == 1
    assert summaries[0].failures == 1  # type: ignore[attr-defined]  # the first, at once
    loud = [
        r
        for r in caplog.records
        if r.getMessage() == "request" and r.levelno >= logging.INFO and r.status == 401  # type: ignore[attr-defined]
    ]
    assert loud == []


# ------------------------------------------------------------------- redirects, health, docs


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/models/"), ("POST", "/v1/chat/completions/")]
)
def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(
    client: TestClient, method: str, path: str
) -> None:
    response = client.request(
        method, path, headers={"Host": "evil.example"}, follow_redirects=False
    )
    assert response.status_code == 404
    assert "location" not in response.headers


def test_readiness_details_need_a_key_when_keys_are_configured(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(auth={"api_keys": [KEY]})
    stranger = client.get("/health/ready")
    assert stranger.status_code == 200
    assert stranger.json() == {"status": "ready"}
    wrong = client.get("/health/ready", headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.json() == {"status": "ready"}
    keyed = client.get("/health/ready", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert keyed["status"] == "ready"
    assert "granite" in keyed["policies"]["names"]
    assert keyed["model"]


def test_without_keys_readiness_shows_its_details(client: TestClient) -> None:
    assert "policies" in client.get("/health/ready").json()


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_the_api_docs_can_be_turned_off(make_client: Callable[..., TestClient], path: str) -> None:
    assert make_client().get(path).status_code == 200
    assert make_client(server={"docs": False}).get(path).status_code == 404


# ---------------------------------------------------------------------------- side channels


def test_a_body_remembered_for_one_key_is_unseen_for_another() -> None:
    recent = RecentBodies()
    raw = json.dumps({"model": "granite", "messages": QUESTION}).encode()
    parsed = (
        ChatCompletionBody.model_validate_json(raw),
        ChatRequest(messages=(Message(role="user", content="q"),)),
    )
    recent.put("tenant-a", raw, parsed)
    assert recent.get("tenant-a", raw) is parsed
    assert recent.get("tenant-b", raw) is None
    assert recent.get(None, raw) is None
