"""Cache-hit throughput: requests per second and p50 / p99 latency at 32 concurrent connections.

Three servers, each a real uvicorn process started here, measured in the same run by `wrk`
(Debian package `wrk`) with the same request, on two server stacks (uvloop + httptools, what
`serve` runs; asyncio + h11, the pure-Python one):
  - bare: a raw ASGI app that returns a fixed JSON body (the ceiling of one Python worker here),
  - gateway, in-process cache,
  - gateway, Redis cache (a redis-server started on a free port).
The gateway serves the miniature model; the request is deterministic (temperature 0), so after
the first request every answer is a cache hit and no model work is timed.

    python bench/cache.py [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BODY = {
    "model": "granite",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 16,
    "temperature": 0,
}
BARE_APP = """
import json
BODY = json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}
]}).encode()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
"""


BARE = "bare ASGI app"
IN_PROCESS = "gateway, in-process cache"
REDIS = "gateway, Redis"
STACKS = {"uvloop + httptools": ("uvloop", "httptools"), "asyncio + h11": ("asyncio", "h11")}
"""uvicorn's event loop and HTTP parser: the first is what `serve` runs (and is judged), the
second the pure-Python stack, where the server itself costs several times more per request."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {seconds} s")


@contextmanager
def serve(command: list[str], ready_url: str, env: dict[str, str]) -> Iterator[None]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(ready_url, process)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def redis(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def run_wrk(url: str, seconds: int, connections: int, script: Path) -> dict[str, float]:
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        assert match, output
        return float(match.group(1)) * units[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    assert rps, output
    return {
        "rps": float(rps.group(1)),
        "p50": latency("50%"),
        "p99": latency("99%"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    results: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = work / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        (work / "bare_app.py").write_text(BARE_APP)
        subprocess.run(
            [sys.executable, "-m", "gateway", "make-tiny-model", str(work / "tiny")],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        (work / "policies").mkdir()
        (work / "policies" / "granite.yaml").write_text("name: granite\nreturn_at: 0.0\n")
        config = work / "gateway.yaml"
        config.write_text(
            json.dumps(
                {
                    "model": {
                        "base": str(work / "tiny" / "base"),
                        "adapter": str(work / "tiny" / "adapter"),
                        "adapter_subfolder": None,
                        "device": "cpu",
                        "dtype": "float32",
                    },
                    "policies_dir": str(work / "policies"),
                }
            )
        )

        for stack, (loop, http) in STACKS.items():
            port = free_port()
            bare = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port)]
            bare += ["--log-level", "warning", "--no-access-log", "--app-dir", str(work)]
            bare += ["--loop", loop, "--http", http]
            with serve(bare, f"http://127.0.0.1:{port}/", env):
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                results[(stack, BARE)] = run_wrk(url, args.seconds, args.connections, script)

            for label, cache_url in ((IN_PROCESS, None), (REDIS, "")):
                port = free_port()
                command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
                command += ["--port", str(port)]
                with contextlib_redis(cache_url, work) as resolved:
                    run_env = {**env, "GATEWAY_SERVER__LOOP": loop, "GATEWAY_SERVER__HTTP": http}
                    if resolved:
                        run_env["GATEWAY_CACHE__URL"] = resolved
                    with serve(command, f"http://127.0.0.1:{port}/health/ready", run_env):
                        url = f"http://127.0.0.1:{port}/v1/chat/completions"
                        first = httpx.post(url, json=BODY, timeout=60)
                        assert first.status_code == 200, first.text
                        hit = httpx.post(url, json=BODY, timeout=60)
                        assert hit.headers["x-gateway-cache"] == "hit", hit.headers
                        results[(stack, label)] = run_wrk(
                            url, args.seconds, args.connections, script
                        )

    print(
        f"cache-hit throughput, {args.connections} connections, {args.seconds} s each, "
        f"wrk -t2 (load generator on the same {os.cpu_count()}-core machine); "
        "'of bare': share of the bare app's req/s on the same server stack"
    )
    header = f"{'server':28} {'stack (loop + http)':20} {'req/s':>9} {'of bare':>8}"
    print(f"{header} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for (stack, label), r in results.items():
        share = r["rps"] / results[(stack, BARE)]["rps"]
        print(
            f"{label:28} {stack:20} {r['rps']:>9.0f} {share:>8.0%} {r['p50']:>8.2f} "
            f"{r['p99']:>8.2f} {r['non2xx']:>8.0f}"
        )
    judged = next(iter(STACKS))  # what `serve` runs by default
    redis_result = results[(judged, REDIS)]
    share = redis_result["rps"] / results[(judged, BARE)]["rps"]
    print(
        f"target ({judged}, what serve runs): Redis hit throughput >= 40% of bare: {share:.0%} "
        f"{'PASS' if share >= 0.4 else 'FAIL'}"
    )
    print(
        f"target ({judged}, what serve runs): Redis hit p99 <= 20 ms: "
        f"{redis_result['p99']:.2f} ms {'PASS' if redis_result['p99'] <= 20 else 'FAIL'}"
    )
    for stack in list(STACKS)[1:]:
        plain = results[(stack, REDIS)]["rps"] / results[(stack, BARE)]["rps"]
        print(f"  informational ({stack}): Redis hit throughput {plain:.0%} of bare")


@contextmanager
def contextlib_redis(cache_url: str | None, work: Path) -> Iterator[str | None]:
    """A Redis server when `cache_url` is "" (start one), else nothing."""
    if cache_url is None:
        yield None
        return
    with redis(work) as url:
        yield url


if __name__ == "__main__":
    main()
