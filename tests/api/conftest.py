"""An in-process gateway on the miniature model, with a plain fake escalator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.engine.base import Document, Message, SamplingParams
from gateway.engine.local import LocalEngine
from gateway.errors import EscalationFailed
from gateway.escalation import EscalationDelta, EscalationReply

POLICIES = {
    "granite": "name: granite\nreturn_at: 0.0\n",
    # return_at 1.0 can never be met (the highest confidence is 0.95):
    "ask-large": (
        "name: ask-large\nreturn_at: 1.0\nescalate_at: 0.0\nescalate_to: large\n"
        "on_escalation_error: return_local\n"
    ),
    "ask-large-or-withhold": (
        "name: ask-large-or-withhold\nreturn_at: 1.0\nescalate_at: 0.0\nescalate_to: large\n"
        "on_escalation_error: withhold\nwithhold_message: Not sure.\n"
    ),
    "ask-large-or-fail": (
        "name: ask-large-or-fail\nreturn_at: 1.0\nescalate_at: 0.0\nescalate_to: large\n"
        "on_escalation_error: error\n"
    ),
    "refuse": "name: refuse\nreturn_at: 1.0\nwithhold_message: Not sure enough.\n",
}


class FakeEscalator:
    """Answers as a large model would, or fails, and counts its calls."""

    def __init__(self) -> None:
        self.fail = False
        self.calls = 0
        self.answer = "The large model's answer."

    @property
    def targets(self) -> set[str]:
        return {"large"}

    async def complete(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> EscalationReply:
        self.calls += 1
        if self.fail:
            raise EscalationFailed(f"escalation to {target!r} failed: APIError")
        return EscalationReply(
            text=self.answer,
            finish_reason="stop",
            model="large-model-v1",
            prompt_tokens=11,
            completion_tokens=5,
            cost=0.0042,
        )

    async def stream(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> AsyncIterator[EscalationDelta]:
        reply = await self.complete(target, messages, documents, sampling)
        for word in reply.text.split(" "):
            yield EscalationDelta(text=word + " ")
        yield EscalationDelta(text="", reply=reply)


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    for name, body in POLICIES.items():
        (folder / f"{name}.yaml").write_text(body)
    return folder


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
