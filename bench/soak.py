"""Soak on the failure paths: memory growth of a gateway process over 1,000 requests.

Two scenarios, each a real `certainty-gateway serve` process on the miniature model, with an API
key (so authentication and the rate limiter are on the path too):

  escalation timeout  a policy that always escalates, to a local upstream that accepts the
                      connection and never answers; `escalation.timeout_s` 0.2 s, no retries;
                      `on_escalation_error: return_local`. Sampled requests: never cached.
  redis down          `cache.url` at a closed port: every cache look-up and store fails (then the
                      circuit breaker skips Redis and probes it), and so does the shared rate
                      limiter (`requests_per_minute` set high enough never to refuse).
                      Deterministic, distinct requests: each one a cacheable miss.

Each scenario: a warm-up (100 requests), the gateway's RSS, then 1,000 requests (16 at a time),
the RSS again. Target: growth <= 50 MB. RSS is the gateway process's `VmRSS` (Linux /proc).

    python bench/soak.py [--requests 1000] [--warmup 100] [--concurrency 16] [--model-dir DIR]

Result (2 shared CPU cores, the miniature model; about a minute once the model is built):

    scenario            requests  non-200  req/s  failure path taken                   RSS after warm-up  RSS after  growth   result
    escalation timeout  1000      0        47.8   1000 timed out, answered locally     624.3 MB           626.2 MB   +2.0 MB  PASS
    redis down          1000      0        105.3  cache degraded, rate limit degraded  613.6 MB           619.0 MB   +5.3 MB  PASS
"""  # noqa: E501

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers
from tests.e2e.harness import tiny_model
from tests.servers import free_port

KEY = "sk-soak-0123456789abcdef"
TARGET_MB = 50.0


class SilentUpstream:
    """Accepts connections and reads forever, never answering; closes when the client does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()

    def __enter__(self) -> SilentUpstream:
        self._thread.start()
        start = asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
        asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@contextmanager
def gateway(config: dict[str, Any], work: Path, name: str) -> Iterator[tuple[str, int]]:
    config_file = work / f"{name}.yaml"
    config_file.write_text(json.dumps(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config_file)]
    log = (work / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise SystemExit(
                    f"{name}: the gateway exited:\n{(work / f'{name}.log').read_text()}"
                )
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: the gateway was not ready in time")
            try:
                if httpx.get(url + "/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


@dataclass
class Round:
    statuses: Counter[int]
    escalation_errors: int
    seconds: float


async def send(url: str, bodies: list[dict[str, Any]], concurrency: int) -> Round:
    statuses: Counter[int] = Counter()
    escalation_errors = 0
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {KEY}"}
    begun = time.perf_counter()
    async with httpx.AsyncClient(
        timeout=60, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def one(body: dict[str, Any]) -> None:
            nonlocal escalation_errors
            async with limit:
                response = await client.post(
                    url + "/v1/chat/completions", json=body, headers=headers
                )
            statuses[response.status_code] += 1
            if response.status_code == 200 and "escalation_error" in response.json()["certainty"]:
                escalation_errors += 1

        await asyncio.gather(*(one(body) for body in bodies))
    return Round(statuses, escalation_errors, time.perf_counter() - begun)


def bodies(policy: str, count: int, offset: int, *, cacheable: bool) -> list[dict[str, Any]]:
    out = []
    for i in range(offset, offset + count):
        body: dict[str, Any] = {
            "model": policy,
            "messages": [{"role": "user", "content": f"Question number {i}: why is the sky blue?"}],
            "max_tokens": 4,
        }
        body["temperature"] = 0 if cacheable else 1.0
        out.append(body)
    return out


def build_model(model_dir: Path) -> Path:
    if (model_dir / "base").is_dir() and (model_dir / "adapter").is_dir():
        return model_dir
    print(f"building the miniature model into {model_dir} (once)", flush=True)
    subprocess.run(
        [sys.executable, "-m", "gateway", "make-tiny-model", str(model_dir), "--teach-format"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return model_dir


def miniature_config(work: Path, env: dict[str, str] | None = None) -> Path:
    """Under `work`: the miniature model (built once, `env` for the build), one always-returning
    policy (`granite`) and a config serving them; the config's path."""
    if not (work / "tiny" / "adapter").is_dir():
        subprocess.run(
            [sys.executable, "-m", "gateway", "make-tiny-model", str(work / "tiny")],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    (work / "policies").mkdir(exist_ok=True)
    (work / "policies" / "granite.yaml").write_text("name: granite\nreturn_at: 0.0\n")
    config = work / "gateway.yaml"
    body = {"model": tiny_model(work / "tiny"), "policies_dir": str(work / "policies")}
    config.write_text(json.dumps(body))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    parser.add_argument(
        "--model-dir", type=Path, default=cache / "certainty-gateway" / "bench" / "tiny"
    )
    args = parser.parse_args()
    model = build_model(args.model_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, SilentUpstream() as upstream:
        work = Path(tmp)
        policies = work / "policies"
        policies.mkdir()
        (policies / "granite.yaml").write_text("name: granite\nreturn_at: 0.0\n")
        (policies / "cascade.yaml").write_text(
            "name: cascade\nreturn_at: 1.0\nescalate_at: 0.0\nescalate_to: large\n"
            "on_escalation_error: return_local\n"
        )
        base: dict[str, Any] = {
            "model": tiny_model(model),
            "policies_dir": str(policies),
            "auth": {"api_keys": [KEY]},
            "escalation": {
                "timeout_s": 0.2,
                "num_retries": 0,
                "model_list": [
                    {
                        "model_name": "large",
                        "litellm_params": {
                            "model": "openai/large",
                            "api_base": f"http://127.0.0.1:{upstream.port}/v1",
                            "api_key": "upstream-key",
                        },
                    }
                ],
            },
        }
        scenarios = [
            ("escalation timeout", "cascade", False, base),
            (
                "redis down",
                "granite",
                True,
                {
                    **base,
                    "cache": {"url": f"redis://127.0.0.1:{free_port()}/0", "timeout_s": 0.05},
                    "limits": {"requests_per_minute": 1_000_000},
                },
            ),
        ]
        for name, policy, cacheable, config in scenarios:
            with gateway(config, work, name.replace(" ", "-")) as (url, pid):
                asyncio.run(send(url, bodies(policy, args.warmup, 0, cacheable=cacheable), 16))
                before = rss_mb(pid)
                measured = asyncio.run(
                    send(
                        url,
                        bodies(policy, args.requests, args.warmup, cacheable=cacheable),
                        args.concurrency,
                    )
                )
                after = rss_mb(pid)
                ready = httpx.get(url + "/health/ready").json()
            ok = measured.statuses[200]
            if cacheable:
                path = f"cache {ready['cache']['state']}, rate limit {ready['rate_limit']['state']}"
            else:
                path = f"{measured.escalation_errors} timed out, answered locally"
            rows.append(
                (
                    name,
                    str(args.requests),
                    str(args.requests - ok),
                    f"{args.requests / measured.seconds:.1f}",
                    path,
                    f"{before:.1f} MB",
                    f"{after:.1f} MB",
                    f"{after - before:+.1f} MB",
                    "PASS" if after - before <= TARGET_MB and ok == args.requests else "FAIL",
                )
            )

    load = os.getloadavg()[0]
    print()
    print("soak on the failure paths (bench/soak.py, issue 6)")
    machine = platform.processor() or platform.machine()
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M')}   machine: {machine}, {os.cpu_count()} CPUs   "
        f"1-min load average {load:.1f}"
    )
    print(
        f"warm-up {args.warmup} requests, then {args.requests} measured, {args.concurrency} at a "
        f"time; target: RSS growth <= {TARGET_MB:g} MB and every request 200"
    )
    print()
    header = (
        "scenario",
        "requests",
        "non-200",
        "req/s",
        "failure path taken",
        "RSS after warm-up",
        "RSS after",
        "growth",
        "result",
    )
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


if __name__ == "__main__":
    main()
