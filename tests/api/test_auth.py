"""API keys: 401 before any model work, per-key policies (403), key ids as tenants, the key file,
and the rule that a gateway without keys only listens on loopback."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api.keys import KeyRing, key_id, read_key_file
from gateway.config import AuthSettings
from gateway.errors import AuthenticationFailed, ConfigError
from tests.fakes import FakeEscalator

KEY = "sk-test-alpha-0123456789"
OTHER_KEY = "sk-test-beta-9876543210"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def ask(client: TestClient, key: str | None = None, model: str = "granite", **extra: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    payload = {"model": model, "messages": QUESTION, "max_tokens": 4, "temperature": 0}
    return client.post("/v1/chat/completions", json=payload, headers=headers, **extra)


def rows_run(client: TestClient) -> int:
    worker = client.app.state.gateway.pipeline.engine  # type: ignore[attr-defined]
    return int(worker.rows_run)


@pytest.fixture
def keyed(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(auth={"api_keys": [KEY, OTHER_KEY]})


BAD_AUTHORIZATION: dict[str, dict[str, Any]] = {
    "missing": {},
    "empty": {"Authorization": ""},
    "scheme only": {"Authorization": "Bearer"},
    "scheme and space": {"Authorization": "Bearer "},
    "no scheme": {"Authorization": KEY},
    "two tokens": {"Authorization": f"Bearer {KEY} {KEY}"},
    "wrong key": {"Authorization": "Bearer sk-test-wrong"},
    "key with a suffix": {"Authorization": f"Bearer {KEY}x"},
    "key prefix": {"Authorization": f"Bearer {KEY[:-1]}"},
    "basic": {"Authorization": "Basic " + base64.b64encode(f"user:{KEY}".encode()).decode()},
    "token scheme": {"Authorization": f"Token {KEY}"},
    "non-ascii": {"Authorization": "Bearer sk-tést".encode()},
    "key in another header": {"x-api-key": KEY},
    "loopback host": {"Host": "127.0.0.1"},
    "localhost host": {"Host": "localhost:8000"},
    "odd host": {"Host": "evil.example:99999"},
    "ipv6 host": {"Host": "[::1]"},
    "empty host": {"Host": ""},
}


@pytest.mark.parametrize("headers", BAD_AUTHORIZATION.values(), ids=BAD_AUTHORIZATION.keys())
def test_bad_credentials_get_401_before_any_model_call(
    keyed: TestClient, escalator: FakeEscalator, headers: dict[str, Any]
) -> None:
    before = rows_run(keyed)
    payload = {"model": "ask-large", "messages": QUESTION, "max_tokens": 4}
    response = keyed.post("/v1/chat/completions", json=payload, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert KEY not in response.text
    assert rows_run(keyed) == before
    assert escalator.calls == 0


def test_two_authorization_headers_are_refused(keyed: TestClient) -> None:
    headers = [("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {OTHER_KEY}")]
    response = keyed.post(
        "/v1/chat/completions",
        json={"model": "granite", "messages": QUESTION, "max_tokens": 4},
        headers=headers,
    )
    assert response.status_code == 401
    assert rows_run(keyed) == 0


def test_a_bad_body_without_a_key_is_a_401_not_a_validation_error(keyed: TestClient) -> None:
    response = keyed.post("/v1/chat/completions", json={"model": 3})
    assert response.status_code == 401


def test_a_configured_key_answers_in_any_letter_case_of_the_scheme(keyed: TestClient) -> None:
    assert ask(keyed, KEY).status_code == 200
    response = keyed.post(
        "/v1/chat/completions",
        json={"model": "granite", "messages": QUESTION, "max_tokens": 4, "temperature": 0},
        headers={"Authorization": f"bearer {OTHER_KEY}"},
    )
    assert response.status_code == 200


def test_models_need_a_key_but_health_and_metrics_stay_open(keyed: TestClient) -> None:
    assert keyed.get("/v1/models").status_code == 401
    assert keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    for path in ("/health/live", "/health/ready", "/metrics"):
        assert keyed.get(path).status_code == 200, path


def test_each_key_id_is_its_own_cache_tenant(keyed: TestClient) -> None:
    assert ask(keyed, KEY).headers["x-gateway-cache"] == "miss"
    assert ask(keyed, KEY).headers["x-gateway-cache"] == "hit"
    assert ask(keyed, OTHER_KEY).headers["x-gateway-cache"] == "miss"


def test_without_keys_the_api_is_open(client: TestClient) -> None:
    assert ask(client).status_code == 200
    assert ask(client, "anything-at-all").status_code == 200


def test_the_default_id_is_a_prefix_of_the_keys_sha256() -> None:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    assert key_id(KEY) == "key-" + digest[:8]
    ring = KeyRing.from_settings(AuthSettings(api_keys=[KEY]))
    assert ring.ids == [key_id(KEY)]
    assert ring.authenticate([f"Bearer {KEY}"]).id == key_id(KEY)
    with pytest.raises(AuthenticationFailed):
        ring.authenticate([f"Bearer {OTHER_KEY}"])


def test_environment_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_settings

    monkeypatch.setenv("GATEWAY_AUTH__API_KEYS", f" {KEY}, {OTHER_KEY} ,")
    assert load_settings().auth.api_keys == [KEY, OTHER_KEY]


KEY_FILE = f"""\
# Keys of the support team and the batch jobs.
{KEY}    support    granite, refuse   # trailing comment
{OTHER_KEY}\tbatch

sk-test-gamma-000000000000   # no id: derived
sk-test-delta-000000000000   all-of-them   *
"""


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(KEY_FILE)
    return path


def test_the_key_file_gives_ids_and_policy_lists(key_file: Path) -> None:
    entries = {entry.id: entry for entry in read_key_file(key_file)}
    assert set(entries) == {"support", "batch", key_id("sk-test-gamma-000000000000"), "all-of-them"}
    assert entries["support"].policies == frozenset({"granite", "refuse"})
    assert entries["batch"].policies is None
    assert entries["all-of-them"].policies is None


def test_a_key_may_use_only_the_policies_in_its_list(
    make_client: Callable[..., TestClient], key_file: Path, escalator: FakeEscalator
) -> None:
    client = make_client(auth={"api_keys_file": key_file})
    response = ask(client, KEY, model="ask-large")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "permission_error"
    assert error["code"] == "model_not_allowed"
    assert error["param"] == "model"
    assert rows_run(client) == 0
    assert escalator.calls == 0
    assert ask(client, KEY, model="granite").status_code == 200
    assert ask(client, OTHER_KEY, model="ask-large").status_code == 200
    models = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert {m["id"] for m in models["data"]} == {"granite", "refuse"}


def test_a_body_served_before_is_checked_again_for_each_key(
    make_client: Callable[..., TestClient], key_file: Path
) -> None:
    """The chat endpoint remembers parsed bodies; the key and its policy list are never skipped."""
    client = make_client(auth={"api_keys_file": key_file})
    assert ask(client, OTHER_KEY, model="ask-large").status_code == 200
    assert ask(client, KEY, model="ask-large").status_code == 403
    assert ask(client, None, model="ask-large").status_code == 401
    assert ask(client, OTHER_KEY, model="ask-large").headers["x-gateway-cache"] == "hit"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{KEY} a\n{KEY} b\n", "same API key"),
        (f"{KEY} same\n{OTHER_KEY} same\n", "key id 'same'"),
        (f"{KEY} bad/id\n", "the id 'bad/id'"),
        (f"{KEY} id policy extra\n", "comma-separated"),
        (f"{KEY} id ,\n", "policy list is empty"),
        ("sk-\x01control\n", "visible ASCII"),
    ],
)
def test_a_bad_key_file_stops_start_up_without_echoing_the_key(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(content)
    with pytest.raises(ConfigError) as error:
        KeyRing.from_settings(AuthSettings(api_keys_file=path))
    assert expected in error.value.message
    assert str(path) in error.value.message
    assert KEY not in error.value.message
    assert OTHER_KEY not in error.value.message


def test_a_missing_key_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.api_keys_file"):
        KeyRing.from_settings(AuthSettings(api_keys_file=tmp_path / "absent.txt"))


# ------------------------------------------------------------------ the loopback rule of `serve`


def serve(tmp_path: Path, *args: str, keys: str | None = None) -> subprocess.CompletedProcess[str]:
    """`serve` with a policies folder that does not exist: it fails right after the address
    rule, so a run that gets past the rule ends with the policies error, quickly."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"policies_dir: {tmp_path / 'no-such-folder'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["CERTAINTY_GATEWAY_HOME"] = str(tmp_path / "home")  # a demo would build here
    if keys is not None:
        env["GATEWAY_AUTH__API_KEYS"] = keys
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_serve_without_keys_refuses_a_public_address_even_in_the_demo(tmp_path: Path) -> None:
    for extra in ((), ("--demo",)):
        result = serve(tmp_path, "--host", "0.0.0.0", *extra)
        assert result.returncode == 2, result.stderr
        assert "--insecure-no-auth" in result.stderr
        assert not (tmp_path / "home").exists()  # refused before building anything


def test_serve_passes_the_rule_with_keys_or_when_told(tmp_path: Path) -> None:
    # (Loopback without keys is how the end-to-end and shutdown tests start it.)
    runs = [
        serve(tmp_path, "--host", "0.0.0.0", keys=KEY),
        serve(tmp_path, "--host", "0.0.0.0", "--insecure-no-auth"),
    ]
    for result in runs:
        assert result.returncode == 2
        assert "no-such-folder" in result.stderr  # got as far as the policies
        assert KEY not in result.stderr
