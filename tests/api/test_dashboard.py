"""`/v1/gateway/stats` and `/dashboard`: the numbers, and who may see them."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.api.keys import key_id
from gateway.config import AuthSettings, Settings
from gateway.engine.local import LocalEngine
from tests.api.conftest import FakeEscalator

ADMIN = "sk-admin-0123456789"
USER = "sk-user-0123456789"
PROMPT = "What is the secret word of the dashboard test?"


def ask(client: TestClient, model: str, headers: dict[str, str] | None = None) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 8,
        "temperature": 0,
    }
    response = client.post("/v1/chat/completions", json=body, headers=headers or {})
    assert response.status_code == 200, response.text


def loopback_client(
    engine: LocalEngine, policies_dir: Path, escalator: FakeEscalator
) -> TestClient:
    app = create_app(
        Settings(policies_dir=policies_dir),
        engine=engine,
        escalator=escalator,
        watch_policies=False,
    )
    return TestClient(app, client=("127.0.0.1", 50000))


def test_stats_count_each_action_and_cache_hits_per_policy(
    engine: LocalEngine, policies_dir: Path, escalator: FakeEscalator
) -> None:
    with loopback_client(engine, policies_dir, escalator) as client:
        ask(client, "granite")
        ask(client, "granite")  # a cache hit
        ask(client, "ask-large")
        ask(client, "refuse")
        response = client.get("/v1/gateway/stats", params={"window": "5m"})
    assert response.status_code == 200
    doc = response.json()
    assert doc["aggregated"] is False
    assert doc["scope"] == "this replica only"
    by_name = {p["policy"]: p for p in doc["policies"]}
    granite = by_name["granite"]
    assert granite["requests"] == 2
    assert granite["actions"] == {"return": 2, "withhold": 0, "escalate": 0}
    assert granite["cache"]["hits"] == 1
    assert granite["latency_ms"]["generate"]["count"] == 1
    assert granite["latency_ms"]["score"]["p50"] > 0
    assert by_name["ask-large"]["actions"]["escalate"] == 1
    assert by_name["ask-large"]["escalation"]["spend_usd"] == 0.0042
    assert by_name["refuse"]["actions"]["withhold"] == 1
    assert sum(by_name["refuse"]["confidence_histogram"]["counts"]) == 1
    assert by_name["refuse"]["thresholds"]["return_at"] == 1.0
    assert PROMPT not in response.text
    assert "large model's answer" not in response.text


def test_stats_are_open_on_loopback_only_without_keys(
    client: TestClient, engine: LocalEngine, policies_dir: Path, escalator: FakeEscalator
) -> None:
    refused = client.get("/v1/gateway/stats")  # TestClient's peer is not a loopback address
    assert refused.status_code == 403
    assert "loopback" in refused.json()["error"]["message"]
    with loopback_client(engine, policies_dir, escalator) as local:
        assert local.get("/v1/gateway/stats").status_code == 200
        assert local.get("/dashboard").status_code == 200


def test_stats_need_an_admin_key_when_keys_are_configured(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(auth=AuthSettings(api_keys=[USER], admin_keys=[ADMIN]))
    ask(client, "granite", {"Authorization": f"Bearer {USER}"})
    assert client.get("/v1/gateway/stats").status_code == 401
    user = client.get("/v1/gateway/stats", headers={"Authorization": f"Bearer {USER}"})
    assert user.status_code == 401
    assert user.json()["error"]["message"] == "invalid admin key"
    admin = client.get("/v1/gateway/stats", headers={"Authorization": f"Bearer {ADMIN}"})
    assert admin.status_code == 200
    assert admin.json()["tenants"] == [key_id(USER)]
    page = client.get("/dashboard")
    assert page.status_code == 401
    assert page.headers["www-authenticate"].startswith("Basic ")
    basic = base64.b64encode(f"admin:{ADMIN}".encode()).decode()
    page = client.get("/dashboard", headers={"Authorization": f"Basic {basic}"})
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_api_keys_without_an_admin_key_close_the_stats(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(auth=AuthSettings(api_keys=[USER]))
    response = client.get("/v1/gateway/stats", headers={"Authorization": f"Bearer {USER}"})
    assert response.status_code == 403
    assert "auth.admin_keys" in response.json()["error"]["message"]


def test_a_tenant_sees_only_its_own_traffic(make_client: Callable[..., TestClient]) -> None:
    other = "sk-other-0123456789"
    client = make_client(auth=AuthSettings(api_keys=[USER, other], admin_keys=[ADMIN]))
    ask(client, "granite", {"Authorization": f"Bearer {USER}"})
    ask(client, "refuse", {"Authorization": f"Bearer {other}"})
    admin = {"Authorization": f"Bearer {ADMIN}"}
    everyone = client.get("/v1/gateway/stats", headers=admin).json()
    tenant = everyone["tenants"][0]
    one = client.get("/v1/gateway/stats", params={"tenant": tenant}, headers=admin).json()
    total = sum(p["requests"] for p in everyone["policies"])
    assert total == 2
    assert sum(p["requests"] for p in one["policies"]) == 1
    assert one["tenant"] == tenant


def test_a_bad_window_is_a_400_in_the_openai_envelope(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(auth=AuthSettings(admin_keys=[ADMIN]))
    response = client.get(
        "/v1/gateway/stats", params={"window": "2d"}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "query.window"


def test_the_stats_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    stats = paths["/v1/gateway/stats"]["get"]
    assert {p["name"] for p in stats["parameters"]} == {"window", "tenant"}
    assert "/dashboard" not in paths


def test_the_page_embeds_the_stats_and_loads_nothing_from_elsewhere(
    engine: LocalEngine, policies_dir: Path, escalator: FakeEscalator
) -> None:
    with loopback_client(engine, policies_dir, escalator) as client:
        ask(client, "granite")
        page = client.get("/dashboard", params={"window": "1h"}).text
    assert '"window":"1h"' in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert PROMPT not in page
