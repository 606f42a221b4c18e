"""Loading from the hub without a hub: one line at once, or the cached copy, never a minute of
retries."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants

from gateway.config import ModelSettings
from gateway.engine import hub
from gateway.errors import ModelLoadError
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
SUBFOLDER = "uncertainty/granite-4.0-micro/lora"


def put_in_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """`folder` as the Hugging Face cache holds a downloaded repository."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def silent_hub() -> Iterator[str]:
    """An address that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setattr(constants, "ENDPOINT", url)
    return url


def test_a_local_folder_is_left_to_the_loader(tmp_path: Path, no_hub: str) -> None:
    where = hub.locate(str(tmp_path), what="base model", setting="model.base", marker="config.json")
    assert where == "local"


def test_a_model_missing_offline_fails_with_the_id_and_both_ways_out(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as caught:
        hub.prepare(ModelSettings())
    message = caught.value.message
    assert "'ibm-granite/granite-4.0-micro'" in message
    assert "HF_HUB_OFFLINE" in message
    assert "`hf download ibm-granite/granite-4.0-micro`" in message
    assert "certainty-gateway serve --demo" in message
    assert "\n" not in message


def test_a_hub_that_refuses_connections_is_named_in_the_error(
    empty_cache: Path, no_hub: str
) -> None:
    with pytest.raises(ModelLoadError) as caught:
        hub.prepare(ModelSettings())
    assert f"the Hugging Face hub ({no_hub}) could not be reached" in caught.value.message


def test_a_hub_that_never_answers_is_given_up_after_the_time_limit(
    empty_cache: Path, silent_hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", silent_hub)
    with pytest.raises(ModelLoadError) as caught:
        hub.prepare(ModelSettings(), timeout_s=0.3)
    assert "could not be reached within 0.3 s" in caught.value.message


def test_the_adapter_missing_names_its_subfolder_in_the_download_command(
    empty_cache: Path, no_hub: str, tiny_model_dir: Path
) -> None:
    put_in_cache(empty_cache, "ibm-granite/granite-4.0-micro", tiny_model_dir / "base")
    with pytest.raises(ModelLoadError) as caught:
        hub.prepare(ModelSettings())
    message = caught.value.message
    assert "the adapter 'ibm-granite/granitelib-core-r1.0'" in message
    assert f'hf download ibm-granite/granitelib-core-r1.0 --include "{SUBFOLDER}/*"' in message


def test_a_cached_model_is_found_when_the_hub_is_away(
    empty_cache: Path, no_hub: str, tiny_model_dir: Path
) -> None:
    put_in_cache(empty_cache, "tiny/base", tiny_model_dir / "base")
    where = hub.locate("tiny/base", what="base model", setting="model.base", marker="config.json")
    assert where == "cache"


def test_a_hub_that_answers_is_left_to_the_loader(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any HTTP server will do: an error status is an answer (this one: 501 to HEAD).
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        where = hub.locate("org/name", what="base model", setting="model.base", marker="x")
    finally:
        server.shutdown()
        server.server_close()
    assert where == "hub"


def _gateway(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "HF_"))}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**base, **env},
    )


def test_score_loads_a_cached_model_when_the_hub_is_away(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    cache = tmp_path / "hf-cache"
    put_in_cache(cache, "tiny/base", tiny_model_dir / "base")
    put_in_cache(cache, "tiny/adapter", tiny_model_dir / "adapter")
    done = _gateway(
        "score",
        "--question",
        "What is 2 + 2?",
        "--answer",
        "4",
        "--base",
        "tiny/base",
        "--adapter",
        "tiny/adapter",
        "--adapter-subfolder",
        SUBFOLDER,
        env={"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
    )
    assert done.returncode == 0, done.stderr
    assert '"distribution"' in done.stdout


@pytest.mark.parametrize(
    "command",
    [["serve", "--port", "0"], ["eval", "--sample", "--out", "{tmp}/eval"]],
    ids=["serve", "eval-sample"],
)
def test_without_the_hub_the_real_model_fails_with_one_line_and_no_retries(
    tmp_path: Path, command: list[str]
) -> None:
    args = [part.format(tmp=tmp_path) for part in command]
    env = {
        "HF_HUB_CACHE": str(tmp_path / "empty"),
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
    }
    done = _gateway(*args, env=env)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("certainty-gateway")]
    assert len(errors) == 1
    assert "ibm-granite/granite-4.0-micro" in errors[0]
    assert "hf download" in errors[0]
    assert "--demo" in errors[0]
    assert "Traceback" not in done.stderr
    assert "retry" not in done.stderr.lower()


def test_a_model_loaded_from_the_cache_keeps_its_hub_id_as_its_name(
    empty_cache: Path, no_hub: str, tiny_model_dir: Path
) -> None:
    put_in_cache(empty_cache, "tiny/base", tiny_model_dir / "base")
    put_in_cache(empty_cache, "tiny/adapter", tiny_model_dir / "adapter")
    model = hub.prepare(ModelSettings(base="tiny/base", adapter="tiny/adapter"))
    assert Path(model.base).is_dir()
    assert (Path(model.base) / "config.json").is_file()
    assert model.name == "tiny/base"  # what served_by reports, not the snapshot's folder
    assert model.adapter_subfolder == "uncertainty/granite-4.0-micro/lora"
