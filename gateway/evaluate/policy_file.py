"""A policy file's thresholds, read for evaluation and written by the tuner.

Only the keys the evaluation needs are read here (`confidence`, `return_at`, `escalate_at`); the
gateway's own policy loader validates the whole file. Writing replaces the values of `return_at`
and `escalate_at` in place, so every other key and comment stays as it was; a missing file is
created with the full policy shape.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.errors import ConfigError

ConfidenceKind = Literal["expected", "score"]


@dataclass(frozen=True)
class PolicyThresholds:
    name: str
    path: Path
    confidence: ConfidenceKind
    return_at: float
    escalate_at: float


def find_policy(name_or_path: str, policies_dir: Path) -> Path:
    """A path to a YAML file, or a policy name looked up as `policies_dir/NAME.yaml`."""
    given = Path(name_or_path)
    if given.suffix in (".yaml", ".yml") or given.is_file():
        if not given.is_file():
            raise ConfigError(f"{given}: no such policy file")
        return given
    for suffix in (".yaml", ".yml"):
        candidate = policies_dir / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no policy named {name_or_path!r} in {policies_dir}")


def _load(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a policy file holds one mapping of keys")
    return data


def _threshold(data: dict[str, Any], key: str, path: Path) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{path}: '{key}' must be a number, got {value!r}")
    return float(value)


def read_thresholds(path: Path) -> PolicyThresholds:
    data = _load(path)
    return_at = _threshold(data, "return_at", path)
    escalate_at = _threshold(data, "escalate_at", path) if "escalate_at" in data else return_at
    confidence = data.get("confidence", "expected")
    if confidence not in ("expected", "score"):
        raise ConfigError(f"{path}: 'confidence' is expected or score, got {confidence!r}")
    return PolicyThresholds(
        name=str(data.get("name") or path.stem),
        path=path,
        confidence=confidence,
        return_at=return_at,
        escalate_at=escalate_at,
    )


def _set_key(text: str, key: str, value: float, note: str) -> str:
    """Replace a top-level `key: value` line (dropping its old comment), or append one."""
    one_line = " ".join(note.split())
    line = f"{key}: {float(value)!r}  # {one_line}"
    pattern = re.compile(rf"^{re.escape(key)}\s*:.*$", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(lambda _: line, text, count=1)
    return text.rstrip("\n") + "\n" + line + "\n"


def write_thresholds(
    path: Path,
    *,
    return_at: float,
    escalate_at: float,
    note: str,
    confidence: ConfidenceKind = "expected",
) -> None:
    """Put tuned thresholds into a policy file (created with the full shape when missing)."""
    if path.exists():
        text = path.read_text(encoding="utf-8")
        _load(path)  # refuse to edit a file that is not a policy mapping
    else:
        text = _new_policy(path.stem, confidence)
    text = _set_key(text, "return_at", return_at, note)
    text = _set_key(text, "escalate_at", escalate_at, "tuned together with return_at")
    written = yaml.safe_load(text)
    if written.get("return_at") != return_at or written.get("escalate_at") != escalate_at:
        raise ConfigError(f"{path}: could not update the thresholds in place; edit it by hand")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from exc


def _new_policy(name: str, confidence: ConfidenceKind) -> str:
    return (
        f"name: {json.dumps(name)}\n"
        "description: Thresholds chosen from data by `certainty-gateway tune`.\n"
        f"confidence: {confidence}\n"
        "return_at: 0.5\n"
        "escalate_at: 0.0\n"
        "escalate_to: large\n"
        "on_escalation_error: return_local\n"
        'withhold_message: "I\'m not confident enough to answer that reliably."\n'
    )
