"""The container files: the image installs the reviewed lock, runs unprivileged, checks health.

Docker is not needed: these read the Dockerfile and the compose file as text and YAML.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from gateway.config import Settings

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


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, one list per `FROM` stage."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def test_dockerfile_builds_in_one_stage_and_runs_from_a_slim_one() -> None:
    build, runtime = stages()
    assert build[0][1].split() == ["python:3.11-slim", "AS", "build"]
    assert any(kw == "RUN" and "-r requirements.lock" in args for kw, args in build)
    assert runtime[0] == ("FROM", "python:3.11-slim")
    copied = [args for kw, args in runtime if kw == "COPY" and args.startswith("--from=build")]
    assert copied == ["--from=build /opt/venv /opt/venv"]
    # Nothing is installed in the runtime stage, and it keeps the user and the health check.
    assert not any(kw == "RUN" and "pip install" in args for kw, args in runtime)
    assert any(kw == "USER" and args.split(":")[0] not in ("root", "0") for kw, args in runtime)
    assert any(kw == "HEALTHCHECK" for kw, args in runtime)
    env = " ".join(args for kw, args in runtime if kw == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env


def test_compose_waits_for_a_healthy_redis(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    depends = compose["services"]["gateway"]["depends_on"]
    assert depends == {"redis": {"condition": "service_healthy"}}


def test_compose_passes_the_escalation_providers_key_through(compose: dict[str, Any]) -> None:
    environment = compose["services"]["gateway"]["environment"]
    assert environment["OPENAI_API_KEY"] == "${OPENAI_API_KEY:-}"  # from the shell, not the file


def test_compose_mounts_a_config_that_exists(compose: dict[str, Any]) -> None:
    (mount,) = [
        v for v in compose["services"]["gateway"]["volumes"] if "/etc/certainty-gateway/" in v
    ]
    source = re.fullmatch(r"\$\{GATEWAY_CONFIG_FILE:-(.+)\}", mount.split(":/etc/")[0])
    assert source is not None
    assert (ROOT / source.group(1)).is_file()  # else Docker mounts an empty folder in its place
    # The config escalates with the key the compose file passes through.
    config = yaml.safe_load((ROOT / source.group(1)).read_text())
    keys = {model["litellm_params"].get("api_key") for model in config["escalation"]["model_list"]}
    environment = compose["services"]["gateway"]["environment"]
    for key in keys:
        assert key.startswith("os.environ/")
        assert key.removeprefix("os.environ/") in environment


def test_the_vllm_compose_file_mounts_a_config_that_exists() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.vllm.yml").read_text())
    (mount,) = [
        v for v in compose["services"]["gateway"]["volumes"] if "/etc/certainty-gateway/" in v
    ]
    source = re.fullmatch(r"\$\{GATEWAY_CONFIG_FILE:-(.+)\}", mount.split(":/etc/")[0])
    assert source is not None
    assert (ROOT / "deploy" / source.group(1)).resolve().is_file()  # relative to the file
    config = yaml.safe_load((ROOT / "deploy" / source.group(1)).read_text())
    assert config["engine"]["kind"] == "vllm"


def test_the_vllm_replicas_trust_exactly_the_balancers_fixed_address() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.vllm.yml").read_text())
    services = compose["services"]
    balancer = services["lb"]["networks"]["default"]["ipv4_address"]
    (network,) = compose["networks"]["default"]["ipam"]["config"]
    assert ipaddress.ip_address(balancer) in ipaddress.ip_network(network["subnet"])
    # the range Docker hands out to the other containers leaves the balancer's address free
    assert ipaddress.ip_address(balancer) not in ipaddress.ip_network(network["ip_range"])
    trusted = services["gateway"]["environment"]["GATEWAY_SERVER__TRUSTED_PROXIES"]
    environment = {"GATEWAY_SERVER__TRUSTED_PROXIES": trusted}
    with mock.patch.dict(os.environ, environment):
        assert Settings().server.trusted_proxies == [balancer]
    # nginx names the client in the header the replicas read.
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in nginx


def test_the_image_holds_the_files_the_compose_config_names() -> None:
    copied = " ".join(args for kw, args in stages()[-1] if kw == "COPY")
    assert "policies" in copied
    assert "examples" in copied


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git"} <= ignored


def test_setup_the_dockerfile_and_the_readme_tell_one_story_about_torch() -> None:
    cpu_index = "https://download.pytorch.org/whl/cpu"
    for path in (ROOT / "scripts" / "setup", DOCKERFILE, ROOT / "README.md"):
        text = path.read_text()
        assert cpu_index in text, path
        assert "CUDA 13.0 build" in text, path
        assert "pip takes the build that fits" not in text, path
    assert "TORCH_INDEX_URL" in (ROOT / "scripts" / "setup").read_text()
