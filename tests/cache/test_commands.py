from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from gateway.cli import main
from tests.cache.helpers import redis_cache
from tests.servers import RedisServer, free_port


def _fill(url: str, prefix: str, keys: list[str]) -> None:
    async def scenario() -> None:
        cache = redis_cache(url, prefix=prefix)
        try:
            for key in keys:
                await cache.set(key, b"v", ttl_s=60)
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_cache_clear_policy_removes_only_that_policy(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = "certainty-gateway:"
    _fill(
        redis_server.url,
        prefix,
        ["cascade:" + "a" * 64, "cascade:" + "b" * 64, "guard:" + "c" * 64],
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(f"cache:\n  url: {redis_server.url}\n")

    assert main(["cache", "clear", "--config", str(config), "--policy", "cascade"]) == 0
    assert "removed 2 cached decisions (policy 'cascade')" in capsys.readouterr().out
    raw = redis.Redis.from_url(redis_server.url)
    assert raw.keys("*") == [f"{prefix}guard:{'c' * 64}".encode()]
    raw.close()


def test_cache_clear_reads_the_url_from_the_environment(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_CACHE__URL", redis_server.url)
    monkeypatch.setenv("GATEWAY_CACHE__KEY_PREFIX", "ours:")
    _fill(redis_server.url, "ours:", ["guard:" + "c" * 64])
    _fill(redis_server.url, "theirs:", ["guard:" + "c" * 64])

    assert main(["cache", "clear"]) == 0
    assert "removed 1 cached decision (all policies)" in capsys.readouterr().out


def test_cache_clear_without_url_explains_the_cache_is_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GATEWAY_CACHE__URL", raising=False)
    assert main(["cache", "clear"]) == 0
    assert "nothing to clear" in capsys.readouterr().out


def test_cache_clear_with_redis_down_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_CACHE__URL", f"redis://:pw-xyz@127.0.0.1:{free_port()}/0")
    assert main(["cache", "clear", "--policy", "guard"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("certainty-gateway: error: cannot clear the cache at redis://127.0.0.1:")
    assert "pw-xyz" not in err
    assert err.count("\n") == 1
