"""Policies: band edges, validation that names file and field, reload that keeps the last good."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.certainty import Certainty, Unscored, certainty_from_distribution
from gateway.cli import main
from gateway.errors import ConfigError
from gateway.policy import Action, Policy, PolicyStore, decide, load_policies

REPO = Path(__file__).resolve().parents[2]


def _certainty(expected: float, score: int = 5) -> Certainty:
    return Certainty(
        score=score,
        confidence=0.1 * score + 0.05,
        expected_confidence=expected,
        distribution=None,
        mode="logits",
    )


CASCADE = Policy(name="c", return_at=0.75, escalate_at=0.25, escalate_to="large")


@pytest.mark.parametrize(
    ("expected", "action"),
    [
        (0.95, Action.RETURN),
        (0.75, Action.RETURN),  # the return threshold is inclusive
        (0.7499, Action.ESCALATE),
        (0.25, Action.ESCALATE),  # so is the escalation threshold
        (0.2499, Action.WITHHOLD),
        (0.0, Action.WITHHOLD),
    ],
)
def test_cascade_bands_at_their_edges(expected: float, action: Action) -> None:
    assert decide(CASCADE, _certainty(expected)) is action


def test_score_policies_compare_the_argmax_confidence_not_the_expected() -> None:
    policy = Policy(name="s", confidence="score", return_at=0.75)
    assert decide(policy, _certainty(0.9, score=6)) is Action.WITHHOLD  # 0.65 < 0.75
    assert decide(policy, _certainty(0.1, score=7)) is Action.RETURN  # 0.75


def test_guard_without_escalation_withholds_below_return_at() -> None:
    guard = Policy(name="g", return_at=0.75)
    assert decide(guard, _certainty(0.74)) is Action.WITHHOLD
    assert not guard.escalates


def test_an_unscored_reply_counts_as_zero_confidence() -> None:
    assert decide(CASCADE, Unscored(reply="garbage")) is Action.WITHHOLD
    assert decide(Policy(name="a"), Unscored(reply="")) is Action.RETURN


def test_expected_confidence_of_a_real_distribution_drives_the_decision() -> None:
    sharp = [0.0] * 10
    sharp[9] = 1.0
    assert decide(CASCADE, certainty_from_distribution(sharp)) is Action.RETURN


def test_escalate_at_above_return_at_is_refused() -> None:
    with pytest.raises(ValueError, match="escalate_at"):
        Policy(name="x", return_at=0.5, escalate_at=0.6, escalate_to="large")


def test_escalation_band_needs_a_target() -> None:
    with pytest.raises(ValueError, match="escalate_to"):
        Policy(name="x", return_at=0.5, escalate_at=0.2)


def test_content_hash_changes_with_any_field() -> None:
    assert CASCADE.content_hash() != CASCADE.model_copy(update={"return_at": 0.8}).content_hash()
    assert (
        CASCADE.content_hash()
        != CASCADE.model_copy(update={"withhold_message": "no"}).content_hash()
    )


def test_shipped_policies_load_and_behave_as_documented() -> None:
    policies = load_policies(REPO / "policies").policies
    assert set(policies) >= {"granite", "cascade", "guard"}
    assert policies["granite"].always_returns
    assert policies["cascade"].escalates
    assert not policies["guard"].escalates


def test_a_bad_file_names_file_field_and_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: bad\nreturn_at: 1.5\n")
    with pytest.raises(ConfigError) as caught:
        load_policies(tmp_path)
    message = caught.value.message
    assert "bad.yaml" in message
    assert "return_at" in message
    assert "less than or equal to 1" in message


def test_an_unknown_field_is_refused(tmp_path: Path) -> None:
    (tmp_path / "typo.yaml").write_text("name: typo\nretrun_at: 0.5\n")
    with pytest.raises(ConfigError, match="retrun_at"):
        load_policies(tmp_path)


def test_two_files_with_the_same_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: same\n")
    (tmp_path / "b.yaml").write_text("name: same\n")
    with pytest.raises(ConfigError, match="already the name"):
        load_policies(tmp_path)


def test_reload_with_a_bad_edit_keeps_the_last_good_policies(tmp_path: Path) -> None:
    (tmp_path / "guard.yaml").write_text("name: guard\nreturn_at: 0.75\n")
    store = PolicyStore.open(tmp_path, set())
    before = store.current
    (tmp_path / "guard.yaml").write_text("name: guard\nreturn_at: [oops\n")
    assert store.reload() is False
    assert store.current is before
    assert store.last_error is not None
    assert "guard.yaml" in store.last_error
    (tmp_path / "guard.yaml").write_text("name: guard\nreturn_at: 0.5\n")
    assert store.reload() is True
    guard = store.current.get("guard")
    assert guard is not None
    assert guard.return_at == 0.5
    assert store.current.version != before.version


def test_policies_check_prints_each_policy_band(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policies", "check", str(REPO / "policies")]) == 0
    out = capsys.readouterr().out
    cascade = next(line for line in out.splitlines() if line.startswith("cascade"))
    assert "[0.75, 1.00]" in cascade
    assert "[0.25, 0.75)" in cascade
    assert "[0.00, 0.25)" in cascade
    assert "large" in cascade


def test_policies_check_on_a_bad_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.yaml").write_text("name: bad\nconfidence: vibes\n")
    assert main(["policies", "check", str(tmp_path)]) == 2
    assert "confidence" in capsys.readouterr().err
