"""SIGTERM under load, on a real `certainty-gateway serve` process: readiness fails at once, the
requests in flight (and one that arrives meanwhile) all finish with 200, no connection is reset,
the process exits 0, and its JSON log lines hold neither the API key nor the prompt."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import serving, tiny_model
from tests.e2e.upstream import ANSWER, _completion
from tests.servers import LocalHTTPStub

KEY = "sk-test-shutdown-0123456789"
PROMPT = "Which river flows through the town of Zyxwvut?"  # must never reach the log
IN_FLIGHT = 6


class GatedUpstream(LocalHTTPStub):
    """An OpenAI-compatible upstream that holds every request until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self._lock = threading.Lock()

    def post(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self._lock:
            self.waiting += 1
        self.release.wait(timeout=60)
        self.send_json(handler, 200, _completion(str(body.get("model"))))


@pytest.fixture
def upstream() -> Iterator[GatedUpstream]:
    with GatedUpstream() as server:
        yield server


@pytest.fixture
def gateway(
    tiny_model_dir: Path, upstream: GatedUpstream, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "slowcase.yaml").write_text(
        "name: slowcase\nreturn_at: 1.0\nescalate_at: 0.0\nescalate_to: large\n"
    )
    config = {
        "model": tiny_model(tiny_model_dir),
        "policies_dir": str(policies),
        "auth": {"api_keys": [KEY]},
        "server": {"drain_s": 30},
        "escalation": {
            "timeout_s": 60,
            "num_retries": 0,
            "model_list": [
                {
                    "model_name": "large",
                    "litellm_params": {
                        "model": "openai/x",
                        "api_base": upstream.base_url,
                        "api_key": "upstream-secret-4242",
                    },
                }
            ],
        },
    }
    with serving(config, tmp_path) as server:
        yield server.process, server.url, server.log


def _ask(url: str, seed: int) -> httpx.Response:
    payload = {
        "model": "slowcase",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 4,
        "seed": seed,
    }
    with httpx.Client(timeout=60) as client:  # its own connection
        return client.post(
            url + "/v1/chat/completions",
            json=payload,
            headers={"Authorization": f"Bearer {KEY}"},
        )


def test_sigterm_drains_in_flight_requests_then_exits_zero(
    gateway: tuple[subprocess.Popen[bytes], str, Path], upstream: GatedUpstream
) -> None:
    process, url, log = gateway
    with ThreadPoolExecutor(IN_FLIGHT + 1) as pool:
        answers = [pool.submit(_ask, url, seed) for seed in range(IN_FLIGHT)]
        deadline = time.monotonic() + 60
        while upstream.waiting < IN_FLIGHT:  # every request is in flight, held upstream
            assert time.monotonic() < deadline, "the requests did not reach the upstream"
            time.sleep(0.05)

        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        details = {"Authorization": f"Bearer {KEY}"}  # without a key: only the status
        while (ready := httpx.get(url + "/health/ready", headers=details)).status_code != 503:
            assert time.monotonic() < deadline, "readiness did not turn 503"
            time.sleep(0.02)
        assert ready.json()["draining"] is True
        assert httpx.get(url + "/health/live", timeout=5).status_code == 200
        late = pool.submit(_ask, url, IN_FLIGHT)  # arrives while draining: still served
        time.sleep(0.5)
        assert process.poll() is None  # waiting for the requests, not gone
        upstream.release.set()
        responses = [future.result() for future in [*answers, late]]

    assert [r.status_code for r in responses] == [200] * (IN_FLIGHT + 1)
    for response in responses:
        body = response.json()
        assert body["choices"][0]["message"]["content"] == ANSWER
        assert body["certainty"]["action"] == "escalate"
        assert response.headers["connection"] == "close"
        assert response.headers["x-request-id"]
    assert process.wait(timeout=30) == 0

    text = log.read_text()
    assert "draining" in text
    for secret in (KEY, "upstream-secret-4242", PROMPT):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    served = [line for line in lines if line.get("path") == "/v1/chat/completions"]
    assert [line["status"] for line in served] == [200] * (IN_FLIGHT + 1)
    assert all(line["request_id"] and line["key_id"].startswith("key-") for line in served)
