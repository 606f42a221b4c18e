"""Policy files: load a folder, validate every file, reload on change keeping the last good set."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from gateway.errors import ConfigError
from gateway.policy.schema import Policy

log = logging.getLogger(__name__)

POLICY_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class PolicySet:
    """The policies of one folder at one moment, and a hash of them all."""

    policies: Mapping[str, Policy]
    version: str
    hashes: Mapping[str, str]
    """Each policy's `content_hash()`, computed once at load (cache keys need it per request)."""

    def get(self, name: str) -> Policy | None:
        return self.policies.get(name)


def load_policy_file(path: Path) -> Policy:
    try:
        content = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a policy file is a mapping of fields to values")
    try:
        return Policy.model_validate(content)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "(policy)"
            problems.append(f"{field}: {error['msg']}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from exc


def load_policies(folder: Path) -> PolicySet:
    """Every `*.yaml` / `*.yml` file in the folder, one policy each; names must be unique."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: the policies folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"{folder}: no policy files (*.yaml) in the policies folder")
    policies: dict[str, Policy] = {}
    origin: dict[str, Path] = {}
    for path in files:
        policy = load_policy_file(path)
        if policy.name in policies:
            raise ConfigError(
                f"{path}: name: {policy.name!r} is already the name of {origin[policy.name]}"
            )
        policies[policy.name] = policy
        origin[policy.name] = path
    hashes = {name: policy.content_hash() for name, policy in policies.items()}
    digest = hashlib.sha256()
    for name in sorted(hashes):
        digest.update(f"{name}={hashes[name]};".encode())
    return PolicySet(policies=policies, version=digest.hexdigest()[:16], hashes=hashes)


def missing_escalation_targets(policies: PolicySet, targets: set[str]) -> list[str]:
    """A line for each policy whose `escalate_to` is not a model of the escalation list.

    Such a policy still loads (the shipped `cascade` must not stop a start without an
    escalation model); its escalations fail and follow its `on_escalation_error`.
    """
    known = ", ".join(sorted(targets)) or "none configured"
    return [
        f"policy {policy.name!r}: escalate_to {policy.escalate_to!r} is not a model_name of "
        f"escalation.model_list ({known}); its escalations will follow on_escalation_error "
        f"({policy.on_escalation_error})"
        for policy in policies.policies.values()
        if policy.escalates and policy.escalate_to not in targets
    ]


class PolicyStore:
    """Holds the current `PolicySet`; `reload()` swaps it only when the new folder is valid."""

    def __init__(self, folder: Path, initial: PolicySet, targets: set[str]) -> None:
        self.folder = folder
        self.current = initial
        self._targets = targets
        self.last_error: str | None = None

    @classmethod
    def open(cls, folder: Path, targets: set[str]) -> PolicyStore:
        policies = load_policies(folder)
        for warning in missing_escalation_targets(policies, targets):
            log.warning(warning)
        return cls(folder, policies, targets)

    def reload(self) -> bool:
        """Re-read the folder; on a bad edit keep the last good policies and log why."""
        try:
            policies = load_policies(self.folder)
        except ConfigError as exc:
            self.last_error = exc.message
            log.error("policy reload rejected, keeping the last good policies: %s", exc.message)
            return False
        self.last_error = None
        if policies.version != self.current.version:
            for warning in missing_escalation_targets(policies, self._targets):
                log.warning(warning)
            self.current = policies
            log.info(
                "policies reloaded",
                extra={"version": policies.version, "policies": sorted(policies.policies)},
            )
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload whenever a file in the folder changes, until `stop` is set."""
        from watchfiles import awatch

        async for _changes in awatch(self.folder, stop_event=stop, debounce=200, step=50):
            self.reload()
