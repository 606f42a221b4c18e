"""The README's quick start, run as a user would: `serve --demo`, then its `curl` command and its
OpenAI SDK snippet, copied from the README itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.demo import MODEL_NAME, demo_folder
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]


def readme_block(language: str, containing: str) -> str:
    """The README's first ```language block that contains `containing`."""
    readme = (REPO / "README.md").read_text()
    for block in re.findall(rf"```{language}\n(.*?)```", readme, flags=re.DOTALL):
        if containing in block:
            return str(block)
    raise AssertionError(f"no {language} block with {containing!r} in README.md")


@pytest.fixture(scope="module")
def demo(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`certainty-gateway serve --demo` on a free port, its miniature already built (the one the
    test session built: the demo builds the same one itself, in a minute or more)."""
    home = tmp_path_factory.mktemp("home")
    model = demo_folder(home / "demo") / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "built").write_text("")
    port = free_port()
    log = home / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["CERTAINTY_GATEWAY_HOME"] = str(home)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--demo", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the demo did not become ready:\n" + log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert log.read_text().count("DEMO MODE") == 1
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_readmes_curl_command_gets_an_answer_with_its_certainty(demo: int) -> None:
    command = readme_block("bash", "curl -s localhost:8000").replace("8000", str(demo))
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["object"] == "chat.completion"
    assert body["certainty"]["policy"] == "cascade"
    assert body["certainty"]["action"] in ("return", "escalate", "withhold")


def test_the_readmes_sdk_snippet_runs(demo: int) -> None:
    snippet = readme_block("python", "from openai import OpenAI").replace("8000", str(demo))
    done = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert "'action':" in done.stdout
    assert "'policy': 'guard'" in done.stdout


def test_the_demo_names_its_model_in_served_by(demo: int) -> None:
    answer = httpx.post(
        f"http://127.0.0.1:{demo}/v1/chat/completions",
        json={"model": "granite", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=60,
    ).json()
    assert answer["certainty"]["served_by"] == MODEL_NAME
