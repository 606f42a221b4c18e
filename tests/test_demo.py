"""The demo: its cache (one folder per version and content), its dashboard address and its
audit judged by `granite`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gateway.demo as demo
from gateway.policy import PolicyStore


@pytest.fixture
def policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "cascade.yaml").write_text("name: cascade\nreturn_at: 0.75\n")
    monkeypatch.setattr(demo, "SHIPPED_POLICIES", folder)
    return folder


def test_the_demo_folder_changes_with_the_shipped_policies(policies: Path) -> None:
    before = demo.demo_folder(Path("/home"))
    (policies / "cascade.yaml").write_text("name: cascade\nreturn_at: 0.8\n")
    assert demo.demo_folder(Path("/home")) != before


def test_the_demo_folder_names_the_package_version(
    policies: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo.metadata, "version", lambda name: "9.9.9")
    assert demo.demo_folder(Path("/home")).name.startswith("9.9.9-")


def test_two_checkouts_with_the_same_content_share_the_demo(
    policies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = demo.demo_folder(Path("/home"))
    other = tmp_path / "other-clone" / "policies"
    other.mkdir(parents=True)
    (other / "cascade.yaml").write_bytes((policies / "cascade.yaml").read_bytes())
    monkeypatch.setattr(demo, "SHIPPED_POLICIES", other)
    assert demo.demo_folder(Path("/home")) == first


def test_the_demos_policies_do_not_point_into_a_checkout(tmp_path: Path) -> None:
    demo._write_policies(tmp_path, 0.3, 0.6)
    for written in tmp_path.glob("*.yaml"):
        assert str(demo.SHIPPED_POLICIES) not in written.read_text()


def test_the_demo_prints_the_dashboard_and_audits_with_its_granite_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERTAINTY_GATEWAY_HOME", str(tmp_path))
    folder = demo.demo_folder(demo.demo_home())
    folder.mkdir(parents=True)
    (folder / "ready.json").write_text(json.dumps({"return_at": 0.6, "escalate_at": 0.4}))
    settings = demo.prepare_demo(None, host="0.0.0.0", port=8123)
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
