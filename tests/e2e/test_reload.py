"""End to end: SIGHUP makes a running `serve` re-read its API key file (rotation without a
restart), and keeps the current keys when the new file is bad or would leave no key."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Gateway, serving, tiny_model
from tests.waiting import wait_until

OLD = "sk-e2e-old-0123456789"
NEW = "sk-e2e-new-9876543210"


@pytest.fixture(scope="module")
def keyed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("reload")
    (folder / "policies").mkdir()
    (folder / "policies" / "granite.yaml").write_text("name: granite\nreturn_at: 0.0\n")
    (folder / "keys.txt").write_text(f"{OLD} old\n")
    config = {
        "model": tiny_model(tiny_model_dir),
        "policies_dir": str(folder / "policies"),
        "auth": {"api_keys_file": str(folder / "keys.txt")},
    }
    with serving(config, folder) as server:
        yield server


def status(gateway: Gateway, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.get(gateway.url + "/v1/models", headers=headers, timeout=10).status_code


def test_sighup_rotates_the_keys_and_refuses_a_bad_or_empty_file(keyed: Gateway) -> None:
    key_file = keyed.log.parent / "keys.txt"
    assert status(keyed, OLD) == 200
    assert status(keyed, NEW) == 401

    key_file.write_text(f"{NEW} new\n")
    keyed.process.send_signal(signal.SIGHUP)
    wait_until(lambda: status(keyed, NEW) == 200)
    assert status(keyed, OLD) == 401

    for rejected, bad in enumerate((f"{OLD} bad/id\n", "# every key removed\n"), start=1):
        key_file.write_text(bad)
        keyed.process.send_signal(signal.SIGHUP)
        wait_until(lambda n=rejected: keyed.log.read_text().count("API key reload rejected") == n)
        assert status(keyed, NEW) == 200  # the keys in use stay
        assert status(keyed, OLD) == 401
    assert keyed.process.poll() is None
