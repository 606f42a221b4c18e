"""Configuration checks that stop start-up with one line: fallbacks naming unknown models, and the
precision `policies check` prints thresholds with."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import main

REPO = Path(__file__).resolve().parents[1]
LARGE = {"model_name": "large", "litellm_params": {"model": "openai/gpt-4o", "api_key": "x"}}


def _config(tmp_path: Path, escalation: dict[str, object]) -> Path:
    config = tmp_path / "gateway.yaml"
    body = {"policies_dir": str(REPO / "policies"), "escalation": escalation}
    config.write_text(yaml.safe_dump(body))
    return config


@pytest.mark.parametrize("command", [["policies", "check"], ["serve", "--port", "0"]])
def test_a_fallback_to_an_unknown_model_stops_with_its_name_and_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    config = _config(tmp_path, {"model_list": [LARGE], "fallbacks": [{"large": ["backup"]}]})
    assert main([*command, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "escalation.fallbacks" in err
    assert "'backup'" in err
    assert "(known: large)" in err
    assert str(config) in err


def test_fallbacks_between_known_models_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup = {**LARGE, "model_name": "backup"}
    config = _config(
        tmp_path, {"model_list": [LARGE, backup], "fallbacks": [{"large": ["backup"]}]}
    )
    assert main(["policies", "check", "--config", str(config)]) == 0


def test_policies_check_prints_thresholds_with_their_own_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "close.yaml").write_text(
        "name: close\nreturn_at: 0.46829\nescalate_at: 0.46825\nescalate_to: large\n"
    )
    assert main(["policies", "check", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("close"))
    assert "[0.46829, 1.00]" in row
    assert "[0.46825, 0.46829)" in row
    assert "[0.00, 0.46825)" in row


@pytest.mark.parametrize(
    ("model", "shown"),
    [
        ({}, "ibm-granite/granite-4.0-micro"),
        ({"base": "/models/granite-4.0-micro/"}, "granite-4.0-micro"),
        ({"base": "./local/granite"}, "granite"),
        ({"name": "granite-prod", "base": "/models/x"}, "granite-prod"),
    ],
)
def test_served_by_names_the_model_not_a_path(model: dict[str, str], shown: str) -> None:
    from gateway.config import ModelSettings
    from gateway.engine.factory import source_from_settings

    settings = ModelSettings(**model)  # type: ignore[arg-type]
    assert settings.display_name == shown
    assert source_from_settings(settings).name == shown


@pytest.mark.parametrize(
    ("proxies", "said"),
    [
        (["10.0.0.0/8", "nginx"], "'nginx' is not an IP address or network"),
        (["10.0.0.5/8"], "'10.0.0.5/8' is not an IP address or network"),  # host bits: no match
        (["10.0.0.1", "*"], "'*' (any peer) stands alone"),  # uvicorn would drop the '*'
    ],
)
def test_trusted_proxies_uvicorn_would_not_match_stop_start_up_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], proxies: list[str], said: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"server": {"trusted_proxies": proxies}}))
    assert main(["serve", "--port", "0", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "server.trusted_proxies" in err
    assert said in err
