"""What the calibration audit costs a client: p50 / p95 latency with the audit off and on.

Three `certainty-gateway serve` processes on the miniature model, one policy each that always
returns (so every answer is eligible), measured in the same run, request by request in turn:

  audit off          no `audit` field;
  judge hangs        `audit: {sample: 1.0}` to a judge that accepts the connection and never
                     answers (each judgement ends at `stats.audit_timeout_s`, 2 s here);
  judge fails        `audit: {sample: 1.0}` to a judge at a closed port (`stats.audit_pause_s`
                     1 s, so it keeps trying).

Requests are distinct and deterministic (each a cache miss), one at a time, so the latency is the
pipeline's. The audit runs on its own tasks: the columns should agree within the noise.

    python bench/audit.py [--requests 200] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from soak import SilentUpstream, build_model, free_port, gateway, tiny_model


def config(model: Path, work: Path, name: str, judge_port: int | None) -> dict[str, Any]:
    policies = work / name
    policies.mkdir()
    policy = "name: granite\nreturn_at: 0.0\n"
    if judge_port is not None:
        policy += "audit: {sample: 1.0, judge: judge}\n"
    (policies / "granite.yaml").write_text(policy)
    judge = {
        "model_name": "judge",
        "litellm_params": {
            "model": "openai/judge",
            "api_base": f"http://127.0.0.1:{judge_port or free_port()}/v1",
            "api_key": "bench",
        },
    }
    return {
        "model": tiny_model(model),
        "policies_dir": str(policies),
        "escalation": {"model_list": [judge], "timeout_s": 2.0, "num_retries": 0},
        "stats": {"audit_timeout_s": 2.0, "audit_pause_s": 1.0},
        "server": {"log_format": "text"},
    }


def audited(metrics: str) -> str:
    """`gateway_audit_verdicts_total` by verdict, as `failed 3, skipped 197`."""
    counts = []
    for line in metrics.splitlines():
        if line.startswith("gateway_audit_verdicts_total{"):
            verdict = line.split('verdict="')[1].split('"')[0]
            counts.append(f"{verdict} {float(line.rsplit(' ', 1)[1]):.0f}")
    return ", ".join(sorted(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    parser.add_argument(
        "--model-dir", type=Path, default=cache / "certainty-gateway" / "bench" / "tiny"
    )
    args = parser.parse_args()
    model = build_model(args.model_dir)
    with (
        tempfile.TemporaryDirectory() as tmp,
        SilentUpstream() as hanging,
        contextlib.ExitStack() as running,
    ):
        work = Path(tmp)
        servers = {
            "audit off": config(model, work, "off", None),
            "judge hangs": config(model, work, "hangs", hanging.port),
            "judge fails": config(model, work, "fails", free_port()),
        }
        urls = {
            name: running.enter_context(gateway(body, work, name.replace(" ", "-")))[0]
            for name, body in servers.items()
        }
        times: dict[str, list[float]] = {name: [] for name in urls}
        with httpx.Client(timeout=60) as client:
            for i in range(args.requests):
                for name, url in urls.items():
                    body = {
                        "model": "granite",
                        "messages": [{"role": "user", "content": f"Question {i}: why?"}],
                        "max_tokens": 4,
                        "temperature": 0,
                    }
                    begun = time.perf_counter()
                    response = client.post(url + "/v1/chat/completions", json=body)
                    times[name].append(time.perf_counter() - begun)
                    assert response.status_code == 200, response.text
                    assert response.headers["x-gateway-cache"] == "miss"
            verdicts = {
                name: audited(client.get(url + "/metrics").text) for name, url in urls.items()
            }
    print(
        f"client latency with the calibration audit, {args.requests} cache-miss requests per "
        f"server, one at a time, servers in turn ({os.cpu_count()}-core machine)"
    )
    print(f"{'server':14} {'p50 ms':>8} {'p95 ms':>8}  audit outcomes")
    for name, seconds in times.items():
        ordered = sorted(seconds)
        p95 = ordered[int(0.95 * (len(ordered) - 1))]
        print(
            f"{name:14} {statistics.median(seconds) * 1000:>8.1f} {p95 * 1000:>8.1f}  "
            f"{verdicts[name] or '-'}"
        )


if __name__ == "__main__":
    main()
