"""Ordinary requests while the gateway is attacked, against the same requests with no attack.

One real `serve` process (miniature model, API keys from a file, default server limits). The
ordinary traffic is `--clients` sequential clients, each alternating `GET /health/live` and a
cached chat request (a decision-cache hit: no model work is timed), for `--seconds` per phase:
  - none: no attack,
  - oversized header: one attacker after another sends a 150 MiB header (refused at 64 KiB),
  - slow clients: 300 half-sent request heads and 6 clients sending a byte a second, each
    reopened when the gateway closes it (header timeout),
  - large prompts: 2 attackers sending 900 kB chat messages (rendered and tokenized off the
    model thread, then refused as longer than the model's context),
  - none again, last: how much the machine itself drifted during the run.
Then the side channel: `--probes` requests by a key that may not use the policy, alternating a
body that another key sent recently and an unseen body of the same size; both are answered 403,
and their times should not tell the two apart.

    python bench/abuse.py [--seconds 5] [--clients 4] [--probes 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from soak import build_model, gateway, tiny_model

MODEL_DIR = Path(tempfile.gettempdir()) / "certainty-gateway-bench-model"
KEY = "sk-abuse-owner-0123456789"
STRANGER = "sk-abuse-stranger-0123456789"  # may not use the `granite` policy: 403
CHAT = {
    "model": "granite",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 8,
    "temperature": 0,
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ordinary(url: str, seconds: float, clients: int) -> list[float]:
    """Latencies (ms) of the ordinary requests of `clients` sequential clients."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {KEY}"}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            turn = 0
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                if turn % 2:
                    response = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
                else:
                    response = await http.get("/health/live")
                latencies.append((time.perf_counter() - began) * 1000)
                response.raise_for_status()
                turn += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


class Attack:
    """Attacker threads that run until `stop`."""

    def __init__(self, target: Callable[[threading.Event], None], count: int = 1) -> None:
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=target, args=(self.stop,), daemon=True) for _ in range(count)
        ]

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        for thread in self.threads:
            thread.start()
        try:
            yield
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(timeout=30)


def oversized_header(port: int) -> Callable[[threading.Event], None]:
    chunk = b"a" * (1 << 20)

    def attack(stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nx-big: ")
                for _ in range(150):
                    if stop.is_set():
                        break
                    s.sendall(chunk)

    return attack


def slow_clients(port: int, half_sent: int = 300, tricklers: int = 6) -> Attack:
    head = b"GET /health/live HTTP/1.1\r\nHost: x\r\nx-slow: "

    def half(stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(head)
                s.settimeout(0.5)
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        if not s.recv(4096):  # closed by the gateway: open another
                            break

    def trickle(stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.settimeout(1.0)
                for byte in head * 1000:
                    if stop.is_set():
                        break
                    s.send(bytes([byte]))
                    try:
                        s.recv(4096)  # answered (408) or closed: open another
                    except TimeoutError:
                        continue
                    break

    attack = Attack(half, half_sent)
    attack.threads += Attack(trickle, tricklers).threads
    return attack


def large_prompts(url: str) -> Callable[[threading.Event], None]:
    body = {**CHAT, "messages": [{"role": "user", "content": "word " * 180_000}]}

    def attack(stop: threading.Event) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while not stop.is_set():
                http.post(
                    "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
                )

    return attack


def side_channel(url: str, probes: int) -> tuple[list[float], list[float]]:
    """Times (ms) of a stranger's 403 for a remembered body and for an unseen one."""
    remembered = json.dumps({**CHAT, "user": "x" * 12_000}).encode()
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/v1/chat/completions", content=remembered, headers=headers).is_success
        stranger = {"Authorization": f"Bearer {STRANGER}", "content-type": "application/json"}
        seen: list[float] = []
        unseen: list[float] = []
        for probe in range(probes):
            fresh = json.dumps({**CHAT, "user": f"{probe:05d}" + "x" * 11_995}).encode()
            for body, into in ((remembered, seen), (fresh, unseen)):
                began = time.perf_counter()
                response = http.post("/v1/chat/completions", content=body, headers=stranger)
                into.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 403, response.text
    return seen, unseen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    args = parser.parse_args()
    model = build_model(args.model_dir)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        policies = work / "policies"
        policies.mkdir()
        for name in ("granite", "refuse"):
            (policies / f"{name}.yaml").write_text(f"name: {name}\nreturn_at: 0.0\n")
        keys = work / "keys.txt"
        keys.write_text(f"{KEY} owner *\n{STRANGER} stranger refuse\n")
        config: dict[str, Any] = {
            "model": tiny_model(model),
            "policies_dir": str(policies),
            "auth": {"api_keys_file": str(keys)},
            "server": {"log_format": "text"},
        }
        with gateway(config, work, "abuse") as (url, _pid):
            port = int(url.rsplit(":", 1)[1])
            httpx.post(
                url + "/v1/chat/completions",
                json=CHAT,
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=120,
            ).raise_for_status()  # from now on, the chat request is a cache hit
            phases: list[tuple[str, Attack | None]] = [
                ("none", None),
                ("oversized header (150 MiB)", Attack(oversized_header(port))),
                ("slow clients (300 half-sent, 6 trickling)", slow_clients(port)),
                ("large prompts (900 kB, 2 attackers)", Attack(large_prompts(url), 2)),
                ("none, again (the machine's drift)", None),
            ]
            rows = []
            for name, attack in phases:
                with attack.running() if attack else contextlib.nullcontext():
                    if attack:
                        time.sleep(1.0)  # the attack is under way
                    latencies = asyncio.run(ordinary(url, args.seconds, args.clients))
                rows.append((name, latencies))
            seen, unseen = side_channel(url, args.probes)
    print("\nThe machine may be shared with other work: compare rows of this run only.")
    print(f"Ordinary requests: {args.clients} clients alternating /health/live and a cached chat")
    print(f"request, {args.seconds:g} s per phase.\n")
    base = percentile(rows[0][1], 0.99)
    header = f"{'attack':<44} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    header += f" {'p99/none':>9}"
    print(header)
    print("-" * len(header))
    for name, latencies in rows:
        p99 = percentile(latencies, 0.99)
        print(
            f"{name:<44} {len(latencies):>8} {percentile(latencies, 0.5):>8.1f} {p99:>8.1f} "
            f"{max(latencies):>8.1f} {p99 / base:>8.2f}x"
        )
    print(f"\nSide channel: a stranger's 403 for a 12 KB body, {args.probes} probes each")
    print(f"{'body':<40} {'min ms':>8} {'median ms':>10}")
    for name, times in (("sent recently by another key", seen), ("never sent", unseen)):
        print(f"{name:<40} {min(times):>8.2f} {statistics.median(times):>10.2f}")


if __name__ == "__main__":
    main()
