"""Cache-hit throughput: requests per second and p50 / p99 latency at 32 concurrent connections.

Three servers, each a real uvicorn process started here, measured in the same run by `wrk`
(Debian package `wrk`) with the same request, in `--rounds` that take them in turn (the median
round is reported), on two server stacks (uvloop + httptools, what `serve` runs; asyncio + h11,
the pure-Python one):
  - bare: a raw ASGI app that returns a fixed JSON body (the ceiling of one Python worker here),
  - gateway, in-process cache,
  - gateway, Redis cache (a redis-server started on a free port).
The gateway serves the miniature model; the request is deterministic (temperature 0), so after
the first request every answer is a cache hit and no model work is timed.

`--stats-cost` adds, on the judged stack, the two gateways again with the dashboard's counters
off (`stats.enabled: false`), in the same rounds: what the counters cost a cache hit.

`--log-cost` adds, on the judged stack, the Redis gateway again without its access log line
(`server.access_log: false`): what the line costs a cache hit.

`--floor` adds, on the judged stack, a floor: what a Redis hit costs with nothing but its own
parts (the body parsed and the key made once per distinct body, the Redis read, the decision
decoded once per distinct entry, the response built), with and without the access log line; no
API key, rate limit, request id, body limit, disconnect watch, metrics or FastAPI. It is not a
gateway anyone should run: it shows how close to the bare app a hit can come at all.

    python bench/cache.py [--seconds 10] [--connections 32] [--rounds 3] [--floor] [--stats-cost]
                          [--log-cost]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from soak import free_port, miniature_config

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


FLOOR_APP = """
import logging, os, time
from functools import lru_cache
from pathlib import Path

from gateway.api.app import create_app
from gateway.api.schemas import ChatCompletionBody
from gateway.api.wire import Answers
from gateway.config import load_settings
from gateway.logs import configure_logging
from gateway.pipeline import Completion, CompletionInput

configure_logging(level=logging.INFO)
gateway_app = create_app(load_settings(Path(os.environ["FLOOR_CONFIG"])), watch_policies=False)
access = logging.getLogger("gateway.access")
log_lines = os.environ["FLOOR_LOG"] == "1"
parsed = {}
decode = lru_cache(maxsize=256)(Completion.from_json)
answers = Answers()

async def app(scope, receive, send):
    if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
        await gateway_app(scope, receive, send)  # the lifespan and /health/ready
        return
    started = time.perf_counter()
    state = gateway_app.state.gateway
    raw_body = (await receive())["body"]
    if raw_body not in parsed:
        body = ChatCompletionBody.model_validate_json(raw_body)
        chat = body.to_request(default_max_tokens=256, max_tokens_cap=2048)
        inp = CompletionInput(policy=body.model, request=chat)
        parsed[raw_body] = (state.pipeline.key(state.pipeline.policy(body.model), inp), inp)
    key, inp = parsed[raw_body]
    raw = await state.cache.get(key)
    completion = decode(raw) if raw is not None else await state.pipeline.complete(inp)
    out, headers = answers.answer(completion)
    headers = headers + [
        (b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})
    if log_lines:
        milliseconds = round((time.perf_counter() - started) * 1000, 1)
        access.info("request", extra={"method": "POST", "path": scope["path"], "status": 200,
                                      "duration_ms": milliseconds, "policy": inp.policy})
"""

BARE = "bare ASGI app"
IN_PROCESS = "gateway, in-process cache"
REDIS = "gateway, Redis"
FLOOR = "floor, Redis"
FLOOR_NO_LOG = "floor, Redis, no log line"
NO_STATS = ", no stats"
NO_ACCESS_LOG = ", no access log"
STACKS = {"uvloop + httptools": ("uvloop", "httptools"), "asyncio + h11": ("asyncio", "h11")}
"""uvicorn's event loop and HTTP parser: the first is what `serve` runs (and is judged), the
second the pure-Python stack, where the server itself costs several times more per request."""
JUDGED = next(iter(STACKS))


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


def start_uvicorn(
    running: contextlib.ExitStack,
    app: str,
    work: Path,
    loop: str,
    http: str,
    env: dict[str, str],
    ready_path: str = "/",
) -> str:
    """Serves `app` (a module of `work`) with uvicorn until `running` closes; its chat URL."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--app-dir", str(work)]
    command += ["--log-level", "warning", "--no-access-log", "--loop", loop, "--http", http]
    running.enter_context(serve(command, f"http://127.0.0.1:{port}{ready_path}", env))
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median requests per second (the upper one of an even count)."""
    return sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]


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
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per server, in turn")
    parser.add_argument("--floor", action="store_true", help="add the floor rows (see above)")
    parser.add_argument(
        "--stats-cost", action="store_true", help="add the gateways without stats (see above)"
    )
    parser.add_argument(
        "--log-cost", action="store_true", help="add the gateway without access log (see above)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = work / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        (work / "bare_app.py").write_text(BARE_APP)
        (work / "floor_app.py").write_text(FLOOR_APP)
        config = miniature_config(work, env)

        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for stack, (loop, http) in STACKS.items():
            # Every server of a stack runs at once (idle while another is measured), and the
            # rounds go through them in turn: a burst of noise on the shared machine then costs
            # one round of each, not one server's only figure.
            with contextlib.ExitStack() as running:
                urls = {BARE: start_uvicorn(running, "bare_app:app", work, loop, http, env)}
                off: dict[str, str] = {}  # the settings a row turns off
                gateways = [(IN_PROCESS, False, off), (REDIS, True, off)]
                if args.stats_cost and stack == JUDGED:
                    no_stats = {"GATEWAY_STATS__ENABLED": "false"}
                    gateways += [
                        (IN_PROCESS + NO_STATS, False, no_stats),
                        (REDIS + NO_STATS, True, no_stats),
                    ]
                if args.log_cost and stack == JUDGED:
                    gateways += [
                        (REDIS + NO_ACCESS_LOG, True, {"GATEWAY_SERVER__ACCESS_LOG": "false"})
                    ]
                for label, with_redis, settings in gateways:
                    run_env = {**env, "GATEWAY_SERVER__LOOP": loop, "GATEWAY_SERVER__HTTP": http}
                    run_env.update(settings)
                    if with_redis:
                        run_env["GATEWAY_CACHE__URL"] = running.enter_context(redis(work))
                    port = free_port()
                    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
                    command += ["--port", str(port)]
                    running.enter_context(
                        serve(command, f"http://127.0.0.1:{port}/health/ready", run_env)
                    )
                    urls[label] = f"http://127.0.0.1:{port}/v1/chat/completions"
                if args.floor and stack == JUDGED:
                    for label, log_lines in ((FLOOR, "1"), (FLOOR_NO_LOG, "0")):
                        run_env = {**env, "FLOOR_CONFIG": str(config), "FLOOR_LOG": log_lines}
                        run_env["GATEWAY_CACHE__URL"] = running.enter_context(redis(work))
                        urls[label] = start_uvicorn(
                            running, "floor_app:app", work, loop, http, run_env, "/health/ready"
                        )
                for label, url in urls.items():
                    if label != BARE:
                        first = httpx.post(url, json=BODY, timeout=60)
                        assert first.status_code == 200, first.text
                        hit = httpx.post(url, json=BODY, timeout=60)
                        assert hit.headers["x-gateway-cache"] == "hit", hit.headers
                for _ in range(args.rounds):
                    for label, url in urls.items():
                        measured = run_wrk(url, args.seconds, args.connections, script)
                        runs.setdefault((stack, label), []).append(measured)
    results = {where: median_run(measured) for where, measured in runs.items()}

    print(
        f"cache-hit throughput, {args.connections} connections, {args.rounds} rounds of "
        f"{args.seconds} s per server (the median round by req/s), "
        f"wrk -t2 (load generator on the same {os.cpu_count()}-core machine); "
        "'of bare': share of the bare app's req/s on the same server stack"
    )
    header = f"{'server':30} {'stack (loop + http)':20} {'req/s':>9} {'of bare':>8}"
    print(f"{header} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for (stack, label), r in results.items():
        share = r["rps"] / results[(stack, BARE)]["rps"]
        print(
            f"{label:30} {stack:20} {r['rps']:>9.0f} {share:>8.0%} {r['p50']:>8.2f} "
            f"{r['p99']:>8.2f} {r['non2xx']:>8.0f}"
        )
    judged = JUDGED  # what `serve` runs by default
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


if __name__ == "__main__":
    main()
