"""`serve --demo`'s settings: the dashboard's address, and the audit judged by `granite`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.demo import DEMO_VERSION, prepare_demo
from gateway.policy import PolicyStore


def test_the_demo_prints_the_dashboard_and_audits_with_its_granite_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "demo" / f"v{DEMO_VERSION}"
    folder.mkdir(parents=True)
    (folder / "ready.json").write_text(json.dumps({"return_at": 0.6, "escalate_at": 0.4}))
    monkeypatch.setenv("CERTAINTY_GATEWAY_HOME", str(tmp_path))
    settings = prepare_demo(None, host="0.0.0.0", port=8123)
    assert "Dashboard: http://127.0.0.1:8123/dashboard" in capsys.readouterr().out
    targets = {m["model_name"]: m for m in settings.escalation.model_list}
    assert targets["judge"]["litellm_params"]["model"] == "openai/granite"
    assert targets["judge"]["litellm_params"]["api_base"] == "http://127.0.0.1:8123/v1"
    policies = PolicyStore.open(settings.policies_dir, set(targets)).current.policies
    for name in ("cascade", "guard"):
        audit = policies[name].audit
        assert audit is not None
        assert audit.judge == "judge"
    assert policies["granite"].audit is None  # the judge's own answers are not judged again
