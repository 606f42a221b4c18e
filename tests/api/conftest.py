"""An in-process gateway on the miniature model, with a plain fake escalator.

`POLICIES` and `FakeEscalator` are re-exported from `tests.fakes` for the tests that import them
from here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.engine.local import LocalEngine
from tests.fakes import POLICIES, FakeEscalator

__all__ = ["POLICIES", "FakeEscalator"]


@pytest.fixture
def escalator() -> FakeEscalator:
    return FakeEscalator()


@pytest.fixture
def make_client(
    engine: LocalEngine, policies_dir: Path, escalator: FakeEscalator
) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(**settings: object) -> TestClient:
        config = Settings(policies_dir=policies_dir, **settings)  # type: ignore[arg-type]
        app = create_app(config, engine=engine, escalator=escalator, watch_policies=False)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
