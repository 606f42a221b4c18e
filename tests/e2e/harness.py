"""A real `certainty-gateway serve` process for end-to-end tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from tests.servers import free_port


class Gateway:
    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.process = process
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", **options)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def tiny_model(tiny_model_dir: Path) -> dict[str, Any]:
    """The `model` section for the miniature model the test session built."""
    return {
        "base": str(tiny_model_dir / "base"),
        "adapter": str(tiny_model_dir / "adapter"),
        "adapter_subfolder": None,
        "device": "cpu",
        "dtype": "float32",
    }


@contextmanager
def serving(config: dict[str, Any], folder: Path) -> Iterator[Gateway]:
    """`serve --config` with `config` (written to `folder`), once ready; stopped by SIGTERM."""
    config_file = folder / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config_file)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Gateway(port, process, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(server.url + "/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        process.kill()
        raise AssertionError("the gateway did not become ready:\n" + log.read_text())
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
