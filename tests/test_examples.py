"""The example configs in examples/: each loads and passes `policies check --config`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_the_examples_cover_cpu_gpu_vllm_and_both_kinds_of_escalation() -> None:
    settings = {path.stem: load_settings(path) for path in EXAMPLES}
    assert {"local-cpu", "local-gpu", "vllm"} <= settings.keys()
    assert settings["local-cpu"].model.device == "cpu"
    assert settings["local-gpu"].model.device == "cuda"
    assert settings["vllm"].engine.kind == "vllm"
    params = [
        model["litellm_params"]
        for config in settings.values()
        for model in config.escalation.model_list
    ]
    assert any("api_base" not in p for p in params)  # a hosted model
    assert any(str(p.get("api_base", "")).startswith("http://127.0.0.1") for p in params)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_policies_check_passes_on_each_example(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # `policies_dir: policies`, as from the repository's root
    assert main(["policies", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning" not in out  # every escalation target is in the model list
    assert "policies valid in policies" in out


def test_every_example_the_readme_names_exists() -> None:
    named = set(re.findall(r"examples/[\w.-]+\.yaml", (REPO / "README.md").read_text()))
    assert named
    assert all((REPO / name).is_file() for name in named)
