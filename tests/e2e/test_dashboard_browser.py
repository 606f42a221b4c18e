"""The dashboard in a real browser: Debian's chromium, headless, against a real `serve` process
after requests of each action; the numbers on the page are the numbers of `/v1/gateway/stats`."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.harness import Gateway, serving, tiny_model
from tests.e2e.upstream import Upstream

POLICIES = {
    "granite": {"return_at": 0.0},
    "refuse": {"return_at": 1.0, "withhold_message": "Not sure enough."},
    "cascade": {"return_at": 1.0, "escalate_at": 0.0, "escalate_to": "large"},
}
QUESTIONS = ["What is the capital of Australia?", "Why is the sky blue?", "Who wrote Hamlet?"]


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (apt-get install chromium; .ci/run does)"
    return binary


def browse(url: str, folder: Path, *extra: str) -> str:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={folder / 'profile'}",
        "--virtual-time-budget=4000",
        *extra,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


@pytest.fixture(scope="module")
def gateway(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("dashboard")
    upstream = Upstream()
    upstream.start()
    policies = folder / "policies"
    policies.mkdir()
    for name, body in POLICIES.items():
        (policies / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **body}))
    params = {"model": "openai/ok", "api_base": upstream.base_url, "api_key": "test"}
    config = {
        "model": tiny_model(tiny_model_dir),
        "policies_dir": str(policies),
        "escalation": {"model_list": [{"model_name": "large", "litellm_params": params}]},
        "server": {"log_format": "text"},
    }
    try:
        with serving(config, folder) as server:
            yield server
    finally:
        upstream.stop()


def page_stats(dom: str) -> dict[str, str]:
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'data-stat="([^"]+)"[^>]*>([^<]*)<', dom)
    }


def test_the_page_shows_the_numbers_of_the_stats_json(gateway: Gateway, tmp_path: Path) -> None:
    client = gateway.client()
    for policy in POLICIES:
        for question in QUESTIONS:
            client.chat.completions.create(
                model=policy,
                messages=[{"role": "user", "content": question}],
                max_tokens=8,
                temperature=0,
            )
    client.chat.completions.create(  # one cache hit
        model="granite",
        messages=[{"role": "user", "content": QUESTIONS[0]}],
        max_tokens=8,
        temperature=0,
    )
    stats = httpx.get(gateway.url + "/v1/gateway/stats?window=5m").json()
    dom = browse(gateway.url + "/dashboard", tmp_path, "--dump-dom")
    shown = page_stats(dom)
    by_name = {p["policy"]: p for p in stats["policies"]}
    assert by_name["granite"]["actions"]["return"] == 4
    assert by_name["refuse"]["actions"]["withhold"] == 3
    assert by_name["cascade"]["actions"]["escalate"] == 3
    for name, policy in by_name.items():
        assert shown[f"{name}.requests"] == str(policy["requests"])
        for action, count in policy["actions"].items():
            assert shown[f"{name}.{action}"].startswith(f"{count} · ")
        rate = policy["cache"]["hit_rate"]
        assert shown[f"{name}.cache_hit_rate"] == f"{100 * rate:.1f} %"
        for stage, quantiles in policy["latency_ms"].items():
            # one decimal on the page (JavaScript rounds a tie up, Python to even)
            assert abs(float(shown[f"{name}.latency.{stage}.p50"]) - quantiles["p50"]) <= 0.051
    assert "this replica only" in dom
    assert 'data-threshold="return_at"' in dom  # drawn on the histogram
    for question in QUESTIONS:
        assert question not in dom

    shot = tmp_path / "dashboard.png"
    browse(
        gateway.url + "/dashboard",
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1400,1800",
        "--hide-scrollbars",
    )
    assert shot.stat().st_size > 10_000
    log = gateway.log.read_text()
    for question in QUESTIONS:
        assert question not in log
