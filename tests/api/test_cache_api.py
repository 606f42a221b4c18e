"""The decision cache seen through the API: hits answer like misses, keys change with every input,
policy edits invalidate, and a frozen or dead Redis never fails a request."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.config import CacheSettings
from tests.fakes import FakeEscalator
from tests.servers import RedisServer

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def ask(client: TestClient, model: str = "granite", **extra: Any) -> Any:
    payload = {"model": model, "messages": QUESTION, "max_tokens": 12, "temperature": 0}
    payload.update(extra)
    return client.post("/v1/chat/completions", json=payload)


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """A response body without what differs between any two responses (ids, times, cached)."""
    body = json.loads(json.dumps(body))
    body.pop("id")
    body.pop("created")
    body["certainty"].pop("cached")
    return body


def test_a_repeated_request_is_a_hit_that_answers_exactly_like_the_miss(
    client: TestClient,
) -> None:
    miss = ask(client)
    hit = ask(client)
    assert miss.headers["x-gateway-cache"] == "miss"
    assert hit.headers["x-gateway-cache"] == "hit"
    assert miss.json()["certainty"]["cached"] is False
    assert hit.json()["certainty"]["cached"] is True
    assert comparable(hit.json()) == comparable(miss.json())
    for header in ("x-certainty-score", "x-certainty-confidence", "x-gateway-action"):
        assert hit.headers[header] == miss.headers[header]


def test_an_unreadable_entry_is_decided_afresh_not_a_500(client: TestClient) -> None:
    miss = ask(client)
    cache = client.app.state.gateway.cache  # type: ignore[attr-defined]
    (key,) = list(cache._entries)
    client.portal.call(cache.set, key, b"not a decision", 60)  # type: ignore[union-attr]
    again = ask(client)
    assert again.status_code == 200, again.text
    assert again.headers["x-gateway-cache"] == "miss"
    assert again.json()["choices"] == miss.json()["choices"]
    assert 'gateway_cache_total{event="error"} 1.0' in client.get("/metrics").text
    assert ask(client).headers["x-gateway-cache"] == "hit"  # replaced by the fresh decision


def test_a_hit_is_replayed_as_a_stream(client: TestClient) -> None:
    whole = ask(client).json()["choices"][0]["message"]["content"]
    response = ask(client, stream=True)
    assert response.headers["x-gateway-cache"] == "hit"
    events = [
        json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")
    ]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == whole
    assert events[-1]["certainty"]["cached"] is True
    assert response.text.rstrip().endswith("data: [DONE]")


def test_escalated_decisions_are_cached_too(client: TestClient, escalator: FakeEscalator) -> None:
    ask(client, "ask-large")
    second = ask(client, "ask-large")
    assert escalator.calls == 1
    assert second.json()["certainty"]["action"] == "escalate"
    assert second.json()["certainty"]["cached"] is True


def test_a_fallback_after_a_failed_escalation_is_not_cached(
    client: TestClient, escalator: FakeEscalator
) -> None:
    escalator.fail = True
    ask(client, "ask-large")
    escalator.fail = False
    second = ask(client, "ask-large")
    assert second.headers["x-gateway-cache"] == "miss"
    assert second.json()["certainty"]["action"] == "escalate"


def test_sampled_requests_bypass_the_cache_but_seeded_ones_hit(client: TestClient) -> None:
    ask(client, temperature=0.8)
    assert ask(client, temperature=0.8).headers["x-gateway-cache"] == "miss"
    ask(client, temperature=0.8, seed=7)
    assert ask(client, temperature=0.8, seed=7).headers["x-gateway-cache"] == "hit"


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 13},
        {"stop": ["zz"]},
        {"seed": 1},
        {"top_p": 0.5},
        {"documents": [{"text": "Paris."}]},
        {"messages": [{"role": "user", "content": "What is the capital of France? "}]},
        {"messages": [{"role": "system", "content": "Be brief."}, *QUESTION]},
        {"model": "refuse"},
    ],
)
def test_each_input_of_a_decision_changes_the_key(
    client: TestClient, change: dict[str, Any]
) -> None:
    ask(client)
    assert ask(client).headers["x-gateway-cache"] == "hit"
    changed = {"model": "granite", **change}
    model = changed.pop("model")
    assert ask(client, model, **changed).headers["x-gateway-cache"] == "miss"


def test_editing_a_policy_invalidates_its_cached_decisions(
    client: TestClient, policies_dir: Path
) -> None:
    ask(client, "refuse")
    assert ask(client, "refuse").headers["x-gateway-cache"] == "hit"
    (policies_dir / "refuse.yaml").write_text(
        "name: refuse\nreturn_at: 1.0\nwithhold_message: A new refusal.\n"
    )
    assert client.app.state.gateway.policies.reload()  # type: ignore[attr-defined]
    after = ask(client, "refuse")
    assert after.headers["x-gateway-cache"] == "miss"
    assert after.json()["choices"][0]["message"]["content"] == "A new refusal."


def test_concurrent_identical_misses_compute_once(client: TestClient) -> None:
    state = client.app.state.gateway  # type: ignore[attr-defined]
    worker = state.queue_depth_source
    before = worker.rows_run
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: ask(client, max_tokens=20), range(8)))
    assert all(r.status_code == 200 for r in responses)
    assert worker.rows_run - before == 2  # one answer row and one score row
    assert len({r.json()["choices"][0]["message"]["content"] for r in responses}) == 1


def streamed_text(response: Any) -> str:
    events = [
        json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")
    ]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def test_concurrent_identical_streamed_misses_compute_once(client: TestClient) -> None:
    state = client.app.state.gateway  # type: ignore[attr-defined]
    worker = state.queue_depth_source
    before = worker.rows_run
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: ask(client, max_tokens=20, stream=True), range(8)))
    assert all(r.status_code == 200 for r in responses)
    assert worker.rows_run - before == 2  # one answer row and one score row
    assert len({streamed_text(r) for r in responses}) == 1
    assert ask(client, max_tokens=20).headers["x-gateway-cache"] == "hit"


def test_concurrent_identical_escalated_streams_escalate_once(
    client: TestClient, escalator: FakeEscalator
) -> None:
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: ask(client, "ask-large", stream=True), range(4)))
    assert escalator.calls == 1
    assert {streamed_text(r).strip() for r in responses} == {escalator.answer}


@pytest.fixture
def redis_client(make_client: Callable[..., TestClient], redis_server: RedisServer) -> TestClient:
    return make_client(cache=CacheSettings(url=redis_server.url, timeout_s=0.1))


def test_redis_backed_hit_after_miss(redis_client: TestClient) -> None:
    assert ask(redis_client).headers["x-gateway-cache"] == "miss"
    assert ask(redis_client).headers["x-gateway-cache"] == "hit"


def test_a_frozen_redis_costs_misses_within_the_time_limit_never_a_failure(
    redis_client: TestClient, redis_server: RedisServer
) -> None:
    ask(redis_client)
    redis_server.freeze()
    try:
        with ThreadPoolExecutor(8) as pool:

            def timed(i: int) -> tuple[int, float]:
                begun = time.perf_counter()
                response = ask(redis_client, max_tokens=4, seed=i)
                return response.status_code, time.perf_counter() - begun

            results = list(pool.map(timed, range(16)))
        assert [status for status, _ in results] == [200] * 16
        ready = redis_client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["cache"]["state"] == "degraded"
    finally:
        redis_server.thaw()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ask(redis_client, seed=999)
        if ask(redis_client, seed=999).headers["x-gateway-cache"] == "hit":
            break
        time.sleep(0.5)
    else:
        raise AssertionError("caching did not resume after SIGCONT")


def test_a_killed_redis_never_fails_a_request(
    redis_client: TestClient, redis_server: RedisServer
) -> None:
    redis_server.kill()
    responses = [ask(redis_client, seed=i) for i in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert all(r.headers["x-gateway-cache"] == "miss" for r in responses)
