"""The container files: the image installs the reviewed lock, runs unprivileged, checks health.

Docker is not needed: these read the Dockerfile and the compose file as text and YAML.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def index_of(predicate: Any, items: list[tuple[str, str]]) -> int:
    for i, item in enumerate(items):
        if predicate(*item):
            return i
    raise AssertionError("no such instruction in the Dockerfile")


def test_dockerfile_installs_the_lock_before_the_source() -> None:
    steps = instructions()
    lock_install = index_of(
        lambda kw, args: kw == "RUN" and re.search(r"pip install\b.*-r requirements\.lock", args),
        steps,
    )
    copy_lock = index_of(
        lambda kw, args: kw == "COPY" and "requirements.lock" in shlex.split(args)[:-1], steps
    )
    copy_source = index_of(
        lambda kw, args: kw == "COPY" and any(src.startswith("gateway") for src in args.split()),
        steps,
    )
    assert copy_lock < lock_install < copy_source
    # The same lock the README's setup installs.
    setup = (ROOT / "scripts" / "setup").read_text()
    assert re.search(r"pip install\b.*-r requirements\.lock", setup)


def test_dockerfile_installs_the_package_without_resolving_again() -> None:
    steps = instructions()
    package = index_of(
        lambda kw, args: kw == "RUN" and re.search(r"pip install --no-deps \.(\s|$)", args), steps
    )
    copy_source = index_of(
        lambda kw, args: kw == "COPY" and any(src.startswith("gateway") for src in args.split()),
        steps,
    )
    assert copy_source < package


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for kw, args in instructions() if kw == "USER"]
    assert users, "the image must switch to an unprivileged USER"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_checks_health_live_and_serves_on_8000() -> None:
    steps = instructions()
    healthchecks = [args for kw, args in steps if kw == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "http://127.0.0.1:8000/health/live" in healthchecks[0]
    assert "curl" not in healthchecks[0]  # not in slim images
    assert ("EXPOSE", "8000") in steps
    env = " ".join(args for kw, args in steps if kw == "ENV")
    assert "HF_HOME=/models" in env
    assert any(kw == "VOLUME" and "/models" in args for kw, args in steps)
    cmd = [args for kw, args in steps if kw == "CMD"][-1]
    assert yaml.safe_load(cmd) == [
        "certainty-gateway",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--config",
        "/etc/certainty-gateway/config.yaml",
    ]


def test_dockerfile_base_image_is_python_311_slim() -> None:
    bases = [args for kw, args in instructions() if kw == "FROM"]
    assert bases
    assert bases[0].startswith("python:3.11-slim")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_has_the_gateway_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"gateway", "redis"} <= set(services)
    assert services["redis"]["image"].startswith("redis:7")
    gateway = services["gateway"]
    assert gateway["build"] == "."
    assert gateway["environment"]["GATEWAY_CACHE__URL"] == "redis://redis:6379/0"
    # The API keys come from the operator's environment, never from the file.
    assert gateway["environment"]["GATEWAY_AUTH__API_KEYS"].startswith("${")
    volumes = gateway["volumes"]
    assert any(v.endswith(":/models") for v in volumes)
    assert any(v.endswith(":/etc/certainty-gateway/config.yaml:ro") for v in volumes)


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git"} <= ignored
