"""End to end against a real `serve` process: failed logins are counted per client, and behind a
trusted load balancer the client is the one its `X-Forwarded-For` names (`server.trusted_proxies`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.harness import Gateway, serving, tiny_model

KEY = "sk-proxies-test-0123456789"
FAILURES = 3


def models(gateway: Gateway, key: str, client: str) -> int:
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": client}
    return httpx.get(gateway.url + "/v1/models", headers=headers).status_code


@pytest.fixture(scope="module", params=["trusted", "untrusted"])
def gateway(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Gateway]]:
    """The tests connect from 127.0.0.1: `trusted` is the default list (127.0.0.1, a balancer on
    the same host), `untrusted` names another address as the only balancer."""
    folder = tmp_path_factory.mktemp(f"proxies-{request.param}")
    policies = folder / "policies"
    policies.mkdir()
    (policies / "granite.yaml").write_text(yaml.safe_dump({"name": "granite", "return_at": 0.0}))
    server: dict[str, object] = {}
    if request.param == "untrusted":
        server["trusted_proxies"] = ["10.9.8.7"]
    config = {
        "model": tiny_model(tiny_model_dir),
        "policies_dir": str(policies),
        "auth": {"api_keys": [KEY], "failures_per_minute": FAILURES},
        "server": server,
    }
    with serving(config, folder) as running:
        yield request.param, running


def test_failed_logins_are_counted_for_the_client_a_trusted_balancer_names(
    gateway: tuple[str, Gateway],
) -> None:
    trust, server = gateway
    for _ in range(FAILURES):
        assert models(server, "sk-wrong", client="203.0.113.7") == 401
    assert models(server, KEY, client="203.0.113.7") == 429  # the guesser, right key or not
    other = models(server, KEY, client="198.51.100.20")
    if trust == "trusted":
        assert other == 200  # another client behind the same balancer is served
    else:
        assert other == 429  # the header is not believed: everyone shares the peer's address
