"""`serve` start-up failures: one clear line, no traceback, before any port is bound."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        env={**base, **(env or {})},
    )


def test_without_config_and_without_the_hub_start_up_fails_with_one_clear_line() -> None:
    done = _serve(env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("certainty-gateway")]
    assert len(errors) == 1
    line = errors[0]
    assert "ibm-granite/granite-4.0-micro" in line  # what it tried
    assert "GATEWAY_MODEL__BASE" in line  # how to point at a local copy


def test_a_bad_config_value_stops_start_up_naming_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("cache:\n  ttl_s: -1\n")
    done = _serve("--config", str(config))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "cache.ttl_s" in done.stderr
    assert str(config) in done.stderr


def test_a_bad_policy_file_stops_start_up_naming_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "broken.yaml").write_text("name: broken\nreturn_at: high\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(f"policies_dir: {tmp_path / 'policies'}\n")
    done = _serve("--config", str(config))
    assert done.returncode == 2
    assert "broken.yaml" in done.stderr
    assert "return_at" in done.stderr


def test_serve_runs_on_httptools_and_uvloop_unless_the_settings_say_otherwise() -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from gateway.api.commands import uvicorn_config
    from gateway.api.server import GuardedH11Protocol, GuardedHttpToolsProtocol
    from gateway.config import Settings

    fast = uvicorn_config(None, Settings())
    fast.load()  # resolves "auto" to the classes uvicorn will run
    assert issubclass(fast.http_protocol_class, GuardedHttpToolsProtocol)  # the connection edge
    assert issubclass(fast.http_protocol_class, HttpToolsProtocol)
    assert fast.get_loop_factory().__module__.startswith("uvloop")
    assert fast.server_header is False
    plain = uvicorn_config(None, Settings(server={"http": "h11", "loop": "asyncio"}))  # type: ignore[arg-type]
    plain.load()
    assert issubclass(plain.http_protocol_class, GuardedH11Protocol)
    assert issubclass(plain.http_protocol_class, H11Protocol)
    assert plain.get_loop_factory().__module__.startswith("asyncio")
