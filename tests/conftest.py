"""Shared fixtures: the miniature Granite model, built once per test session; a redis-server; a
folder of the test policies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.engine.local import LocalEngine, ModelSource
from gateway.engine.tiny import make_tiny_model
from tests.fakes import POLICIES
from tests.servers import RedisServer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature Granite 4.0 Micro with a format-taught adapter: `base/` and `adapter/`."""
    out = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(out, seed=0, teach=True)
    return out


@pytest.fixture(scope="session")
def tiny_source(tiny_model_dir: Path) -> ModelSource:
    return ModelSource(base=str(tiny_model_dir / "base"), adapter=str(tiny_model_dir / "adapter"))


@pytest.fixture(scope="session")
def engine(tiny_source: ModelSource) -> LocalEngine:
    """The real local engine on the miniature model (CPU, float32)."""
    return LocalEngine.load(tiny_source, device="cpu", dtype="float32")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, on a free port."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    """A fresh folder holding `tests.fakes.POLICIES`, one file each."""
    folder = tmp_path / "policies"
    folder.mkdir()
    for name, body in POLICIES.items():
        (folder / f"{name}.yaml").write_text(body)
    return folder
