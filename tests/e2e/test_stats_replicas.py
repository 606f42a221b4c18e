"""Two gateway processes sharing one Redis: the stats of either are the sum of both; with Redis
stopped, each shows its own and says "this replica only"."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import yaml

from tests.e2e.harness import Gateway, serving, tiny_model
from tests.servers import RedisServer
from tests.waiting import wait_until


def requests_of(gateway: Gateway) -> tuple[int, bool, str]:
    doc = httpx.get(gateway.url + "/v1/gateway/stats?window=5m", timeout=10).json()
    return sum(p["requests"] for p in doc["policies"]), doc["aggregated"], doc["scope"]


def ask(gateway: Gateway, question: str) -> None:
    gateway.client().chat.completions.create(
        model="granite",
        messages=[{"role": "user", "content": question}],
        max_tokens=4,
        temperature=0,
    )


def test_stats_add_up_over_replicas_and_fall_back_to_one(
    tiny_model_dir: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "granite.yaml").write_text(yaml.safe_dump({"name": "granite", "return_at": 0.0}))
    config = {
        "model": tiny_model(tiny_model_dir),
        "policies_dir": str(policies),
        "cache": {"url": redis_server.url},
        "stats": {"flush_s": 0.2},
        "server": {"log_format": "text"},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with contextlib.ExitStack() as stack:
        one = stack.enter_context(serving(config, tmp_path / "a"))
        two = stack.enter_context(serving(config, tmp_path / "b"))
        for i in range(3):
            ask(one, f"Question {i} for the first replica?")
        for i in range(2):
            ask(two, f"Question {i} for the second replica?")
        # `two` adds its counts within flush_s; `one` adds its own before it reads
        wait_until(lambda: requests_of(one)[0] == 5, timeout_s=10)
        assert requests_of(one) == (5, True, "all replicas")
        assert requests_of(two) == (5, True, "all replicas")

        redis_server.kill()
        ask(one, "Question 3 for the first replica?")  # still answered: Redis fails open
        assert requests_of(one) == (4, False, "this replica only")
        assert requests_of(two) == (2, False, "this replica only")
